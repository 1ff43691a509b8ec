/*
 * test_pipeline.c - the pipeline file: parsing, validation, expansion.
 *
 * Good pipelines are parsed and every field of the model is checked, so a
 * key that silently stops being read fails here.  Malformed pipelines are
 * a table - YAML text and the exact "file:line:col: message" expected -
 * and each row runs as its own named test, so a failure says which rule
 * broke.  Then matrix expansion into jobs (JSON), cycle detection, branch
 * and tag filters, durations, and the fixture files under
 * tests/pipelines/{good,bad}/ and pipelines/ (found through $OTACD_SRC,
 * default the current directory).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/pipeline/pipeline.h"
#include "../stages/stage.h"
#include "devharness.h"

#define FILE_NAME "p.yml"
#define HEAD "name: p\nstages:\n"

/* ---- helpers ------------------------------------------------------------ */

static struct pipeline *parse_ok(const char *yaml)
{
	struct pipeline *p = NULL;
	struct pl_diags d;
	struct buf msg = BUF_INIT;
	int rc;

	pl_diags_init(&d, FILE_NAME);
	rc = pipeline_parse(&p, FILE_NAME, yaml, strlen(yaml), &d);

	if (rc != 0) {
		pl_diags_format(&d, &msg);
		print_error("expected the pipeline to parse, got:\n%s", buf_cstr(&msg));
		buf_release(&msg);
	}
	assert_int_equal(rc, 0);
	assert_non_null(p);
	assert_int_equal(d.n, 0);
	pl_diags_release(&d);
	return p;
}

/* All diagnostics, formatted; asserts that parsing failed. */
static char *parse_bad_len(const char *yaml, size_t len)
{
	struct pipeline *p = (struct pipeline *)1;
	struct pl_diags d;
	struct buf msg = BUF_INIT;
	int rc;

	pl_diags_init(&d, FILE_NAME);
	rc = pipeline_parse(&p, FILE_NAME, yaml, len, &d);

	assert_int_equal(rc, OTA_EINVAL);
	assert_null(p);
	assert_true(d.n > 0);
	pl_diags_format(&d, &msg);
	pl_diags_release(&d);
	return buf_detach(&msg);
}

static char *parse_bad(const char *yaml)
{
	return parse_bad_len(yaml, strlen(yaml));
}

static void assert_contains(const char *haystack, const char *needle)
{
	if (!strstr(haystack, needle)) {
		print_error("expected:\n  %s\nin:\n%s", needle, haystack);
		fail();
	}
}

/* ---- good pipelines round-trip into the model ------------------------- */

static const char full_pipeline[] =
	"name: sensor-node\n"
	"on: { push: { branches: [main, \"release/*\"], tags: [\"v*\"] } }\n"
	"env: { CC: arm-none-eabi-gcc, LEVEL: 2 }\n"
	"concurrency: sensor-release\n"
	"stages:\n"
	"  - name: build\n"                                          /* 6 */
	"    matrix: { board: [mps2-an385, mps2-an386] }\n"
	"    agent: { labels: [arm-gcc] }\n"
	"    steps:\n"
	"      - run: make BOARD=${{ matrix.board }}\n"              /* 10 */
	"      - name: size\n"
	"        run: arm-none-eabi-size build/app.elf\n"
	"    env: { LEVEL: 3, EMPTY: }\n"
	"    secrets: [SIGN_KEY, API_TOKEN]\n"
	"    timeout: 20m\n"
	"    retry: { count: 2, on: [script, timeout], infra: 3 }\n"
	"    artifacts:\n"
	"      - build/log.txt\n"
	"      - path: \"build/${{ matrix.board }}/app.bin\"\n"
	"        name: \"app-${{ matrix.board }}.bin\"\n"
	"        type: application\n"
	"        hardware: \"${{ matrix.board }}\"\n"
	"        optional: true\n"
	"  - name: unit-tests\n"                                     /* 24 */
	"    kind: command\n"
	"    needs: build\n"
	"    when: { branches: [main] }\n"
	"    steps: [make test]\n"
	"    timeout: 90\n"
	"    retry: 1\n";

static void full_pipeline_round_trips_into_the_model(void **state)
{
	struct pipeline *p = parse_ok(full_pipeline);
	const struct pl_stage *b, *t;

	assert_string_equal(p->file, FILE_NAME);
	assert_string_equal(p->name, "sensor-node");
	assert_true(p->on_push.set);
	assert_int_equal(p->on_push.branches.n, 2);
	assert_string_equal(p->on_push.branches.v[0], "main");
	assert_string_equal(p->on_push.branches.v[1], "release/*");
	assert_int_equal(p->on_push.tags.n, 1);
	assert_string_equal(p->on_push.tags.v[0], "v*");
	assert_int_equal(p->env.n, 2);
	assert_string_equal(p->env.v[0].key, "CC");
	assert_string_equal(p->env.v[0].value, "arm-none-eabi-gcc");
	assert_string_equal(p->env.v[1].key, "LEVEL");
	assert_string_equal(p->env.v[1].value, "2");
	assert_int_equal(p->env.v[1].pos.line, 3);
	assert_string_equal(p->concurrency, "sensor-release");
	assert_int_equal(p->nstages, 2);

	b = &p->stages[0];
	assert_string_equal(b->name, "build");
	assert_string_equal(b->kind, "command");
	assert_ptr_equal(b->impl, stage_kind_find("command", NULL));
	assert_int_equal(b->pos.line, 6);
	assert_int_equal(b->pos.col, 5);
	assert_int_equal(b->needs.n, 0);
	assert_int_equal(b->nmatrix, 1);
	assert_string_equal(b->matrix[0].name, "board");
	assert_int_equal(b->matrix[0].nvalues, 2);
	assert_string_equal(b->matrix[0].values[0], "mps2-an385");
	assert_string_equal(b->matrix[0].values[1], "mps2-an386");
	assert_false(b->when.set);
	assert_int_equal(b->nsteps, 2);
	assert_null(b->steps[0].name);
	assert_string_equal(b->steps[0].run, "make BOARD=${{ matrix.board }}");
	assert_int_equal(b->steps[0].pos.line, 10);
	assert_int_equal(b->steps[0].pos.col, 9);
	assert_string_equal(b->steps[1].name, "size");
	assert_string_equal(b->steps[1].run, "arm-none-eabi-size build/app.elf");
	assert_int_equal(b->env.n, 2);
	assert_string_equal(b->env.v[0].key, "LEVEL");
	assert_string_equal(b->env.v[0].value, "3");
	assert_string_equal(b->env.v[1].key, "EMPTY");
	assert_string_equal(b->env.v[1].value, "");
	assert_int_equal(b->secrets.n, 2);
	assert_string_equal(b->secrets.v[0], "SIGN_KEY");
	assert_string_equal(b->secrets.v[1], "API_TOKEN");
	assert_int_equal(b->labels.n, 1);
	assert_string_equal(b->labels.v[0], "arm-gcc");
	assert_int_equal(b->timeout_ms, 20 * 60 * 1000);
	assert_int_equal(b->retry.count, 2);
	assert_int_equal(b->retry.on, PL_RETRY_SCRIPT | PL_RETRY_TIMEOUT);
	assert_int_equal(b->retry.infra, 3);
	assert_int_equal(b->nartifacts, 2);
	assert_string_equal(b->artifacts[0].path, "build/log.txt");
	assert_null(b->artifacts[0].name);
	assert_null(b->artifacts[0].type);
	assert_null(b->artifacts[0].hardware);
	assert_false(b->artifacts[0].optional);
	assert_string_equal(b->artifacts[1].path, "build/${{ matrix.board }}/app.bin");
	assert_string_equal(b->artifacts[1].name, "app-${{ matrix.board }}.bin");
	assert_string_equal(b->artifacts[1].type, "application");
	assert_string_equal(b->artifacts[1].hardware, "${{ matrix.board }}");
	assert_true(b->artifacts[1].optional);
	assert_null(b->extra);

	t = &p->stages[1];
	assert_string_equal(t->name, "unit-tests");
	assert_int_equal(t->pos.line, 24);
	assert_int_equal(t->needs.n, 1);
	assert_string_equal(t->needs.v[0], "build");
	assert_int_equal(t->needs_pos.line, 26);
	assert_int_equal(t->needs_pos.col, 12);
	assert_true(t->when.set);
	assert_int_equal(t->when.branches.n, 1);
	assert_int_equal(t->when.tags.n, 0);
	assert_int_equal(t->nsteps, 1);
	assert_string_equal(t->steps[0].run, "make test");
	assert_int_equal(t->timeout_ms, 90 * 1000);
	assert_int_equal(t->retry.count, 1);
	assert_int_equal(t->retry.on, PL_RETRY_SCRIPT | PL_RETRY_TIMEOUT | PL_RETRY_INFRA);
	assert_int_equal(t->retry.infra, 2);

	assert_int_equal(pipeline_stage_index(p, "unit-tests"), 1);
	assert_int_equal(pipeline_stage_index(p, "nope"), -1);
	pipeline_free(p);
}

