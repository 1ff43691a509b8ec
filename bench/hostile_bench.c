/*
 * hostile_bench.c - what a hostile document and secret masking cost.
 * Figures are printed, never asserted.
 *
 * Hostile documents (docs/security.md): a 1 MB pipeline of 100,000 nested
 * flow sequences, one of 200,001 scalars, and a JUnit report with 200,000
 * attributes on one element; each is refused, and the bench prints ms per
 * refusal (target: well under 100 ms).  Masking: MB/s of the streaming
 * masker over a 4 MiB log cut in 64 KiB chunks, with 10 secrets (each
 * with its base64 and URL forms), against a plain memcpy of the same bytes.
 *
 * Usage: hostile-bench [R]      (default 5 repetitions)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/mask.h"
#include "../common/util.h"
#include "../orchestrator/pipeline/pipeline.h"
#include "../orchestrator/reports.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void refuse_pipeline(const char *what, const char *text, int reps)
{
	double best = 1e9;
	for (int r = 0; r < reps; r++) {
		struct pipeline *p = NULL;
		struct pl_diags d;
		double t0 = now_ms();
		pl_diags_init(&d, "p.yml");
		int rc = pipeline_parse(&p, "p.yml", text, strlen(text), &d);
		double t = now_ms() - t0;
		if (rc == 0) {
			printf("%s: accepted?!\n", what);
			pipeline_free(p);
		}
		pl_diags_release(&d);
		best = t < best ? t : best;
	}
	printf("%-44s %8.2f ms  (%s)\n", what, best, ota_error_last());
}

int main(int argc, char **argv)
{
	int reps = argc > 1 ? atoi(argv[1]) : 5;
	struct buf b = BUF_INIT;

	if (reps < 1)
		reps = 1;
	buf_puts(&b, "name: p\nstages: ");
	for (int i = 0; i < 100000; i++)
		buf_putc(&b, '[');
	for (int i = 0; i < 100000; i++)
		buf_putc(&b, ']');
	while (b.len < 1000000)
		buf_puts(&b, "\n# padding to one megabyte");
	refuse_pipeline("pipeline: 1 MB, 100,000 levels", b.ptr, reps);
	buf_clear(&b);
	buf_puts(&b, "name: p\nstages: [");
	for (int i = 0; i < 200001; i++)
		buf_puts(&b, "1,");
	buf_puts(&b, "1]\n");
	refuse_pipeline("pipeline: 200,002 scalars", b.ptr, reps);

	buf_clear(&b);
	buf_puts(&b, "<testsuite name=\"s\"><testcase name=\"c\"");
	for (int i = 0; i < 200000; i++)
		buf_printf(&b, " a%d=\"x\"", i);
	buf_puts(&b, "/></testsuite>\n");
	{
		double best = 1e9;
		for (int r = 0; r < reps; r++) {
			json_t *out = NULL;
			double t0 = now_ms(), t;
			if (report_parse(&out, "junit", b.ptr, b.len, "r.xml") == 0)
				json_decref(out);
			t = now_ms() - t0;
			best = t < best ? t : best;
		}
		printf("%-44s %8.2f ms  (%s)\n", "junit: 200,000 attributes on one element", best, ota_error_last());
	}

	{
		const size_t total = 4u << 20, chunk = 64 << 10;
		char *log = xmalloc(total), *copy = xmalloc(total);
		const char *secrets[10];
		struct mask_set *set;
		double tm = 1e9, tc = 1e9;
		uint32_t x = 2463534242u;

		for (size_t i = 0; i < total; i++) {
			x ^= x << 13, x ^= x >> 17, x ^= x << 5;
			log[i] = (x % 61 == 0) ? '\n' : (char)(' ' + x % 95);
		}
		for (int i = 0; i < 10; i++)
			secrets[i] = xasprintf("secret-%d-%08x/+=value", i, (unsigned)(i * 2654435761u));
		set = mask_set_new(secrets, 10);
		for (int r = 0; r < reps; r++) {
			struct mask_stream s;
			struct buf out = BUF_INIT;
			double t0 = now_ms();
			mask_stream_init(&s, set, 0);
			for (size_t off = 0; off < total; off += chunk)
				mask_stream_feed(&s, log + off, chunk, &out);
			mask_stream_flush(&s, &out);
			mask_stream_release(&s);
			buf_release(&out);
			t0 = now_ms() - t0;
			tm = t0 < tm ? t0 : tm;
			t0 = now_ms();
			memcpy(copy, log, total);
			t0 = now_ms() - t0;
			tc = t0 < tc ? t0 : tc;
		}
		printf("%-44s %8.1f MB/s (memcpy %.0f MB/s; %zu patterns)\n", "masking: 4 MiB log, 10 secrets",
		       total / 1e6 / (tm / 1e3), total / 1e6 / (tc / 1e3 + 1e-9), mask_set_count(set));
		mask_set_free(set);
		for (int i = 0; i < 10; i++)
			free((char *)secrets[i]);
		free(log);
		free(copy);
	}
	buf_release(&b);
	return 0;
}
