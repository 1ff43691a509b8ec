/*
 * devca.c - `otactl fleet` and `otactl devices`: the device CA, provisioning
 * credentials and device certificates (issue 13; docs/update-server.md,
 * "Device certificates").
 *
 *   fleet ca init [--cn NAME] [--days N] [--offline --state DIR]
 *   fleet ca import CERT KEY [--offline --state DIR]
 *   fleet ca show [--out FILE]
 *   fleet ca remove --reason TEXT
 *   fleet provisioners [ls]
 *   fleet provisioners add NAME --prefix P --max N [--products a,b] [--rate N]
 *   fleet provisioners revoke NAME [--devices]
 *   devices provision ID [--csr FILE] [--product P] [--out DIR] [--replace]
 *   devices revoke ID [--reason TEXT]
 *   devices identify CERT
 *
 * The daemon does the work through its API; --offline writes the CA's files
 * into a state directory instead (for a daemon not started yet, or a CA
 * made on an offline machine).  `devices provision` without --csr makes the
 * device's key here (EC P-256, 0600) and sends only its CSR: no private key
 * ever travels.
 */
#include "otactl.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../orchestrator/fleet/fleet_ca.h"

static int read_text(const char *path, size_t max, struct buf *out)
{
	if (ota_read_file(out, path, max) < 0) {
		fprintf(stderr, "otactl: cannot read %s: %s\n", path, ota_error_last());
		return EXIT_FAIL;
	}
	return 0;
}

/* ---- fleet ca -------------------------------------------------------------- */

static int ca_init_or_import(int argc, char **argv, int import)
{
	const char *cn = NULL, *state = NULL, *val, *files[2] = { NULL, NULL };
	int offline = 0, days = FLEET_CA_DEFAULT_DAYS, nfiles = 0, rc;
	struct buf cert = BUF_INIT, key = BUF_INIT;
	json_t *ans = NULL, *req;

	for (int i = 3; i < argc; i++) {
		int r;
		if ((r = opt_value("--cn", argc, argv, &i, &val)) != 0) {
			if (r < 0)
				return usage_error("fleet", "--cn needs a value");
			cn = val;
		} else if ((r = opt_value("--days", argc, argv, &i, &val)) != 0) {
			if (r < 0 || (days = atoi(val)) <= 0)
				return usage_error("fleet", "--days needs a positive number");
		} else if ((r = opt_value("--state", argc, argv, &i, &val)) != 0) {
			if (r < 0)
				return usage_error("fleet", "--state needs a directory");
			state = val;
		} else if (!strcmp(argv[i], "--offline")) {
			offline = 1;
		} else if (!is_option(argv[i]) && import && nfiles < 2) {
			files[nfiles++] = argv[i];
		} else {
			return usage_error("fleet", "unexpected argument '%s'", argv[i]);
		}
	}
	if (import && nfiles != 2)
		return usage_error("fleet", "fleet ca import needs CERT and KEY");
	if (offline && !state)
		return usage_error("fleet", "--offline needs --state DIR (otacd's state directory)");
	if (import && ((rc = read_text(files[0], 1 << 20, &cert)) || (rc = read_text(files[1], 1 << 20, &key))))
		goto out;
	if (offline) {
		char *dir = xasprintf("%s/devca", state);
		rc = import ? fleet_ca_import_files(dir, cert.ptr, cert.len, key.ptr, key.len)
			    : fleet_ca_create_files(dir, cn, days);
		if (rc < 0)
			fprintf(stderr, "otactl: %s\n", ota_error_last());
		else
			printf("device CA written to %s (ca.pem, ca.key 0600); otacd loads it at its next start\n", dir);
		free(dir);
		rc = rc < 0 ? EXIT_FAIL : 0;
		goto out;
	}
	req = import ? json_pack("{ss ss}", "certificate", buf_cstr(&cert), "key", buf_cstr(&key))
		     : json_pack("{ss? si}", "cn", cn, "days", days);
	rc = api(&ans, "POST", "/api/v1/fleet/ca", req, import ? "cannot import the device CA" : "cannot create the device CA");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else
			printf("device CA %s\n  subject %s\n  sha256  %s\n", import ? "imported" : "created",
			       str_or(ans, "subject", "?"), str_or(ans, "sha256", "?"));
	}
out:
	if (key.ptr)
		OPENSSL_cleanse(key.ptr, key.len);
	buf_release(&key);
	buf_release(&cert);
	json_decref(ans);
	return rc;
}