static void minimal_stage_gets_documented_defaults(void **state)
{
	struct pipeline *p = parse_ok(HEAD "  - name: a\n    steps: [true]\n");
	const struct pl_stage *st = &p->stages[0];

	assert_false(p->on_push.set);
	assert_null(p->concurrency);
	assert_int_equal(p->env.n, 0);
	assert_string_equal(st->kind, "command");
	assert_int_equal(st->timeout_ms, 0);
	assert_int_equal(st->retry.count, 0);
	assert_int_equal(st->retry.on, PL_RETRY_SCRIPT | PL_RETRY_TIMEOUT | PL_RETRY_INFRA);
	assert_int_equal(st->retry.infra, 2);
	assert_int_equal(st->nmatrix, 0);
	assert_int_equal(st->nartifacts, 0);
	assert_int_equal(st->labels.n, 0);
	assert_string_equal(st->steps[0].run, "true");
	pipeline_free(p);
}

static void anchors_aliases_and_merge_keys_are_resolved(void **state)
{
	struct pipeline *p = parse_ok(
		"name: p\n"
		".defaults: &defaults\n"
		"  agent: { labels: [linux, x86] }\n"
		"  timeout: 5m\n"
		"  steps: [make]\n"
		"stages:\n"
		"  - name: a\n"
		"    <<: *defaults\n"
		"  - name: b\n"
		"    <<: *defaults\n"
		"    timeout: 7m\n"
		"    steps: &s [make check]\n"
		"  - { name: c, steps: *s }\n");

	assert_int_equal(p->nstages, 3);
	assert_int_equal(p->stages[0].labels.n, 2);
	assert_string_equal(p->stages[0].labels.v[1], "x86");
	assert_int_equal(p->stages[0].timeout_ms, 5 * 60000);
	assert_string_equal(p->stages[0].steps[0].run, "make");
	assert_int_equal(p->stages[1].timeout_ms, 7 * 60000);   /* own key wins */
	assert_string_equal(p->stages[1].steps[0].run, "make check");
	assert_string_equal(p->stages[2].steps[0].run, "make check");
	pipeline_free(p);
}

static void shorthand_forms_mean_their_long_forms(void **state)
{
	struct pipeline *p = parse_ok(
		"name: p\n"
		"on: push\n"
		"stages:\n"
		"  - name: a\n"
		"    steps: [make]\n"
		"    agent: { labels: linux }\n"
		"    artifacts: [out/a.bin]\n"
		"    retry: 3\n"
		"  - name: b\n"
		"    needs: a\n"
		"    when: { tags: \"v*\" }\n"
		"    steps:\n"
		"      - |\n"
		"        echo one\n"
		"        echo two\n"
		"    retry: { on: infra }\n");

	assert_false(p->on_push.set);
	assert_int_equal(p->stages[0].labels.n, 1);
	assert_string_equal(p->stages[0].artifacts[0].path, "out/a.bin");
	assert_int_equal(p->stages[0].retry.count, 3);
	assert_int_equal(p->stages[1].needs.n, 1);
	assert_int_equal(p->stages[1].when.tags.n, 1);
	assert_int_equal(p->stages[1].when.branches.n, 0);
	assert_string_equal(p->stages[1].steps[0].run, "echo one\necho two\n");
	assert_int_equal(p->stages[1].retry.on, PL_RETRY_INFRA);
	assert_int_equal(p->stages[1].retry.count, 0);
	pipeline_free(p);
}

static void on_push_without_filters_runs_on_every_push(void **state)
{
	struct pipeline *p = parse_ok("name: p\non: { push: }\n" "stages: [ { name: a, steps: [x] } ]\n");
	assert_false(p->on_push.set);
	assert_true(pipeline_filter_match(&p->on_push, "refs/tags/anything"));
	pipeline_free(p);
}

static void only_the_first_yaml_document_is_read(void **state)
{
	struct pipeline *p = parse_ok(HEAD "  - { name: a, steps: [x] }\n---\nthis: is ignored\n");
	assert_int_equal(p->nstages, 1);
	pipeline_free(p);
}

static void top_level_keys_starting_with_a_dot_are_ignored(void **state)
{
	struct pipeline *p = parse_ok("name: p\n.templates: { anything: [1, 2] }\n"
				      "stages: [ { name: a, steps: [x] } ]\n");
	pipeline_free(p);
}

/* ---- malformed pipelines: one named test per row ---------------------- */

struct bad_case {
	const char *name;
	const char *yaml;
	const char *expect;   /* a whole "file:line:col: message" line */
};

