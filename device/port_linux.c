/*
 * port_linux.c - the hooks of libotadev for embedded Linux, and the
 * simulated MCUboot that lets tests "reboot" (port_linux_boot).
 *
 * Everything here may use the heap and the OS: it is the port, not the
 * core.  Files: the two slot files (each exactly slot_size bytes), the
 * record file (state), written as state.tmp + fsync + rename so a cut
 * leaves the old or the new record, never a torn one.
 */
#include "port_linux.h"
#include "port_linux_enc.h"
#include "port_linux_x509.h"

#include "linux/push.h"
#include "linux/slot.h"
#include "linux/uboot.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct port_linux {
	struct otadev_config cfg;
	char *url, *device, *credential, *product, *hardware, *bootloader, *tags;
	char *slot_path[2], *state_path, *health_check, *status_file, *cacert, *client_cert, *client_key;
	char *boot, *fw_env_config, *uboot_slot_var, *uboot_cmdline, *reboot_command;
	struct slot slot[2];         /* physical: primary/secondary, or U-Boot's a/b */
	struct uboot uboot;
	int use_uboot, booted;       /* U-Boot: the slot the kernel was booted from (a 0, b 1) */
	int sync, direct;
	uint32_t throttle_ms;
	unsigned char *keyder[OTADEV_KEYS_MAX];
	unsigned char *anchor;                 /* issue 13: the root certificate (DER) */
	EVP_PKEY *enc_priv;                    /* enc_key: decrypts MCUboot encrypted images */
	struct port_enc enc;                   /* the image key while an image is verified */
	EVP_MD_CTX *md;
	CURL *curl;
	int reboot;
};

static char *dupstr(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = malloc(n);
	if (p)
		memcpy(p, s, n);
	return p;
}

static char *trim(char *s)
{
	char *e;
	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = 0;
	return s;
}

/* enc_key: the device's private key for encrypted images (EC P-256 for
 * ECIES-P256, X25519 for ECIES-X25519; docs/device.md "Encrypted images"). */
static int load_enc_key(struct port_linux *p, const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (!f) {
		fprintf(stderr, "otacd-device: enc_key %s: %s\n", path, strerror(errno));
		return -1;
	}
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (!k || !(EVP_PKEY_is_a(k, "X25519") || (EVP_PKEY_is_a(k, "EC") && EVP_PKEY_get_bits(k) == 256))) {
		fprintf(stderr, "otacd-device: enc_key %s: not a PEM EC P-256 or X25519 private key\n", path);
		EVP_PKEY_free(k);
		return -1;
	}
	EVP_PKEY_free(p->enc_priv);
	p->enc_priv = k;
	return 0;
}

static int load_key(struct port_linux *p, const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k = NULL;
	unsigned char *der = NULL;
	int n, rc = -1;

	if (!f) {
		fprintf(stderr, "otacd-device: key %s: %s\n", path, strerror(errno));
		return -1;
	}
	k = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (!k || p->cfg.nkeys >= OTADEV_KEYS_MAX || (n = i2d_PUBKEY(k, &der)) <= 0) {
		fprintf(stderr, "otacd-device: key %s: not a PEM public key (or more than %d keys)\n", path,
			OTADEV_KEYS_MAX);
		goto out;
	}
	p->keyder[p->cfg.nkeys] = der;
	p->cfg.keys[p->cfg.nkeys].der = der;
	p->cfg.keys[p->cfg.nkeys].len = (size_t)n;
	p->cfg.nkeys++;
	rc = 0;
out:
	EVP_PKEY_free(k);
	return rc;
}

/* tags = region=eu,group=staging -> "region":"eu","group":"staging" */
static char *render_tags(const char *v)
{
	size_t cap = strlen(v) * 2 + 16, len = 0;
	char *out = calloc(1, cap);
	const char *s = v;
	if (!out)
		return NULL;
	while (*s) {
		const char *e = strchr(s, ','), *eq = strchr(s, '=');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		if (!eq || eq > s + n) {
			free(out);
			return NULL;
		}
		len += (size_t)snprintf(out + len, cap - len, "%s\"%.*s\":\"%.*s\"", len ? "," : "",
					(int)(eq - s), s, (int)(n - (size_t)(eq - s) - 1), eq + 1);
		s += n + (e ? 1 : 0);
	}
	return out;
}

