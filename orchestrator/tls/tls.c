/*
 * tls.c - reloadable TLS credentials for otacd's libmicrohttpd listeners.
 *
 * Why: the device API and the API/page/agent listener must serve TLS 1.2+
 * (issue 13), certificates are replaced while the daemon runs (SIGHUP), and
 * the device listener must tell handlers which client certificate a device
 * presented (device identity by certificate, fleet_ca.c decides what it is
 * worth).
 *
 * How: libmicrohttpd (built with GnuTLS in Debian) owns the sockets and the
 * GnuTLS sessions.  We do not hand it a fixed key (MHD_OPTION_HTTPS_MEM_KEY
 * would be read once); we give it a certificate retrieve callback
 * (MHD_OPTION_HTTPS_CERT_CALLBACK) that returns the current `struct
 * tls_creds` of the listener.  A reload loads the files into a new
 * tls_creds and swaps the pointer under the lock; old ones stay allocated
 * until the listener is freed, because a handshake in progress may still
 * point at them (a reload is rare: one small set per SIGHUP).
 *
 * Per connection (MHD_CONNECTION_NOTIFY_STARTED, before any byte of the
 * handshake is read) we attach the listener to the session
 * (gnutls_db_set_ptr: MHD uses no session cache, so the slot is free),
 * enable session tickets with the listener's ticket key and a bounded
 * session-ID cache (resumption: one round trip and no signature for a
 * device checking in again, TLS 1.3 or 1.2), and, with a
 * client CA, ask for a client certificate and install a verify callback
 * that fails the handshake when a presented certificate does not chain to
 * the CA.  A device without a certificate still connects (token auth).
 */
#include "tls.h"

#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "../../common/log.h"
#include "../../common/util.h"

#define TLS_FILE_MAX ((size_t)1 << 20)
#define TLS_CHAIN_MAX 16
/* The TLS 1.2 session-ID cache: a fixed table, a new session overwrites
 * whatever shared its slot (memory stays bounded, a flood only evicts). */
#define SESS_SLOTS 8192
#define SESS_KEY_MAX 64
#define SESS_DATA_MAX 8192

struct sess_slot {
	unsigned char key[SESS_KEY_MAX];
	unsigned klen;
	gnutls_datum_t data;
};

/* One generation of a listener's certificate, key and client CA. */
struct tls_creds {
	gnutls_pcert_st pcert[TLS_CHAIN_MAX];
	unsigned npcert;
	gnutls_privkey_t key;
	gnutls_x509_trust_list_t client_ca;  /* NULL: no client certificates */
	char serial[80];
	struct tls_creds *older;             /* freed with the server */
};

