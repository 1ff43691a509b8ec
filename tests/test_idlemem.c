/*
 * test_idlemem.c - what issue 18's idle-memory work changed keeps working:
 * tokens, the device secret and the device-certificate cache are hashed by
 * ota_sha256 (nettle, common/sha256.h) instead of OpenSSL's EVP, so it must
 * give exactly OpenSSL's digests (token hashes already stored must still
 * match); per-thread caches moved out of static TLS (common/threadmem.h) are
 * zeroed, per thread, and freed at the thread's exit (ASan's leak check);
 * otacd's static TLS, which every thread pays for, stays small; a real
 * otacd with a local agent still authenticates the agent and the API; and
 * GnuTLS is set up only when a listener serves TLS (orchestrator/tls/tls.c:
 * neither GnuTLS's constructor nor libmicrohttpd's does it at start).
 */
#include <elf.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>

#include "../common/httpc.h"
#include "../common/sha256.h"
#include "../common/threadmem.h"
#include "../common/util.h"
#include "harness.h"

static void ota_sha256_gives_openssls_digest_for_every_length_up_to_300(void **state)
{
	unsigned char data[300], want[32], got[32];
	char hex[65];
	(void)state;

	/* FIPS 180-2's "abc" */
	ota_sha256("abc", 3, got);
	ota_hex(hex, got, 32);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 131 + 7);
	for (size_t n = 0; n <= sizeof(data); n++) {
		unsigned int len = 32;
		assert_int_equal(EVP_Digest(data, n, want, &len, EVP_sha256(), NULL), 1);
		ota_sha256(data, n, got);
		assert_memory_equal(got, want, 32);
	}
}

static struct ota_thread_block test_block;

struct probe {
	unsigned char *block;
	int zeroed;
	pthread_barrier_t *both; /* NULL: alone */
};

static __thread unsigned char *t_block;
static __thread int t_cleared_probe;

/* a destructor made after the block's key runs after it (glibc runs keys in
 * order): by then the thread's pointer must be NULL again */
static pthread_key_t later_key;
static int cleared_at_exit;
static void later(void *p)
{
	(void)p;
	if (!t_block)
		__atomic_add_fetch(&cleared_at_exit, 1, __ATOMIC_RELAXED);
}

static void *use_block(void *arg)
{
	struct probe *p = arg;
	p->block = t_block = ota_thread_block_alloc(&test_block, 4096, &t_block);
	pthread_setspecific(later_key, &t_cleared_probe);
	assert_true(((uintptr_t)p->block & 15) == 0);
	p->zeroed = 1;
	for (size_t i = 0; i < 4096; i++)
		if (p->block[i])
			p->zeroed = 0;
	memset(p->block, 0xa5, 4096); /* the next thread's block must not see this */
	if (p->both) /* both blocks alive at once */
		pthread_barrier_wait(p->both);
	return NULL;
}

static void thread_blocks_are_zeroed_and_each_threads_own(void **state)
{
	struct probe a = { 0 }, b = { 0 };
	pthread_barrier_t both;
	pthread_t ta, tb;
	(void)state;

	/* one after the other, then two at once: freed at exit (else ASan
	 * reports the leak), never shared */
	t_block = ota_thread_block_alloc(&test_block, 16, &t_block); /* the key first, before later_key */
	assert_int_equal(pthread_key_create(&later_key, later), 0);
	assert_int_equal(pthread_create(&ta, NULL, use_block, &a), 0);
	assert_int_equal(pthread_join(ta, NULL), 0);
	assert_true(a.zeroed);
	assert_int_equal(pthread_barrier_init(&both, NULL, 2), 0);
	a.both = b.both = &both;
	assert_int_equal(pthread_create(&ta, NULL, use_block, &a), 0);
	assert_int_equal(pthread_create(&tb, NULL, use_block, &b), 0);
	assert_int_equal(pthread_join(ta, NULL), 0);
	assert_int_equal(pthread_join(tb, NULL), 0);
	assert_true(a.zeroed);
	assert_true(b.zeroed);
	assert_ptr_not_equal(a.block, b.block);
	assert_int_equal(__atomic_load_n(&cleared_at_exit, __ATOMIC_RELAXED), 3);
	pthread_barrier_destroy(&both);
	pthread_key_delete(later_key);
}

/* PT_TLS's memory size in the ELF file path: what glibc zero-fills in
 * every thread this program starts. */