/* A stolen CA key: no instance trusts the CA from now on (operator). */
static int ca_remove(int argc, char **argv)
{
	const char *reason = NULL, *val;
	json_t *ans = NULL, *req;
	int rc;

	for (int i = 3; i < argc; i++) {
		int r = opt_value("--reason", argc, argv, &i, &val);
		if (r <= 0)
			return usage_error("fleet", r < 0 ? "--reason needs a value" : "unexpected argument '%s'", argv[i]);
		reason = val;
	}
	if (!reason || !*reason)
		return usage_error("fleet", "fleet ca remove needs --reason TEXT (why the CA goes, for the audit)");
	req = json_pack("{ss}", "reason", reason);
	rc = api(&ans, "POST", "/api/v1/fleet/ca/remove", req, "cannot remove the device CA");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else
			printf("device CA removed: no instance trusts it any more\n  subject %s\n  sha256  %s\n"
			       "devices with its certificates are refused (401) until re-provisioned under a new CA"
			       " (otactl fleet ca init)\n",
			       str_or(ans, "subject", "?"), str_or(ans, "sha256", "?"));
	}
	json_decref(ans);
	return rc;
}

static int ca_show(int argc, char **argv)
{
	const char *out = NULL, *val;
	json_t *ans = NULL;
	int rc;

	for (int i = 3; i < argc; i++) {
		int r = opt_value("--out", argc, argv, &i, &val);
		if (r <= 0)
			return usage_error("fleet", "unexpected argument '%s'", argv[i]);
		out = val;
	}
	if ((rc = api(&ans, "GET", "/api/v1/fleet/ca", NULL, "cannot read the device CA")) != 0)
		return rc;
	if (ctl.json) {
		print_json(ans);
	} else if (!json_is_true(json_object_get(ans, "configured"))) {
		printf("no device CA (otactl fleet ca init)\n");
	} else {
		printf("subject   %s\nsha256    %s\nnot after %lld\nissues    %s\n", str_or(ans, "subject", "?"),
		       str_or(ans, "sha256", "?"), (long long)int_or(ans, "not_after", 0),
		       json_is_true(json_object_get(ans, "can_issue")) ? "yes (otacd holds the key)" : "no (external CA)");
	}
	if (out && json_is_string(json_object_get(ans, "certificate"))) {
		const char *pem = str_or(ans, "certificate", "");
		if (ota_write_file_atomic(out, pem, strlen(pem), 0644) < 0) {
			fprintf(stderr, "otactl: %s\n", ota_error_last());
			rc = EXIT_FAIL;
		}
	}
	json_decref(ans);
	return rc;
}

/* ---- fleet provisioners ------------------------------------------------------ */

static int prov_ls(void)
{
	struct ctl_table t = { 7, -1, STRVEC_INIT };
	json_t *ans = NULL, *p;
	size_t i;
	int rc;

	if ((rc = api(&ans, "GET", "/api/v1/fleet/provisioners", NULL, "cannot list provisioners")) != 0)
		return rc;
	if (ctl.json) {
		print_json(ans);
		json_decref(ans);
		return 0;
	}
	ctl_table_row(&t, "NAME", "PREFIX", "PRODUCTS", "ISSUED", "MAX", "RATE/MIN", "STATE");
	json_array_foreach(ans, i, p) {
		char issued[32], max[32], rate[32];
		char *prods = json_is_array(json_object_get(p, "products")) ? json_dumps(json_object_get(p, "products"), JSON_COMPACT)
									    : xstrdup("(any)");
		snprintf(issued, sizeof(issued), "%lld", (long long)int_or(p, "issued", 0));
		snprintf(max, sizeof(max), "%lld", (long long)int_or(p, "max", 0));
		snprintf(rate, sizeof(rate), "%lld", (long long)int_or(p, "rate_per_min", 0));
		ctl_table_row(&t, str_or(p, "name", "?"), str_or(p, "prefix", ""), prods, issued, max, rate,
			      json_is_integer(json_object_get(p, "revoked_at")) ? "revoked" : "active");
		free(prods);
	}
	ctl_table_print(&t);
	json_decref(ans);
	return 0;
}

static json_t *list_of(const char *s)
{
	json_t *a = json_array();
	while (*s) {
		size_t n = strcspn(s, ",");
		if (n)
			json_array_append_new(a, json_stringn(s, n));
		s += n;
		if (*s == ',')
			s++;
	}
	return a;
}