struct tls_server {
	char *name;
	char *cert_path, *key_path, *ca_path;
	pthread_mutex_t mu;                  /* guards cur */
	struct tls_creds *cur;
	gnutls_datum_t ticket_key;
	pthread_mutex_t smu;                 /* guards sess */
	struct sess_slot *sess;              /* SESS_SLOTS */
	struct tls_server *next;             /* the registry */
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tls_server *registry;
static unsigned long refusals;

/* ---- GnuTLS's global set-up, when a listener needs it -------------------- */
/*
 * Idle memory (issue 18): GnuTLS's constructor calls gnutls_global_init(),
 * and so does libmicrohttpd's (Debian builds it with GnuTLS), so every
 * process linking tls.c paid for GnuTLS's set-up at start (its ASN.1
 * trees, the system priority file, the crypto back-ends: ~0.75 MB of an
 * idle otacd's Rss, docs/benchmarks.md) although only a listener with a
 * `tls:` block uses it.  GNUTLS_SKIP_GLOBAL_INIT (gnutls.h) turns
 * GnuTLS's own off.  libmicrohttpd's call reaches the gnutls_global_init()
 * below (a program's definition comes before a library's): before main()
 * it is answered with success and counted, and its gnutls_global_deinit()
 * at exit only takes the count back.  tls_started runs after every shared
 * library's constructor; from then on both go to GnuTLS, and
 * tls_server_new() makes the call it needs.  test_idlemem checks that an
 * idle otacd does not set GnuTLS up and that a `tls:` listener does.
 */
GNUTLS_SKIP_GLOBAL_INIT

static int tls_main_started;          /* set by tls_started() */
static unsigned tls_deferred_inits;   /* calls answered before main() */

__attribute__((constructor)) static void tls_started(void)
{
	__atomic_store_n(&tls_main_started, 1, __ATOMIC_RELEASE);
}

static void *gnutls_real(const char *name)
{
	void *f = dlvsym(RTLD_NEXT, name, "GNUTLS_3_4");
	return f ? f : dlsym(RTLD_NEXT, name);
}

int gnutls_global_init(void)
{
	int (*real)(void);

	if (!__atomic_load_n(&tls_main_started, __ATOMIC_ACQUIRE)) {
		tls_deferred_inits++; /* constructors run on one thread */
		return 0;
	}
	real = (int (*)(void))gnutls_real("gnutls_global_init");
	return real ? real() : GNUTLS_E_INTERNAL_ERROR;
}

void gnutls_global_deinit(void)
{
	void (*real)(void);

	if (__atomic_load_n(&tls_deferred_inits, __ATOMIC_ACQUIRE) > 0) {
		__atomic_sub_fetch(&tls_deferred_inits, 1, __ATOMIC_ACQ_REL);
		return;
	}
	real = (void (*)(void))gnutls_real("gnutls_global_deinit");
	if (real)
		real();
}

/* ---- configuration ------------------------------------------------------- */

static int check_files(const json_t *o, const char *where, int allow_ca)
{
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)o, k, v) {
		if (strcmp(k, "cert") && strcmp(k, "key") && (!allow_ca || strcmp(k, "client_ca")))
			return ota_error_set(OTA_EINVAL, "%s: unknown key '%s' (expected cert, key%s)", where, k,
					     allow_ca ? ", client_ca" : "");
		if (!json_is_string(v) || !*json_string_value(v))
			return ota_error_set(OTA_EINVAL, "%s.%s must be a file name", where, k);
	}
	if (!json_object_get(o, "cert") != !json_object_get(o, "key"))
		return ota_error_set(OTA_EINVAL, "%s: cert and key go together", where);
	return 0;
}

int tls_config_check(const json_t *tls)
{
	static const char *const listeners[] = { "api", "agents", "devices" };
	const char *k;
	json_t *v;

	if (!json_is_object(tls))
		return ota_error_set(OTA_EINVAL, "tls must be a mapping {cert, key, client_ca, api, agents, devices}");
	json_object_foreach((json_t *)tls, k, v) {
		int listener = !strcmp(k, "api") || !strcmp(k, "agents") || !strcmp(k, "devices");
		if (!listener && strcmp(k, "cert") && strcmp(k, "key") && strcmp(k, "client_ca"))
			return ota_error_set(OTA_EINVAL, "tls: unknown key '%s' (expected cert, key, client_ca, api, "
					     "agents, devices)", k);
		if (!listener && (!json_is_string(v) || !*json_string_value(v)))
			return ota_error_set(OTA_EINVAL, "tls.%s must be a file name", k);
	}
	if (!json_object_get(tls, "cert") != !json_object_get(tls, "key"))
		return ota_error_set(OTA_EINVAL, "tls: cert and key go together");
	for (size_t i = 0; i < OTA_ARRAY_SIZE(listeners); i++) {
		char where[32];
		int devices = !strcmp(listeners[i], "devices");
		v = json_object_get(tls, listeners[i]);
		snprintf(where, sizeof(where), "tls.%s", listeners[i]);
		if (!v || json_is_boolean(v))
			continue;
		if (!json_is_object(v))
			return ota_error_set(OTA_EINVAL, "%s must be true, false or {cert, key%s}", where,
					     devices ? ", client_ca" : "");
		if (check_files(v, where, devices) < 0)
			return OTA_EINVAL;
		if (!json_object_get(v, "cert") && !json_object_get(tls, "cert"))
			return ota_error_set(OTA_EINVAL, "%s: no cert (neither its own nor tls.cert)", where);
	}
	if (!json_object_get(tls, "cert") &&
	    !json_object_get(json_object_get(tls, "api"), "cert") && !json_object_get(json_object_get(tls, "agents"), "cert") &&
	    !json_object_get(json_object_get(tls, "devices"), "cert"))
		return ota_error_set(OTA_EINVAL, "tls: no cert and key (tls.cert, or a listener's own)");
	if (json_object_get(tls, "client_ca") && json_is_object(json_object_get(tls, "devices")) &&
	    json_object_get(json_object_get(tls, "devices"), "client_ca"))
		return ota_error_set(OTA_EINVAL, "tls: client_ca is given twice (tls.client_ca and tls.devices.client_ca)");
	if (json_object_get(tls, "client_ca") && !json_object_get(tls, "cert") &&
	    !json_is_object(json_object_get(tls, "devices")))
		return ota_error_set(OTA_EINVAL, "tls.client_ca needs the device listener's cert and key");
	return 0;
}

