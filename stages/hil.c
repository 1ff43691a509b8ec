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
 *     reports: { junit: build/hil.xml, power: build/power.json }
 *     baseline: main
 *     power: { avg_current_ma: 1.5, sleep_current_ma: 1.2, cycle_energy_uj: 100, max_increase_percent: 25 }
 *     timeout: 2m
 *
 * A rig is an agent with the job's labels; the dispatch queue gives each
 * agent one job at a time, oldest first, so jobs wait in order for a free
 * rig.  Before the steps the agent downloads the artifacts of the stages
 * the job needs whose hardware is `board` (every artifact of them when the
 * stage names no board) to $OTACD_INPUTS/<artifact name>.  A rig that
 * stops answering loses its lease: an infrastructure failure, retried on
 * another rig.  Results are JUnit, judged like `test`; a rig that measures
 * power uploads a power report, judged by the `power:` limits (power.c).
 */
#include "stage.h"

#include <stdlib.h>
#include <string.h>

#include "power.h"
#include "reports_kind.h"

static const char *const hil_formats[] = { "junit", "power", NULL };

static int hil_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d)
{
	json_t *board = json_object_get(st->extra, "board");

	(void)p;
	rk_validate_reports(st, d, hil_formats, 0);
	rk_validate_tests(st, d);
	power_validate(st, d);
	if (board && (!json_is_string(board) || !*json_string_value(board)))
		pl_diag_add(d, st->pos, "hil stage '%s': 'board' must be the rig's board name", st->name);
	if (board && !st->needs.n)
		pl_diag_add(d, st->pos, "hil stage '%s' names a board but needs no stage: its images come from the"
			    " stages in 'needs' (e.g. needs: [build])", st->name);
	return 0;
}

/*
 * The tests' verdict, then the power gate's.  After a timeout, a cancel or
 * a lost rig the power figures say nothing (the job's own reason stays);
 * after a failed step both messages are kept.
 */
static int hil_verdict(const json_t *spec, const struct job_result *r, const struct verdict_input *in, char **message)
{
	char *tests = NULL;
	struct buf power = BUF_INIT;
	int verdict = rk_tests_verdict(spec, r, in, &tests), failed = 0;

	*message = tests;
	if (r->failure_kind && strcmp(r->failure_kind, "script"))
		goto out;
	failed = power_verdict(json_object_get(spec, "extra"), in, &power);
	if (power.len && (failed || !tests)) {
		*message = xasprintf("%s%s%s", tests ? tests : "", tests ? "; " : "", buf_cstr(&power));
		free(tests);
	}
out:
	buf_release(&power);
	return verdict || failed;
}

static const char *const hil_keys[] = { "board", "reports", "allow_failures", "quarantine", "power", "baseline", NULL };

const struct stage_kind stage_kind_hil = {
	.name = "hil",
	.summary = "test on a hardware-in-the-loop rig with the board's build artifacts; judged by JUnit and,"
		   " with power:, by the rig's power figures against limits and the baseline branch",
	.keys = hil_keys,
	.runs_steps = 1,
	.validate = hil_validate,
	.verdict = hil_verdict,
};