static size_t static_tls_size(const char *path)
{
	struct buf f = BUF_INIT;
	const Elf64_Ehdr *eh;
	size_t size = 0;

	assert_int_equal(ota_read_file(&f, path, 256 << 20), 0);
	assert_true(f.len >= sizeof(*eh));
	eh = (const Elf64_Ehdr *)f.ptr;
	assert_memory_equal(eh->e_ident, ELFMAG, SELFMAG);
	assert_int_equal(eh->e_ident[EI_CLASS], ELFCLASS64);
	assert_true(eh->e_phoff + (size_t)eh->e_phnum * sizeof(Elf64_Phdr) <= f.len);
	for (int i = 0; i < eh->e_phnum; i++) {
		const Elf64_Phdr *ph = (const Elf64_Phdr *)(f.ptr + eh->e_phoff) + i;
		if (ph->p_type == PT_TLS)
			size = ph->p_memsz;
	}
	buf_release(&f);
	return size;
}

static void otacds_static_tls_stays_under_4_kb(void **state)
{
	const char *bin = getenv("OTACD_BIN") ? getenv("OTACD_BIN") : "build/bin";
	char *path = xasprintf("%s/otacd", bin);
	size_t tls = static_tls_size(path);
	(void)state;

	/* ~19 threads each pay this in resident memory from their start; a big
	 * per-thread cache belongs behind common/threadmem.h */
	if (tls >= 4096)
		fail_msg("%s: static TLS is %zu bytes: a __thread array too big for every thread?", path, tls);
	free(path);
}

static void agents_and_api_tokens_still_authenticate(void **state)
{
	struct daemon d;
	json_t *me = NULL;
	int64_t run;
	(void)state;

	h_init(&d, NULL);
	assert_int_equal(h_start(&d, (const char *const[]){ "--local-agents", "1", NULL }), 0);
	/* the local agent authenticates every claim with its token's hash */
	run = h_trigger(&d, "name: plain\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	/* and the admin token the API checks the same way */
	assert_int_equal(h_get(&d, "/api/v1/runs", &me), 200);
	json_decref(me);
	h_cleanup(&d);
}

/* Whether d's log has a line of GnuTLS's own debug output (it prints
 * "gnutls[2]: Enabled GnuTLS ..." from gnutls_global_init() when
 * GNUTLS_DEBUG_LEVEL is set, and more as it sets up). */
static int log_shows_gnutls(struct daemon *d)
{
	struct buf log = BUF_INIT;
	char *path = xasprintf("%s/otacd.log", d->dir);
	int found;

	assert_int_equal(ota_read_file(&log, path, 64 << 20), 0);
	found = strstr(buf_cstr(&log), "gnutls[") != NULL;
	buf_release(&log);
	free(path);
	return found;
}

static void gnutls_is_set_up_only_when_a_listener_serves_tls(void **state)
{
	struct daemon plain, tls;
	struct buf out = BUF_INIT;
	char *pki = h_tmpdir(), *yaml, *ca;
	json_t *runs = NULL;
	(void)state;

	setenv("GNUTLS_DEBUG_LEVEL", "2", 1);
	/* plain HTTP: served, and GnuTLS never set up */
	h_init(&plain, NULL);
	assert_int_equal(h_start(&plain, (const char *const[]){ "--local-agents", "0", NULL }), 0);
	assert_int_equal(h_get(&plain, "/api/v1/runs", &runs), 200);
	json_decref(runs);
	if (log_shows_gnutls(&plain))
		fail_msg("an otacd without tls: set GnuTLS up (see %s/otacd.log)", plain.dir);
	h_cleanup(&plain);

	/* a tls: listener: GnuTLS is set up (so the check above can fail) and
	 * serves the API */
	if (h_sh(&out, "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
		       " -keyout srv.key -out srv.pem -days 2 -subj /CN=otacd-test"
		       " -addext subjectAltName=IP:127.0.0.1",
		 pki) != 0)
		fail_msg("making a certificate: %s", buf_cstr(&out));
	ca = xasprintf("%s/srv.pem", pki);
	httpc_set_cacert(ca);
	yaml = xasprintf("local_agents: 0\ntls:\n  cert: %s/srv.pem\n  key: %s/srv.key\n", pki, pki);
	h_init(&tls, yaml);
	assert_int_equal(h_start(&tls, NULL), 0);
	assert_int_equal(strncmp(tls.url, "https://", 8), 0);
	assert_int_equal(h_get(&tls, "/api/v1/runs", &runs), 200);
	json_decref(runs);
	assert_true(log_shows_gnutls(&tls));
	h_cleanup(&tls);
	unsetenv("GNUTLS_DEBUG_LEVEL");
	httpc_set_cacert(NULL);

	h_sh(&out, "rm -rf '%s'", pki);
	buf_release(&out);
	free(yaml);
	free(ca);
	free(pki);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ota_sha256_gives_openssls_digest_for_every_length_up_to_300),
		cmocka_unit_test(thread_blocks_are_zeroed_and_each_threads_own),
		cmocka_unit_test(otacds_static_tls_stays_under_4_kb),
		cmocka_unit_test(agents_and_api_tokens_still_authenticate),
		cmocka_unit_test(gnutls_is_set_up_only_when_a_listener_serves_tls),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
