/*
 * fuzz_pipeline.c - libFuzzer target for the pipeline parser.
 *
 * Pipelines come from pushed commits and from the API, so the parser sees
 * whatever a user (or an attacker with push access) writes.  Each input is
 * parsed as a pipeline file; on success every stage is expanded into jobs,
 * on failure every diagnostic is formatted.  Besides crashes, leaks and UB
 * (ASan/UBSan), the target aborts when the parser breaks its contract:
 * success with diagnostics, failure without any, or a message that is not
 * valid UTF-8 (the API sends diagnostics as JSON strings).
 *
 *   make fuzz   or   build/fuzz/fuzz_pipeline fuzz/corpus/fuzz_pipeline
 *   (fuzz/fuzz_pipeline.dict holds the schema's keys for -dict=)
 */
#include <stdint.h>
#include <stdlib.h>

#include "../orchestrator/pipeline/pipeline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_utf8(const char *s)
{
	json_t *j = json_string(s);
	if (!j)
		abort();
	json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pipeline *p = NULL;
	struct pl_diags d;
	struct buf out = BUF_INIT;
	int rc;

	if (size > 1 << 16)
		return 0;
	pl_diags_init(&d, "fuzz.yml");
	rc = pipeline_parse(&p, "fuzz.yml", (const char *)data, size, &d);
	if (rc == 0) {
		if (!p || d.n)
			abort();
		for (size_t i = 0; i < p->nstages; i++) {
			json_t *jobs = NULL;
			char *s;

			if (pipeline_expand_stage(p, &p->stages[i], &jobs) != 0)
				abort();   /* a validated stage always expands */
			s = json_dumps(jobs, JSON_COMPACT);
			if (!s)
				abort();
			free(s);
			json_decref(jobs);
			pipeline_filter_match(&p->stages[i].when, "refs/heads/main");
		}
		pipeline_filter_match(&p->on_push, "refs/tags/v1.0");
	} else {
		if (p || d.n == 0 || d.n > PL_MAX_DIAGS + 1)
			abort();
		for (size_t i = 0; i < d.n; i++)
			check_utf8(d.v[i].msg);
		pl_diags_format(&d, &out);
	}
	pipeline_free(p);
	pl_diags_release(&d);
	buf_release(&out);
	return 0;
}