static const struct bad_case bad_cases[] = {
	/* YAML itself */
	{ "yaml_syntax_error_reports_the_parsers_position",
	  "name: p\nstages:\n  - name: \"a\n",
	  "p.yml:4:1: YAML syntax error: found unexpected end of stream (while scanning a quoted scalar at line 3, column 11)" },
	{ "yaml_bad_indentation_is_a_syntax_error",
	  "name: p\nstages:\n  - name: a\n   steps: [x]\n",
	  "p.yml:4:4: YAML syntax error: did not find expected '-' indicator (while parsing a block collection at line 3, column 3)" },
	{ "yaml_tab_indentation_is_a_syntax_error",
	  "name: p\nstages:\n\t- name: a\n",
	  "p.yml:3:1: YAML syntax error: found character that cannot start any token (while scanning for the next token at line 3, column 1)" },
	{ "invalid_utf8_is_reported_at_its_byte",
	  "name: p\nstages: [\xff]\n",
	  "p.yml:2:10: YAML syntax error: invalid leading UTF-8 octet (byte 0xff)" },
	{ "empty_file_is_an_error", "", "p.yml:1:1: file is empty" },
	{ "comment_only_file_is_empty", "# nothing here\n", "p.yml:1:1: file is empty" },
	{ "top_level_list_is_not_a_pipeline", "- a\n",
	  "p.yml:1:1: a pipeline must be a mapping with 'name' and 'stages', got a list" },

	/* top level */
	{ "unknown_top_level_key_suggests_the_close_one", "name: p\nstges: []\n",
	  "p.yml:2:1: unknown key 'stges' at the top level (did you mean 'stages'?)" },
	{ "missing_name_is_reported_at_the_top", "stages:\n  - { name: a, steps: [x] }\n",
	  "p.yml:1:1: missing required key 'name' at the top level" },
	{ "missing_stages_is_reported_at_the_top", "name: p\n",
	  "p.yml:1:1: missing required key 'stages' at the top level" },
	{ "name_must_be_a_string", "name: [a]\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:1:7: 'name' must be a string, got a list" },
	{ "name_must_not_be_null", "name:\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:1:6: 'name' must be a string, got nothing" },
	{ "stages_must_not_be_empty", "name: p\nstages: []\n",
	  "p.yml:2:9: 'stages' must list at least one stage" },
	{ "stages_must_be_a_list", "name: p\nstages: { a: 1 }\n",
	  "p.yml:2:9: 'stages' must be a list of stages, got a mapping" },
	{ "concurrency_must_be_a_string", "name: p\nconcurrency: [a]\n" "stages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:14: 'concurrency' must be a string, got a list" },
	{ "gate_without_condition_is_refused", "name: p\ngates: { g: { metric: crash_rate } }\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:13: gate 'g': needs one of max, min, max_increase (or baseline: previous)" },
	{ "gate_must_be_a_mapping", "name: p\ngates: { g: 3 }\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:13: gate 'g' must be a mapping (metric, max/min ...)" },
	{ "version_key_is_reserved", "version: 2\nname: p\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:1:1: key 'version' is reserved for future pipeline format versions" },
	{ "duplicate_top_level_key_names_the_first", "name: p\nname: q\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:1: duplicate key 'name' (first at line 1)" },
	{ "on_accepts_only_push", "name: p\non: { pull_request: {} }\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:7: unknown key 'pull_request' in 'on' (expected 'push')" },
	{ "on_push_unknown_key_suggests_tags", "name: p\non: { push: { tag: [v1] } }\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:15: unknown key 'tag' in 'on.push' (did you mean 'tags'?)" },
	{ "on_push_glob_with_unclosed_bracket_is_invalid",
	  "name: p\non: { push: { branches: [\"release/[0-9\"] } }\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:26: invalid glob 'release/[0-9': '[' is never closed by ']'" },
	{ "pipeline_env_cannot_use_matrix_values",
	  "name: p\nenv: { A: \"${{ matrix.x }}\" }\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:11: '${{ matrix.x }}' can only be used inside a stage" },
	{ "keys_must_be_strings", "name: p\n[a]: 1\nstages: [ { name: a, steps: [x] } ]\n",
	  "p.yml:2:1: keys must be strings, got a list" },
	{ "merge_key_must_merge_a_mapping", HEAD "  - name: a\n    <<: 1\n    steps: [x]\n",
	  "p.yml:4:9: a merge key ('<<') must be a mapping or a list of mappings, got '1'" },

	/* stages */
	{ "unknown_stage_key_suggests_the_close_one", HEAD "  - name: build\n    stpes: [x]\n",
	  "p.yml:4:5: unknown key 'stpes' in stage 'build' (did you mean 'steps'?)" },
	{ "stage_must_be_a_mapping", HEAD "  - build\n",
	  "p.yml:3:5: each stage must be a mapping with 'name' and 'steps', got 'build'" },
	{ "stage_without_name_is_named_by_position", HEAD "  - steps: [x]\n",
	  "p.yml:3:5: stage 1 has no 'name'" },
	{ "stage_name_with_spaces_is_invalid", HEAD "  - name: my build\n    steps: [x]\n",
	  "p.yml:3:11: stage name 'my build' may only contain letters, digits, '_', '.' and '-'" },
	{ "duplicate_stage_name_points_at_the_first", HEAD "  - { name: a, steps: [x] }\n  - { name: a, steps: [y] }\n",
	  "p.yml:4:13: duplicate stage name 'a' (first defined at line 3)" },
	{ "duplicate_key_in_a_stage_names_the_first", HEAD "  - name: a\n    steps: [x]\n    steps: [y]\n",
	  "p.yml:5:5: duplicate key 'steps' (first at line 4)" },
	{ "unknown_kind_suggests_a_close_kind", HEAD "  - { name: a, kind: biuld, steps: [x] }\n",
	  "p.yml:3:22: unknown stage kind 'biuld' (did you mean 'build'?)" },
	{ "unknown_kind_far_from_any_lists_the_available_ones", HEAD "  - { name: a, kind: xyzzy, steps: [x] }\n",
	  "p.yml:3:22: unknown stage kind 'xyzzy' (available: command, build, test, analysis, hil, release, soak, rollout)" },
	{ "test_kind_needs_a_junit_report", HEAD "  - { name: t, kind: test, steps: [x] }\n",
	  "p.yml:3:5: test stage 't' needs reports: {junit: PATH}" },
	{ "command_stage_needs_steps", HEAD "  - name: a\n",
	  "p.yml:3:5: stage 'a' has no 'steps' (kind 'command' runs at least one)" },
	{ "steps_must_not_be_empty", HEAD "  - name: a\n    steps: []\n",
	  "p.yml:4:12: 'steps' must list at least one step" },
	{ "step_without_run_is_reported_at_the_step", HEAD "  - name: a\n    steps:\n      - name: compile\n",
	  "p.yml:5:9: step 1 of stage 'a' has no 'run'" },
	{ "step_must_be_a_command_or_mapping", HEAD "  - name: a\n    steps: [[make]]\n",
	  "p.yml:4:13: each step must be a command or a mapping with 'run', got a list" },
	{ "step_unknown_key_suggests_run", HEAD "  - name: a\n    steps: [ { rnu: make } ]\n",
	  "p.yml:4:16: unknown key 'rnu' in step 1 of stage 'a' (did you mean 'run'?)" },
	{ "empty_run_is_rejected", HEAD "  - name: a\n    steps: [ { run: \"\" } ]\n",
	  "p.yml:4:21: 'run' must not be empty" },
	{ "nul_in_a_string_is_rejected", HEAD "  - name: a\n    steps: [ \"a\\0b\" ]\n",
	  "p.yml:4:14: 'run' must not contain NUL characters" },

	/* needs and cycles */
	{ "needs_unknown_stage_suggests_the_close_one",
	  HEAD "  - { name: build, steps: [x] }\n  - { name: test, needs: [biuld], steps: [x] }\n",
	  "p.yml:4:27: stage 'test' needs 'biuld', which is not a stage in this pipeline (did you mean 'build'?)" },
	{ "needs_itself_is_rejected", HEAD "  - { name: a, needs: a, steps: [x] }\n",
	  "p.yml:3:23: stage 'a' needs itself" },
	{ "needs_listing_a_stage_twice_is_rejected",
	  HEAD "  - { name: a, steps: [x] }\n  - { name: b, needs: [a, a], steps: [x] }\n",
	  "p.yml:4:27: 'needs' of stage 'b' lists 'a' twice" },
	{ "needs_must_be_a_list_of_names", HEAD "  - { name: a, needs: { b: 1 }, steps: [x] }\n",
	  "p.yml:3:23: 'needs' must be a list of stage names, got a mapping" },
	{ "two_stage_cycle_is_reported_once",
	  HEAD "  - { name: a, needs: b, steps: [x] }\n  - { name: b, needs: a, steps: [x] }\n",
	  "p.yml:3:5: cycle in needs: a -> b -> a" },

	/* matrix and expressions */
	{ "matrix_must_be_a_mapping", HEAD "  - { name: a, matrix: [x], steps: [x] }\n",
	  "p.yml:3:24: 'matrix' must be a mapping, got a list" },
	{ "matrix_axis_must_have_values", HEAD "  - { name: a, matrix: { board: [] }, steps: [x] }\n",
	  "p.yml:3:33: 'matrix.board' must be a non-empty list of values, got a list" },
	{ "matrix_axis_name_must_be_an_identifier", HEAD "  - { name: a, matrix: { \"my board\": [x] }, steps: [x] }\n",
	  "p.yml:3:26: matrix axis name 'my board' must be letters, digits and '_', not starting with a digit" },
	{ "matrix_value_listed_twice_is_rejected", HEAD "  - { name: a, matrix: { b: [x, x] }, steps: [x] }\n",
	  "p.yml:3:33: matrix axis 'b' lists 'x' twice" },
	{ "matrix_over_256_jobs_is_rejected",
	  HEAD "  - name: a\n    matrix:\n      x: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]\n"
	  "      y: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]\n    steps: [x]\n",
	  "p.yml:5:7: 'matrix' expands to 400 jobs, more than the limit of 256 per stage" },
	{ "expression_naming_an_undefined_axis_suggests_one",
	  HEAD "  - name: a\n    matrix: { board: [x] }\n    steps: [ \"make B=${{ matrix.bord }}\" ]\n",
	  "p.yml:5:14: '${{ matrix.bord }}' refers to axis 'bord', which the matrix of stage 'a' does not define (did you mean 'board'?)" },
	{ "expression_in_a_stage_without_matrix_is_rejected",
	  HEAD "  - name: a\n    agent: { labels: [\"${{ matrix.board }}\"] }\n    steps: [x]\n",
	  "p.yml:4:23: '${{ matrix.board }}' refers to a matrix axis, but stage 'a' has no 'matrix'" },
	{ "unclosed_expression_is_rejected",
	  HEAD "  - name: a\n    matrix: { board: [x] }\n    steps: [ \"make ${{ matrix.board\" ]\n",
	  "p.yml:5:14: '${{' without a closing '}}'" },
	{ "other_expressions_are_unsupported",
	  HEAD "  - name: a\n    env: { SHA: \"${{ github.sha }}\" }\n    steps: [x]\n",
	  "p.yml:4:17: unsupported expression '${{ github.sha }}' (only ${{ matrix.NAME }} is available)" },

	/* other stage keys */
	{ "timeout_must_be_a_duration", HEAD "  - { name: a, timeout: [1], steps: [x] }\n",
	  "p.yml:3:25: 'timeout' must be a duration like 30s or 10m, got a list" },
	{ "timeout_in_words_is_rejected", HEAD "  - { name: a, timeout: 10 minutes, steps: [x] }\n",
	  "p.yml:3:25: 'timeout' must be a duration like 30s or 10m, got '10 minutes'" },
	{ "timeout_of_zero_is_rejected", HEAD "  - { name: a, timeout: 0s, steps: [x] }\n",
	  "p.yml:3:25: 'timeout' must be longer than 0" },
	{ "retry_over_ten_is_rejected", HEAD "  - { name: a, retry: 11, steps: [x] }\n",
	  "p.yml:3:23: 'retry' must be an integer from 0 to 10, got '11'" },
	{ "retry_infra_over_ten_is_rejected", HEAD "  - { name: a, retry: { infra: -1 }, steps: [x] }\n",
	  "p.yml:3:32: 'retry.infra' must be an integer from 0 to 10, got '-1'" },
	{ "retry_unknown_failure_kind_suggests_one", HEAD "  - { name: a, retry: { count: 1, on: [scirpt] }, steps: [x] }\n",
	  "p.yml:3:40: unknown failure kind 'scirpt' in 'retry.on' (did you mean 'script'?)" },
	{ "retry_unknown_key_suggests_count", HEAD "  - { name: a, retry: { cont: 1 }, steps: [x] }\n",
	  "p.yml:3:25: unknown key 'cont' in 'retry' of stage 'a' (did you mean 'count'?)" },
	{ "retry_must_be_a_number_or_mapping", HEAD "  - { name: a, retry: [1], steps: [x] }\n",
	  "p.yml:3:23: 'retry' must be a number of retries or a mapping with 'count', 'on' and 'infra', got a list" },
	{ "absolute_artifact_path_is_rejected", HEAD "  - { name: a, steps: [x], artifacts: [/etc/passwd] }\n",
	  "p.yml:3:40: artifact path '/etc/passwd' must be relative to the workspace, without '..'" },
	{ "artifact_path_with_dotdot_is_rejected", HEAD "  - { name: a, steps: [x], artifacts: [build/../../x] }\n",
	  "p.yml:3:40: artifact path 'build/../../x' must be relative to the workspace, without '..'" },
	{ "artifact_path_leaving_workspace_through_matrix_is_rejected",
	  HEAD "  - name: a\n    matrix: { d: [ok, \"..\"] }\n    steps: [x]\n    artifacts: [\"${{ matrix.d }}/x\"]\n",
	  "p.yml:6:17: artifact path '${{ matrix.d }}/x' becomes '../x' for one of the matrix jobs; it must be relative to the workspace, without '..'" },
	{ "artifact_without_path_is_rejected", HEAD "  - { name: a, steps: [x], artifacts: [ { name: x } ] }\n",
	  "p.yml:3:41: artifact 1 of stage 'a' has no 'path'" },
	{ "artifact_optional_must_be_boolean", HEAD "  - { name: a, steps: [x], artifacts: [ { path: x, optional: maybe } ] }\n",
	  "p.yml:3:62: 'optional' must be true or false, got 'maybe'" },
	{ "secret_name_must_be_an_identifier", HEAD "  - { name: a, steps: [x], secrets: [1KEY] }\n",
	  "p.yml:3:38: secret name '1KEY' must be letters, digits and '_', not starting with a digit" },
	{ "secret_listed_twice_is_rejected", HEAD "  - { name: a, steps: [x], secrets: [K, K] }\n",
	  "p.yml:3:41: secret 'K' is listed twice" },
	{ "env_name_must_be_an_identifier", HEAD "  - { name: a, steps: [x], env: { A-B: 1 } }\n",
	  "p.yml:3:35: environment variable name 'A-B' must be letters, digits and '_', not starting with a digit" },
	{ "env_value_must_be_a_scalar", HEAD "  - { name: a, steps: [x], env: { A: [1] } }\n",
	  "p.yml:3:38: 'env.A' must be a string, got a list" },
	{ "agent_labels_must_be_a_list", HEAD "  - { name: a, steps: [x], agent: { labels: { a: 1 } } }\n",
	  "p.yml:3:45: 'agent.labels' must be a list of labels, got a mapping" },
	{ "agent_unknown_key_suggests_labels", HEAD "  - { name: a, steps: [x], agent: { lables: [x] } }\n",
	  "p.yml:3:37: unknown key 'lables' in 'agent' of stage 'a' (did you mean 'labels'?)" },
	{ "when_glob_with_trailing_backslash_is_invalid", HEAD "  - { name: a, steps: [x], when: { branches: ['main\\'] } }\n",
	  "p.yml:3:47: invalid glob 'main\\': it ends with a lone backslash" },
	{ "when_empty_glob_is_invalid", HEAD "  - { name: a, steps: [x], when: { tags: [\"\"] } }\n",
	  "p.yml:3:43: invalid glob '': the pattern is empty" },
	{ "when_needs_branches_or_tags", HEAD "  - { name: a, steps: [x], when: {} }\n",
	  "p.yml:3:34: 'when' must list 'branches' or 'tags' (or both)" },
	{ "when_unknown_key_suggests_branches", HEAD "  - { name: a, steps: [x], when: { branch: [main] } }\n",
	  "p.yml:3:36: unknown key 'branch' in 'when' of stage 'a' (did you mean 'branches'?)" },
	{ "when_must_be_a_mapping", HEAD "  - { name: a, steps: [x], when: main }\n",
	  "p.yml:3:34: 'when' must be a mapping, got 'main'" },
	{ "agent_must_be_a_mapping", HEAD "  - { name: a, steps: [x], agent: linux }\n",
	  "p.yml:3:35: 'agent' must be a mapping, got 'linux'" },
	{ "secrets_must_be_a_list", HEAD "  - { name: a, steps: [x], secrets: KEY }\n",
	  "p.yml:3:37: 'secrets' must be a list of secret names, got 'KEY'" },
	{ "kind_must_be_a_string", HEAD "  - { name: a, kind: [command], steps: [x] }\n",
	  "p.yml:3:22: 'kind' must be a string, got a list" },
	{ "step_name_must_be_a_string", HEAD "  - { name: a, steps: [ { name: [x], run: make } ] }\n",
	  "p.yml:3:33: 'name' of a step must be a string, got a list" },
	{ "artifact_must_be_a_path_or_mapping", HEAD "  - { name: a, steps: [x], artifacts: [[x]] }\n",
	  "p.yml:3:40: each artifact must be a path or a mapping with 'path', got a list" },
	{ "matrix_value_must_be_a_scalar", HEAD "  - { name: a, matrix: { b: [[1]] }, steps: [x] }\n",
	  "p.yml:3:30: each matrix value must be a string, got a list" },
	{ "third_stage_with_a_taken_name_names_the_first",
	  HEAD "  - { name: a, steps: [x] }\n  - { name: b, steps: [x] }\n  - { name: a, steps: [y] }\n  - { name: a, steps: [z] }\n",
	  "p.yml:6:13: duplicate stage name 'a' (first defined at line 3)" },
	{ "self_merging_mapping_is_reported_not_followed", HEAD "  - &s { <<: *s, name: a, steps: [x] }\n",
	  "p.yml:3:5: merge keys ('<<') nest more than 8 deep (does a mapping merge itself?)" },
};

