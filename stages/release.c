/*
 * release.c - the `release` stage kind: turn a passed run's images into a
 * signed release.
 *
 * It runs inside otacd (no agent: the signing key stays with the daemon, or
 * in its HSM), on the stage worker, after the stages it needs passed.  For
 * every artifact of the run that declares a `type` (application,
 * bootloader, config, factory-reset) it writes an MCUboot signed image with
 * the release's version and security counter; then a manifest (what the
 * seed chapter lists: version, commit and tree, build time, builders,
 * hardware variants, minimum bootloader, images with digests, security
 * counter, signing key) in a DSSE envelope, and SLSA provenance v1 (an
 * in-toto Statement in a DSSE envelope) whose subjects are the images and
 * the manifest.  Everything is stored as artifacts of the release job and
 * kept forever; the release itself is recorded by the engine, which
 * enforces anti-rollback (no counter below one already released for the
 * product) and increasing versions per branch.
 *
 * With `encrypt:` (issue 13) each image's body is encrypted for a device
 * public key from `encryption_keys:` chosen by its hardware variant, and
 * the manifest says which key class (mcuboot_enc.h).
 *
 * Keys: `key:` names an entry of otacd's configuration (`keys:`), whose
 * spec is a PEM file or a PKCS#11 URI; a pipeline never carries a key path
 * or PIN.  Re-running after a crash is safe: uploads are content-addressed
 * and the engine records one release per run.
 */
#include "stage.h"
#include "release_delta.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/artifact.h"
#include "../orchestrator/clock.h"
#include "../orchestrator/config.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/engine.h"
#include "../orchestrator/engine_int.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/pki.h"
#include "../orchestrator/mcuboot_enc.h"
#include "../orchestrator/policy.h"
#include "../orchestrator/provenance.h"
#include "../orchestrator/store.h"

#define MANIFEST_TYPE "application/vnd.otacd.manifest+json"
#define INTOTO_TYPE "application/vnd.in-toto+json"
#define BUILD_TYPE "https://otacd.dev/release/v1"
#define BUILDER_ID "https://otacd.dev/otacd"

/* reissue_of / reissue_for are set by otacd itself for `otactl rollback
 * --reissue` (orchestrator/rollout.c): re-sign release reissue_of's build
 * as a new version to replace release reissue_for. */
static const char *const release_keys[] = { "version", "security_counter", "key", "min_bootloader", "product",
					    "reissue_of", "reissue_for", "encrypt", "deltas", NULL };

/* encrypt: { key: NAME, cipher: aes128|aes256, hardware: { VARIANT: NAME } }
 * (issue 13): NAMEs are otacd's encryption_keys (device public keys);
 * an image of a listed hardware variant uses that variant's key, any other
 * image `key`; an image with neither fails the release. */
static void encrypt_validate(const struct pl_stage *st, const json_t *e, struct pl_diags *d)
{
	const json_t *hw = json_object_get(e, "hardware"), *cipher = json_object_get(e, "cipher"), *v;
	const char *k;

	if (!json_is_object(e)) {
		pl_diag_add(d, st->pos, "release stage '%s': encrypt must be a mapping {key, cipher, hardware}", st->name);
		return;
	}
	json_object_foreach((json_t *)e, k, v)
		if (strcmp(k, "key") && strcmp(k, "cipher") && strcmp(k, "hardware"))
			pl_diag_add(d, st->pos, "release stage '%s': unknown key '%s' in encrypt (key, cipher, hardware)",
				    st->name, k);
	if (json_object_get(e, "key") && (!json_is_string(json_object_get(e, "key")) ||
					  !*json_string_value(json_object_get(e, "key"))))
		pl_diag_add(d, st->pos, "release stage '%s': encrypt.key must name an entry of otacd's encryption_keys",
			    st->name);
	if (cipher && (!json_is_string(cipher) || (strcmp(json_string_value(cipher), "aes128") &&
						   strcmp(json_string_value(cipher), "aes256"))))
		pl_diag_add(d, st->pos, "release stage '%s': encrypt.cipher must be aes128 or aes256", st->name);
	if (hw && !json_is_object(hw))
		pl_diag_add(d, st->pos, "release stage '%s': encrypt.hardware must map hardware variants to key names",
			    st->name);
	json_object_foreach((json_t *)hw, k, v)
		if (!json_is_string(v) || !*json_string_value(v))
			pl_diag_add(d, st->pos, "release stage '%s': encrypt.hardware.%s must name an encryption key",
				    st->name, k);
	if (!json_object_get(e, "key") && !json_object_size(hw))
		pl_diag_add(d, st->pos, "release stage '%s': encrypt needs key (or hardware: {VARIANT: key})", st->name);
}

