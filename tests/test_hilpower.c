/*
 * test_hilpower.c - stage 4 of the firmware pipeline on HIL rigs: the
 * conformance suite of sensor-node's framed UART protocol and the power
 * gate, on QEMU rigs through a real otacd and real agents.
 *
 * The pipeline is the example's own build and hil stages (cut from its
 * .otacd/pipeline.yml, with a first step copying $SRC into the workspace).
 * A run on main passes: every conformance case passes on both boards and
 * the simulated meter's figures are stored with the run; a branch built
 * with BREAK=power (the firmware polls instead of sleeping) passes every
 * functional and conformance test but fails the hil stage on its power
 * limits and on main's baseline; one built with BREAK=proto (a bad CRC
 * accepted) fails the conformance suite, naming the case.  Without a
 * daemon: the power report
 * parser against hostile documents, the gate's rules (limits, increase
 * over the baseline per board, a missing report, a timeout's reason
 * kept) and the `power:` keys' validation.
 *
 * Needs arm-none-eabi-gcc, qemu-system-arm, python3 and make for the
 * rig tests; they are skipped with a message when one is missing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../orchestrator/pipeline/pipeline.h"
#include "../orchestrator/reports.h"
#include "../stages/stage.h"
#include "devharness.h"
#include "fwharness.h"
#include "harness.h"

extern const struct stage_kind stage_kind_hil;

/* ---- helpers ------------------------------------------------------------ */

/* The text of the example's pipeline from the line `from` up to `to`. */
static void cut(struct buf *out, const char *text, const char *from, const char *to)
{
	const char *a = strstr(text, from), *b = a ? strstr(a, to) : NULL;
	assert_non_null(a);
	assert_non_null(b);
	buf_put(out, a, (size_t)(b - a));
}

/* The example's build and hil stages, with SRC and BREAK (may be "") in env. */
static char *hil_yaml(const char *src, const char *brk)
{
	char *path = dh_src_path("examples/sensor-node/.otacd/pipeline.yml"), *head;
	struct buf text = BUF_INIT, a = BUF_INIT, b = BUF_INIT;

	assert_int_equal(ota_read_file(&text, path, 1 << 20), 0);
	head = xasprintf("name: sensor-node\nenv:\n  SRC: \"%s\"\n  BREAK: \"%s\"\nstages:\n", src, brk);
	buf_puts(&a, head);
	cut(&a, text.ptr, "  # --- build", "  # --- unit tests");
	cut(&a, text.ptr, "  # --- hardware in the loop", "  # --- release");
	fw_copy_step(&b, a.ptr, 2);
	free(head);
	free(path);
	buf_release(&text);
	buf_release(&a);
	return buf_detach(&b);
}

static json_t *get(struct daemon *d, const char *fmt, int64_t id)
{
	char *path = xasprintf(fmt, (long long)id);
	json_t *ans = NULL;
	assert_int_equal(h_get(d, path, &ans), 200);
	free(path);
	return ans;
}

/* ---- on the QEMU rigs ----------------------------------------------------- */

struct fixture {
	struct daemon d;
	pid_t rigs[2];
	char *src;
	int64_t main_run;
};

static int tools_missing(void)
{
	static const char *const tools[] = { "arm-none-eabi-gcc", "qemu-system-arm", "python3", "make" };
	return fw_tools_missing(tools, OTA_ARRAY_SIZE(tools),
				"gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm python3 make", NULL);
}

static void wait_for(struct daemon *d, int64_t id, const char *want)
{
	fw_wait_for(d, id, want, 170000);
}

static int setup(void **state)
{
	static const char *const args[] = { "--local-agents", "2", NULL };
	struct fixture *f = xcalloc(1, sizeof(*f));

	*state = f;
	if (tools_missing())
		return 0;
	h_init(&f->d, NULL);
	assert_int_equal(h_start(&f->d, args), 0);
	fw_rigs_start(&f->d, f->rigs);
	f->src = dh_sensor_node_copy(f->d.dir, "sensor-node");
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	if (f->src) {
		fw_rigs_stop(f->rigs);
		h_cleanup(&f->d);
	}
	free(f->src);
	free(f);
	return 0;
}

static struct fixture *ready(void **state)
{
	struct fixture *f = *state;
	if (!f->src)
		skip();
	return f;
}

