/*
 * test_provenance.c - DSSE envelopes and in-toto / SLSA v1 statements: the
 * PAE bytes of the spec, signing with ECDSA P-256 and Ed25519, verification
 * by dsse_verify and by the openssl command line alone, URL-safe base64,
 * tampering with every field, key rotation, and the exact field names of
 * the statement.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/provenance.h"
#include "harness.h"

static char *tmpdir;
static struct sign_key *ec_key, *ed_key;   /* made once with `openssl genpkey` */

static const char body[] = "{\"_type\":\"https://in-toto.io/Statement/v1\",\"x\":\"?\?\?>>>~~~\"}";

static void sh_ok(struct buf *out, const char *cmd)
{
	int rc = h_sh(out, "%s", cmd);
	if (rc != 0)
		fail_msg("command failed (%d): %s\n%s", rc, cmd, buf_cstr(out));
}

static struct sign_key *genkey(const char *name, const char *args)
{
	struct buf out = BUF_INIT;
	struct sign_key *k = NULL;
	char *p = xasprintf("%s/%s", tmpdir, name);
	char *cmd = xasprintf("openssl genpkey %s -out '%s'", args, p);
	sh_ok(&out, cmd);
	if (sign_key_load(&k, p, NULL) < 0)
		fail_msg("%s", ota_error_last());
	free(cmd);
	free(p);
	buf_release(&out);
	return k;
}

static int group_setup(void **state)
{
	(void)state;
	tmpdir = h_tmpdir();
	ec_key = genkey("ec.pem", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
	ed_key = genkey("ed.pem", "-algorithm ED25519");
	return 0;
}

static int group_teardown(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	sign_key_free(ec_key);
	sign_key_free(ed_key);
	h_sh(&out, "rm -rf '%s'", tmpdir);
	buf_release(&out);
	free(tmpdir);
	return 0;
}

static void write_file(const char *name, const void *data, size_t len)
{
	char *p = xasprintf("%s/%s", tmpdir, name);
	assert_int_equal(ota_write_file_atomic(p, data, len, 0600), 0);
	free(p);
}

static json_t *sign1(struct sign_key *k)
{
	json_t *env = NULL;
	struct sign_key *keys[1] = { k };
	assert_int_equal(dsse_sign(&env, DSSE_INTOTO_TYPE, body, strlen(body), keys, 1), 0);
	return env;
}

/* Replace the string at obj[key] with a copy changed at byte i. */
static void flip(json_t *obj, const char *key, size_t i)
{
	char *s = xstrdup(json_string_value(json_object_get(obj, key)));
	assert_true(i < strlen(s));
	/* stay inside the base64 / hex alphabets so only the meaning changes */
	s[i] = s[i] == 'A' ? 'B' : s[i] == '0' ? '1' : s[i] == 'a' ? 'b' : 'A';
	json_object_set_new(obj, key, json_string(s));
	free(s);
}

static json_t *sig0(json_t *env)
{
	return json_array_get(json_object_get(env, "signatures"), 0);
}

static void expect_fail(json_t *env, EVP_PKEY *const *pubs, size_t n, int code, const char *words)
{
	struct buf payload = BUF_INIT;
	int rc = dsse_verify(env, pubs, n, &payload, NULL);
	if (rc != code || !strstr(ota_error_last(), words))
		fail_msg("dsse_verify: %d '%s', wanted %d mentioning '%s'", rc, ota_error_last(), code, words);
	assert_int_equal(payload.len, 0);
	buf_release(&payload);
}

/* ---- PAE and base64 ---------------------------------------------------- */

static void pae_matches_the_dsse_spec_example(void **state)
{
	struct buf b = BUF_INIT;
	(void)state;
	assert_int_equal(dsse_pae(&b, "http://example.com/HelloWorld", "hello world", 11), 0);
	assert_int_equal(b.len, strlen("DSSEv1 29 http://example.com/HelloWorld 11 hello world"));
	assert_memory_equal(b.ptr, "DSSEv1 29 http://example.com/HelloWorld 11 hello world", b.len);
	buf_clear(&b);
	assert_int_equal(dsse_pae(&b, "t", "", 0), 0);
	assert_string_equal(buf_cstr(&b), "DSSEv1 1 t 0 ");
	buf_clear(&b);
	/* the body goes in as bytes, NULs included */
	assert_int_equal(dsse_pae(&b, DSSE_INTOTO_TYPE, "a\0b", 3), 0);
	assert_int_equal(b.len, strlen("DSSEv1 28 application/vnd.in-toto+json 3 ") + 3);
	assert_memory_equal(b.ptr + b.len - 3, "a\0b", 3);
	buf_release(&b);
}

static void base64_accepts_standard_and_url_safe_only(void **state)
{
	static const struct { const char *in; const char *out; size_t n; } good[] = {
		{ "Pz8/Pj4+", "?\?\?>>>", 6 },
		{ "Pz8_Pj4-", "?\?\?>>>", 6 },
		{ "aGk=", "hi", 2 },
		{ "aGk", "hi", 2 },
		{ "", "", 0 },
		{ "AA==", "\0", 1 },
	};
	static const char *const bad[] = { "Pz8/Pj4-", "aGk===", "a", "aG k=", "aG=k", "aGk*", "=" };
	struct buf b = BUF_INIT;
	char *enc;
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(good); i++) {
		buf_clear(&b);
		assert_int_equal(dsse_base64_decode(&b, good[i].in, strlen(good[i].in)), 0);
		assert_int_equal(b.len, good[i].n);
		assert_memory_equal(buf_cstr(&b), good[i].out, good[i].n);
	}
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		buf_clear(&b);
		if (dsse_base64_decode(&b, bad[i], strlen(bad[i])) != OTA_EINVAL)
			fail_msg("'%s' decoded", bad[i]);
	}
	enc = dsse_base64_encode("?\?\?>>>", 6);
	assert_string_equal(enc, "Pz8/Pj4+");
	free(enc);
	buf_release(&b);
}