/* Does some line of text start with prefix? */
static int has_line(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);

	for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, prefix, n))
			return 1;
	return 0;
}

static void assert_line(const char *text, const char *prefix)
{
	if (!has_line(text, prefix)) {
		print_error("expected a line starting with:\n  %s\nin:\n%s", prefix, text);
		fail();
	}
}

static void malformed_pipeline_reports_expected_position(void **state)
{
	const struct bad_case *c = *state;
	char *msgs = parse_bad(c->yaml);

	assert_line(msgs, c->expect);
	free(msgs);
}

/* ---- more about diagnostics -------------------------------------------- */

static void every_problem_is_reported_in_position_order(void **state)
{
	char *msgs = parse_bad(
		"name: p\n"
		"stages:\n"
		"  - { name: b, needs: [a], steps: [x], timeout: soon }\n"
		"  - { name: a, needs: [b], stpes: [x] }\n"
		"colour: blue\n");
	const char *want[] = {
		"p.yml:3:5: cycle in needs: b -> a -> b\n",
		"p.yml:3:49: 'timeout' must be a duration like 30s or 10m, got 'soon'\n",
		"p.yml:4:5: stage 'a' has no 'steps' (kind 'command' runs at least one)\n",
		"p.yml:4:28: unknown key 'stpes' in stage 'a' (did you mean 'steps'?)\n",
		"p.yml:5:1: unknown key 'colour' at the top level\n",
	};
	struct buf all = BUF_INIT;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(want); i++)
		buf_puts(&all, want[i]);
	assert_string_equal(msgs, buf_cstr(&all));
	buf_release(&all);
	free(msgs);
}