static int open_slot(struct port_linux *p, int slot)
{
	char err[512];
	unsigned flags = (p->sync ? SLOT_SYNC : 0) | (p->direct ? SLOT_DIRECT : 0);
	if (slot_open(&p->slot[slot], p->slot_path[slot], p->cfg.slot_size, p->cfg.sector_size, flags, err,
		      sizeof(err)) < 0) {
		fprintf(stderr, "otacd-device: slot: %s\n", err);
		return -1;
	}
	return 0;
}

/* A config boolean: 1, 0, or -1 for anything else. */
static int conf_bool(const char *v)
{
	if (!strcmp(v, "1") || !strcmp(v, "true"))
		return 1;
	if (!strcmp(v, "0") || !strcmp(v, "false"))
		return 0;
	return -1;
}

/* A config number: decimal or 0x hex, whole, unsigned, at most max.  "",
 * a sign, trailing text or an overflow: -1 (strtoul would read "-1" as
 * 4294967295 and "12ms" as 12). */
static int conf_u32(const char *v, uint32_t max, uint32_t *out)
{
	int hex = v[0] == '0' && (v[1] == 'x' || v[1] == 'X');
	const char *digits = hex ? v + 2 : v;
	unsigned long long n;
	char *end;

	if (!(hex ? isxdigit((unsigned char)*digits) : isdigit((unsigned char)*digits)))
		return -1;
	errno = 0;
	n = strtoull(digits, &end, hex ? 16 : 10);
	if (errno || *end || n > max)
		return -1;
	*out = (uint32_t)n;
	return 0;
}