/* ---- signing and verifying ------------------------------------------- */

static void sign_and_verify_with_openssl(struct sign_key *k, const char *cli)
{
	json_t *env = sign1(k), *s;
	struct buf payload = BUF_INIT, sig = BUF_INIT, pae = BUF_INIT, pem = BUF_INIT, out = BUF_INIT;
	EVP_PKEY *pub = sign_key_public(k);
	char keyid[65] = "", *cmd;

	/* the envelope's exact shape */
	assert_string_equal(json_string_value(json_object_get(env, "payloadType")), DSSE_INTOTO_TYPE);
	assert_true(json_is_string(json_object_get(env, "payload")));
	assert_int_equal(json_array_size(json_object_get(env, "signatures")), 1);
	s = sig0(env);
	assert_string_equal(json_string_value(json_object_get(s, "keyid")), sign_key_id(k));
	assert_true(json_is_string(json_object_get(s, "sig")));
	assert_int_equal(json_object_size(env), 3);
	assert_int_equal(json_object_size(s), 2);

	assert_int_equal(dsse_verify(env, &pub, 1, &payload, keyid), 0);
	assert_int_equal(payload.len, strlen(body));
	assert_memory_equal(payload.ptr, body, payload.len);
	assert_string_equal(keyid, sign_key_id(k));

	/* offline with OpenSSL alone: PAE bytes + the decoded signature */
	assert_int_equal(dsse_pae(&pae, DSSE_INTOTO_TYPE, payload.ptr, payload.len), 0);
	assert_int_equal(dsse_base64_decode(&sig, json_string_value(json_object_get(s, "sig")),
					    json_string_length(json_object_get(s, "sig"))), 0);
	assert_int_equal(sign_key_public_pem(k, &pem), 0);
	write_file("pae.bin", pae.ptr, pae.len);
	write_file("sig.der", sig.ptr, sig.len);
	write_file("pub.pem", pem.ptr, pem.len);
	cmd = xasprintf("cd '%s' && %s", tmpdir, cli);
	sh_ok(&out, cmd);
	assert_non_null(strstr(buf_cstr(&out), "Verified"));
	/* and the CLI says no to other bytes */
	write_file("pae.bin", pae.ptr, pae.len - 1);
	assert_int_not_equal(h_sh(&out, "%s", cmd), 0);
	free(cmd);

	json_decref(env);
	buf_release(&payload);
	buf_release(&sig);
	buf_release(&pae);
	buf_release(&pem);
	buf_release(&out);
}

static void ecdsa_envelope_verifies_here_and_with_openssl_alone(void **state)
{
	(void)state;
	sign_and_verify_with_openssl(ec_key, "openssl dgst -sha256 -verify pub.pem -signature sig.der pae.bin");
}

