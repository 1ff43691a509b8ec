/*
 * keys_pkcs11.c - the PKCS#11 signing-key backend (HSMs, SoftHSM2).
 *
 * Why: a production release key must not exist as a file.  It lives in a
 * token, and the daemon only holds a handle: the private key never enters
 * this process's memory, the token signs.
 *
 * How: OpenSSL 3 reaches PKCS#11 through the "pkcs11" ENGINE of libp11
 * (Debian: libengine-pkcs11-openssl).  ENGINE_load_private_key() with an
 * RFC 7512 URI returns an EVP_PKEY whose operations are routed to the token,
 * so signing is the same EVP_DigestSign as for a file key (keys.c).  The
 * ENGINE API is deprecated in OpenSSL 3's headers; this is the only file
 * that calls it, and it alone is compiled with OPENSSL_SUPPRESS_DEPRECATED
 * (no warnings are turned off anywhere else).  When the OpenSSL 3 pkcs11
 * provider is packaged, it becomes a second file behind the same struct.
 *
 * libp11 keeps one context per ENGINE: one module, one PIN cache, one set
 * of sessions, and a cached EVP_PKEY per token key that holds its own
 * reference on the engine.  So the engine here is a process-wide singleton:
 * bound on the first PKCS#11 key (ENGINE_by_id("pkcs11"), else the dynamic
 * engine with SO_PATH $OTACD_PKCS11_ENGINE or the Debian path) to
 * $OTACD_PKCS11_MODULE (default SoftHSM2), and kept until the process ends.
 * (Keeping it also avoids a libp11 0.4.12 bug: destroying its engine leaks
 * the RSA/EC method tables it built, fixed in 0.4.13.)  One mutex serialises
 * every engine call (loading, setting the PIN, signing, freeing a key),
 * because libp11's context and PIN cache are shared state.
 *
 * Nothing prompts: the PIN comes from the caller or from the URI's pin-value
 * (tests), and a UI method that refuses to read stands in for the terminal.
 * libp11's own stderr chatter is turned off (QUIET); errors are rebuilt here
 * from OpenSSL's error queue and name the URI with its pin-value removed.
 * PKCS#11 login is per process and token: once a key of a token is loaded,
 * the session stays logged in, and a later load from that token does not
 * check its PIN again.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include "keys.h"

#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/ui.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define P11_DEFAULT_ENGINE "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
#define P11_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

static pthread_mutex_t p11_lock = PTHREAD_MUTEX_INITIALIZER;
/* All below are guarded by p11_lock, set once and kept for the process. */
static ENGINE *p11_engine;     /* our functional reference */
static char *p11_module;       /* the module it is bound to */
static UI_METHOD *p11_ui;      /* refuses to prompt */

static int ui_refuse(UI *ui, UI_STRING *uis)
{
	(void)ui;
	(void)uis;
	return 0;
}

/* Collect the reasons on OpenSSL's error queue (they never hold a PIN). */
static void ssl_reasons(struct buf *b)
{
	unsigned long e;
	while ((e = ERR_get_error()) != 0) {
		const char *r = ERR_reason_error_string(e);
		if (b->len)
			buf_puts(b, "; ");
		if (r)
			buf_puts(b, r);
		else
			buf_printf(b, "error %lu", e);
	}
	buf_puts(b, "");
}

static ENGINE *engine_dynamic(const char *so)
{
	ENGINE *e = ENGINE_by_id("dynamic");
	if (!e)
		return NULL;
	if (!ENGINE_ctrl_cmd_string(e, "SO_PATH", so, 0) || !ENGINE_ctrl_cmd_string(e, "ID", "pkcs11", 0) ||
	    !ENGINE_ctrl_cmd_string(e, "LIST_ADD", "0", 0) || !ENGINE_ctrl_cmd_string(e, "LOAD", NULL, 0)) {
		ENGINE_free(e);
		return NULL;
	}
	return e;
}

/* The process-wide engine, bound to module on first use.  Under p11_lock. */
static int engine_get(const char *module)
{
	const char *so = getenv("OTACD_PKCS11_ENGINE");
	ENGINE *e = NULL;

	if (access(module, R_OK) != 0)
		return ota_error_set(OTA_ERROR,
				     "PKCS#11 module %s not found (install softhsm2 or your HSM's module, "
				     "or set OTACD_PKCS11_MODULE)", module);
	if (p11_engine) {
		if (strcmp(module, p11_module) != 0)
			return ota_error_set(OTA_ECONFLICT,
					     "the pkcs11 engine is already bound to module %s, not %s "
					     "(one module per process)", p11_module, module);
		return 0;
	}
	if (!so || !*so)
		e = ENGINE_by_id("pkcs11");
	if (!e) {
		ERR_clear_error();
		e = engine_dynamic(so && *so ? so : P11_DEFAULT_ENGINE);
	}
	if (!e) {
		ERR_clear_error();
		return ota_error_set(OTA_ERROR,
				     "OpenSSL pkcs11 engine not found (install libengine-pkcs11-openssl, "
				     "or set OTACD_PKCS11_ENGINE to its pkcs11.so)");
	}
	if (!ENGINE_ctrl_cmd_string(e, "MODULE_PATH", module, 0) || !ENGINE_ctrl_cmd_string(e, "QUIET", NULL, 0) ||
	    !ENGINE_init(e)) {
		struct buf why = BUF_INIT;
		ssl_reasons(&why);
		ENGINE_free(e);
		ota_error_set(OTA_ERROR, "cannot start the pkcs11 engine with module %s: %s", module,
			      why.len ? buf_cstr(&why) : "unknown error");
		buf_release(&why);
		return OTA_ERROR;
	}
	ENGINE_free(e);   /* the functional reference keeps it */
	p11_ui = UI_create_method("otacd: no prompts");
	if (p11_ui)
		UI_method_set_reader(p11_ui, ui_refuse);
	p11_engine = e;
	p11_module = xstrdup(module);
	return 0;
}