void tls_listener_files(struct tls_files *out, const json_t *tls, const char *which)
{
	const json_t *own = json_object_get(tls, which);

	memset(out, 0, sizeof(*out));
	if (!tls || json_is_false(own))
		return;
	if (json_is_object(own) && json_object_get(own, "cert")) {
		out->cert = json_string_value(json_object_get(own, "cert"));
		out->key = json_string_value(json_object_get(own, "key"));
	} else {
		out->cert = json_string_value(json_object_get(tls, "cert"));
		out->key = json_string_value(json_object_get(tls, "key"));
	}
	if (!out->cert)
		return;
	if (!strcmp(which, "devices")) {
		out->client_ca = json_is_object(own) ? json_string_value(json_object_get(own, "client_ca")) : NULL;
		if (!out->client_ca)
			out->client_ca = json_string_value(json_object_get(tls, "client_ca"));
	}
}

/* ---- loading ------------------------------------------------------------- */

static void creds_free(struct tls_creds *c)
{
	while (c) {
		struct tls_creds *older = c->older;
		for (unsigned i = 0; i < c->npcert; i++)
			gnutls_pcert_deinit(&c->pcert[i]);
		if (c->key)
			gnutls_privkey_deinit(c->key);
		if (c->client_ca)
			gnutls_x509_trust_list_deinit(c->client_ca, 1);
		free(c);
		c = older;
	}
}

static int read_datum(struct buf *b, gnutls_datum_t *d, const char *path, const char *what)
{
	if (ota_read_file(b, path, TLS_FILE_MAX) < 0)
		return ota_error_set(OTA_EINVAL, "tls %s %s: %s", what, path, ota_error_last());
	d->data = (unsigned char *)b->ptr;
	d->size = (unsigned)b->len;
	return 0;
}

/* The key's public half must be the certificate's: a key id comparison. */
static int key_matches(gnutls_privkey_t key, gnutls_pubkey_t cert_pub)
{
	unsigned char a[64], b[64];
	size_t alen = sizeof(a), blen = sizeof(b);
	gnutls_pubkey_t pub = NULL;
	int ok = 0;

	if (gnutls_pubkey_init(&pub) < 0)
		return 0;
	if (gnutls_pubkey_import_privkey(pub, key, 0, 0) == 0 &&
	    gnutls_pubkey_get_key_id(pub, GNUTLS_KEYID_USE_SHA256, a, &alen) == 0 &&
	    gnutls_pubkey_get_key_id(cert_pub, GNUTLS_KEYID_USE_SHA256, b, &blen) == 0)
		ok = alen == blen && !memcmp(a, b, alen);
	gnutls_pubkey_deinit(pub);
	return ok;
}