/* The run on main, started once: the baseline of the branch runs. */
static int64_t main_run(struct fixture *f)
{
	if (!f->main_run) {
		char *yaml = hil_yaml(f->src, "");
		f->main_run = fw_trigger_on(&f->d, yaml, "refs/heads/main");
		free(yaml);
		wait_for(&f->d, f->main_run, "passed");
	}
	return f->main_run;
}

static double metric(json_t *metrics, json_t *job, const char *name)
{
	json_int_t id = json_integer_value(json_object_get(job, "id"));
	size_t i;
	json_t *m;
	json_array_foreach(json_object_get(metrics, "metrics"), i, m)
		if (json_integer_value(json_object_get(m, "job")) == id && !strcmp(fw_jstr(m, "name"), name))
			return json_number_value(json_object_get(m, "value"));
	fail_msg("metric %s of job %lld not in the run's metrics", name, (long long)id);
	return -1;
}

static void sensor_node_passes_protocol_conformance_and_power_on_both_rigs(void **state)
{
	struct fixture *f = ready(state);
	int64_t id = main_run(f);
	json_t *reps = get(&f->d, "/api/v1/runs/%lld/reports", id), *metrics, *rep, *c, *run;
	int junit = 0, power = 0;
	size_t i, k;

	json_array_foreach(reps, i, rep) {
		if (strcmp(fw_jstr(rep, "stage"), "hil"))
			continue;
		if (!strcmp(fw_jstr(rep, "format"), "power")) {
			/* the simulated meter: one sample per interval, each with cycles */
			power++;
			assert_true(json_array_size(json_object_get(rep, "samples")) >= 2);
			continue;
		}
		junit++;
		json_array_foreach(json_object_get(rep, "tests"), k, c) {
			if (strncmp(fw_jstr(c, "classname"), "conformance.", 12))
				continue;
			if (strcmp(fw_jstr(c, "status"), "passed"))
				fail_msg("conformance case %s: %s: %s", fw_jstr(c, "name"), fw_jstr(c, "status"), fw_jstr(c, "message"));
		}
		/* the cases that cross the protocol's edges are there, by name */
		for (const char *const *n = (const char *const[]){ "bad_crc_is_refused_and_changes_nothing",
								    "overlong_line_is_refused_whole",
								    "length_above_the_maximum_is_refused",
								    "repeated_seq_is_refused_not_run_twice",
								    "command_before_hello_is_refused", NULL };
		     *n; n++) {
			int found = 0;
			json_array_foreach(json_object_get(rep, "tests"), k, c)
				found |= !strcmp(fw_jstr(c, "name"), *n) && !strcmp(fw_jstr(c, "status"), "passed");
			if (!found)
				fail_msg("no passed conformance case %s", *n);
		}
	}
	assert_int_equal(junit, 2);
	assert_int_equal(power, 2);

	/* the figures are stored with the run, inside the pipeline's limits */
	metrics = get(&f->d, "/api/v1/runs/%lld/metrics", id);
	run = h_run(&f->d, id);
	for (const char *const *b = (const char *const[]){ "hil (board=mps2-an385)", "hil (board=mps2-an386)", NULL };
	     *b; b++) {
		json_t *job = h_job(run, *b);
		double avg = metric(metrics, job, "avg_current_ma"), floor = metric(metrics, job, "sleep_current_ma");
		double cycle = metric(metrics, job, "cycle_energy_uj");
		assert_true(avg > 0.5 && avg < 1.5);
		assert_true(floor > 0.5 && floor <= avg);
		assert_true(cycle > 20 && cycle < 100);
		assert_true(metric(metrics, job, "cycles") >= 50); /* 50 samples a second for 2 s, less start-up */
	}
	json_decref(run);
	json_decref(metrics);
	json_decref(reps);

	/* and the CLI prints them with the tests */
	{
		struct buf out = BUF_INIT;
		char *otactl = h_bin("otactl");
		assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld --tests", otactl, f->d.url, f->d.token,
				      (long long)id), 0);
		assert_non_null(strstr(buf_cstr(&out), "25 tests, 25 passed"));
		assert_non_null(strstr(buf_cstr(&out), "power.json:"));
		assert_non_null(strstr(buf_cstr(&out), " avg_current_ma "));
		free(otactl);
		buf_release(&out);
	}
}