static void failed_parse_leaves_first_problem_in_error_slot(void **state)
{
	char *msgs = parse_bad("name: p\nstages: []\nfoo: 1\n");

	assert_string_equal(ota_error_last(), "p.yml:2:9: 'stages' must list at least one stage");
	free(msgs);
}

static void diagnostics_stop_after_the_cap(void **state)
{
	struct buf y = BUF_INIT;
	struct pl_diags d;
	struct pipeline *p;

	buf_puts(&y, "name: p\nstages:\n");
	for (int i = 0; i < 300; i++)
		buf_printf(&y, "  - { name: s%d, stpes: [x] }\n", i);
	pl_diags_init(&d, "big.yml");
	assert_int_equal(pipeline_parse(&p, "big.yml", y.ptr, y.len, &d), OTA_EINVAL);
	assert_int_equal(d.n, PL_MAX_DIAGS + 1);
	assert_int_equal(d.v[PL_MAX_DIAGS].pos.line, 0);
	assert_string_equal(d.v[PL_MAX_DIAGS].msg, "too many problems; only the first 100 are shown");
	pl_diags_release(&d);
	buf_release(&y);
}

static void parse_appends_to_diags_and_accepts_a_zeroed_struct(void **state)
{
	struct pl_diags d = { 0 };
	struct pipeline *p;
	struct buf out = BUF_INIT;
	const char *bad = "name: p\nstages: []\n";

	assert_int_equal(pipeline_parse(&p, "a.yml", bad, strlen(bad), &d), OTA_EINVAL);
	assert_string_equal(d.file, "a.yml");
	assert_int_equal(pipeline_parse(&p, "a.yml", bad, strlen(bad), &d), OTA_EINVAL);
	assert_int_equal(d.n, 2);
	assert_int_equal(pipeline_parse(&p, "a.yml", full_pipeline, strlen(full_pipeline), &d), 0);
	assert_int_equal(d.n, 2);   /* success adds nothing */
	pipeline_free(p);
	pl_diags_format(&d, &out);
	assert_string_equal(buf_cstr(&out), "a.yml:2:9: 'stages' must list at least one stage\n"
					    "a.yml:2:9: 'stages' must list at least one stage\n");
	buf_release(&out);
	pl_diags_release(&d);
}

static void diags_format_prefixes_file_line_and_column(void **state)
{
	struct pl_diags d;
	struct buf out = BUF_INIT;

	pl_diags_init(&d, "x/pipeline.yml");
	pl_diag_add(&d, (struct pl_pos){ 3, 7 }, "bad %s", "thing");
	pl_diag_add(&d, (struct pl_pos){ 0, 0 }, "whole file");
	pl_diags_format(&d, &out);
	assert_string_equal(buf_cstr(&out), "x/pipeline.yml:3:7: bad thing\nx/pipeline.yml: whole file\n");
	buf_release(&out);
	pl_diags_release(&d);
}

static void long_values_are_cut_at_a_utf8_boundary_in_messages(void **state)
{
	/* 39 ASCII bytes, then a 2-byte character straddling the 40-byte cut */
	char *msgs = parse_bad(HEAD "  - { name: a, steps: [x], timeout: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9zzz\" }\n");

	assert_contains(msgs, "got 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'\n");
	free(msgs);
}

static void long_expressions_are_cut_at_a_utf8_boundary_in_messages(void **state)
{
	/* the 40-byte cut falls inside the two-byte \xc9\xbe */
	char *msgs = parse_bad(HEAD "  - { name: a, steps: [\"${{ matrix.boaAAAAAAAAAAAAAAAAAAAAAAAAA\xc9\xbe" "AAAAAAAAAAAAAAAAAAAAA }}\"] }\n");

	assert_contains(msgs, "unsupported expression '${{ matrix.boaAAAAAAAAAAAAAAAAAAAAAAAAA...' (only");
	free(msgs);
}

static void unknown_keys_of_unknown_kinds_are_not_reported(void **state)
{
	char *msgs = parse_bad(HEAD "  - { name: rig, kind: hill, security_counter: 3 }\n");

	assert_null(strstr(msgs, "security_counter"));
	assert_null(strstr(msgs, "has no 'steps'"));
	free(msgs);
}

static void alias_bomb_is_rejected_without_expanding_it(void **state)
{
	struct buf y = BUF_INIT;
	char *msgs;

	/* 1000 stages, each an alias of one stage with 10,000 steps */
	buf_puts(&y, "name: bomb\n.s: &s [x");
	for (int i = 1; i < 10000; i++)
		buf_puts(&y, ",x");
	buf_puts(&y, "]\n.t: &t { name: a, steps: *s }\nstages: [*t");
	for (int i = 1; i < 1000; i++)
		buf_puts(&y, ",*t");
	buf_puts(&y, "]\n");
	msgs = parse_bad(y.ptr);
	assert_string_equal(msgs, "p.yml:2:5: the pipeline is too large: more than 200000 items to check (an alias counts once per use, a templated artifact once per matrix job)\n");
	free(msgs);
	buf_release(&y);
}

static void self_referencing_alias_is_a_type_error_not_a_loop(void **state)
{
	char *msgs = parse_bad("name: p\nstages: &s [ { name: a, steps: *s } ]\n");

	/* the step is the stage mapping itself: a mapping with 'name' and 'steps' */
	assert_string_equal(msgs, "p.yml:2:25: unknown key 'steps' in step 1 of stage 'a' (expected 'name' or 'run')\n");
	free(msgs);
}

static void broken_matrix_does_not_also_report_its_expressions(void **state)
{
	char *msgs = parse_bad(HEAD "  - name: a\n    matrix: { board: [] }\n    steps: [ \"make ${{ matrix.board }}\" ]\n");

	assert_string_equal(msgs, "p.yml:4:22: 'matrix.board' must be a non-empty list of values, got a list\n");
	free(msgs);
}