/* The device public key image hw is encrypted for (NULL *key: none asked). */
static int encrypt_key_for(const struct stage_ctx *c, const json_t *e, const char *hw, EVP_PKEY **key,
			   const char **name)
{
	const char *path;

	*key = NULL;
	*name = NULL;
	if (!e)
		return 0;
	*name = hw ? json_string_value(json_object_get(json_object_get(e, "hardware"), hw)) : NULL;
	if (!*name)
		*name = json_string_value(json_object_get(e, "key"));
	if (!*name)
		return ota_error_set(OTA_EINVAL, "encrypt: no key for hardware variant '%s' (add it under "
				     "encrypt.hardware or set encrypt.key)", hw ? hw : "(none)");
	path = c->config ? json_string_value(json_object_get(c->config->encryption_keys, *name)) : NULL;
	if (!path)
		return ota_error_set(OTA_EINVAL, "encryption key '%s' is not configured in otacd "
				     "(encryption_keys: in the configuration)", *name);
	if (mcuboot_enc_pubkey_load(key, path) < 0) {
		ota_error_prefix("encryption key '%s': ", *name);
		return OTA_EINVAL;
	}
	return 0;
}

static int release_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d)
{
	json_t *sc = json_object_get(st->extra, "security_counter"), *key = json_object_get(st->extra, "key");
	json_t *v = json_object_get(st->extra, "version"), *mb = json_object_get(st->extra, "min_bootloader");
	uint8_t a, b;
	uint16_t c;
	uint32_t n;

	(void)p;
	if (!json_is_integer(sc) || json_integer_value(sc) < 0 || json_integer_value(sc) > 0xffffffffLL)
		pl_diag_add(d, st->pos, "release stage '%s' needs security_counter: an integer 0..4294967295", st->name);
	if (!json_is_string(key) || !*json_string_value(key))
		pl_diag_add(d, st->pos, "release stage '%s' needs key: the name of a signing key in otacd's configuration",
			    st->name);
	if (v && (!json_is_string(v) || mcuboot_version_parse(json_string_value(v), &a, &b, &c, &n) < 0))
		pl_diag_add(d, st->pos, "release stage '%s': version must look like 1.4.0", st->name);
	if (mb && (!json_is_string(mb) || mcuboot_version_parse(json_string_value(mb), &a, &b, &c, &n) < 0))
		pl_diag_add(d, st->pos, "release stage '%s': min_bootloader must look like 2.0.0", st->name);
	if (json_object_get(st->extra, "encrypt"))
		encrypt_validate(st, json_object_get(st->extra, "encrypt"), d);
	if (json_object_get(st->extra, "deltas"))
		release_deltas_validate(st, json_object_get(st->extra, "deltas"), d);
	return 0;
}

struct run_info {
	char *pipeline, *ref, *repo, *commit, *tree, *file, *yaml;
	int64_t created_at;
};

static void run_info_release(struct run_info *ri)
{
	free(ri->pipeline);
	free(ri->ref);
	free(ri->repo);
	free(ri->commit);
	free(ri->tree);
	free(ri->file);
	free(ri->yaml);
}

static char *col(struct db_stmt *st, int i)
{
	return db_column_text(st, i) ? xstrdup(db_column_text(st, i)) : NULL;
}

