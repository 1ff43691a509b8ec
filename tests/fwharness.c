/*
 * fwharness.c - shared helpers of the sample firmware's pipeline tests;
 * see fwharness.h.
 */
#include "fwharness.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/evp.h>

#include "devharness.h"
#include "../orchestrator/mcuboot.h"

char *fw_jscpd_path(void)
{
	const char *env = getenv("OTACD_JSCPD");
	if (env && *env)
		return xstrdup(env);
	return xasprintf("%s/.cache/otacd-npm/node_modules/.bin/jscpd", getenv("HOME") ? getenv("HOME") : "/root");
}

int fw_tools_missing(const char *const *tools, size_t n, const char *install, const char *jscpd)
{
	struct buf out = BUF_INIT;
	int missing = 0;
	for (size_t i = 0; i < n && !missing; i++)
		if (h_sh(&out, "command -v %s", tools[i]) != 0) {
			print_message("SKIP: %s is not installed (apt-get install %s)\n", tools[i], install);
			missing = 1;
		}
	if (!missing && jscpd && access(jscpd, X_OK) != 0) {
		print_message("SKIP: jscpd not found at %s (npm install --prefix ~/.cache/otacd-npm jscpd@4.0.5,"
			      " or set OTACD_JSCPD)\n", jscpd);
		missing = 1;
	}
	buf_release(&out);
	return missing;
}

void fw_replace_all(struct buf *b, const char *text, const char *from, const char *to, int *count)
{
	const char *p = text, *q;
	*count = 0;
	while ((q = strstr(p, from))) {
		buf_put(b, p, (size_t)(q - p));
		buf_puts(b, to);
		p = q + strlen(from);
		(*count)++;
	}
	buf_puts(b, p);
}

void fw_copy_step(struct buf *out, const char *text, int stages)
{
	int n;
	fw_replace_all(out, text, "    steps:\n      - run: ", "    steps:\n      - run: cp -R \"$SRC/.\" .\n      - run: ",
		       &n);
	assert_int_equal(n, stages);
}

int64_t fw_trigger_on(struct daemon *d, const char *yaml, const char *ref)
{
	json_t *req = json_pack("{ss ss ss}", "pipeline", yaml, "file", "pipeline.yml", "ref", ref), *ans = NULL;
	long status = h_post(d, "/api/v1/runs", req, &ans);
	int64_t id;
	if (status != 201) {
		char *t = ans ? json_dumps(ans, 0) : NULL;
		fail_msg("trigger answered %ld: %s", status, t ? t : "");
	}
	id = json_integer_value(json_object_get(ans, "id"));
	json_decref(ans);
	json_decref(req);
	return id;
}