static void ed25519_envelope_verifies_here_and_with_openssl_alone(void **state)
{
	(void)state;
	sign_and_verify_with_openssl(ed_key,
				     "openssl pkeyutl -verify -rawin -pubin -inkey pub.pem -sigfile sig.der -in pae.bin");
}

static void url_safe_unpadded_base64_is_accepted(void **state)
{
	json_t *env = sign1(ec_key), *s = sig0(env);
	EVP_PKEY *pub = sign_key_public(ec_key);
	struct buf payload = BUF_INIT;
	const char *keys[2] = { "payload", "sig" };
	json_t *objs[2] = { env, s };
	int had_std = 0;
	(void)state;

	for (int j = 0; j < 2; j++) {
		char *v = xstrdup(json_string_value(json_object_get(objs[j], keys[j])));
		size_t n = strlen(v);
		for (size_t i = 0; i < n; i++) {
			if (v[i] == '+' || v[i] == '/')
				had_std = 1;
			v[i] = v[i] == '+' ? '-' : v[i] == '/' ? '_' : v[i];
		}
		while (n && v[n - 1] == '=')
			v[--n] = '\0';
		json_object_set_new(objs[j], keys[j], json_string(v));
		free(v);
	}
	assert_true(had_std);   /* the body was chosen to need '+' or '/' */
	assert_int_equal(dsse_verify(env, &pub, 1, &payload, NULL), 0);
	assert_memory_equal(payload.ptr, body, strlen(body));
	json_decref(env);
	buf_release(&payload);
}

static void tampering_with_any_field_is_caught_and_named(void **state)
{
	EVP_PKEY *pub = sign_key_public(ec_key), *edpub = sign_key_public(ed_key);
	json_t *env;
	(void)state;

	env = sign1(ec_key);
	flip(env, "payload", 3);
	expect_fail(env, &pub, 1, OTA_EAUTH, "signature does not verify");
	json_decref(env);

	env = sign1(ed_key);
	flip(env, "payload", 10);
	expect_fail(env, &edpub, 1, OTA_EAUTH, "signature does not verify");
	json_decref(env);

	env = sign1(ec_key);
	json_object_set_new(env, "payloadType", json_string("application/vnd.in-toto+jsoN"));
	expect_fail(env, &pub, 1, OTA_EAUTH, "signature does not verify");
	json_decref(env);

	env = sign1(ec_key);
	flip(sig0(env), "sig", 12);
	expect_fail(env, &pub, 1, OTA_EAUTH, "signature does not verify");
	json_decref(env);

	env = sign1(ed_key);
	flip(sig0(env), "sig", 40);
	expect_fail(env, &edpub, 1, OTA_EAUTH, "signature does not verify");
	json_decref(env);

	env = sign1(ec_key);
	flip(sig0(env), "keyid", 5);
	expect_fail(env, &pub, 1, OTA_EAUTH, "unknown keyid");
	json_decref(env);

	/* bad base64 */
	env = sign1(ec_key);
	json_object_set_new(sig0(env), "sig", json_string("not*base64"));
	expect_fail(env, &pub, 1, OTA_EAUTH, "\"sig\" is not valid base64");
	json_object_set_new(env, "payload", json_string("%%%"));
	expect_fail(env, &pub, 1, OTA_EINVAL, "\"payload\" is not valid base64");
	json_decref(env);

	/* malformed envelopes name the field */
	env = sign1(ec_key);
	json_object_del(env, "payloadType");
	expect_fail(env, &pub, 1, OTA_EINVAL, "\"payloadType\" is missing");
	json_decref(env);
	env = sign1(ec_key);
	json_object_set_new(env, "signatures", json_object());
	expect_fail(env, &pub, 1, OTA_EINVAL, "\"signatures\" is missing or not an array");
	json_object_set_new(env, "signatures", json_array());
	expect_fail(env, &pub, 1, OTA_EINVAL, "\"signatures\" is empty");
	json_decref(env);
	env = sign1(ec_key);
	json_object_del(sig0(env), "sig");
	expect_fail(env, &pub, 1, OTA_EINVAL, "\"signatures\"[0].\"sig\" is missing");
	json_decref(env);
	env = json_string("{}");
	expect_fail(env, &pub, 1, OTA_EINVAL, "not a JSON object");
	json_decref(env);
}