/* boot = uboot: the U-Boot environment's tools and the booted slot */
static int open_uboot(struct port_linux *p, const char *conf_path)
{
	char err[512];
	if (!p->fw_env_config) {
		fprintf(stderr, "otacd-device: %s: boot = uboot needs fw_env_config\n", conf_path);
		return -1;
	}
	p->uboot.fw_config = p->fw_env_config;
	p->uboot.slot_var = p->uboot_slot_var ? p->uboot_slot_var : "otacd_slot";
	if (!*p->uboot.slot_var || strspn(p->uboot.slot_var, "abcdefghijklmnopqrstuvwxyz"
							 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != strlen(p->uboot.slot_var)) {
		fprintf(stderr, "otacd-device: %s: uboot_slot_var: letters, digits and _ only\n", conf_path);
		return -1;
	}
	p->uboot.cmdline = p->uboot_cmdline ? p->uboot_cmdline : "/proc/cmdline";
	if (!p->uboot.bootlimit)
		p->uboot.bootlimit = 3;
	if ((p->booted = uboot_booted(&p->uboot, err, sizeof(err))) < 0) {
		fprintf(stderr, "otacd-device: %s\n", err);
		return -1;
	}
	return 0;
}

struct port_linux *port_linux_open(const char *conf_path, struct otadev_config **cfg)
{
	struct port_linux *p = calloc(1, sizeof(*p));
	FILE *f = fopen(conf_path, "r");
	char line[1024];
	int lineno = 0, ok = 1;

	if (p)
		p->slot[0].fd = p->slot[1].fd = -1;
	if (!p || !f) {
		fprintf(stderr, "otacd-device: %s: %s\n", conf_path, strerror(errno));
		goto fail;
	}
	p->sync = 1;
	p->direct = 1;
	p->cfg.slot_size = 65536;
	p->cfg.sector_size = 4096;
	p->cfg.min_battery_pct = 20;
	while (fgets(line, sizeof(line), f)) {
		char *k, *v, *eq;
		uint32_t n;
		lineno++;
		k = trim(line);
		if (!*k || *k == '#')
			continue;
		if (!(eq = strchr(k, '='))) {
			fprintf(stderr, "otacd-device: %s:%d: expected key = value\n", conf_path, lineno);
			ok = 0;
			continue;
		}
		*eq = 0;
		k = trim(k);
		v = trim(eq + 1);
#define STR(name, field) else if (!strcmp(k, name)) { free(p->field); p->field = dupstr(v); }
#define NUM(name, field)                                                                                  \
	else if (!strcmp(k, name)) {                                                                       \
		if (conf_u32(v, UINT32_MAX, &n) < 0) {                                                     \
			fprintf(stderr, "otacd-device: %s:%d: %s: want a whole number 0 to 4294967295 "    \
					"(decimal or 0x hex), not '%s'\n", conf_path, lineno, k, v);             \
			ok = 0;                                                                            \
		} else                                                                                     \
			p->field = n;                                                                      \
	}
		if (0) {
		}
		STR("url", url) STR("device", device) STR("credential", credential) STR("product", product)
		STR("hardware", hardware) STR("bootloader", bootloader) STR("primary", slot_path[0])
		STR("secondary", slot_path[1]) STR("state", state_path) STR("health_check", health_check)
		STR("status_file", status_file) STR("cacert", cacert) STR("client_cert", client_cert)
		STR("client_key", client_key) STR("boot", boot) STR("fw_env_config", fw_env_config)
		STR("uboot_slot_var", uboot_slot_var) STR("uboot_cmdline", uboot_cmdline) STR("slot_a", slot_path[0])
		STR("slot_b", slot_path[1]) STR("reboot_command", reboot_command)
		NUM("uboot_bootlimit", uboot.bootlimit)
		NUM("slot_size", cfg.slot_size) NUM("sector_size", cfg.sector_size) NUM("poll_ms", cfg.poll_ms)
		NUM("heartbeat_ms", cfg.heartbeat_ms) NUM("backoff_base_ms", cfg.backoff_base_ms)
		NUM("backoff_max_ms", cfg.backoff_max_ms) NUM("throttle_ms", throttle_ms) NUM("precondition_wait_ms", cfg.precondition_wait_ms)
		else if (!strcmp(k, "min_battery")) {
			if (conf_u32(v, 100, &n) < 0) {
				fprintf(stderr, "otacd-device: %s:%d: min_battery: want a percentage 0 to 100, not '%s'\n",
					conf_path, lineno, v);
				ok = 0;
			} else
				p->cfg.min_battery_pct = (int)n;
		}
		else if (!strcmp(k, "avoid_metered") || !strcmp(k, "sync") || !strcmp(k, "direct")) {
			/* "yes" must not quietly turn sync or O_DIRECT off */
			int b = conf_bool(v);
			if (b < 0) {
				fprintf(stderr, "otacd-device: %s:%d: %s: 0, 1, false or true\n", conf_path, lineno, k);
				ok = 0;
			} else if (!strcmp(k, "avoid_metered")) {
				p->cfg.avoid_metered = b;
			} else if (!strcmp(k, "sync")) {
				p->sync = b;
			} else {
				p->direct = b;
			}
		} else if (!strcmp(k, "anchor")) {
			OPENSSL_free(p->anchor);
			if (port_linux_x509_load_anchor(v, &p->anchor, &p->cfg.anchor_len) < 0)
				ok = 0;
			p->cfg.anchor = p->anchor;
		} else if (!strcmp(k, "key")) {
			if (load_key(p, v) < 0)
				ok = 0;
		} else if (!strcmp(k, "enc_key")) {
			if (load_enc_key(p, v) < 0)
				ok = 0;
		} else if (!strcmp(k, "tags")) {
			free(p->tags);
			if (!(p->tags = render_tags(v))) {
				fprintf(stderr, "otacd-device: %s:%d: tags: key=value[,key=value]\n", conf_path, lineno);
				ok = 0;
			}
		} else if (!strncmp(k, "mqtt_", 5)) { /* issue 15, push: linux/push.c */
			if (devpush_config(k, v) < 0) {
				fprintf(stderr, "otacd-device: %s:%d: %s: bad value\n", conf_path, lineno, k);
				ok = 0;
			}
		} else {
			fprintf(stderr, "otacd-device: %s:%d: unknown key '%s'\n", conf_path, lineno, k);
			ok = 0;
		}
#undef STR
#undef NUM
	}
	fclose(f);
	f = NULL;
	if (!ok)
		goto fail;
	if (!p->url || !p->device || !p->credential || !p->product || !p->hardware || !p->slot_path[0] ||
	    !p->slot_path[1] || !p->state_path || !p->cfg.nkeys) {
		fprintf(stderr, "otacd-device: %s: url, device, credential, product, hardware, primary and "
				"secondary (slot_a and slot_b), state and key are required\n", conf_path);
		goto fail;
	}
	if (p->boot && strcmp(p->boot, "mcuboot") && strcmp(p->boot, "uboot")) {
		fprintf(stderr, "otacd-device: %s: boot = mcuboot | uboot\n", conf_path);
		goto fail;
	}
	p->use_uboot = p->boot && !strcmp(p->boot, "uboot");
	if (p->use_uboot && open_uboot(p, conf_path) < 0)
		goto fail;
	if (!p->bootloader)
		p->bootloader = dupstr("0.0.0");
	p->cfg.device = p->device;
	p->cfg.credential = p->credential;
	p->cfg.product = p->product;
	p->cfg.hardware = p->hardware;
	p->cfg.bootloader = p->bootloader;
	p->cfg.tags = p->tags;
	/* the signing chain's scratch (otadev_chain.c): the manifest and the list */
	p->cfg.work_len = 16384;
	if (!(p->cfg.work = malloc(p->cfg.work_len)))
		goto fail;
	if (open_slot(p, 0) < 0 || open_slot(p, 1) < 0 || !(p->md = EVP_MD_CTX_new()) || !(p->curl = curl_easy_init()))
		goto fail;
	*cfg = &p->cfg;
	return p;
fail:
	if (f)
		fclose(f);
	port_linux_close(p);
	return NULL;
}

void port_linux_close(struct port_linux *p)
{
	int i;
	if (!p)
		return;
	for (i = 0; i < 2; i++) {
		slot_close(&p->slot[i]);
		free(p->slot_path[i]);
	}
	for (i = 0; i < OTADEV_KEYS_MAX; i++)
		OPENSSL_free(p->keyder[i]);
	OPENSSL_free(p->anchor);
	EVP_PKEY_free(p->enc_priv);
	port_linux_enc_forget(&p->enc);
	free(p->cfg.work);
	EVP_MD_CTX_free(p->md);
	if (p->curl)
		curl_easy_cleanup(p->curl);
	free(p->url);
	free(p->device);
	free(p->credential);
	free(p->product);
	free(p->hardware);
	free(p->bootloader);
	free(p->tags);
	free(p->state_path);
	free(p->health_check);
	free(p->status_file);
	free(p->cacert);
	free(p->client_cert);
	free(p->client_key);
	free(p->boot);
	free(p->fw_env_config);
	free(p->uboot_slot_var);
	free(p->uboot_cmdline);
	free(p->reboot_command);
	free(p);
}

int port_linux_booted(const struct port_linux *p)
{
	return p->use_uboot ? p->booted : -1;
}

int port_linux_reboot_requested(const struct port_linux *p)
{
	return p->reboot;
}

uint32_t port_linux_throttle_ms(const struct port_linux *p)
{
	return p->throttle_ms;
}

/* ---- hooks ----------------------------------------------------------------- */

struct sink {
	struct otadev_http_resp *r;
	int over;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct sink *s = ud;
	size_t n = size * nmemb;
	if (n > s->r->cap - s->r->len) {
		s->over = 1;
		return 0;
	}
	memcpy(s->r->body + s->r->len, ptr, n);
	s->r->len += n;
	return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct sink *s = ud;
	size_t n = size * nmemb;
	if (n > 14 && !strncasecmp(ptr, "Content-Range:", 14)) {
		const char *slash = memchr(ptr, '/', n);
		if (slash && slash[1] != '*')
			s->r->range_total = strtol(slash + 1, NULL, 10);
	}
	return n;
}

/* The URL of a request: a path on the device API, or an offer's absolute
 * image URL (a CDN or object store, issue 15).  Returns 1 when absolute. */
static int resolve_url(char *out, size_t cap, const char *base, const char *path)
{
	int abs = !strncmp(path, "https://", 8) || !strncmp(path, "http://", 7);
	snprintf(out, cap, "%s%s", abs ? "" : base, path);
	return abs;
}

static int h_http(void *ctx, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct port_linux *p = ctx;
	struct curl_slist *hdr = NULL;
	struct sink s = { rs, 0 };
	char line[512], url[1024];
	long code = 0;
	CURLcode cc;

	rs->len = 0;
	rs->status = 0;
	rs->range_total = -1;
	if (!resolve_url(url, sizeof(url), p->url, rq->path)) {
		/* on the device API: the device's identity; never sent to a CDN */
		snprintf(line, sizeof(line), "Authorization: Bearer %s", rq->credential);
		hdr = curl_slist_append(hdr, line);
		snprintf(line, sizeof(line), "X-Device-Id: %s", rq->device);
		hdr = curl_slist_append(hdr, line);
	}
	if (rq->body)
		hdr = curl_slist_append(hdr, "Content-Type: application/json");
	if (rq->range_start >= 0) {
		snprintf(line, sizeof(line), "Range: bytes=%ld-%ld", rq->range_start, rq->range_end);
		hdr = curl_slist_append(hdr, line);
	}
	curl_easy_reset(p->curl);
	curl_easy_setopt(p->curl, CURLOPT_URL, url);
	curl_easy_setopt(p->curl, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(p->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(p->curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(p->curl, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(p->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(p->curl, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(p->curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(p->curl, CURLOPT_HEADERDATA, &s);
	if (p->cacert)
		curl_easy_setopt(p->curl, CURLOPT_CAINFO, p->cacert);
	if (p->client_cert) {
		/* the device's certificate: its identity on a listener with client_ca */
		curl_easy_setopt(p->curl, CURLOPT_SSLCERT, p->client_cert);
		curl_easy_setopt(p->curl, CURLOPT_SSLKEY, p->client_key ? p->client_key : p->client_cert);
	}
	if (rq->body) {
		curl_easy_setopt(p->curl, CURLOPT_POSTFIELDS, rq->body);
		curl_easy_setopt(p->curl, CURLOPT_POSTFIELDSIZE, (long)rq->body_len);
	}
	cc = curl_easy_perform(p->curl);
	curl_slist_free_all(hdr);
	if (cc != CURLE_OK || s.over)
		return -1;
	curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &code);
	rs->status = (int)code;
	return 0;
}

/* The core's slot 0 is the running image: MCUboot's primary, or the
 * slot U-Boot booted; slot 1 the other one. */
static struct slot *slot_of(struct port_linux *p, int slot)
{
	return slot < 0 || slot > 1 ? NULL : &p->slot[slot ^ p->booted];
}

static int h_read(void *ctx, int slot, uint32_t off, void *buf, uint32_t len)
{
	struct slot *s = slot_of(ctx, slot);
	return s ? slot_read(s, off, buf, len) : -1;
}

static int h_write(void *ctx, int slot, uint32_t off, const void *buf, uint32_t len)
{
	struct slot *s = slot_of(ctx, slot);
	return s ? slot_write(s, off, buf, len) : -1;
}

static int h_erase(void *ctx, int slot, uint32_t off, uint32_t len)
{
	struct slot *s = slot_of(ctx, slot);
	return s ? slot_erase(s, off, len) : -1;
}

static int h_sha_begin(void *ctx)
{
	struct port_linux *p = ctx;
	return EVP_DigestInit_ex(p->md, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

static int h_sha_update(void *ctx, const void *data, size_t len)
{
	struct port_linux *p = ctx;
	return EVP_DigestUpdate(p->md, data, len) == 1 ? 0 : -1;
}

static int h_sha_end(void *ctx, uint8_t out[32])
{
	struct port_linux *p = ctx;
	unsigned n = 32;
	return EVP_DigestFinal_ex(p->md, out, &n) == 1 ? 0 : -1;
}

static int h_verify(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t digest[32],
		    const uint8_t *sig, size_t sig_len)
{
	const unsigned char *kp = key;
	EVP_PKEY *k = d2i_PUBKEY(NULL, &kp, (long)key_len);
	EVP_PKEY_CTX *pc = NULL;
	EVP_MD_CTX *mc = NULL;
	int ok = 0;

	(void)ctx;
	if (!k)
		return -1;
	if (type == OTADEV_SIG_ECDSA_P256 && EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
		/* ECDSA over the SHA-256 digest; DER may be zero-padded to 72 (--pad-sig) */
		while (sig_len > 8 && sig[sig_len - 1] == 0 && (size_t)sig[1] + 2 < sig_len)
			sig_len--;
		ok = (pc = EVP_PKEY_CTX_new(k, NULL)) && EVP_PKEY_verify_init(pc) == 1 &&
		     EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
		     EVP_PKEY_verify(pc, sig, sig_len, digest, 32) == 1;
	} else if (type == OTADEV_SIG_ED25519 && EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519) {
		ok = (mc = EVP_MD_CTX_new()) && EVP_DigestVerifyInit(mc, NULL, NULL, NULL, k) == 1 &&
		     EVP_DigestVerify(mc, sig, sig_len, digest, 32) == 1;
	}
	EVP_PKEY_CTX_free(pc);
	EVP_MD_CTX_free(mc);
	EVP_PKEY_free(k);
	return ok ? 0 : -1;
}

/* Ed25519 over the whole message (a DSSE envelope's PAE): pure EdDSA,
 * EVP_DigestVerify with no digest, as orchestrator/keys.c signs it. */
static int h_verify_msg(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t *msg,
			size_t len, const uint8_t *sig, size_t sig_len)
{
	const unsigned char *kp = key;
	EVP_PKEY *k = d2i_PUBKEY(NULL, &kp, (long)key_len);
	EVP_MD_CTX *mc = NULL;
	int ok;

	(void)ctx;
	ok = k && type == OTADEV_SIG_ED25519 && EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519 &&
	     (mc = EVP_MD_CTX_new()) && EVP_DigestVerifyInit(mc, NULL, NULL, NULL, k) == 1 &&
	     EVP_DigestVerify(mc, sig, sig_len, msg, len) == 1;
	EVP_MD_CTX_free(mc);
	EVP_PKEY_free(k);
	return ok ? 0 : -1;
}

static uint64_t h_now(void *ctx)
{
	struct timespec ts;
	(void)ctx;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t h_random(void *ctx)
{
	uint32_t r = 0;
	(void)ctx;
	if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
		r = (uint32_t)h_now(ctx) * 2654435761u;
	return r;
}

static int h_persist_read(void *ctx, void *buf, size_t cap)
{
	struct port_linux *p = ctx;
	int fd = open(p->state_path, O_RDONLY | O_CLOEXEC);
	ssize_t n;
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	n = read(fd, buf, cap);
	close(fd);
	return n < 0 ? -1 : (int)n;
}

static int h_persist_write(void *ctx, const void *buf, size_t len)
{
	struct port_linux *p = ctx;
	char tmp[4096];
	int fd, ok;
	snprintf(tmp, sizeof(tmp), "%s.tmp", p->state_path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	ok = write(fd, buf, len) == (ssize_t)len && (!p->sync || fsync(fd) == 0);
	close(fd);
	if (!ok || rename(tmp, p->state_path) < 0)
		return -1;
	return 0;
}

static void h_status(void *ctx, struct otadev_status *out)
{
	struct port_linux *p = ctx;
	char line[128];
	FILE *f;
	memset(out, 0, sizeof(*out));
	out->battery_pct = 100;
	out->external_power = 1;
	if (!p->status_file || !(f = fopen(p->status_file, "r")))
		return;
	while (fgets(line, sizeof(line), f)) {
		long v;
		char key[32];
		if (sscanf(line, " %31[a-z_] = %ld", key, &v) != 2)
			continue;
		if (!strcmp(key, "battery"))
			out->battery_pct = (int)v;
		else if (!strcmp(key, "external_power"))
			out->external_power = v != 0;
		else if (!strcmp(key, "metered"))
			out->metered = v != 0;
		else if (!strcmp(key, "rssi"))
			out->rssi = (int)v;
		else if (!strcmp(key, "crashes"))
			out->crashes = (uint32_t)v;
		else if (!strcmp(key, "battery_mah"))
			out->battery_mah_used = (uint32_t)v;
	}
	fclose(f);
}

static int h_selftest(void *ctx)
{
	struct port_linux *p = ctx;
	int st;
	if (!p->health_check || !*p->health_check)
		return 0;
	st = system(p->health_check);
	return st == 0 ? 0 : -1;
}

static void h_reboot(void *ctx)
{
	struct port_linux *p = ctx;
	p->reboot = 1;
	if (p->reboot_command && *p->reboot_command && system(p->reboot_command) != 0)
		fprintf(stderr, "otacd-device %s: reboot_command failed\n", p->device);
}

static int h_boot_mark(void *ctx, int mark)
{
	struct port_linux *p = ctx;
	char err[512];
	if (uboot_mark(&p->uboot, p->booted, mark, err, sizeof(err)) < 0) {
		fprintf(stderr, "otacd-device %s: %s\n", p->device, err);
		return -1;
	}
	return 0;
}

static int h_boot_testing(void *ctx)
{
	struct port_linux *p = ctx;
	char err[512];
	int rc = uboot_testing(&p->uboot, p->booted, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "otacd-device %s: %s\n", p->device, err);
	return rc;
}

static int h_enc_key(void *ctx, int type, const uint8_t *tlv, size_t len, size_t keylen, const char **why)
{
	struct port_linux *p = ctx;
	if (!tlv) {
		port_linux_enc_forget(&p->enc);
		return 0;
	}
	return port_linux_enc_unwrap(&p->enc, p->enc_priv, type, tlv, len, keylen, why);
}

static int h_enc_ctr(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	return port_linux_enc_ctr(&((struct port_linux *)ctx)->enc, off, buf, len);
}

static void h_log(void *ctx, const char *msg)
{
	struct port_linux *p = ctx;
	fprintf(stderr, "otacd-device %s: %s\n", p->device, msg);
}

#define HOOKS_COMMON                            \
	.http = h_http,                         \
	.flash_read = h_read,                   \
	.flash_write = h_write,                 \
	.flash_erase = h_erase,                 \
	.sha256_begin = h_sha_begin,            \
	.sha256_update = h_sha_update,          \
	.sha256_end = h_sha_end,                \
	.verify = h_verify,                     \
	.verify_msg = h_verify_msg,             \
	.x509_chain = port_linux_x509_chain,   \
	.x509_crl = port_linux_x509_crl,       \
	.enc_key = h_enc_key,                   \
	.enc_ctr = h_enc_ctr,                   \
	.now_ms = h_now,                        \
	.random = h_random,                     \
	.persist_read = h_persist_read,         \
	.persist_write = h_persist_write,       \
	.status = h_status,                     \
	.selftest = h_selftest,                 \
	.reboot = h_reboot,                     \
	.log = h_log

/* MCUboot reads the trailer the core writes; U-Boot reads its environment */
static const struct otadev_hooks hooks = { HOOKS_COMMON };
static const struct otadev_hooks hooks_uboot = { HOOKS_COMMON, .boot_mark = h_boot_mark,
						 .boot_testing = h_boot_testing };

const struct otadev_hooks *port_linux_hooks(const struct port_linux *p)
{
	return p->use_uboot ? &hooks_uboot : &hooks;
}

int port_linux_flash_image(struct port_linux *p, int slot, const char *image_path)
{
	FILE *f = fopen(image_path, "rb");
	unsigned char buf[4096];
	uint32_t off = 0;
	size_t n;
	int rc = 0;
	if (!f || h_erase(p, slot, 0, p->cfg.slot_size) < 0) {
		if (f)
			fclose(f);
		return -1;
	}
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
		if (off + n > p->cfg.slot_size - 432 || h_write(p, slot, off, buf, (uint32_t)n) < 0) {
			rc = -1;
			break;
		}
		off += (uint32_t)n;
	}
	fclose(f);
	return rc;
}

/* ---- the simulated MCUboot ----------------------------------------------------- */

static int slot_valid(struct port_linux *p, int slot)
{
	struct otadev_image img;
	uint8_t buf[1024];
	const char *why;
	uint32_t t = 432;
	int i;
	for (i = 0; i < p->cfg.nkeys; i++) {
		struct otadev_key *k = &p->cfg.keys[i];
		if (h_sha_begin(p) < 0 || h_sha_update(p, k->der, k->len) < 0 || h_sha_end(p, k->hash) < 0)
			return 0;
	}
	return otadev_image_parse(&img, &hooks, p, slot, p->cfg.slot_size - t, buf, sizeof(buf)) == 0 &&
	       otadev_image_verify(&img, &hooks, p, slot, p->cfg.keys, p->cfg.nkeys, buf, sizeof(buf), &why) == 0;
}

/* An encrypted image (the header's ENCRYPTED flag) is kept in clear in the
 * primary slot and as ciphertext in the secondary: the swap passes the
 * body of each slot's image, read into img, through AES-CTR under the key
 * its TLV wraps (CTR both ways), as MCUboot's swap does. */
static int crypt_body(struct port_linux *p, int slot, unsigned char *img)
{
	struct otadev_image in;
	uint8_t buf[1024];
	const char *why;
	int rc;

	if (otadev_image_parse(&in, &hooks, p, slot, p->cfg.slot_size - 432, buf, sizeof(buf)) < 0 || !in.enc_keylen)
		return 0;
	if (port_linux_enc_unwrap(&p->enc, p->enc_priv, (int)in.enc_type, img + in.enc_off, in.enc_len, in.enc_keylen,
				  &why) < 0) {
		fprintf(stderr, "otacd-device boot: slot %d: %s\n", slot, why);
		return -1;
	}
	rc = port_linux_enc_ctr(&p->enc, 0, img + in.header_size, in.image_size);
	port_linux_enc_forget(&p->enc);
	return rc;
}

/* Exchange the slots' images; the new primary's trailer is written as
 * MCUboot leaves it after the swap, the secondary's is erased. */
static int do_swap(struct port_linux *p, int type)
{
	uint32_t s = p->cfg.slot_size, t = 432;
	unsigned char *a = malloc(s), *b = malloc(s);
	int rc = -1;
	if (!a || !b || h_read(p, 0, 0, a, s) < 0 || h_read(p, 1, 0, b, s) < 0 || crypt_body(p, 0, a) < 0 ||
	    crypt_body(p, 1, b) < 0)
		goto out;
	memset(a + s - t, 0xff, t);
	memset(b + s - t, 0xff, t);
	memcpy(b + s - OTADEV_TR_MAGIC, otadev_boot_magic, 16);
	b[s - OTADEV_TR_COPY_DONE] = 0x01;
	b[s - OTADEV_TR_SWAP_INFO] = (uint8_t)type;
	if (type == OTADEV_SWAP_PERM || type == OTADEV_SWAP_REVERT)
		b[s - OTADEV_TR_IMAGE_OK] = 0x01;   /* a revert is made permanent, as MCUboot does */
	/* the bootloader is not under the torture: MCUboot's swap status makes
	 * its own swap restartable on hardware */
	if (slot_erase(&p->slot[0], 0, s) < 0 || slot_write(&p->slot[0], 0, b, s) < 0 ||
	    slot_erase(&p->slot[1], 0, s) < 0 || slot_write(&p->slot[1], 0, a, s) < 0)
		goto out;
	rc = 0;
out:
	free(a);
	free(b);
	return rc;
}

int port_linux_boot(struct port_linux *p, const char **decision)
{
	struct otadev_trailer pt, st;
	int type;

	*decision = "none";
	if (p->use_uboot) {
		fprintf(stderr, "otacd-device: boot = uboot: U-Boot decides (docs/device.md)\n");
		return -1;
	}
	if (otadev_trailer_read(&pt, &hooks, p, 0, p->cfg.slot_size) < 0 ||
	    otadev_trailer_read(&st, &hooks, p, 1, p->cfg.slot_size) < 0)
		return -1;
	type = otadev_swap_type(&pt, &st);
	*decision = "none";
	if (type == OTADEV_SWAP_TEST || type == OTADEV_SWAP_PERM) {
		if (!slot_valid(p, 1)) {
			/* MCUboot erases a candidate that does not validate */
			*decision = "fail";
			if (h_erase(p, 1, 0, p->cfg.slot_size) < 0)
				return -1;
		} else {
			*decision = type == OTADEV_SWAP_TEST ? "test" : "perm";
			if (do_swap(p, type) < 0)
				return -1;
		}
	} else if (type == OTADEV_SWAP_REVERT) {
		*decision = "revert";
		if (do_swap(p, type) < 0)
			return -1;
	}
	return slot_valid(p, 0) ? 0 : -2;
}