static void serial_hex(struct tls_creds *c)
{
	gnutls_x509_crt_t crt = NULL;
	unsigned char s[40];
	size_t n = sizeof(s), off = 0;

	c->serial[0] = '\0';
	if (gnutls_x509_crt_init(&crt) < 0)
		return;
	if (gnutls_x509_crt_import(crt, &c->pcert[0].cert, GNUTLS_X509_FMT_DER) == 0 &&
	    gnutls_x509_crt_get_serial(crt, s, &n) == 0)
		for (size_t i = 0; i < n && off + 3 <= sizeof(c->serial); i++)
			off += (size_t)snprintf(c->serial + off, sizeof(c->serial) - off, "%02x", s[i]);
	gnutls_x509_crt_deinit(crt);
}

static int creds_load(struct tls_creds **out, const struct tls_server *t)
{
	struct tls_creds *c = xcalloc(1, sizeof(*c));
	struct buf cb = BUF_INIT, kb = BUF_INIT, ab = BUF_INIT;
	gnutls_datum_t d;
	unsigned n = TLS_CHAIN_MAX;
	int rc = 0, g;

	*out = NULL;
	if ((rc = read_datum(&cb, &d, t->cert_path, "cert")) < 0)
		goto out;
	if ((g = gnutls_pcert_list_import_x509_raw(c->pcert, &n, &d, GNUTLS_X509_FMT_PEM, 0)) < 0 || n == 0) {
		rc = ota_error_set(OTA_EINVAL, "tls cert %s: %s", t->cert_path,
				   g < 0 ? gnutls_strerror(g) : "no certificate in the file");
		goto out;
	}
	c->npcert = n;
	if ((rc = read_datum(&kb, &d, t->key_path, "key")) < 0)
		goto out;
	if ((g = gnutls_privkey_init(&c->key)) < 0 ||
	    (g = gnutls_privkey_import_x509_raw(c->key, &d, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
		rc = ota_error_set(OTA_EINVAL, "tls key %s: %s", t->key_path, gnutls_strerror(g));
		goto out;
	}
	if (!key_matches(c->key, c->pcert[0].pubkey)) {
		rc = ota_error_set(OTA_EINVAL, "tls key %s is not the key of the certificate in %s", t->key_path,
				   t->cert_path);
		goto out;
	}
	if (t->ca_path) {
		if ((rc = read_datum(&ab, &d, t->ca_path, "client_ca")) < 0)
			goto out;
		if ((g = gnutls_x509_trust_list_init(&c->client_ca, 0)) < 0 ||
		    (g = gnutls_x509_trust_list_add_trust_mem(c->client_ca, &d, NULL, GNUTLS_X509_FMT_PEM, 0, 0)) <= 0) {
			rc = ota_error_set(OTA_EINVAL, "tls client_ca %s: %s", t->ca_path,
					   g < 0 ? gnutls_strerror(g) : "no certificate in the file");
			goto out;
		}
	}
	serial_hex(c);
	*out = c;
	c = NULL;
out:
	if (kb.ptr)
		explicit_bzero(kb.ptr, kb.len);
	buf_release(&cb);
	buf_release(&kb);
	buf_release(&ab);
	creds_free(c);
	return rc;
}

/* ---- the server ------------------------------------------------------------ */

int tls_server_new(struct tls_server **out, const char *name, const struct tls_files *files)
{
	struct tls_server *t;
	int rc;

	*out = NULL;
	/* balanced in tls_server_free() */
	if ((rc = gnutls_global_init()) < 0)
		return ota_error_set(OTA_ERROR, "tls: GnuTLS's set-up: %s", gnutls_strerror(rc));
	t = xcalloc(1, sizeof(*t));
	t->name = xstrdup(name);
	t->cert_path = xstrdup(files->cert);
	t->key_path = xstrdup(files->key);
	t->ca_path = files->client_ca ? xstrdup(files->client_ca) : NULL;
	pthread_mutex_init(&t->mu, NULL);
	pthread_mutex_init(&t->smu, NULL);
	t->sess = xcalloc(SESS_SLOTS, sizeof(*t->sess));
	if ((rc = creds_load(&t->cur, t)) < 0) {
		tls_server_free(t);
		return rc;
	}
	if ((rc = gnutls_session_ticket_key_generate(&t->ticket_key)) < 0) {
		rc = ota_error_set(OTA_ERROR, "tls: session ticket key: %s", gnutls_strerror(rc));
		t->ticket_key.data = NULL;
		tls_server_free(t);
		return rc;
	}
	pthread_mutex_lock(&registry_mu);
	t->next = registry;
	registry = t;
	pthread_mutex_unlock(&registry_mu);
	*out = t;
	return 0;
}

void tls_server_free(struct tls_server *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&registry_mu);
	for (struct tls_server **p = &registry; *p; p = &(*p)->next)
		if (*p == t) {
			*p = t->next;
			break;
		}
	pthread_mutex_unlock(&registry_mu);
	creds_free(t->cur);
	if (t->ticket_key.data) {
		explicit_bzero(t->ticket_key.data, t->ticket_key.size);
		gnutls_free(t->ticket_key.data);
	}
	for (size_t i = 0; i < SESS_SLOTS; i++)
		if (t->sess[i].data.data) {
			explicit_bzero(t->sess[i].data.data, t->sess[i].data.size);
			free(t->sess[i].data.data);
		}
	free(t->sess);
	pthread_mutex_destroy(&t->smu);
	pthread_mutex_destroy(&t->mu);
	free(t->name);
	free(t->cert_path);
	free(t->key_path);
	free(t->ca_path);
	free(t);
	gnutls_global_deinit();
}

int tls_server_reload(struct tls_server *t)
{
	struct tls_creds *c;
	int rc;

	if ((rc = creds_load(&c, t)) < 0)
		return rc;
	pthread_mutex_lock(&t->mu);
	c->older = t->cur;
	t->cur = c;
	pthread_mutex_unlock(&t->mu);
	return 0;
}

void tls_reload_all(void)
{
	pthread_mutex_lock(&registry_mu);
	for (struct tls_server *t = registry; t; t = t->next) {
		if (tls_server_reload(t) < 0) {
			ota_log(OTA_LOG_WARN, "%s listener: TLS reload failed, the old certificate stays: %s", t->name,
				ota_error_last());
		} else {
			char *serial = tls_server_serial(t);
			ota_log(OTA_LOG_INFO, "%s listener: TLS certificate reloaded (serial %s)", t->name, serial);
			free(serial);
		}
	}
	pthread_mutex_unlock(&registry_mu);
}

char *tls_server_serial(struct tls_server *t)
{
	char *s;
	pthread_mutex_lock(&t->mu);
	s = xstrdup(t->cur->serial);
	pthread_mutex_unlock(&t->mu);
	return s;
}

static struct tls_creds *current(struct tls_server *t)
{
	struct tls_creds *c;
	pthread_mutex_lock(&t->mu);
	c = t->cur;
	pthread_mutex_unlock(&t->mu);
	return c;
}

/* ---- per handshake -------------------------------------------------------- */

/* gnutls_certificate_retrieve_function2: the listener's current chain. */
static int retrieve(gnutls_session_t s, const gnutls_datum_t *req_ca_dn, int nreqs,
		    const gnutls_pk_algorithm_t *algos, int nalgos, gnutls_pcert_st **pcert,
		    unsigned int *pcert_length, gnutls_privkey_t *pkey)
{
	struct tls_server *t = gnutls_db_get_ptr(s);
	struct tls_creds *c;

	(void)req_ca_dn, (void)nreqs, (void)algos, (void)nalgos;
	if (!t)
		return -1;
	c = current(t);
	*pcert = c->pcert;
	*pcert_length = c->npcert;
	*pkey = c->key;
	return 0;
}

/*
 * The peer's chain verified against trust (client use, at the current
 * time).  0, or OTA_EAUTH.
 */
static int verify_chain(gnutls_x509_trust_list_t trust, const gnutls_datum_t *peers, unsigned npeers)
{
	gnutls_x509_crt_t crts[TLS_CHAIN_MAX];
	gnutls_typed_vdata_st purpose = { GNUTLS_DT_KEY_PURPOSE_OID, (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT, 0 };
	unsigned n = 0, status = 1;
	int rc = OTA_EAUTH;

	if (npeers > TLS_CHAIN_MAX)
		return OTA_EAUTH;
	for (; n < npeers; n++)
		if (gnutls_x509_crt_init(&crts[n]) < 0 || gnutls_x509_crt_import(crts[n], &peers[n], GNUTLS_X509_FMT_DER) < 0) {
			gnutls_x509_crt_deinit(crts[n]);
			goto out;
		}
	if (gnutls_x509_trust_list_verify_crt2(trust, crts, n, &purpose, 1, 0, &status, NULL) == 0 && status == 0)
		rc = 0;
out:
	for (unsigned i = 0; i < n; i++)
		gnutls_x509_crt_deinit(crts[i]);
	return rc;
}

/* gnutls_certificate_verify_function: a presented client certificate must
 * chain to the client CA; none at all is fine (the handler decides). */
static int verify_client(gnutls_session_t s)
{
	struct tls_server *t = gnutls_db_get_ptr(s);
	const gnutls_datum_t *peers;
	unsigned n = 0;
	struct tls_creds *c;

	if (!t)
		return -1;
	peers = gnutls_certificate_get_peers(s, &n);
	if (!peers || n == 0)
		return 0;
	c = current(t);
	if (c->client_ca && verify_chain(c->client_ca, peers, n) == 0)
		return 0;
	__atomic_add_fetch(&refusals, 1, __ATOMIC_RELAXED);
	return GNUTLS_E_CERTIFICATE_ERROR;
}

unsigned tls_server_mhd_options(struct tls_server *t, struct MHD_OptionItem *opts)
{
	size_t i = 0;
	if (t) {
		opts[i++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_CERT_CALLBACK, 0, (void *)retrieve };
		opts[i++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES };
	}
	opts[i] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
	return t ? MHD_USE_TLS : 0;
}

/*
 * TLS 1.2 resumption by session ID (clients that send no ticket, such as
 * libcurl's OpenSSL backend below TLS 1.3).  GnuTLS hands the db pointer
 * (the listener) to these; the data it stores holds the session's master
 * secret, so a slot is wiped before it is reused.  GnuTLS checks a
 * retrieved session's age itself.
 */
static struct sess_slot *sess_slot(struct tls_server *t, const gnutls_datum_t *key)
{
	uint32_t h = 2166136261u;
	for (unsigned i = 0; i < key->size; i++)
		h = (h ^ key->data[i]) * 16777619u;
	return &t->sess[h % SESS_SLOTS];
}

static void slot_clear(struct sess_slot *sl)
{
	if (sl->data.data) {
		explicit_bzero(sl->data.data, sl->data.size);
		free(sl->data.data);
	}
	sl->data.data = NULL;
	sl->data.size = 0;
	sl->klen = 0;
}

static int sess_store(void *ptr, gnutls_datum_t key, gnutls_datum_t data)
{
	struct tls_server *t = ptr;
	struct sess_slot *sl;

	if (!t || key.size == 0 || key.size > SESS_KEY_MAX || data.size > SESS_DATA_MAX)
		return -1;
	sl = sess_slot(t, &key);
	pthread_mutex_lock(&t->smu);
	slot_clear(sl);
	memcpy(sl->key, key.data, key.size);
	sl->klen = key.size;
	sl->data.data = xmalloc(data.size);
	memcpy(sl->data.data, data.data, data.size);
	sl->data.size = data.size;
	pthread_mutex_unlock(&t->smu);
	return 0;
}

static gnutls_datum_t sess_retrieve(void *ptr, gnutls_datum_t key)
{
	struct tls_server *t = ptr;
	gnutls_datum_t r = { NULL, 0 };
	struct sess_slot *sl;

	if (!t || key.size == 0 || key.size > SESS_KEY_MAX)
		return r;
	sl = sess_slot(t, &key);
	pthread_mutex_lock(&t->smu);
	if (sl->klen == key.size && !memcmp(sl->key, key.data, key.size) && sl->data.data &&
	    (r.data = gnutls_malloc(sl->data.size))) {
		memcpy(r.data, sl->data.data, sl->data.size);
		r.size = sl->data.size;
	}
	pthread_mutex_unlock(&t->smu);
	return r;
}

static int sess_remove(void *ptr, gnutls_datum_t key)
{
	struct tls_server *t = ptr;
	struct sess_slot *sl;

	if (!t || key.size == 0 || key.size > SESS_KEY_MAX)
		return -1;
	sl = sess_slot(t, &key);
	pthread_mutex_lock(&t->smu);
	if (sl->klen == key.size && !memcmp(sl->key, key.data, key.size))
		slot_clear(sl);
	pthread_mutex_unlock(&t->smu);
	return 0;
}

void tls_server_conn_started(struct tls_server *t, struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci;
	gnutls_session_t s;

	if (!t || !(ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION)) || !ci->tls_session)
		return;
	s = (gnutls_session_t)ci->tls_session;
	/* a handshake flight is several writes: without TCP_NODELAY, Nagle
	 * holds the later ones for the peer's delayed ACK (40 ms a handshake) */
	if ((ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD)) && ci->connect_fd >= 0) {
		int one = 1;
		setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	gnutls_db_set_ptr(s, t);
	gnutls_db_set_store_function(s, sess_store);
	gnutls_db_set_retrieve_function(s, sess_retrieve);
	gnutls_db_set_remove_function(s, sess_remove);
	gnutls_session_ticket_enable_server(s, &t->ticket_key);
	if (t->ca_path) {
		gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUEST);
		gnutls_session_set_verify_function(s, verify_client);
	}
}

