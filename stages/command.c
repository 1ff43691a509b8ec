/*
 * command.c - the `command` stage kind: run the stage's steps on an agent.
 *
 * This is the plain CI job every other kind builds on: the steps run with
 * /bin/sh -e -c on an agent whose labels match, and the job passes exactly
 * when every step exits 0 (no verdict hook, so the engine's default rule
 * applies).  It takes no keys beyond the generic stage keys, so there is
 * nothing kind-specific to validate.
 */
#include "stage.h"

static const char *const command_keys[] = { NULL };

const struct stage_kind stage_kind_command = {
	.name = "command",
	.summary = "run shell steps on an agent; passes when every step exits 0",
	.keys = command_keys,
	.runs_steps = 1,
	.validate = NULL,
	.verdict = NULL,
};
