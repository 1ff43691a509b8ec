/*
 * registry.c - the table of stage kinds, looked up by the name in `kind:`.
 *
 * Two lists: the kinds built into this version (each a struct stage_kind
 * defined in its own file in this folder) and the kinds that are part of
 * otacd's design but not built yet.  A pipeline naming a planned kind gets
 * "not available in this version" instead of "unknown kind", and
 * did-you-mean suggestions consider both lists.  When a kind lands, its
 * name moves from `planned` to `available`.
 */
#include "stage.h"

#include <string.h>

extern const struct stage_kind stage_kind_command;
extern const struct stage_kind stage_kind_build;
extern const struct stage_kind stage_kind_test;
extern const struct stage_kind stage_kind_analysis;
extern const struct stage_kind stage_kind_hil;
extern const struct stage_kind stage_kind_release;
extern const struct stage_kind stage_kind_soak;
extern const struct stage_kind stage_kind_rollout;

static const struct stage_kind *const available[] = {
	&stage_kind_command,
	&stage_kind_build,
	&stage_kind_test,
	&stage_kind_analysis,
	&stage_kind_hil,
	&stage_kind_release,
	&stage_kind_soak,
	&stage_kind_rollout,
};

static const char *const available_names[] = {
	"command",
	"build",
	"test",
	"analysis",
	"hil",
	"release",
	"soak",
	"rollout",
	NULL,
};
_Static_assert(OTA_ARRAY_SIZE(available) + 1 == OTA_ARRAY_SIZE(available_names),
	       "available_names must list every available kind");

static const char *const planned[] = {
	NULL,
};

const struct stage_kind *stage_kind_find(const char *name, int *is_planned)
{
	if (is_planned)
		*is_planned = 0;
	if (!name)
		return NULL;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(available); i++)
		if (!strcmp(available[i]->name, name))
			return available[i];
	for (size_t i = 0; planned[i]; i++)
		if (!strcmp(planned[i], name)) {
			if (is_planned)
				*is_planned = 1;
			break;
		}
	return NULL;
}

const char *const *stage_kind_names(void)
{
	return available_names;
}

const char *const *stage_kind_planned_names(void)
{
	return planned;
}