int tls_peer_cert_der(struct MHD_Connection *c, unsigned char **der, size_t *len)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	const gnutls_datum_t *peers;
	struct tls_server *t;
	unsigned n = 0;
	gnutls_session_t s;

	*der = NULL;
	*len = 0;
	if (!ci || !ci->tls_session)
		return OTA_ENOTFOUND;
	s = (gnutls_session_t)ci->tls_session;
	t = gnutls_db_get_ptr(s);
	peers = gnutls_certificate_get_peers(s, &n);
	if (!t || !peers || n == 0)
		return OTA_ENOTFOUND;
	/* a full handshake ran verify_client; a resumed one is checked again
	 * against today's CA (it may have changed since the ticket) */
	if (gnutls_session_is_resumed(s)) {
		struct tls_creds *cr = current(t);
		if (!cr->client_ca || verify_chain(cr->client_ca, peers, n) < 0)
			return ota_error_set(OTA_EAUTH, "the client certificate does not verify against the client CA");
	}
	*der = xmalloc(peers[0].size);
	memcpy(*der, peers[0].data, peers[0].size);
	*len = peers[0].size;
	return 0;
}

unsigned long tls_client_cert_refusals(void)
{
	return __atomic_load_n(&refusals, __ATOMIC_RELAXED);
}

void tls_warn_if_plain(const char *name, const char *listen, const struct sockaddr *sa, const struct tls_server *t)
{
	int loopback = 0;
	if (t)
		return;
	if (sa->sa_family == AF_INET)
		loopback = (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	else if (sa->sa_family == AF_INET6)
		loopback = IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
	if (!loopback)
		ota_log(OTA_LOG_WARN, "warning: the %s listener on %s is not loopback and has no TLS: "
			"credentials and data cross the network in clear (docs/config.md, tls)", name, listen);
}