const char *fw_jstr(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

void fw_wait_for(struct daemon *d, int64_t id, const char *want, int timeout_ms)
{
	const char *got = h_wait_run(d, id, timeout_ms);
	if (strcmp(got, want)) {
		json_t *run = h_run(d, id), *st, *job;
		size_t i, k;
		json_array_foreach(json_object_get(run, "stages"), i, st)
			json_array_foreach(json_object_get(st, "jobs"), k, job)
				print_error("run %lld: %s %s: %.600s\n", (long long)id, fw_jstr(job, "name"),
					    fw_jstr(job, "state"), fw_jstr(job, "message"));
		json_decref(run);
		fail_msg("run %lld ended %s, expected %s", (long long)id, got, want);
	}
}

void fw_rigs_start(struct daemon *d, pid_t rigs[2])
{
	rigs[0] = h_agent(d, "rig-an385", "hil,board=mps2-an385");
	rigs[1] = h_agent(d, "rig-an386", "hil,board=mps2-an386");
}

void fw_rigs_stop(pid_t rigs[2])
{
	for (int i = 0; i < 2; i++) {
		kill(rigs[i], SIGKILL);
		waitpid(rigs[i], NULL, 0);
	}
}

/* ---- the sample firmware booted in QEMU --------------------------------------- */

void fw_flash_put(const char *path, long off, const void *p, size_t len)
{
	FILE *f = fopen(path, "r+b");
	if (!f) {
		unsigned char *ff = malloc(FW_FLASH_SIZE);
		assert_non_null(ff);
		memset(ff, 0xff, FW_FLASH_SIZE);
		assert_non_null(f = fopen(path, "w+b"));
		assert_int_equal(fwrite(ff, 1, FW_FLASH_SIZE, f), FW_FLASH_SIZE);
		free(ff);
	}
	assert_int_equal(fseek(f, off, SEEK_SET), 0);
	assert_int_equal(fwrite(p, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

void fw_flash_get(const char *path, long off, void *p, size_t len)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, off, SEEK_SET), 0);
	assert_int_equal(fread(p, 1, len, f), len);
	fclose(f);
}

void fw_slot_image(unsigned char *slot, const char *bin_path, uint8_t minor, uint32_t counter, int confirmed)
{
	struct buf bin = BUF_INIT, img = BUF_INIT;
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	struct mcuboot_sign_opts o = { .major = 1, .minor = minor, .has_security_counter = 1,
				       .security_counter = counter, .slot_size = FW_SLOT_SIZE, .confirm = confirmed };

	assert_non_null(k);
	assert_int_equal(ota_read_file(&bin, bin_path, 1 << 20), 0);
	assert_int_equal(mcuboot_sign(&img, bin.ptr, bin.len, k, &o), 0);
	assert_int_equal(img.len, FW_SLOT_SIZE);
	memcpy(slot, img.ptr, img.len);
	if (!confirmed)
		slot[FW_SLOT_SIZE - 32] = 0x01; /* copy_done: MCUboot swapped it in */
	EVP_PKEY_free(k);
	buf_release(&bin);
	buf_release(&img);
}

void fw_release_otacd(struct daemon *d, const char *const *args)
{
	struct buf out = BUF_INIT;
	char *cfg;

	h_init(d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
				    " && openssl pkey -in key.pem -pubout -outform DER -out key.der", d->dir), 0);
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\npoll_interval: 1s\n"
			"products:\n  sensor-node: { max_counter_increase: 5 }\n", d->dir);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(d, args), 0);
	free(cfg);
	buf_release(&out);
}

void fw_rig_boot(struct buf *out, const struct fw_rig *r, const char *input)
{
	const char *dir = r->dir;
	char *hil = dh_src_path("examples/sensor-node/hil");
	char *mem = r->flash ? xasprintf(",memory-backend=fl -object memory-backend-file,id=fl,mem-path=%s,size=16M,share=on",
					 r->flash)
			     : xasprintf("%s", "");
	char *uart1 = r->url ? xasprintf("unix:%s/uart1.sock,server=on,wait=on", dir) : xasprintf("null");
	char *uart2 = r->se_args ? xasprintf("unix:%s/uart2.sock,server=on,wait=on", dir) : xasprintf("null");
	char *bridge = r->url ? xasprintf("python3 %s/bridge.py %s/uart1.sock %s &", hil, dir, r->url) : xasprintf(":;");
	char *se = r->se_args ? xasprintf("python3 %s/se_model.py %s/uart2.sock %s &", hil, dir, r->se_args)
			      : xasprintf(":;");

	buf_clear(out);
	assert_int_equal(h_sh(out, "cd %s && rm -f uart0.log qemu.pid && touch uart0.log &&"
				   " w() { for i in $(seq 3000); do [ \"$(grep -c \"$2\" uart0.log)\" -ge \"$1\" ] && return 0;"
				   " sleep 0.1; done; echo \"rig: no '$2' (x$1) on UART0 in 300 s\" >&2; return 1; };"
				   " o_until() { for i in $(seq 300); do printf 'o\\n'; sleep 1; grep -q \"$1\" uart0.log && return 0;"
				   " done; echo \"rig: no '$1' after 'o' in 300 s\" >&2; return 1; };"
				   " w_end() { sleep 0.5; kill $(cat qemu.pid); };"
				   " { (%s) | timeout %d qemu-system-arm -M %s%s -nographic -monitor none"
				   " -pidfile qemu.pid -serial stdio -serial %s -serial %s -kernel %s 2>&1"
				   " | tee -a uart0.log | tr -d '\\r'; } & %s %s wait",
			      dir, input, r->secs ? r->secs : 900, r->board ? r->board : "mps2-an385", mem, uart1, uart2,
			      r->elf, bridge, se),
			 0);
	free(hil);
	free(mem);
	free(uart1);
	free(uart2);
	free(bridge);
	free(se);
}