static void oversized_lists_and_mappings_are_refused_cheaply(void **state)
{
	struct buf y = BUF_INIT;
	char *msgs;

	buf_puts(&y, "name: p\nenv: {");
	for (int i = 0; i < 1001; i++)
		buf_printf(&y, "%sK%d: v", i ? ", " : "", i);
	buf_puts(&y, "}\nstages:\n  - name: a\n    steps: [x]\n    secrets: [");
	for (int i = 0; i < 101; i++)
		buf_printf(&y, "%sS%d", i ? ", " : "", i);
	buf_puts(&y, "]\n    matrix: {");
	for (int i = 0; i < 33; i++)
		buf_printf(&y, "%sa%d: [v]", i ? ", " : "", i);
	buf_puts(&y, "}\n  - name: b\n    steps: [x]\n    matrix: { x: [");
	for (int i = 0; i < 257; i++)
		buf_printf(&y, "%s%d", i ? ", " : "", i);
	buf_puts(&y, "] }\n");
	msgs = parse_bad(y.ptr);
	assert_line(msgs, "p.yml:2:6: a mapping may have at most 1000 keys");
	assert_line(msgs, "p.yml:6:14: a stage may name at most 100 secrets");
	assert_line(msgs, "p.yml:7:13: 'matrix' must have from 1 to 32 axes");
	assert_line(msgs, "p.yml:10:18: 'matrix.x' has 257 values, more than the limit of 256 jobs per stage");
	free(msgs);
	buf_release(&y);
}

static void unknown_needs_in_a_large_pipeline_are_found_quickly(void **state)
{
	struct buf y = BUF_INIT;
	char *msgs;

	/* 1000 stages; the last needs 20,000 names, each unknown or repeated */
	buf_puts(&y, "name: p\nstages:\n");
	for (int i = 0; i < 999; i++)
		buf_printf(&y, "  - { name: s%d, steps: [x] }\n", i);
	buf_puts(&y, "  - name: last\n    steps: [x]\n    needs: [");
	for (int i = 0; i < 20000; i++)
		buf_printf(&y, "%s%s%d", i ? "," : "", i % 2 ? "s" : "t", i % 999);
	buf_puts(&y, "]\n");
	msgs = parse_bad(y.ptr);
	assert_contains(msgs, "stage 'last' needs 't0', which is not a stage in this pipeline (did you mean 's0'?)\n");
	assert_contains(msgs, "too many problems; only the first 100 are shown\n");
	free(msgs);
	buf_release(&y);
}

/* ---- cycles ---------------------------------------------------------------- */

static void three_stage_cycle_names_the_path_from_the_first_stage(void **state)
{
	char *msgs = parse_bad(HEAD
		"  - { name: a, needs: c, steps: [x] }\n"
		"  - { name: b, needs: a, steps: [x] }\n"
		"  - { name: c, needs: b, steps: [x] }\n");

	assert_string_equal(msgs, "p.yml:3:5: cycle in needs: a -> c -> b -> a\n");
	free(msgs);
}

static void separate_cycles_are_each_reported_once(void **state)
{
	char *msgs = parse_bad(HEAD
		"  - { name: a, needs: [b], steps: [x] }\n"
		"  - { name: b, needs: [a, c], steps: [x] }\n"
		"  - { name: c, needs: [b], steps: [x] }\n"      /* same component as a, b */
		"  - { name: x, needs: [y, a], steps: [x] }\n"   /* its own cycle, plus a tail into the first */
		"  - { name: y, needs: [x], steps: [x] }\n");

	assert_string_equal(msgs,
			    "p.yml:3:5: cycle in needs: a -> b -> a\n"
			    "p.yml:6:5: cycle in needs: x -> y -> x\n");
	free(msgs);
}

static void diamond_of_needs_is_not_a_cycle(void **state)
{
	struct pipeline *p = parse_ok(HEAD
		"  - { name: top, steps: [x] }\n"
		"  - { name: left, needs: top, steps: [x] }\n"
		"  - { name: right, needs: top, steps: [x] }\n"
		"  - { name: bottom, needs: [left, right, top], steps: [x] }\n");

	assert_int_equal(p->stages[3].needs.n, 3);
	pipeline_free(p);
}

static void needing_itself_is_not_also_reported_as_a_cycle(void **state)
{
	char *msgs = parse_bad(HEAD "  - { name: a, needs: [a], steps: [x] }\n");

	assert_string_equal(msgs, "p.yml:3:24: stage 'a' needs itself\n");
	free(msgs);
}

/* ---- expansion ------------------------------------------------------------- */

static const char *jget(const json_t *o, const char *path)
{
	/* "a.b.0.c" */
	char *copy = strdup(path), *save = NULL;
	const json_t *cur = o;

	for (char *tok = strtok_r(copy, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save)) {
		if (json_is_array(cur))
			cur = json_array_get(cur, strtoul(tok, NULL, 10));
		else
			cur = json_object_get(cur, tok);
	}
	free(copy);
	assert_non_null(cur);
	return json_is_string(cur) ? json_string_value(cur) : NULL;
}

static void matrix_of_two_by_three_expands_to_six_named_jobs(void **state)
{
	struct pipeline *p = parse_ok(
		"name: p\n"
		"env: { CC: gcc, MODE: default }\n"
		"stages:\n"
		"  - name: build\n"
		"    matrix: { board: [an385, an386], opt: [O0, O1, O2] }\n"
		"    agent: { labels: [arm, \"board=${{ matrix.board }}\"] }\n"
		"    env: { MODE: \"${{matrix.opt}}\", OUT: \"out/${{ matrix.board }}\" }\n"
		"    secrets: [KEY]\n"
		"    steps:\n"
		"      - make BOARD=${{ matrix.board }} OPT=-${{ matrix.opt }}\n"
		"      - { name: \"size ${{ matrix.board }}\", run: size app }\n"
		"    artifacts:\n"
		"      - { path: \"build/${{ matrix.board }}/app.bin\", name: \"${{ matrix.board }}-${{ matrix.opt }}.bin\",\n"
		"          type: application, hardware: \"${{ matrix.board }}\" }\n");
	static const char *const names[] = {
		"build (board=an385, opt=O0)", "build (board=an385, opt=O1)", "build (board=an385, opt=O2)",
		"build (board=an386, opt=O0)", "build (board=an386, opt=O1)", "build (board=an386, opt=O2)",
	};
	json_t *jobs;

	assert_int_equal(pipeline_expand_stage(p, &p->stages[0], &jobs), 0);
	assert_int_equal(json_array_size(jobs), 6);
	for (size_t i = 0; i < 6; i++) {
		json_t *job = json_array_get(jobs, i);
		const char *board = i < 3 ? "an385" : "an386";
		const char *opt = (const char *[]){ "O0", "O1", "O2" }[i % 3];
		char *s;

		assert_string_equal(jget(job, "name"), names[i]);
		assert_string_equal(jget(job, "stage"), "build");
		assert_string_equal(jget(job, "matrix.board"), board);
		assert_string_equal(jget(job, "matrix.opt"), opt);
		s = xasprintf("make BOARD=%s OPT=-%s", board, opt);
		assert_string_equal(jget(job, "steps.0.run"), s);
		assert_string_equal(jget(job, "steps.0.name"), s);   /* unnamed: its command */
		free(s);
		s = xasprintf("size %s", board);
		assert_string_equal(jget(job, "steps.1.name"), s);
		free(s);
		assert_string_equal(jget(job, "steps.1.run"), "size app");
		assert_string_equal(jget(job, "env.CC"), "gcc");
		assert_string_equal(jget(job, "env.MODE"), opt);   /* stage env wins */
		s = xasprintf("out/%s", board);
		assert_string_equal(jget(job, "env.OUT"), s);
		free(s);
		assert_string_equal(jget(job, "secrets.0"), "KEY");
		assert_string_equal(jget(job, "labels.0"), "arm");
		s = xasprintf("board=%s", board);
		assert_string_equal(jget(job, "labels.1"), s);
		free(s);
		s = xasprintf("build/%s/app.bin", board);
		assert_string_equal(jget(job, "artifacts.0.path"), s);
		free(s);
		s = xasprintf("%s-%s.bin", board, opt);
		assert_string_equal(jget(job, "artifacts.0.name"), s);
		free(s);
		assert_string_equal(jget(job, "artifacts.0.type"), "application");
		assert_string_equal(jget(job, "artifacts.0.hardware"), board);
		assert_true(json_is_false(json_object_get(json_array_get(json_object_get(job, "artifacts"), 0), "optional")));
	}
	json_decref(jobs);
	pipeline_free(p);
}