static void rotation_accepts_either_trusted_key_and_refuses_others(void **state)
{
	EVP_PKEY *both[2] = { sign_key_public(ec_key), sign_key_public(ed_key) };
	struct sign_key *signers[2] = { ec_key, ed_key };
	char keyid[65];
	json_t *env1 = sign1(ec_key), *env2 = sign1(ed_key), *dual = NULL;
	(void)state;

	assert_int_equal(dsse_verify(env1, both, 2, NULL, keyid), 0);
	assert_string_equal(keyid, sign_key_id(ec_key));
	assert_int_equal(dsse_verify(env2, both, 2, NULL, keyid), 0);
	assert_string_equal(keyid, sign_key_id(ed_key));

	/* key 2 is not trusted yet (or any more) */
	expect_fail(env2, both, 1, OTA_EAUTH, "no signature by a trusted key");
	expect_fail(env2, both, 1, OTA_EAUTH, "unknown keyid");

	/* during a rotation, sign with both: either key alone verifies */
	assert_int_equal(dsse_sign(&dual, DSSE_INTOTO_TYPE, body, strlen(body), signers, 2), 0);
	assert_int_equal(json_array_size(json_object_get(dual, "signatures")), 2);
	assert_int_equal(dsse_verify(dual, both, 1, NULL, keyid), 0);
	assert_string_equal(keyid, sign_key_id(ec_key));
	assert_int_equal(dsse_verify(dual, both + 1, 1, NULL, keyid), 0);
	assert_string_equal(keyid, sign_key_id(ed_key));

	/* a signature without keyid is tried against every trusted key */
	json_object_del(sig0(env2), "keyid");
	assert_int_equal(dsse_verify(env2, both, 2, NULL, keyid), 0);
	assert_string_equal(keyid, sign_key_id(ed_key));

	json_decref(env1);
	json_decref(env2);
	json_decref(dual);
}

/* ---- SLSA statements ---------------------------------------------------- */