static void firmware_that_stops_sleeping_fails_the_power_gate(void **state)
{
	struct fixture *f = ready(state);
	char *yaml = hil_yaml(f->src, "power");
	int64_t base = main_run(f), id;
	json_t *run, *job, *reps, *rep;
	size_t i;

	id = fw_trigger_on(&f->d, yaml, "refs/heads/feature");
	wait_for(&f->d, id, "failed");
	run = h_run(&f->d, id);
	for (const char *const *b = (const char *const[]){ "mps2-an385", "mps2-an386", NULL }; *b; b++) {
		char *name = xasprintf("hil (board=%s)", *b), *want = xasprintf("power (%s): average current ", *b);
		char *base_note = xasprintf("above the baseline's");
		const char *msg;
		job = h_job(run, name);
		assert_non_null(job);
		msg = fw_jstr(job, "message");
		assert_string_equal(fw_jstr(job, "state"), "failed");
		if (!strstr(msg, want) || !strstr(msg, "(limit 1.5 mA)") || !strstr(msg, "sleep current") ||
		    !strstr(msg, "(limit 1.2 mA)") || !strstr(msg, "energy per measurement cycle") || !strstr(msg, base_note))
			fail_msg("hil job %s says: %s", name, msg);
		(void)base;
		free(base_note);
		free(name);
		free(want);
	}
	/* the build passed, and every functional and conformance test passed: only power failed */
	assert_string_equal(fw_jstr(h_job(run, "build (board=mps2-an385)"), "state"), "passed");
	reps = get(&f->d, "/api/v1/runs/%lld/reports", id);
	json_array_foreach(reps, i, rep)
		if (!strcmp(fw_jstr(rep, "format"), "junit")) {
			json_t *s = json_object_get(rep, "summary");
			assert_int_equal(json_integer_value(json_object_get(s, "tests")),
					 json_integer_value(json_object_get(s, "passed")));
		}
	json_decref(reps);
	json_decref(run);
	free(yaml);
}

static void firmware_that_trusts_a_bad_crc_fails_the_conformance_suite(void **state)
{
	struct fixture *f = ready(state);
	char *yaml = hil_yaml(f->src, "proto");
	int64_t id = fw_trigger_on(&f->d, yaml, "refs/heads/feature");
	json_t *run, *job;

	wait_for(&f->d, id, "failed");
	run = h_run(&f->d, id);
	job = h_job(run, "hil (board=mps2-an386)");
	assert_non_null(job);
	assert_string_equal(fw_jstr(job, "state"), "failed");
	if (!strstr(fw_jstr(job, "message"), "1 of 25 tests failed: bad_crc_is_refused_and_changes_nothing: sent 'C A502")
	    || !strstr(fw_jstr(job, "message"), "expected 'NAK -- crc'"))
		fail_msg("hil job says: %s", fw_jstr(job, "message"));
	/* the power figures of that firmware are fine: only the protocol failed */
	assert_null(strstr(fw_jstr(job, "message"), "power ("));
	json_decref(run);
	free(yaml);
}

/* ---- the report parser ---------------------------------------------------- */