static int p11_sign(const struct sign_key *k, const void *msg, size_t len, struct buf *sig)
{
	int rc;
	pthread_mutex_lock(&p11_lock);
	rc = sign_key_evp_sign(k, msg, len, sig);
	pthread_mutex_unlock(&p11_lock);
	return rc;
}

static void p11_free(struct sign_key *k)
{
	/* The engine key under the lock: freeing it runs libp11 code. */
	pthread_mutex_lock(&p11_lock);
	EVP_PKEY_free(k->pkey);
	k->pkey = NULL;
	pthread_mutex_unlock(&p11_lock);
}

static const struct sign_key_backend p11_backend = { "pkcs11", p11_sign, p11_free };

/* Classify a failed load from the error queue. */
static int load_error(const char *spec)
{
	struct buf why = BUF_INIT;
	int code = OTA_ENOTFOUND;
	const char *w;

	ssl_reasons(&why);
	w = buf_cstr(&why);
	if (strcasestr(w, "pin") || strcasestr(w, "login") || strcasestr(w, "user not logged"))
		code = OTA_EAUTH;
	else if (strcasestr(w, "invalid id") || strcasestr(w, "uri"))
		code = OTA_EINVAL;
	if (code == OTA_EAUTH)
		ota_error_set(code, "%s: login to the token failed (wrong PIN?)%s%s", spec, *w ? ": " : "", w);
	else if (code == OTA_EINVAL)
		ota_error_set(code, "%s: not a valid PKCS#11 URI%s%s", spec, *w ? ": " : "", w);
	else
		ota_error_set(code, "%s: no such private key (check token= and object=)%s%s", spec,
			      *w ? ": " : "", w);
	buf_release(&why);
	return code;
}

/* The public half as a plain key: from the engine key if it carries the
 * public point, else from the token's public key object.  Under p11_lock. */
static EVP_PKEY *p11_public(EVP_PKEY *priv, const char *uri)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	EVP_PKEY *pub = NULL, *tokpub = NULL;
	int len;

	len = i2d_PUBKEY(priv, &der);
	if (len <= 0) {
		ERR_clear_error();
		tokpub = ENGINE_load_public_key(p11_engine, uri, p11_ui, NULL);
		if (tokpub)
			len = i2d_PUBKEY(tokpub, &der);
	}
	if (len > 0) {
		p = der;
		pub = d2i_PUBKEY(NULL, &p, len);
	}
	OPENSSL_free(der);
	EVP_PKEY_free(tokpub);
	ERR_clear_error();
	return pub;
}

int sign_key_pkcs11_load(struct sign_key **out, const char *uri, const char *pin)
{
	const char *module = getenv("OTACD_PKCS11_MODULE");
	struct sign_key *k = xcalloc(1, sizeof(*k));
	int rc = 0, locked = 0, has_pin_value = strcasestr(uri, "pin-value=") != NULL;

	*out = NULL;
	if (!module || !*module)
		module = P11_DEFAULT_MODULE;
	k->backend = &p11_backend;
	k->spec = sign_key_redact_spec(uri);
	if (!pin && !has_pin_value) {
		rc = ota_error_set(OTA_EAUTH, "%s: no PIN given for the token", k->spec);
		goto out;
	}
	pthread_mutex_lock(&p11_lock);
	locked = 1;
	if ((rc = engine_get(module)) < 0)
		goto out;
	ERR_clear_error();
	if (pin && !has_pin_value && !ENGINE_ctrl_cmd_string(p11_engine, "PIN", pin, 0)) {
		ERR_clear_error();
		rc = ota_error_set(OTA_ERROR, "%s: cannot hand the PIN to the pkcs11 engine", k->spec);
		goto out;
	}
	k->pkey = ENGINE_load_private_key(p11_engine, uri, p11_ui, NULL);
	if (!k->pkey) {
		rc = load_error(k->spec);
		goto out;
	}
	k->pub = p11_public(k->pkey, uri);
	if (!k->pub) {
		rc = ota_error_set(OTA_EINVAL, "%s: the token holds no public key for this private key", k->spec);
		goto out;
	}
	pthread_mutex_unlock(&p11_lock);
	locked = 0;
	if ((rc = sign_key_finish(k)) < 0) {
		ota_error_prefix("%s", k->spec);
		goto out;
	}
	*out = k;
	k = NULL;
out:
	ERR_clear_error();
	if (locked)
		pthread_mutex_unlock(&p11_lock);
	sign_key_free(k);
	return rc;
}