static void stage_without_matrix_expands_to_one_job_with_defaults(void **state)
{
	struct pipeline *p = parse_ok(HEAD "  - name: lint\n    steps: [\"  cppcheck src\\n  echo done\"]\n"
				      "    artifacts: [report.xml]\n");
	json_t *jobs, *job;
	char *dump;

	assert_int_equal(pipeline_expand_stage(p, &p->stages[0], &jobs), 0);
	assert_int_equal(json_array_size(jobs), 1);
	job = json_array_get(jobs, 0);
	dump = json_dumps(job, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(dump,
		"{\"artifacts\":[{\"hardware\":null,\"name\":null,\"optional\":false,\"path\":\"report.xml\",\"type\":null}],"
		"\"env\":{},\"extra\":{},\"kind\":\"command\",\"labels\":[],\"matrix\":{},\"name\":\"lint\","
		"\"retry\":{\"count\":0,\"infra\":2,\"on\":[\"script\",\"timeout\",\"infra\"]},"
		"\"secrets\":[],\"stage\":\"lint\","
		"\"steps\":[{\"name\":\"cppcheck src\",\"run\":\"  cppcheck src\\n  echo done\"}],"
		"\"timeout_ms\":0}");
	free(dump);
	json_decref(jobs);
	pipeline_free(p);
}

static void long_unnamed_step_is_titled_by_its_first_72_bytes(void **state)
{
	struct pipeline *p = parse_ok(HEAD "  - name: a\n    steps: [\"echo 0123456789012345678901234567890123456789012345678901234567890123456789\"]\n");
	json_t *jobs;

	assert_int_equal(pipeline_expand_stage(p, &p->stages[0], &jobs), 0);
	assert_string_equal(jget(json_array_get(jobs, 0), "steps.0.name"),
			    "echo 0123456789012345678901234567890123456789012345678901234567890123456...");
	json_decref(jobs);
	pipeline_free(p);
}

static void matrix_at_the_limit_of_256_jobs_expands(void **state)
{
	struct buf y = BUF_INIT;
	struct pipeline *p;
	json_t *jobs;

	buf_puts(&y, HEAD "  - name: a\n    matrix:\n      x: [");
	for (int i = 0; i < 16; i++)
		buf_printf(&y, "%s%d", i ? ", " : "", i);
	buf_puts(&y, "]\n      y: [");
	for (int i = 0; i < 16; i++)
		buf_printf(&y, "%s%d", i ? ", " : "", i);
	buf_puts(&y, "]\n    steps: [\"echo ${{ matrix.x }}-${{ matrix.y }}\"]\n");
	p = parse_ok(y.ptr);
	assert_int_equal(pipeline_expand_stage(p, &p->stages[0], &jobs), 0);
	assert_int_equal(json_array_size(jobs), 256);
	assert_string_equal(jget(json_array_get(jobs, 17), "steps.0.run"), "echo 1-1");
	assert_string_equal(jget(json_array_get(jobs, 255), "name"), "a (x=15, y=15)");
	json_decref(jobs);
	pipeline_free(p);
	buf_release(&y);
}

static void expansion_of_a_hand_built_stage_with_a_bad_expression_fails(void **state)
{
	struct pl_step step = { NULL, "echo ${{ matrix.nope }}", { 1, 1 } };
	struct pl_stage st;
	json_t *jobs = (json_t *)1;

	memset(&st, 0, sizeof(st));
	st.name = "x";
	st.steps = &step;
	st.nsteps = 1;
	assert_int_equal(pipeline_expand_stage(NULL, &st, &jobs), OTA_EINVAL);
	assert_null(jobs);
	assert_non_null(strstr(ota_error_last(), "matrix.nope"));
}

/* ---- filters --------------------------------------------------------------- */

static void filters_match_short_branch_and_tag_names(void **state)
{
	struct pipeline *p = parse_ok(
		"name: p\n"
		"on: { push: { branches: [main, \"release/*\"], tags: [\"v[0-9]*\"] } }\n"
		"stages:\n"
		"  - { name: a, steps: [x], when: { branches: [main] } }\n"
		"  - { name: b, steps: [x], when: { tags: [\"v*\"] } }\n"
		"  - { name: c, steps: [x] }\n");
	const struct pl_filter *on = &p->on_push, *a = &p->stages[0].when, *b = &p->stages[1].when;

	assert_true(pipeline_filter_match(on, "refs/heads/main"));
	assert_true(pipeline_filter_match(on, "main"));
	assert_true(pipeline_filter_match(on, "refs/heads/release/1.2"));   /* '*' crosses '/' */
	assert_true(pipeline_filter_match(on, "refs/tags/v1.0"));
	assert_false(pipeline_filter_match(on, "refs/tags/vx"));
	assert_false(pipeline_filter_match(on, "refs/heads/mainline"));
	assert_false(pipeline_filter_match(on, "refs/heads/feature/main"));
	assert_false(pipeline_filter_match(on, "refs/pull/1/head"));
	assert_false(pipeline_filter_match(on, ""));
	/* a filter with only branches matches no tag, and the other way round */
	assert_true(pipeline_filter_match(a, "refs/heads/main"));
	assert_false(pipeline_filter_match(a, "refs/tags/main"));
	assert_true(pipeline_filter_match(b, "refs/tags/v2"));
	assert_false(pipeline_filter_match(b, "refs/heads/v2"));
	/* unset filters pass everything */
	assert_true(pipeline_filter_match(&p->stages[2].when, "refs/tags/whatever"));
	assert_true(pipeline_filter_match(&p->stages[2].when, "refs/pull/7/head"));
	assert_true(pipeline_filter_match(NULL, "refs/heads/x"));
	pipeline_free(p);
}

static void escaped_glob_characters_match_literally(void **state)
{
	struct pipeline *p = parse_ok(HEAD "  - { name: a, steps: [x], when: { branches: ['fix\\*', '[]x]'] } }\n");
	const struct pl_filter *f = &p->stages[0].when;

	assert_true(pipeline_filter_match(f, "refs/heads/fix*"));
	assert_false(pipeline_filter_match(f, "refs/heads/fixes"));
	assert_true(pipeline_filter_match(f, "refs/heads/]"));
	pipeline_free(p);
}

/* ---- durations ------------------------------------------------------------- */

static void timeouts_accept_durations_and_plain_seconds(void **state)
{
	static const struct { const char *text; int64_t ms; } cases[] = {
		{ "90", 90000 }, { "30s", 30000 }, { "10m", 600000 }, { "1h30m", 5400000 },
		{ "250ms", 250 }, { "2d", 172800000 }, { "\"45\"", 45000 },
	};

	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		char *y = xasprintf(HEAD "  - { name: a, steps: [x], timeout: %s }\n", cases[i].text);
		struct pipeline *p = parse_ok(y);
		assert_int_equal(p->stages[0].timeout_ms, cases[i].ms);
		pipeline_free(p);
		free(y);
	}
}

static void bad_durations_are_rejected(void **state)
{
	static const char *const bad[] = { "-5", "5x", "m", "1.5h", "true", "\"\"", "99999999999999999999d" };

	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		char *y = xasprintf(HEAD "  - { name: a, steps: [x], timeout: %s }\n", bad[i]);
		char *msgs = parse_bad(y);
		assert_contains(msgs, "p.yml:3:37: 'timeout' must be a duration like 30s or 10m, got ");
		free(msgs);
		free(y);
	}
}

/* ---- stage kinds ----------------------------------------------------------- */