static void hostile_power_reports_are_refused(void **state)
{
	static const struct {
		const char *data, *want;
	} cases[] = {
		{ "", "p.json:" },
		{ "[1]", "not a power report" },
		{ "{\"format\":\"otacd-power/2\"}", "not a power report" },
		{ "{\"format\":\"otacd-power/1\",\"format\":\"otacd-power/1\"}", "p.json:1:" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":0,\"samples\":[]}", "voltage_v must be" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":1e308,\"samples\":[]}", "voltage_v must be" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[]}", "1 to 100000 samples" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":{}}", "1 to 100000 samples" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"board\":7,\"samples\":[]}", "board and source" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":0,\"current_ma\":1}]}",
		  "samples[0] needs" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":10,\"current_ma\":-1}]}",
		  "samples[0] needs" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":10,\"current_ma\":1e9}]}",
		  "samples[0] needs" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":10,\"current_ma\":\"1\"}]}",
		  "samples[0] needs" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":10,\"current_ma\":1,"
		  "\"cycles\":-1}]}", "samples[0] needs" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":10,\"current_ma\":1,"
		  "\"cycles\":1.5}]}", "samples[0] needs" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":10,\"current_ma\":1},"
		  "{\"t_ms\":5,\"ms\":10,\"current_ma\":1}]}", "samples[1] starts at 5 ms, before the previous sample ended" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[{\"t_ms\":0,\"ms\":10,\"current_ma\":1,"
		  "\"cycles\":100000000},{\"t_ms\":10,\"ms\":10,\"current_ma\":1,\"cycles\":1}]}", "more than 100000000 cycles" },
		{ "{\"format\":\"otacd-power/1\",\"voltage_v\":3.3,\"samples\":[7]}", "samples[0] needs" },
	};
	static const char good[] = "{\"format\":\"otacd-power/1\",\"board\":\"b\",\"voltage_v\":2,\"extra\":1,\"samples\":["
				   "{\"t_ms\":0,\"ms\":100,\"current_ma\":1,\"cycles\":5},"
				   "{\"t_ms\":100,\"ms\":300,\"current_ma\":3,\"cycles\":15},"
				   "{\"t_ms\":500,\"ms\":100,\"current_ma\":0.5}]}";
	json_t *r = NULL, *m;

	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		assert_true(report_parse(&r, "power", cases[i].data, strlen(cases[i].data), "p.json") < 0);
		assert_null(r);
		if (!strstr(ota_error_last(), cases[i].want))
			fail_msg("case %zu: '%s' does not say '%s'", i, ota_error_last(), cases[i].want);
	}
	/* a good one: the figures are computed from the samples (a gap between samples is allowed) */
	assert_int_equal(report_parse(&r, "power", good, strlen(good), "p.json"), 0);
	m = json_object_get(r, "metrics");
	/* charge 100*1 + 300*3 + 100*0.5 = 1050 uC over 500 ms; 2 V; 20 cycles */
	assert_true(json_real_value(json_object_get(m, "avg_current_ma")) == 2.1);
	assert_true(json_real_value(json_object_get(m, "sleep_current_ma")) == 0.5);
	assert_true(json_real_value(json_object_get(m, "energy_uj")) == 2100);
	assert_true(json_real_value(json_object_get(m, "cycle_energy_uj")) == 105);
	assert_int_equal(json_integer_value(json_object_get(m, "cycles")), 20);
	assert_string_equal(fw_jstr(r, "board"), "b");
	assert_int_equal(json_array_size(json_object_get(r, "samples")), 3);
	json_decref(r);
}

/* ---- the gate, without a daemon ------------------------------------------ */

static json_t *power_body(const char *board, double avg, double floor, double cycle)
{
	return json_pack("{ss ss s{sf sf sf}}", "format", "power", "board", board, "metrics", "avg_current_ma", avg,
			 "sleep_current_ma", floor, "cycle_energy_uj", cycle);
}

/* The hil verdict over one power report (and a passing JUnit one). */
static int judge(const char *extra_json, json_t *body, json_t *baseline, const char *failure, char **msg)
{
	json_t *extra = json_loads(extra_json, 0, NULL), *reps, *spec;
	static const char junit[] = "<testsuite name=\"hil\"><testcase classname=\"hil.b\" name=\"boots\"/></testsuite>";
	json_t *jbody = NULL;
	struct job_result r = { 0, failure, failure ? "job timed out after 2m" : NULL };
	struct verdict_input in;
	int v;

	assert_non_null(extra);
	assert_int_equal(report_parse(&jbody, "junit", junit, strlen(junit), "hil.xml"), 0);
	reps = json_pack("[{ss ss so}]", "format", "junit", "name", "hil.xml", "body", jbody);
	if (body)
		json_array_append_new(reps, json_pack("{ss ss so}", "format", "power", "name", "power.json", "body", body));
	spec = json_pack("{ss ss so}", "stage", "hil", "kind", "hil", "extra", extra);
	in = (struct verdict_input){ reps, baseline, baseline ? 12 : 0 };
	*msg = NULL;
	v = stage_kind_hil.verdict(spec, &r, &in, msg);
	json_decref(spec);
	json_decref(reps);
	return v;
}

