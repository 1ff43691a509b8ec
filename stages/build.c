/*
 * build.c - the `build` stage kind: compile firmware on an agent.
 *
 *   - name: build
 *     kind: build
 *     matrix: { board: [mps2-an385, mps2-an386] }
 *     toolchain: ["arm-none-eabi-gcc --version", "make --version"]
 *     reproducible: true
 *     steps: [ { run: "make BOARD=${{ matrix.board }}" } ]
 *     artifacts: [ { path: "build/${{ matrix.board }}/app.bin", type: application, hardware: "${{ matrix.board }}" } ]
 *
 * The steps run like `command`; what the kind adds happens on the agent
 * (agents/stagework.c): after the steps it runs each `toolchain` command
 * and uploads the first line of each output as a "toolchain" report (the
 * release stage copies them into the manifest's dependencies and the
 * provenance), and with `reproducible: true` it runs the steps twice, each
 * time in a freshly checked-out workspace, and fails the job naming both
 * digests of every artifact that differs.  The verdict is the default one.
 */
#include "stage.h"

#include "reports_kind.h"

static int build_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d)
{
	(void)p;
	rk_validate_strings(st, d, "toolchain");
	rk_validate_bool(st, d, "reproducible");
	if (json_is_true(json_object_get(st->extra, "reproducible")) && !st->nartifacts)
		pl_diag_add(d, st->pos, "build stage '%s': reproducible: true compares the artifacts of two builds,"
			    " but the stage keeps no 'artifacts'", st->name);
	return 0;
}

static const char *const build_keys[] = { "toolchain", "reproducible", NULL };

const struct stage_kind stage_kind_build = {
	.name = "build",
	.summary = "build on an agent: records toolchain versions, can check that two clean builds are identical",
	.keys = build_keys,
	.runs_steps = 1,
	.validate = build_validate,
	.verdict = NULL,
};