static const char sha_a[] = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
static const char sha_b[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
static const char commit[] = "0123456789abcdef0123456789abcdef01234567";

static json_t *build(struct slsa_input *in)
{
	json_t *st = NULL;
	if (slsa_statement(&st, in) < 0)
		fail_msg("slsa_statement: %s", ota_error_last());
	return st;
}

static void fill(struct slsa_input *in, json_t *ext, json_t *ann)
{
	static struct slsa_subject subjects[2];
	static struct slsa_dep deps[2];
	static struct slsa_byproduct bps[1];

	subjects[0] = (struct slsa_subject){ "mps2-an385/app.signed.bin", sha_a };
	subjects[1] = (struct slsa_subject){ "mps2-an386/app.signed.bin", sha_b };
	deps[0] = (struct slsa_dep){ "git+https://git.example.com/acme/sensor-node@refs/heads/main", NULL, "gitCommit", commit };
	deps[1] = (struct slsa_dep){ "otacd:agent/build-1", "toolchain", "sha256", sha_b };
	bps[0] = (struct slsa_byproduct){ "unit-tests.xml", "application/xml", sha_b, ann };
	memset(in, 0, sizeof(*in));
	in->subjects = subjects;
	in->nsubjects = 2;
	in->build_type = "https://otacd.dev/buildtypes/pipeline/v1";
	in->external_parameters = ext;
	in->deps = deps;
	in->ndeps = 2;
	in->builder_id = "https://otacd.example.com/otacd";
	in->builder_version = "0.1.0";
	in->invocation_id = "run-42";
	in->started_ms = 1700000000123;
	in->finished_ms = 1700000600999;
	in->byproducts = bps;
	in->nbyproducts = 1;
}

static void statement_has_the_exact_slsa_v1_field_names(void **state)
{
	json_t *ext = json_pack("{s:s, s:s}", "pipeline", ".otacd/pipeline.yml", "ref", "refs/heads/main");
	json_t *internal = json_pack("{s:i}", "security_counter", 3);
	json_t *ann = json_pack("{s:s}", "verdict", "passed");
	struct slsa_input in;
	json_t *st, *pred, *v;
	(void)state;

	fill(&in, ext, ann);
	in.internal_parameters = internal;
	st = build(&in);
	assert_int_equal(slsa_statement_check(st), 0);

	assert_string_equal(json_string_value(json_object_get(st, "_type")), "https://in-toto.io/Statement/v1");
	assert_string_equal(json_string_value(json_object_get(st, "predicateType")), "https://slsa.dev/provenance/v1");
	v = json_array_get(json_object_get(st, "subject"), 0);
	assert_string_equal(json_string_value(json_object_get(v, "name")), "mps2-an385/app.signed.bin");
	/* digests come out lowercase */
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "digest"), "sha256")),
			    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	pred = json_object_get(st, "predicate");
	v = json_object_get(pred, "buildDefinition");
	assert_string_equal(json_string_value(json_object_get(v, "buildType")), "https://otacd.dev/buildtypes/pipeline/v1");
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "externalParameters"), "pipeline")),
			    ".otacd/pipeline.yml");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(v, "internalParameters"), "security_counter")), 3);
	v = json_array_get(json_object_get(v, "resolvedDependencies"), 0);
	assert_string_equal(json_string_value(json_object_get(v, "uri")),
			    "git+https://git.example.com/acme/sensor-node@refs/heads/main");
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "digest"), "gitCommit")), commit);
	v = json_object_get(pred, "runDetails");
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "builder"), "id")),
			    "https://otacd.example.com/otacd");
	assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(v, "builder"), "version"), "otacd")),
			    "0.1.0");
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "metadata"), "invocationId")), "run-42");
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "metadata"), "startedOn")),
			    "2023-11-14T22:13:20Z");
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "metadata"), "finishedOn")),
			    "2023-11-14T22:23:20Z");
	v = json_array_get(json_object_get(v, "byproducts"), 0);
	assert_string_equal(json_string_value(json_object_get(v, "name")), "unit-tests.xml");
	assert_string_equal(json_string_value(json_object_get(v, "mediaType")), "application/xml");
	assert_string_equal(json_string_value(json_object_get(json_object_get(v, "annotations"), "verdict")), "passed");

	/* borrowed inputs were copied, not shared */
	json_object_set_new(ext, "pipeline", json_string("changed"));
	assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(pred, "buildDefinition"),
									    "externalParameters"), "pipeline")),
			    ".otacd/pipeline.yml");
	json_decref(st);

	/* optional parts left out are absent, not null */
	fill(&in, ext, NULL);
	in.ndeps = in.nbyproducts = 0;
	in.builder_version = in.invocation_id = NULL;
	in.started_ms = in.finished_ms = 0;
	st = build(&in);
	pred = json_object_get(st, "predicate");
	assert_null(json_object_get(json_object_get(pred, "buildDefinition"), "resolvedDependencies"));
	assert_null(json_object_get(json_object_get(pred, "buildDefinition"), "internalParameters"));
	assert_null(json_object_get(json_object_get(pred, "runDetails"), "metadata"));
	assert_null(json_object_get(json_object_get(pred, "runDetails"), "byproducts"));
	assert_int_equal(slsa_statement_check(st), 0);
	json_decref(st);

	json_decref(ext);
	json_decref(internal);
	json_decref(ann);
}

static void statement_refuses_bad_input(void **state)
{
	json_t *ext = json_object(), *st = NULL;
	struct slsa_input in;
	struct slsa_subject bad_subject = { "x.bin", "abc" };
	(void)state;

	fill(&in, ext, NULL);
	in.subjects = &bad_subject;
	in.nsubjects = 1;
	assert_int_equal(slsa_statement(&st, &in), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "subject 0"));
	assert_non_null(strstr(ota_error_last(), "sha256"));

	fill(&in, ext, NULL);
	in.builder_id = NULL;
	assert_int_equal(slsa_statement(&st, &in), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "builder id"));

	fill(&in, NULL, NULL);
	assert_int_equal(slsa_statement(&st, &in), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "externalParameters"));

	fill(&in, ext, NULL);
	in.nsubjects = 0;
	assert_int_equal(slsa_statement(&st, &in), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "no subjects"));
	assert_null(st);
	json_decref(ext);
}

