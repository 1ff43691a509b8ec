/*
 * hil.c - the `hil` stage kind: hardware-in-the-loop tests on a rig.
 *
 *   - name: hil
 *     kind: hil
 *     needs: [build]
 *     matrix: { board: [mps2-an385, mps2-an386] }
 *     board: "${{ matrix.board }}"
 *     agent: { labels: [hil, "board=${{ matrix.board }}"] }
 *     steps: [ { run: "./hil/run.sh $OTACD_INPUTS/build/${{ matrix.board }}/app.elf ..." } ]
 *     reports: { junit: build/hil.xml }
 *     timeout: 2m
 *
 * A rig is an agent with the job's labels; the dispatch queue gives each
 * agent one job at a time, oldest first, so jobs wait in order for a free
 * rig.  Before the steps the agent downloads the artifacts of the stages
 * the job needs whose hardware is `board` (every artifact of them when the
 * stage names no board) to $OTACD_INPUTS/<artifact name>.  A rig that
 * stops answering loses its lease: an infrastructure failure, retried on
 * another rig.  Results are JUnit, judged like `test`.
 */
#include "stage.h"

#include "reports_kind.h"

static const char *const junit_only[] = { "junit", NULL };

static int hil_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d)
{
	json_t *board = json_object_get(st->extra, "board");

	(void)p;
	rk_validate_reports(st, d, junit_only, 0);
	rk_validate_tests(st, d);
	if (board && (!json_is_string(board) || !*json_string_value(board)))
		pl_diag_add(d, st->pos, "hil stage '%s': 'board' must be the rig's board name", st->name);
	if (board && !st->needs.n)
		pl_diag_add(d, st->pos, "hil stage '%s' names a board but needs no stage: its images come from the"
			    " stages in 'needs' (e.g. needs: [build])", st->name);
	return 0;
}

static const char *const hil_keys[] = { "board", "reports", "allow_failures", "quarantine", NULL };

const struct stage_kind stage_kind_hil = {
	.name = "hil",
	.summary = "test on a hardware-in-the-loop rig with the board's build artifacts; judged by JUnit",
	.keys = hil_keys,
	.runs_steps = 1,
	.validate = hil_validate,
	.verdict = rk_tests_verdict,
};