static void power_gate_judges_limits_and_the_baseline_of_the_same_board(void **state)
{
	static const char limits[] = "{\"reports\":{\"power\":\"p.json\"},\"baseline\":\"main\",\"power\":{"
				     "\"avg_current_ma\":1.5,\"sleep_current_ma\":1.2,\"cycle_energy_uj\":100,"
				     "\"max_increase_percent\":25}}";
	json_t *base = json_pack("[o o]", power_body("an386", 5, 5, 50), power_body("an385", 0.9, 0.8, 60));
	char *msg;

	(void)state;
	/* inside the limits and within 25 % of the same board's baseline (not an386's) */
	assert_int_equal(judge(limits, power_body("an385", 1.1, 0.9, 70), base, NULL, &msg), 0);
	assert_null(msg);
	/* inside the limits, but 33 % above the baseline's average current */
	assert_int_equal(judge(limits, power_body("an385", 1.2, 0.9, 70), base, NULL, &msg), 1);
	assert_non_null(strstr(msg, "power (an385): average current 1.2 mA, 33% above the baseline's 0.9 mA (run 12, at most +25%)"));
	assert_null(strstr(msg, "sleep current"));
	free(msg);
	/* over every limit: each figure named with its limit */
	assert_int_equal(judge(limits, power_body("an385", 6.05, 6.03, 403.4), NULL, NULL, &msg), 1);
	assert_non_null(strstr(msg, "power (an385): average current 6.05 mA (limit 1.5 mA); sleep current 6.03 mA"
				    " (limit 1.2 mA); energy per measurement cycle 403.4 uJ (limit 100 uJ)"));
	free(msg);
	/* no baseline run: the limits alone, and the message says so */
	assert_int_equal(judge(limits, power_body("an385", 1.4, 0.9, 70), NULL, NULL, &msg), 0);
	assert_non_null(strstr(msg, "no passed run on main to compare power with"));
	free(msg);
	/* limits but no power report: the stage fails */
	assert_int_equal(judge(limits, NULL, NULL, NULL, &msg), 1);
	assert_non_null(strstr(msg, "power: no power report was recorded"));
	free(msg);
	/* a report without cycles cannot give energy per cycle */
	assert_int_equal(judge(limits, json_pack("{ss s{sf sf}}", "format", "power", "metrics", "avg_current_ma", 1.0,
					       "sleep_current_ma", 0.9), NULL, NULL, &msg), 1);
	assert_non_null(strstr(msg, "no energy per measurement cycle in the report (no measurement cycle was counted)"));
	free(msg);
	/* after a timeout the job's own reason stays: the power figures say nothing */
	assert_int_equal(judge(limits, power_body("an385", 6.05, 6.03, 403.4), NULL, "timeout", &msg), 1);
	assert_null(msg);
	/* a stage without power: is not judged on power */
	assert_int_equal(judge("{\"reports\":{\"power\":\"p.json\"}}", power_body("an385", 60, 60, 4000), NULL, NULL, &msg),
			 0);
	assert_null(msg);
	json_decref(base);
}

static void power_keys_are_validated(void **state)
{
	static const struct {
		const char *stage, *want;
	} cases[] = {
		{ "power: 3, reports: {power: p.json}", "'power' must be a mapping of limits" },
		{ "power: {avg_current: 1}, reports: {power: p.json}", "power.avg_current is not a limit" },
		{ "power: {avg_current_ma: 0}, reports: {power: p.json}", "power.avg_current_ma must be a number above 0" },
		{ "power: {avg_current_ma: x}, reports: {power: p.json}", "power.avg_current_ma must be a number above 0" },
		{ "power: {max_increase_percent: 10}, reports: {power: p.json}", "add 'baseline: main'" },
		{ "power: {avg_current_ma: 2}, reports: {junit: h.xml}", "'power' limits need a power report" },
		{ "baseline: [main], reports: {junit: h.xml}", "'baseline' must be a branch name" },
		{ "reports: {powr: p.json}", "unknown report format 'powr' (hil stages read junit, power)" },
	};
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		char *yaml = xasprintf("name: p\nstages:\n  - { name: b, steps: [make] }\n"
				       "  - { name: rig, kind: hil, needs: [b], steps: [run], %s }\n", cases[i].stage);
		struct pipeline *p = NULL;
		struct pl_diags d;
		struct buf msg = BUF_INIT;

		pl_diags_init(&d, "p.yml");
		assert_int_equal(pipeline_parse(&p, "p.yml", yaml, strlen(yaml), &d), OTA_EINVAL);
		pl_diags_format(&d, &msg);
		if (!strstr(buf_cstr(&msg), cases[i].want))
			fail_msg("case %zu: '%s' does not say '%s'", i, buf_cstr(&msg), cases[i].want);
		pl_diags_release(&d);
		buf_release(&msg);
		free(yaml);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hostile_power_reports_are_refused),
		cmocka_unit_test(power_gate_judges_limits_and_the_baseline_of_the_same_board),
		cmocka_unit_test(power_keys_are_validated),
		cmocka_unit_test(sensor_node_passes_protocol_conformance_and_power_on_both_rigs),
		cmocka_unit_test(firmware_that_stops_sleeping_fails_the_power_gate),
		cmocka_unit_test(firmware_that_trusts_a_bad_crc_fails_the_conformance_suite),
	};
	cmocka_set_test_filter(getenv("HILPOWER_ONLY"));
	return cmocka_run_group_tests(tests, setup, teardown);
}