static int prov_add(int argc, char **argv)
{
	const char *name = NULL, *prefix = NULL, *val;
	json_t *ans = NULL, *req, *products = NULL;
	long long max = 0, rate = 0;
	int rc;

	for (int i = 3; i < argc; i++) {
		int r;
		if ((r = opt_value("--prefix", argc, argv, &i, &val)) != 0) {
			if (r < 0)
				goto missing;
			prefix = val;
		} else if ((r = opt_value("--max", argc, argv, &i, &val)) != 0) {
			if (r < 0)
				goto missing;
			max = atoll(val);
		} else if ((r = opt_value("--rate", argc, argv, &i, &val)) != 0) {
			if (r < 0)
				goto missing;
			rate = atoll(val);
		} else if ((r = opt_value("--products", argc, argv, &i, &val)) != 0) {
			if (r < 0)
				goto missing;
			json_decref(products);
			products = list_of(val);
		} else if (!is_option(argv[i]) && !name) {
			name = argv[i];
		} else {
			json_decref(products);
			return usage_error("fleet", "unexpected argument '%s'", argv[i]);
		}
	}
	if (!name || !prefix || max <= 0) {
		json_decref(products);
		return usage_error("fleet", "fleet provisioners add needs NAME, --prefix P (\"\" for any id) and --max N");
	}
	req = json_pack("{ss ss sI}", "name", name, "prefix", prefix, "max", (json_int_t)max);
	if (rate > 0)
		json_object_set_new(req, "rate_per_min", json_integer(rate));
	if (products)
		json_object_set_new(req, "products", products);
	rc = api(&ans, "POST", "/api/v1/fleet/provisioners", req, "cannot add the provisioner");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else {
			printf("%s\n", str_or(ans, "token", ""));
			fprintf(stderr, "otactl: provisioner %s added; the token above is shown only now (the factory's"
					" POST /device/v1/provision credential)\n", name);
		}
	}
	json_decref(ans);
	return rc;
missing:
	json_decref(products);
	return usage_error("fleet", "%s needs a value", argv[argc - 1]);
}

static int simple_post(const char *path, json_t *req, const char *what, const char *done)
{
	json_t *ans = NULL;
	int rc = api(&ans, "POST", path, req, what);
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else
			printf("%s\n", done);
	}
	json_decref(ans);
	return rc;
}

int cmd_fleet(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "ca")) {
		if (!strcmp(argv[2], "init"))
			return ca_init_or_import(argc, argv, 0);
		if (!strcmp(argv[2], "import"))
			return ca_init_or_import(argc, argv, 1);
		if (!strcmp(argv[2], "show"))
			return ca_show(argc, argv);
		if (!strcmp(argv[2], "remove"))
			return ca_remove(argc, argv);
		return usage_error("fleet", "unknown subcommand 'ca %s' (init, import, show, remove)", argv[2]);
	}
	if (argc == 2 && !strcmp(argv[1], "ca"))
		return ca_show(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "provisioners")) {
		if (argc == 2 || !strcmp(argv[2], "ls"))
			return prov_ls();
		if (!strcmp(argv[2], "add"))
			return prov_add(argc, argv);
		if (!strcmp(argv[2], "revoke") && (argc == 4 || (argc == 5 && !strcmp(argv[4], "--devices")))) {
			char *done = xasprintf("revoked provisioner %s%s", argv[3],
					       argc == 5 ? " and every device it provisioned" : "");
			int rc = simple_post("/api/v1/fleet/provisioners/revoke",
					     json_pack("{ss sb}", "name", argv[3], "devices", argc == 5),
					     "cannot revoke the provisioner", done);
			free(done);
			return rc;
		}
		return usage_error("fleet", "fleet provisioners [ls] | add NAME ... | revoke NAME [--devices]");
	}
	return usage_error("fleet", "unknown subcommand (ca init|import|show|remove, provisioners)");
}

/* ---- devices ------------------------------------------------------------------ */

/* A new EC P-256 key and a CSR for id signed by it, as PEM. */
static int make_key_and_csr(const char *id, struct buf *key_pem, struct buf *csr_pem)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509_REQ *req = X509_REQ_new();
	X509_NAME *name = X509_NAME_new();
	BIO *kb = BIO_new(BIO_s_mem()), *cb = BIO_new(BIO_s_mem());
	char *data;
	long n;
	int rc = EXIT_FAIL;

	if (!k || !req || !name || !kb || !cb ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)id, -1, -1, 0) ||
	    !X509_REQ_set_subject_name(req, name) || !X509_REQ_set_pubkey(req, k) || !X509_REQ_sign(req, k, EVP_sha256()) ||
	    !PEM_write_bio_PrivateKey(kb, k, NULL, NULL, 0, NULL, NULL) || !PEM_write_bio_X509_REQ(cb, req))
		goto out;
	n = BIO_get_mem_data(kb, &data);
	buf_put(key_pem, data, (size_t)n);
	OPENSSL_cleanse(data, (size_t)n);
	n = BIO_get_mem_data(cb, &data);
	buf_put(csr_pem, data, (size_t)n);
	rc = 0;
out:
	if (rc)
		fprintf(stderr, "otactl: cannot make a key and CSR for %s\n", id);
	BIO_free(kb);
	BIO_free(cb);
	X509_NAME_free(name);
	X509_REQ_free(req);
	EVP_PKEY_free(k);
	return rc;
}

