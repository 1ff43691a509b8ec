/*
 * yamlbound.c - YAML depth and node bounds; see yamlbound.h.
 *
 * One pass of yaml_parser_parse(): collection starts push, ends pop, every
 * scalar, alias and collection counts as a node.  Events are freed as they
 * come, so the pass holds no more than libyaml's own small state.
 */
#include "yamlbound.h"

#include <stdio.h>
#include <yaml.h>

#include "../../common/util.h"

int yaml_bounds_check(const char *text, size_t len, int max_depth, size_t max_nodes, struct yaml_bound_err *err)
{
	yaml_parser_t parser;
	yaml_event_t ev;
	size_t nodes = 0;
	int depth = 0, rc = 0, done = 0;

	if (!yaml_parser_initialize(&parser))
		return 0; /* the loader will say it too */
	yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), text ? len : 0);
	while (!done && rc == 0) {
		if (!yaml_parser_parse(&parser, &ev))
			break; /* a syntax error: the loader reports it */
		switch (ev.type) {
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT:
			nodes++;
			if (++depth > max_depth) {
				snprintf(err->msg, sizeof(err->msg), "is nested more than %d levels deep", max_depth);
				rc = OTA_ETOOBIG;
			}
			break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT:
			depth--;
			break;
		case YAML_SCALAR_EVENT:
		case YAML_ALIAS_EVENT:
			nodes++;
			break;
		case YAML_STREAM_END_EVENT:
			done = 1;
			break;
		default:
			break;
		}
		if (rc == 0 && nodes > max_nodes) {
			snprintf(err->msg, sizeof(err->msg), "has more than %zu nodes", max_nodes);
			rc = OTA_ETOOBIG;
		}
		if (rc) {
			err->line = (int)ev.start_mark.line + 1;
			err->col = (int)ev.start_mark.column + 1;
		}
		yaml_event_delete(&ev);
	}
	yaml_parser_delete(&parser);
	return rc;
}