static void statement_check_names_the_broken_field(void **state)
{
	static const struct { const char *path; const char *json; } cases[] = {
		{ "_type", "{\"_type\":\"https://in-toto.io/Statement/v0.1\"}" },
		{ "subject", "{\"_type\":\"https://in-toto.io/Statement/v1\",\"subject\":[]}" },
		{ "subject[0].digest.sha256", "{\"_type\":\"https://in-toto.io/Statement/v1\",\"subject\":[{\"name\":\"a\",\"digest\":{\"sha256\":\"ABCD\"}}]}" },
		{ "predicateType", "{\"_type\":\"https://in-toto.io/Statement/v1\",\"subject\":[{\"name\":\"a\",\"digest\":{\"sha256\":\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"}}],\"predicateType\":\"https://slsa.dev/provenance/v0.2\"}" },
	};
	json_t *ext = json_object(), *st, *v;
	struct slsa_input in;
	(void)state;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		json_t *j = json_loads(cases[i].json, 0, NULL);
		assert_non_null(j);
		assert_int_equal(slsa_statement_check(j), OTA_EINVAL);
		if (!strstr(ota_error_last(), cases[i].path))
			fail_msg("case %zu: '%s' does not name %s", i, ota_error_last(), cases[i].path);
		json_decref(j);
	}

	fill(&in, ext, NULL);
	st = build(&in);
	v = json_object_get(json_object_get(json_object_get(st, "predicate"), "runDetails"), "builder");
	json_object_del(v, "id");
	assert_int_equal(slsa_statement_check(st), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "predicate.runDetails.builder.id"));
	json_object_set_new(v, "id", json_string("https://b"));
	assert_int_equal(slsa_statement_check(st), 0);

	v = json_object_get(json_object_get(json_object_get(st, "predicate"), "runDetails"), "metadata");
	json_object_set_new(v, "startedOn", json_string("2023-11-14T22:13:20+01:00"));
	assert_int_equal(slsa_statement_check(st), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "predicate.runDetails.metadata.startedOn"));
	json_object_set_new(v, "startedOn", json_string("2023-11-14T22:13:20.5Z"));
	assert_int_equal(slsa_statement_check(st), 0);

	v = json_object_get(json_object_get(st, "predicate"), "buildDefinition");
	json_object_set_new(v, "externalParameters", json_string("x"));
	assert_int_equal(slsa_statement_check(st), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "predicate.buildDefinition.externalParameters"));
	json_object_set_new(v, "externalParameters", json_object());
	json_array_append_new(json_object_get(v, "resolvedDependencies"), json_pack("{s:s}", "name", "nothing"));
	assert_int_equal(slsa_statement_check(st), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "predicate.buildDefinition.resolvedDependencies[2]"));
	json_decref(st);
	json_decref(ext);
}

static void signed_statement_round_trips(void **state)
{
	json_t *ext = json_pack("{s:s}", "pipeline", "p.yml"), *st, *env = NULL, *back;
	EVP_PKEY *pub = sign_key_public(ed_key);
	struct sign_key *keys[1] = { ed_key };
	struct slsa_input in;
	struct buf payload = BUF_INIT;
	char *text;
	(void)state;

	fill(&in, ext, NULL);
	st = build(&in);
	text = json_dumps(st, JSON_COMPACT);
	assert_int_equal(dsse_sign(&env, DSSE_INTOTO_TYPE, text, strlen(text), keys, 1), 0);
	assert_int_equal(dsse_verify(env, &pub, 1, &payload, NULL), 0);
	back = json_loadb(payload.ptr, payload.len, 0, NULL);
	assert_non_null(back);
	assert_int_equal(slsa_statement_check(back), 0);
	assert_true(json_equal(back, st));
	json_decref(back);
	json_decref(env);
	json_decref(st);
	json_decref(ext);
	free(text);
	buf_release(&payload);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(pae_matches_the_dsse_spec_example),
		cmocka_unit_test(base64_accepts_standard_and_url_safe_only),
		cmocka_unit_test(ecdsa_envelope_verifies_here_and_with_openssl_alone),
		cmocka_unit_test(ed25519_envelope_verifies_here_and_with_openssl_alone),
		cmocka_unit_test(url_safe_unpadded_base64_is_accepted),
		cmocka_unit_test(tampering_with_any_field_is_caught_and_named),
		cmocka_unit_test(rotation_accepts_either_trusted_key_and_refuses_others),
		cmocka_unit_test(statement_has_the_exact_slsa_v1_field_names),
		cmocka_unit_test(statement_refuses_bad_input),
		cmocka_unit_test(statement_check_names_the_broken_field),
		cmocka_unit_test(signed_statement_round_trips),
	};
	return cmocka_run_group_tests_name("provenance", tests, group_setup, group_teardown);
}