static int dev_provision(int argc, char **argv)
{
	const char *id = NULL, *csr_file = NULL, *product = NULL, *outdir = ".", *val;
	struct buf csr = BUF_INIT, key = BUF_INIT;
	json_t *ans = NULL, *req;
	char *path = NULL, *keypath = NULL;
	int replace = 0, rc;

	for (int i = 2; i < argc; i++) {
		int r;
		if ((r = opt_value("--csr", argc, argv, &i, &val)) != 0)
			csr_file = r > 0 ? val : NULL;
		else if ((r = opt_value("--product", argc, argv, &i, &val)) != 0)
			product = r > 0 ? val : NULL;
		else if ((r = opt_value("--out", argc, argv, &i, &val)) != 0)
			outdir = r > 0 ? val : NULL;
		else if (!strcmp(argv[i], "--replace"))
			replace = 1;
		else if (!is_option(argv[i]) && !id)
			id = argv[i];
		else
			return usage_error("devices", "unexpected argument '%s'", argv[i]);
		if (r < 0)
			return usage_error("devices", "%s needs a value", argv[i]);
	}
	if (!id || !outdir)
		return usage_error("devices", "devices provision needs a device ID");
	rc = csr_file ? read_text(csr_file, FLEET_CA_CSR_MAX, &csr) : make_key_and_csr(id, &key, &csr);
	if (rc)
		goto out;
	req = json_pack("{ss ss ss? sb}", "device", id, "csr", buf_cstr(&csr), "product", product, "replace", replace);
	rc = api(&ans, "POST", "/api/v1/devices/provision", req, "cannot provision the device");
	json_decref(req);
	if (rc)
		goto out;
	if (ctl.json) {
		print_json(ans);
	}
	if (ota_mkdir_p(outdir, 0700) < 0)
		goto fail;
	if (key.len) {
		keypath = xasprintf("%s/%s.key", outdir, id);
		if (ota_write_file_atomic(keypath, key.ptr, key.len, 0600) < 0)
			goto fail;
	}
	path = xasprintf("%s/%s.crt", outdir, id);
	if (ota_write_file_atomic(path, str_or(ans, "certificate", ""), strlen(str_or(ans, "certificate", "")), 0644) < 0)
		goto fail;
	free(path);
	path = xasprintf("%s/device-ca.crt", outdir);
	if (ota_write_file_atomic(path, str_or(ans, "ca", ""), strlen(str_or(ans, "ca", "")), 0644) < 0)
		goto fail;
	if (!ctl.json)
		printf("device %s: certificate %s/%s.crt (serial %s)%s%s%s, CA %s\n", id, outdir, id, str_or(ans, "serial", "?"),
		       keypath ? ", key " : "", keypath ? keypath : "", keypath ? " (0600)" : "", path);
	goto out;
fail:
	fprintf(stderr, "otactl: %s\n", ota_error_last());
	rc = EXIT_FAIL;
out:
	if (key.ptr)
		OPENSSL_cleanse(key.ptr, key.len);
	buf_release(&key);
	buf_release(&csr);
	json_decref(ans);
	free(path);
	free(keypath);
	return rc;
}

static int dev_identify(const char *file)
{
	struct buf pem = BUF_INIT;
	json_t *ans = NULL, *req;
	int rc;

	if ((rc = read_text(file, 65536, &pem)))
		return rc;
	req = json_pack("{ss}", "certificate", buf_cstr(&pem));
	buf_release(&pem);
	rc = api(&ans, "POST", "/api/v1/devices/identify", req, "cannot check the certificate");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else if (json_is_true(json_object_get(ans, "accepted")))
			printf("accepted: device %s\n", str_or(ans, "device", "?"));
		else
			printf("refused: %s\n", str_or(ans, "reason", "?"));
		if (!json_is_true(json_object_get(ans, "accepted")))
			rc = EXIT_FAIL;
	}
	json_decref(ans);
	return rc;
}

int cmd_devices(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "provision"))
		return dev_provision(argc, argv);
	if (argc >= 3 && !strcmp(argv[1], "revoke")) {
		const char *reason = NULL, *val;
		char *done;
		int rc;
		for (int i = 3; i < argc; i++) {
			int r = opt_value("--reason", argc, argv, &i, &val);
			if (r <= 0)
				return usage_error("devices", "unexpected argument '%s'", argv[i]);
			reason = val;
		}
		done = xasprintf("revoked device %s: its certificates are refused from now on", argv[2]);
		rc = simple_post("/api/v1/devices/revoke", json_pack("{ss ss?}", "device", argv[2], "reason", reason),
				 "cannot revoke the device", done);
		free(done);
		return rc;
	}
	if (argc == 3 && !strcmp(argv[1], "identify"))
		return dev_identify(argv[2]);
	return usage_error("devices", "devices provision ID [--csr FILE] | revoke ID [--reason TEXT] | identify CERT");
}