static int load_run(int64_t run, struct run_info *ri)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	int rc;

	memset(ri, 0, sizeof(*ri));
	if (!db || !(st = store_q(db, "SELECT pipeline, ref, repo, commit_id, tree_id, file, yaml, created_at FROM runs WHERE id = ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, run);
	if ((rc = db_step(st)) == 1) {
		ri->pipeline = col(st, 0);
		ri->ref = col(st, 1);
		ri->repo = col(st, 2);
		ri->commit = col(st, 3);
		ri->tree = col(st, 4);
		ri->file = col(st, 5);
		ri->yaml = col(st, 6);
		ri->created_at = db_column_int64(st, 7);
	}
	db_reset(st);
	return rc == 1 ? 0 : OTA_ENOTFOUND;
}

/* Store data as an artifact of this job; fills id and sha256. */
static int put(const struct stage_ctx *c, const char *name, const char *type, const char *hw, const void *data,
	       size_t len, int64_t *id, char sha[65])
{
	struct artifact_upload *u = NULL;
	struct artifact_info info = { name, sha, 0, type, hw };
	int64_t size = 0;
	int rc;

	if ((rc = artifact_upload_begin(&u)) < 0)
		return rc;
	if ((rc = artifact_upload_write(u, data, len)) < 0) {
		artifact_upload_abort(u);
		return rc;
	}
	if ((rc = artifact_upload_commit(u, NULL, sha, &size)) < 0)
		return rc;
	info.size = size;
	return engine_artifact_add(c->engine, c->job_id, c->attempt, &info, id);
}

static int read_object(const char *sha, struct buf *out)
{
	struct artifact_backend *b = artifact_backend();
	struct artifact_reader *r = NULL;
	char chunk[65536];
	int64_t size = 0;
	ssize_t n;
	int rc;

	if ((rc = b->get(b, sha, &r, &size)) < 0)
		return rc;
	buf_init(out, (size_t)artifact_max_size());
	while ((n = b->read(r, chunk, sizeof(chunk))) > 0)
		if ((rc = buf_put(out, chunk, (size_t)n)) < 0)
			break;
	b->close(r);
	if (rc == 0 && (n < 0 || (int64_t)out->len != size))
		rc = ota_error_set(OTA_ERROR, "artifact %s could not be read whole", sha);
	return rc;
}

int release_put(const struct stage_ctx *c, const char *name, const char *type, const char *hw, const void *data,
		size_t len, int64_t *id, char sha[65])
{
	return put(c, name, type, hw, data, len, id, sha);
}

int release_read_object(const char *sha, struct buf *out)
{
	return read_object(sha, out);
}

static int fail(struct job_result *r, const struct stage_ctx *c, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct job_result *r, const struct stage_ctx *c, const char *fmt, ...)
{
	static __thread char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	stage_log(c, "release failed: %s", msg);
	r->failure_kind = "script";
	r->message = msg;
	r->exit_code = 1;
	return 0;
}

struct image {
	int64_t in_id, out_id;
	char *name, *type, *hw;
	char sha[65];
	int64_t size;
};

#define RELEASE_MAX_TOOLCHAIN 16

/* [{command, version}] from the "toolchain" reports of run's latest
 * attempts (stages/build.c), each distinct pair once. */
static json_t *release_toolchain(struct store *db, int64_t run)
{
	struct db_stmt *st = db ? store_q(db, "SELECT rp.body FROM reports rp JOIN jobs j ON j.id = rp.job_id AND"
					   " j.attempt = rp.attempt WHERE rp.run_id = ? AND rp.format = 'toolchain' ORDER BY rp.id")
			      : NULL;
	json_t *out = json_array();

	if (!st)
		return out;
	db_bind_int64(st, 1, run);
	while (db_step(st) == 1) {
		json_t *body = json_loads(db_column_text(st, 0), 0, NULL), *c, *have;
		size_t i, k;
		json_array_foreach(json_object_get(body, "commands"), i, c) {
			const char *cmd = json_string_value(json_object_get(c, "command"));
			const char *ver = json_string_value(json_object_get(c, "version"));
			int seen = 0;
			if (!cmd || !ver)
				continue;
			json_array_foreach(out, k, have)
				seen |= !strcmp(json_string_value(json_object_get(have, "command")), cmd) &&
					!strcmp(json_string_value(json_object_get(have, "version")), ver);
			if (!seen && json_array_size(out) < RELEASE_MAX_TOOLCHAIN)
				json_array_append_new(out, json_pack("{ss ss}", "command", cmd, "version", ver));
		}
		json_decref(body);
	}
	db_reset(st);
	return out;
}

struct refusal {
	const struct stage_ctx *c;
	const char *product;
	char why[512];
};

/* Engine thread: the refusal goes to the audit log. */
static int audit_refusal(struct engine *e, void *arg)
{
	struct refusal *x = arg;
	return engine_audit(e, "otacd", "policy_refused", 0, 0, x->why,
			    json_pack("{sI ss}", "run", (json_int_t)x->c->run_id, "product", x->product));
}

/*
 * issue 13: the key's certificate chain (keys.NAME.certificate), checked
 * before anything is signed: its leaf must certify this very key and, when
 * otacd has a trust_root, chain to it now, with the right key usage and
 * not revoked.  *out stays NULL for a key without a certificate.
 */
static int signing_chain(const json_t *kcfg, const struct sign_key *key, time_t at, json_t **out)
{
	const char *path = json_string_value(json_object_get(kcfg, "certificate"));
	struct buf pem = BUF_INIT;
	X509 *leaf = NULL;
	X509_CRL *crl = NULL;
	char id[65] = "";
	int rc;

	*out = NULL;
	if (!path) {
		if (pki_trust_root())
			return ota_error_set(OTA_EPERM, "otacd has a trust_root: the signing key needs a certificate"
					     " (keys.NAME.certificate, made with `otactl keys certify`)");
		return 0;
	}
	if ((rc = ota_read_file(&pem, path, PKI_CHAIN_MAX * PKI_CERT_MAX)) < 0 ||
	    (rc = pki_chain_from_pem(out, pem.ptr, pem.len)) < 0) {
		ota_error_prefix("certificate %s", path);
		goto out;
	}
	{
		const char *first = json_string_value(json_array_get(*out, 0));
		if ((rc = pki_cert_load(&leaf, first, strlen(first))) < 0 || (rc = pki_cert_keyid(leaf, id)) < 0)
			goto out;
	}
	if (strcmp(id, sign_key_id(key)) != 0) {
		rc = ota_error_set(OTA_EINVAL, "certificate %s certifies key %.16s, not the signing key %.16s", path, id,
				   sign_key_id(key));
		goto out;
	}
	crl = pki_trust_crl();
	if (pki_trust_root() && (rc = pki_chain_verify(NULL, NULL, pki_trust_root(), *out, at, crl)) < 0)
		ota_error_prefix("certificate %s", path);
out:
	if (rc < 0) {
		json_decref(*out);
		*out = NULL;
	}
	X509_CRL_free(crl);
	X509_free(leaf);
	buf_release(&pem);
	return rc;
}

static int release_run(const struct stage_ctx *c, struct job_result *r)
{
	json_t *extra = json_object_get(c->job, "extra");
	const char *keyname = json_string_value(json_object_get(extra, "key"));
	int64_t counter = json_integer_value(json_object_get(extra, "security_counter"));
	const char *min_boot = json_string_value(json_object_get(extra, "min_bootloader"));
	int64_t reissue_of = json_integer_value(json_object_get(extra, "reissue_of"));
	int64_t reissue_for = json_integer_value(json_object_get(extra, "reissue_for"));
	int64_t source_run = c->run_id;
	struct run_info ri;
	struct sign_key *key = NULL;
	struct image *img = NULL;
	struct release_deltas deltas = { 0 };
	json_t *delta_from = NULL;
	size_t nimg = 0;
	struct store *db;
	struct db_stmt *st;
	json_t *kcfg, *manifest = NULL, *images = NULL, *hardware = NULL, *builders = NULL, *env = NULL, *stmt = NULL;
	json_t *toolchain = NULL, *chain = NULL;
	int64_t signed_ms = clock_now_ms();
	char *version = NULL, *product = NULL, *branch = NULL, *text = NULL;
	char msha[65], esha[65], psha[65];
	int64_t mid = 0, eid = 0, pid = 0, release_id = 0;
	uint8_t maj, min;
	uint16_t rev;
	uint32_t build;
	int rc = 0;

	/* A reissue signs the images of an earlier release's run again, and
	 * its manifest names that run's commit: the code is the same. */
	if (reissue_of) {
		db = store_reader();
		st = db ? store_q(db, "SELECT run_id FROM releases WHERE id = ?") : NULL;
		if (!st)
			return fail(r, c, "database unavailable");
		db_bind_int64(st, 1, reissue_of);
		if (db_step(st) == 1)
			source_run = db_column_int64(st, 0);
		db_reset(st);
		if (!source_run)
			return fail(r, c, "release %" PRId64 " to reissue not found", reissue_of);
		stage_log(c, "reissue of release %" PRId64 " (run %" PRId64 ") for release %" PRId64, reissue_of, source_run,
			  reissue_for);
	}
	if (load_run(source_run, &ri) < 0)
		return fail(r, c, "run %" PRId64 " not found", source_run);
	product = xstrdup(json_string_value(json_object_get(extra, "product")) ? json_string_value(json_object_get(extra, "product"))
										  : ri.pipeline);
	/* the version: from the pipeline, or from a tag vX.Y.Z */
	if (json_is_string(json_object_get(extra, "version")))
		version = xstrdup(json_string_value(json_object_get(extra, "version")));
	else if (ri.ref && !strncmp(ri.ref, "refs/tags/", 10))
		version = xstrdup(ri.ref + 10 + (ri.ref[10] == 'v'));
	if (!version || mcuboot_version_parse(version, &maj, &min, &rev, &build) < 0) {
		fail(r, c, "no release version: set `version:` on the stage or push a tag like v1.4.0 (got %s)",
		     version ? version : "none");
		goto out;
	}
	build = (uint32_t)c->run_id; /* the build number is the run */
	branch = xstrdup(ri.ref && !strncmp(ri.ref, "refs/heads/", 11) ? ri.ref + 11
			 : ri.ref && !strncmp(ri.ref, "refs/tags/", 10) ? "tags" : (ri.ref ? ri.ref : "main"));
	stage_log(c, "release %s %s+%u (security counter %" PRId64 ", branch %s)", product, version, build, counter, branch);
	if (release_check(product, branch, version, counter) < 0) {
		fail(r, c, "%s", ota_error_last());
		goto out;
	}

	/* the release policy, checked again where the key is handed out:
	 * the run's stored trust, the product's keys, refs and counter */
	if (policy_release_allowed(c->config, store_reader(), c->run_id, product, keyname, counter) < 0) {
		struct refusal x = { c, product, "" };
		snprintf(x.why, sizeof(x.why), "%s", ota_error_last());
		fail(r, c, "%s", x.why);
		if (engine_exec(c->engine, audit_refusal, &x) < 0)
			stage_log(c, "audit: %s", ota_error_last());
		goto out;
	}

	/* the key */
	kcfg = c->config ? json_object_get(c->config->keys, keyname) : NULL;
	if (!kcfg) {
		fail(r, c, "signing key '%s' is not configured in otacd (keys: in the configuration)", keyname);
		goto out;
	}
	if (sign_key_load(&key, json_string_value(json_object_get(kcfg, "spec")),
			  json_string_value(json_object_get(kcfg, "pin"))) < 0) {
		fail(r, c, "cannot load signing key '%s': %s", keyname, ota_error_last());
		goto out;
	}
	stage_log(c, "signing with key '%s' (%s, id %.16s)", keyname, sign_alg_name(sign_key_alg(key)), sign_key_id(key));
	if (signing_chain(kcfg, key, (time_t)(signed_ms / 1000), &chain) < 0) {
		fail(r, c, "signing key '%s': %s", keyname, ota_error_last());
		goto out;
	}
	if (chain)
		stage_log(c, "certificate chain of %zu certificate(s) goes into the manifest", json_array_size(chain));

	/* the images: the run's typed artifacts, made by other stages */
	db = store_reader();
	st = db ? store_q(db, "SELECT id, name, sha256, size, type, hardware FROM artifacts WHERE run_id = ? AND job_id != ?"
				 " AND type IS NOT NULL AND job_id NOT IN (SELECT j.id FROM jobs j JOIN stages s ON"
				 " s.id = j.stage_id WHERE j.run_id = artifacts.run_id AND s.kind = 'release') ORDER BY id") : NULL;
	if (!st) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, source_run);
	db_bind_int64(st, 2, c->job_id);
	while (db_step(st) == 1) {
		img = xrealloc(img, (nimg + 1) * sizeof(*img));
		memset(&img[nimg], 0, sizeof(*img));
		img[nimg].in_id = db_column_int64(st, 0);
		img[nimg].name = col(st, 1);
		snprintf(img[nimg].sha, sizeof(img[nimg].sha), "%s", db_column_text(st, 2));
		img[nimg].type = col(st, 4);
		img[nimg].hw = col(st, 5);
		nimg++;
	}
	db_reset(st);
	if (!nimg) {
		fail(r, c, "no images to release: give the build's artifacts a type (application, bootloader, config, factory-reset)");
		goto out;
	}

	images = json_array();
	hardware = json_array();
	for (size_t i = 0; i < nimg; i++) {
		struct buf raw = BUF_INIT, signed_img = BUF_INIT;
		struct mcuboot_sign_opts o = { 0 };
		const json_t *enc = json_object_get(extra, "encrypt");
		const char *enc_name = NULL, *cipher = json_string_value(json_object_get(enc, "cipher"));
		EVP_PKEY *enc_key = NULL;
		json_t *ij;
		char enc_id[65] = "";
		char *name = xasprintf("release/%s%s%s.signed.bin", img[i].hw ? img[i].hw : "", img[i].hw ? "/" : "",
				       strrchr(img[i].name, '/') ? strrchr(img[i].name, '/') + 1 : img[i].name);
		o.major = maj;
		o.minor = min;
		o.revision = rev;
		o.build = build;
		o.has_security_counter = 1;
		o.security_counter = (uint32_t)counter;
		o.enc_bits = cipher && !strcmp(cipher, "aes256") ? 256 : 128;
		buf_init(&signed_img, (size_t)artifact_max_size() + 4096);
		if ((rc = encrypt_key_for(c, enc, img[i].hw, &enc_key, &enc_name)) == 0 && enc_key)
			rc = mcuboot_enc_key_id(enc_key, enc_id);
		o.enc_key = enc_key;
		if (rc < 0 || (rc = read_object(img[i].sha, &raw)) < 0 ||
		    (rc = mcuboot_sign(&signed_img, raw.ptr ? raw.ptr : "", raw.len, sign_key_pkey(key), &o)) < 0 ||
		    (rc = put(c, name, img[i].type, img[i].hw, signed_img.ptr, signed_img.len, &img[i].out_id, img[i].sha)) < 0) {
			fail(r, c, "cannot sign %s: %s", img[i].name, ota_error_last());
			buf_release(&raw);
			buf_release(&signed_img);
			EVP_PKEY_free(enc_key);
			free(name);
			goto out;
		}
		img[i].size = (int64_t)signed_img.len;
		/* issue 15: patches from the earlier versions the pipeline lists
		 * and those most installed on this image's hardware variant */
		json_decref(delta_from);
		delta_from = json_object_get(extra, "deltas") && !enc_key
				     ? release_deltas_sources(c, json_object_get(extra, "deltas"), product, version, img[i].hw)
				     : NULL;
		/* an encrypted image is ciphertext under a fresh key, and devices
		 * hold their image in clear: no patch can rebuild it there
		 * (docs/delivery.md "Delta updates"), so it goes out whole */
		if (json_object_get(extra, "deltas") && enc_key)
			stage_log(c, "deltas: %s is encrypted; no patch to it (devices fetch the full image)", name);
		if (release_deltas_make(c, delta_from, product, name, img[i].hw, signed_img.ptr,
					signed_img.len, img[i].sha, &deltas) < 0) {
			fail(r, c, "%s", ota_error_last());
			buf_release(&raw);
			buf_release(&signed_img);
			EVP_PKEY_free(enc_key);
			free(name);
			goto out;
		}
		stage_log(c, "signed %s -> %s (%zu bytes, sha256 %.16s)%s%s%s", img[i].name, name, signed_img.len, img[i].sha,
			  enc_key ? ", encrypted for device key '" : "", enc_key ? enc_name : "", enc_key ? "'" : "");
		ij = json_pack("{ss ss ss? ss sI}", "name", name, "type", img[i].type, "hardware", img[i].hw, "sha256",
			       img[i].sha, "size", (json_int_t)img[i].size);
		/* the key class the device needs: scheme, cipher, which key */
		if (ij && enc_key) {
			enum mcuboot_enc scheme = MCUBOOT_ENC_NONE;
			mcuboot_enc_scheme(enc_key, &scheme);
			json_object_set_new(ij, "encryption", json_pack("{ss ss ss ss}", "scheme", mcuboot_enc_name(scheme),
									"cipher", o.enc_bits == 256 ? "aes256" : "aes128",
									"key", enc_name, "key_id", enc_id));
		}
		json_array_append_new(images, ij);
		EVP_PKEY_free(enc_key);
		if (img[i].hw) {
			size_t k;
			json_t *h;
			int seen = 0;
			json_array_foreach(hardware, k, h)
				seen |= !strcmp(json_string_value(h), img[i].hw);
			if (!seen)
				json_array_append_new(hardware, json_string(img[i].hw));
		}
		free(name);
		buf_release(&raw);
		buf_release(&signed_img);
	}

	/* builders: the agents that ran the run's jobs */
	builders = json_array();
	st = store_q(db, "SELECT DISTINCT a.name FROM jobs j JOIN agents a ON a.id = j.agent_id WHERE j.run_id = ? ORDER BY a.name");
	if (!st) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, c->run_id);
	while (db_step(st) == 1)
		json_array_append_new(builders, json_string(db_column_text(st, 0)));
	db_reset(st);

	/* dependencies: the toolchain versions the run's build jobs recorded */
	toolchain = release_toolchain(db, source_run);

	{
		char when[32], vfull[64];
		clock_format(when, signed_ms);
		snprintf(vfull, sizeof(vfull), "%s+%u", version, build);
		manifest = json_pack("{ss ss ss sI s{ss? ss? ss? ss?} ss so so ss? sI ss so}", "product", product, "version", version,
				     "build_version", vfull, "run", (json_int_t)c->run_id, "git", "repo", ri.repo,
				     "ref", ri.ref, "commit", ri.commit, "tree", ri.tree,
				     "built_at", when, "builders", builders, "hardware", hardware, "min_bootloader", min_boot,
				     "security_counter", (json_int_t)counter, "key_id", sign_key_id(key), "images", images);
		builders = hardware = images = NULL;
		if (manifest && json_array_size(toolchain))
			json_object_set(manifest, "dependencies", toolchain);
		if (manifest && json_array_size(deltas.list))
			json_object_set(manifest, "deltas", deltas.list);
		if (manifest && chain)
			json_object_set(manifest, "signing_chain", chain);
		if (manifest && reissue_of)
			json_object_set_new(manifest, "reissue_of", json_pack("{sI sI}", "release", (json_int_t)reissue_of,
									     "run", (json_int_t)source_run));
	}
	if (!manifest) {
		fail(r, c, "cannot build the manifest");
		goto out;
	}
	text = json_dumps(manifest, JSON_INDENT(2) | JSON_SORT_KEYS);
	if ((rc = put(c, "release/manifest.json", NULL, NULL, text, strlen(text), &mid, msha)) < 0) {
		fail(r, c, "cannot store the manifest: %s", ota_error_last());
		goto out;
	}
	{
		struct sign_key *keys[1] = { key };
		char *etext;
		if ((rc = dsse_sign(&env, MANIFEST_TYPE, text, strlen(text), keys, 1)) < 0) {
			fail(r, c, "cannot sign the manifest: %s", ota_error_last());
			goto out;
		}
		etext = json_dumps(env, JSON_INDENT(2));
		rc = put(c, "release/manifest.dsse.json", NULL, NULL, etext, strlen(etext), &eid, esha);
		free(etext);
		json_decref(env);
		env = NULL;
		if (rc < 0) {
			fail(r, c, "cannot store the manifest envelope: %s", ota_error_last());
			goto out;
		}
	}

	/* provenance: subjects are the images and the manifest */
	{
		size_t ndelta = json_array_size(deltas.list);
		struct slsa_subject *subj = xcalloc(nimg + 1 + ndelta, sizeof(*subj));
		struct slsa_dep deps[3 + RELEASE_MAX_TOOLCHAIN];
		struct strvec tool_uris = STRVEC_INIT;
		size_t ndeps = 0;
		char pipeline_sha[65], *git_uri = NULL, *invocation = NULL, *stext;
		struct slsa_input in = { 0 };
		struct sign_key *keys[1] = { key };
		json_t *ext = json_pack("{ss ss sI}", "pipeline", ri.pipeline, "ref", ri.ref ? ri.ref : "", "security_counter",
					(json_int_t)counter);
		if (reissue_of)
			json_object_set_new(ext, "reissue_of", json_pack("{sI sI sI}", "release", (json_int_t)reissue_of, "run",
									 (json_int_t)source_run, "replaces", (json_int_t)reissue_for));

		for (size_t i = 0; i < nimg; i++) {
			subj[i].name = json_string_value(json_object_get(json_array_get(json_object_get(manifest, "images"), i), "name"));
			subj[i].sha256 = img[i].sha;
		}
		subj[nimg].name = "release/manifest.json";
		subj[nimg].sha256 = msha;
		for (size_t i = 0; i < ndelta; i++) {
			subj[nimg + 1 + i].name = json_string_value(json_object_get(json_array_get(deltas.list, i), "name"));
			subj[nimg + 1 + i].sha256 = json_string_value(json_object_get(json_array_get(deltas.list, i), "sha256"));
		}
		ota_sha256_hex(ri.yaml ? ri.yaml : "", ri.yaml ? strlen(ri.yaml) : 0, pipeline_sha);
		if (ri.commit) {
			git_uri = xasprintf("git+%s@%s", ri.repo ? ri.repo : "repository", ri.ref ? ri.ref : "");
			deps[ndeps++] = (struct slsa_dep){ git_uri, NULL, "gitCommit", ri.commit };
		}
		deps[ndeps++] = (struct slsa_dep){ NULL, ri.file ? ri.file : "pipeline.yml", "sha256", pipeline_sha };
		for (size_t i = 0; i < json_array_size(toolchain) && i < RELEASE_MAX_TOOLCHAIN; i++) {
			json_t *t = json_array_get(toolchain, i);
			strvec_pushf(&tool_uris, "toolchain:%s", json_string_value(json_object_get(t, "command")));
			deps[ndeps++] = (struct slsa_dep){ tool_uris.v[tool_uris.n - 1],
							   json_string_value(json_object_get(t, "version")), NULL, NULL };
		}
		in.subjects = subj;
		in.nsubjects = nimg + 1 + ndelta;
		in.build_type = BUILD_TYPE;
		in.external_parameters = ext;
		in.deps = deps;
		in.ndeps = ndeps;
		in.builder_id = BUILDER_ID;
		in.builder_version = OTACD_VERSION;
		/* SLSA v1 BuildMetadata.invocationId: identifies this build
		 * invocation (to find its logs), opaque, and SHOULD be globally
		 * unique: this otacd's instance id, the run, the release job and
		 * its attempt (docs/signing.md) */
		{
			char *inst = NULL;
			struct store *rdb = store_reader();
			if (rdb && store_meta_get(rdb, "instance_id", &inst) == 0)
				invocation = xasprintf("otacd:%s/runs/%lld/jobs/%lld/attempts/%d", inst, (long long)c->run_id,
						       (long long)c->job_id, c->attempt);
			free(inst);
			in.invocation_id = invocation;
		}
		in.started_ms = ri.created_at;
		in.finished_ms = clock_now_ms();
		/* byproducts: every job's verdict, so the chain shows what passed */
		{
			struct store *rdb = store_reader();
			struct db_stmt *q = rdb ? store_q(rdb, "SELECT s.name, j.name, j.state, j.exit_code, a.name, j.id, j.attempt FROM jobs j"
								" JOIN stages s ON s.id = j.stage_id LEFT JOIN agents a ON a.id = j.agent_id"
								" WHERE j.run_id = ? AND j.id != ? ORDER BY j.id") : NULL;
			struct slsa_byproduct *bp = NULL;
			json_t *notes = json_array();
			struct strvec names = STRVEC_INIT, shas = STRVEC_INIT;
			size_t nbp = 0;
			if (q) {
				db_bind_int64(q, 1, c->run_id);
				db_bind_int64(q, 2, c->job_id);
				while (db_step(q) == 1) {
					json_t *ann = json_pack("{ss ss sI ss?}", "stage", db_column_text(q, 0), "state",
								db_column_text(q, 2), "exit_code", (json_int_t)db_column_int64(q, 3),
								"agent", db_column_text(q, 4));
					struct buf log = BUF_INIT;
					char lsha[65];
					/* the byproduct is the job's log, identified by its digest */
					logstore_read(db_column_int64(q, 5), (int)db_column_int64(q, 6), 0, (size_t)64 << 20, &log);
					ota_sha256_hex(log.ptr ? log.ptr : "", log.len, lsha);
					json_object_set_new(ann, "log_sha256", json_string(lsha));
					buf_release(&log);
					strvec_pushf(&names, "job/%s/%s", db_column_text(q, 0), db_column_text(q, 1));
					strvec_push(&shas, lsha);
					json_array_append_new(notes, ann);
				}
				db_reset(q);
			}
			bp = xcalloc(names.n + 1, sizeof(*bp));
			for (size_t i = 0; i < names.n; i++) {
				bp[i].name = names.v[i];
				bp[i].media_type = "text/plain";
				bp[i].sha256 = shas.v[i];
				bp[i].annotations = json_array_get(notes, i);
			}
			nbp = names.n;
			in.byproducts = bp;
			in.nbyproducts = nbp;
			rc = slsa_statement(&stmt, &in);
			free(bp);
			strvec_clear(&names);
			strvec_clear(&shas);
			json_decref(notes);
		}
		json_decref(ext);
		free(git_uri);
		free(invocation);
		free(subj);
		strvec_clear(&tool_uris);
		if (rc < 0) {
			fail(r, c, "cannot build the provenance: %s", ota_error_last());
			goto out;
		}
		stext = json_dumps(stmt, JSON_COMPACT);
		rc = dsse_sign(&env, INTOTO_TYPE, stext, strlen(stext), keys, 1);
		free(stext);
		if (rc == 0) {
			char *etext = json_dumps(env, JSON_INDENT(2));
			rc = put(c, "release/provenance.dsse.json", NULL, NULL, etext, strlen(etext), &pid, psha);
			free(etext);
		}
		if (rc < 0) {
			fail(r, c, "cannot sign or store the provenance: %s", ota_error_last());
			goto out;
		}
	}

	/* record it: anti-rollback and version rules are checked again, atomically */
	{
		int64_t *keep = xcalloc(nimg * 2 + 3 + deltas.n, sizeof(int64_t));
		size_t nkeep = 0;
		struct release_record rec = { 0 };
		for (size_t i = 0; i < nimg; i++) {
			keep[nkeep++] = img[i].in_id;
			keep[nkeep++] = img[i].out_id;
		}
		keep[nkeep++] = mid;
		keep[nkeep++] = eid;
		keep[nkeep++] = pid;
		for (size_t i = 0; i < deltas.n; i++)
			keep[nkeep++] = deltas.ids[i];
		rec.run_id = c->run_id;
		rec.product = product;
		rec.version = version;
		rec.branch = branch;
		rec.key_id = sign_key_id(key);
		rec.security_counter = counter;
		rec.manifest_artifact = mid;
		rec.envelope_artifact = eid;
		rec.provenance_artifact = pid;
		rec.keep = keep;
		rec.nkeep = nkeep;
		rec.reissue_of = reissue_of;
		rec.reissue_for = reissue_for;
		rc = engine_release_record(c->engine, &rec, &release_id);
		free(keep);
		if (rc < 0) {
			fail(r, c, "%s", ota_error_last());
			rc = 0;
			goto out;
		}
	}
	stage_log(c, "release %" PRId64 ": %s %s, %zu image(s), manifest sha256 %.16s", release_id, product, version, nimg, msha);
	r->exit_code = 0;
	r->failure_kind = NULL;
out:
	for (size_t i = 0; i < nimg; i++) {
		free(img[i].name);
		free(img[i].type);
		free(img[i].hw);
	}
	free(img);
	release_deltas_release(&deltas);
	json_decref(delta_from);
	json_decref(manifest);
	json_decref(chain);
	json_decref(images);
	json_decref(hardware);
	json_decref(builders);
	json_decref(toolchain);
	json_decref(env);
	json_decref(stmt);
	free(text);
	free(version);
	free(product);
	free(branch);
	sign_key_free(key);
	run_info_release(&ri);
	return rc;
}

const struct stage_kind stage_kind_release = {
	.name = "release",
	.summary = "sign the run's images (MCUboot), write a signed manifest and SLSA provenance, record the release",
	.keys = release_keys,
	.runs_steps = 0,
	.validate = release_validate,
	.verdict = NULL,
	.run = release_run,
};