static void registry_knows_available_and_planned_kinds(void **state)
{
	const struct stage_kind *k;
	const char *const *names = stage_kind_names();
	int planned = -1;

	k = stage_kind_find("command", &planned);
	assert_non_null(k);
	assert_int_equal(planned, 0);
	assert_string_equal(k->name, "command");
	assert_true(k->runs_steps);
	assert_null(k->verdict);
	assert_non_null(k->keys);
	assert_null(k->keys[0]);
	k = stage_kind_find("release", &planned);
	assert_non_null(k);
	assert_int_equal(planned, 0);
	assert_false(k->runs_steps);
	assert_non_null(k->run);
	k = stage_kind_find("hil", &planned);
	assert_non_null(k);
	assert_int_equal(planned, 0);
	assert_true(k->runs_steps);
	assert_non_null(k->verdict);
	assert_null(stage_kind_planned_names()[0]);
	k = stage_kind_find("rollout", &planned);
	assert_non_null(k);
	assert_true(k->rollout);
	assert_false(k->runs_steps);
	assert_null(stage_kind_find("nonsense", &planned));
	assert_int_equal(planned, 0);
	assert_null(stage_kind_find("nonsense", NULL));
	assert_string_equal(names[0], "command");
	assert_string_equal(names[1], "build");
	assert_string_equal(names[2], "test");
	assert_string_equal(names[3], "analysis");
	assert_string_equal(names[4], "hil");
	assert_string_equal(names[5], "release");
	assert_string_equal(names[6], "soak");
	assert_string_equal(names[7], "rollout");
	assert_null(names[8]);
	for (const char *const *pl = stage_kind_planned_names(); *pl; pl++)
		assert_null(stage_kind_find(*pl, NULL));
}

/* ---- fixture files ------------------------------------------------------- */

static int parse_file(const char *path, struct pipeline **p, struct pl_diags *d, struct buf *text)
{
	assert_int_equal(ota_read_file(text, path, 1 << 20), 0);
	pl_diags_init(d, path);
	return pipeline_parse(p, path, text->ptr, text->len, d);
}

static void example_pipelines_validate(void **state)
{
	static const char *const files[] = { "pipelines/hello.yml", "pipelines/hello-release.yml",
					     "pipelines/firmware-release.yml" };

	for (size_t i = 0; i < OTA_ARRAY_SIZE(files); i++) {
		char *path = dh_src_path(files[i]);
		struct buf text = BUF_INIT, msg = BUF_INIT;
		struct pipeline *p;
		struct pl_diags d;
		FILE *f = fopen(path, "r");

		if (!f) {
			free(path);
			skip();
		}
		fclose(f);
		if (parse_file(path, &p, &d, &text) != 0) {
			pl_diags_format(&d, &msg);
			print_error("%s", buf_cstr(&msg));
			fail();
		}
		for (size_t s = 0; s < p->nstages; s++) {
			json_t *jobs;
			assert_int_equal(pipeline_expand_stage(p, &p->stages[s], &jobs), 0);
			json_decref(jobs);
		}
		pipeline_free(p);
		pl_diags_release(&d);
		buf_release(&text);
		free(path);
	}
}

/*
 * tests/pipelines/good/NAME.yml must parse; tests/pipelines/bad/NAME.yml
 * must fail, and its first line is "# expect: LINE:COL: message", the
 * start of one of the diagnostics after the file name.
 */
static void fixture_files_parse_or_fail_as_annotated(void **state)
{
	static const char *const dirs[] = { "tests/pipelines/good", "tests/pipelines/bad" };
	int seen = 0;

	for (size_t di = 0; di < 2; di++) {
		char *dir = dh_src_path(dirs[di]);
		DIR *dh = opendir(dir);
		struct dirent *de;

		if (!dh) {
			free(dir);
			continue;
		}
		while ((de = readdir(dh))) {
			size_t len = strlen(de->d_name);
			char *path;
			struct buf text = BUF_INIT, msg = BUF_INIT;
			struct pipeline *p = NULL;
			struct pl_diags d;
			int rc;

			if (len < 5 || strcmp(de->d_name + len - 4, ".yml"))
				continue;
			seen++;
			path = xasprintf("%s/%s", dir, de->d_name);
			rc = parse_file(path, &p, &d, &text);
			pl_diags_format(&d, &msg);
			if (di == 0) {
				if (rc != 0) {
					print_error("%s", buf_cstr(&msg));
					fail();
				}
			} else {
				const char *tag = "# expect: ";
				char *want;

				assert_int_equal(rc, OTA_EINVAL);
				assert_int_equal(strncmp(text.ptr, tag, strlen(tag)), 0);
				want = xasprintf("%s:%.*s", path, (int)strcspn(text.ptr + strlen(tag), "\n"),
						 text.ptr + strlen(tag));
				assert_line(buf_cstr(&msg), want);
				free(want);
			}
			pipeline_free(p);
			pl_diags_release(&d);
			buf_release(&text);
			buf_release(&msg);
			free(path);
		}
		closedir(dh);
		free(dir);
	}
	if (!seen)
		skip();
}

/* ---- main ------------------------------------------------------------------- */

int main(void)
{
	static const struct CMUnitTest fixed[] = {
		cmocka_unit_test(full_pipeline_round_trips_into_the_model),
		cmocka_unit_test(minimal_stage_gets_documented_defaults),
		cmocka_unit_test(anchors_aliases_and_merge_keys_are_resolved),
		cmocka_unit_test(shorthand_forms_mean_their_long_forms),
		cmocka_unit_test(on_push_without_filters_runs_on_every_push),
		cmocka_unit_test(only_the_first_yaml_document_is_read),
		cmocka_unit_test(top_level_keys_starting_with_a_dot_are_ignored),
		cmocka_unit_test(every_problem_is_reported_in_position_order),
		cmocka_unit_test(failed_parse_leaves_first_problem_in_error_slot),
		cmocka_unit_test(diagnostics_stop_after_the_cap),
		cmocka_unit_test(parse_appends_to_diags_and_accepts_a_zeroed_struct),
		cmocka_unit_test(diags_format_prefixes_file_line_and_column),
		cmocka_unit_test(long_values_are_cut_at_a_utf8_boundary_in_messages),
		cmocka_unit_test(long_expressions_are_cut_at_a_utf8_boundary_in_messages),
		cmocka_unit_test(unknown_keys_of_unknown_kinds_are_not_reported),
		cmocka_unit_test(alias_bomb_is_rejected_without_expanding_it),
		cmocka_unit_test(self_referencing_alias_is_a_type_error_not_a_loop),
		cmocka_unit_test(broken_matrix_does_not_also_report_its_expressions),
		cmocka_unit_test(oversized_lists_and_mappings_are_refused_cheaply),
		cmocka_unit_test(unknown_needs_in_a_large_pipeline_are_found_quickly),
		cmocka_unit_test(three_stage_cycle_names_the_path_from_the_first_stage),
		cmocka_unit_test(separate_cycles_are_each_reported_once),
		cmocka_unit_test(diamond_of_needs_is_not_a_cycle),
		cmocka_unit_test(needing_itself_is_not_also_reported_as_a_cycle),
		cmocka_unit_test(matrix_of_two_by_three_expands_to_six_named_jobs),
		cmocka_unit_test(stage_without_matrix_expands_to_one_job_with_defaults),
		cmocka_unit_test(long_unnamed_step_is_titled_by_its_first_72_bytes),
		cmocka_unit_test(matrix_at_the_limit_of_256_jobs_expands),
		cmocka_unit_test(expansion_of_a_hand_built_stage_with_a_bad_expression_fails),
		cmocka_unit_test(filters_match_short_branch_and_tag_names),
		cmocka_unit_test(escaped_glob_characters_match_literally),
		cmocka_unit_test(timeouts_accept_durations_and_plain_seconds),
		cmocka_unit_test(bad_durations_are_rejected),
		cmocka_unit_test(registry_knows_available_and_planned_kinds),
		cmocka_unit_test(example_pipelines_validate),
		cmocka_unit_test(fixture_files_parse_or_fail_as_annotated),
	};
	size_t nfixed = OTA_ARRAY_SIZE(fixed), nbad = OTA_ARRAY_SIZE(bad_cases);
	struct CMUnitTest *tests = xcalloc(nfixed + nbad, sizeof(*tests));
	int rc;

	memcpy(tests, fixed, sizeof(fixed));
	for (size_t i = 0; i < nbad; i++) {
		tests[nfixed + i].name = bad_cases[i].name;
		tests[nfixed + i].test_func = malformed_pipeline_reports_expected_position;
		tests[nfixed + i].initial_state = (void *)&bad_cases[i];
	}
	rc = _cmocka_run_group_tests("pipeline", tests, nfixed + nbad, NULL, NULL);
	free(tests);
	return rc;
}
