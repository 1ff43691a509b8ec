/*
 * main.c - otacd-fleetsim: the command line, keys, profile, signals and the
 * Prometheus /metrics listener around the event loop in run.c.
 *
 * The simulator plays thousands to a million devices against an update
 * server speaking docs/update-server.md (otacd's built-in one, usually), so
 * a rollout can be watched end to end: offers, downloads, test boots,
 * reverts, health reports.  docs/fleetsim.md describes the model and the
 * output.  The metrics listener is libmicrohttpd on its own thread; it only
 * copies the text the loop refreshes once a second.
 */
#include <errno.h>
#include <getopt.h>
#include <microhttpd.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/mcuboot_enc.h"
#include "run.h"
#include "sim.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void usage(FILE *f)
{
	fputs("usage: otacd-fleetsim --url DEVICE_URL --devices N --seed S --key PUB.pem [--key ...]\n"
	      "         --fleet-key KEY|@FILE [--profile FILE] [--product P]\n"
	      "         [--duration REAL_SECONDS] [--until VERSION:FRACTION]\n"
	      "         [--metrics-listen HOST:PORT] [--stats FILE] [--start-version 1.0.0]\n"
	      "         [--start-counter 1] [--concurrency 256] [--report-every OTACD_SECONDS]\n"
	      "         [--shared-downloads] [--quiet] [--cacert CA.pem] [--trust-root ROOT.crt.pem]\n"
	      "         [--enc-key [HW=]PRIV.pem] [--provisioner TOKEN]\n"
	      "         [--engine core|model] [--fault-power-cut P] [--fault-corrupt P]\n"
	      "         [--fault-low-battery P] [--fault-vanish AT:SECONDS] [--verify-every]\n"
	      "         [--mqtt-url mqtt[s]://HOST[:PORT] [--mqtt-cacert CA.pem] [--mqtt-username U]\n"
	      "          [--mqtt-password-file F] [--mqtt-prefix otacd] [--mqtt-window-ms 60000]\n"
	      "          [--mqtt-window-max-ms 3600000]]\n"
	      "         [--fault-low-battery P] [--fault-vanish AT:SECONDS] [--verify-every] [--herd]\n"
	      "         [--start-image SIGNED.img [--start-image-share F]] [--fault-corrupt-patch P]\n"
	      "         [--flag FLAG]... [--flag-crash FLAG]\n"
	      "Simulates a device fleet against otacd's device API; see docs/fleetsim.md.\n", f);
}

static int parse_u64(const char *opt, const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v > max)
		return ota_error_set(OTA_EINVAL, "%s: '%s' is not a number in 0..%llu", opt, s,
				     (unsigned long long)max);
	*out = v;
	return 0;
}

static int parse_fraction(const char *opt, const char *s, double *out)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || *end || !(v >= 0 && v <= 1))
		return ota_error_set(OTA_EINVAL, "%s: '%s' is not a fraction in [0, 1]", opt, s);
	*out = v;
	return 0;
}

static int load_key(EVP_PKEY **out, const char *path)
{
	struct buf pem = BUF_INIT;
	int rc;

	if ((rc = ota_read_file(&pem, path, 1 << 20)) ||
	    (rc = pubkey_load_pem(out, pem.ptr, pem.len)))
		ota_error_prefix("--key %s: ", path);
	buf_release(&pem);
	return rc;
}

/* --enc-key: the device's private key for encrypted images (EC P-256 or
 * X25519 PEM), which on a real device lives only in the bootloader. */
static int load_enc_key(EVP_PKEY **out, const char *path)
{
	enum mcuboot_enc e;
	BIO *bio = BIO_new_file(path, "r");
	int rc = 0;

	*out = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	ERR_clear_error();
	if (!*out)
		rc = ota_error_set(OTA_EINVAL, "--enc-key %s: cannot read a PEM private key", path);
	else if ((rc = mcuboot_enc_scheme(*out, &e)))
		ota_error_prefix("--enc-key %s: ", path);
	return rc;
}

static enum MHD_Result on_metrics(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *data,
				  size_t *data_size, void **con_cls)
{
	struct fleetsim *fs = cls;
	struct MHD_Response *r;
	enum MHD_Result ret;
	int found = !strcmp(url, "/metrics");
	char *text;

	if (strcmp(method, "GET") && strcmp(method, "HEAD"))
		return MHD_NO;
	text = found ? fleetsim_metrics_snapshot(fs) : xstrdup("not found\n");
	r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(r, "Content-Type", found ? "text/plain; version=0.0.4" : "text/plain");
	ret = MHD_queue_response(c, found ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, r);
	MHD_destroy_response(r);
	return ret;
}

static int metrics_start(struct MHD_Daemon **out, const char *listen, struct fleetsim *fs)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	const char *colon = strrchr(listen, ':');
	char *host = NULL;
	const union MHD_DaemonInfo *info;
	int rc = 0;

	*out = NULL;
	if (!colon || colon == listen) {
		rc = ota_error_set(OTA_EINVAL, "--metrics-listen: '%s' is not HOST:PORT", listen);
		goto out;
	}
	host = xstrndup(listen, (size_t)(colon - listen));
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = 0;
	}
	if (getaddrinfo(host, colon + 1, &hints, &ai) || !ai) {
		rc = ota_error_set(OTA_EINVAL, "--metrics-listen: cannot resolve '%s'", listen);
		goto out;
	}
	*out = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
				(ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0),
				0, NULL, NULL, on_metrics, fs, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				MHD_OPTION_END);
	if (!*out) {
		rc = ota_error_set(OTA_ERROR, "--metrics-listen: cannot listen on %s", listen);
		goto out;
	}
	info = MHD_get_daemon_info(*out, MHD_DAEMON_INFO_BIND_PORT);
	fprintf(stderr, "fleetsim: metrics on http://%s:%u/metrics\n", listen[0] == '[' ?
		listen : host, info ? info->port : 0);
out:
	if (ai)
		freeaddrinfo(ai);
	free(host);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "devices", required_argument, NULL, 'n' },
		{ "seed", required_argument, NULL, 's' },
		{ "profile", required_argument, NULL, 'p' },
		{ "key", required_argument, NULL, 'k' },
		{ "fleet-key", required_argument, NULL, 'f' },
		{ "product", required_argument, NULL, 'P' },
		{ "duration", required_argument, NULL, 'd' },
		{ "until", required_argument, NULL, 'U' },
		{ "metrics-listen", required_argument, NULL, 'm' },
		{ "stats", required_argument, NULL, 'S' },
		{ "start-version", required_argument, NULL, 'V' },
		{ "start-counter", required_argument, NULL, 'C' },
		{ "concurrency", required_argument, NULL, 'c' },
		{ "report-every", required_argument, NULL, 'r' },
		{ "shared-downloads", no_argument, NULL, 'D' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "cacert", required_argument, NULL, 'A' },
		{ "provisioner", required_argument, NULL, 'X' },
		{ "trust-root", required_argument, NULL, 'T' },
		{ "enc-key", required_argument, NULL, 'E' },
		{ "engine", required_argument, NULL, 1001 },
		{ "fault-power-cut", required_argument, NULL, 1002 },
		{ "fault-corrupt", required_argument, NULL, 1003 },
		{ "fault-low-battery", required_argument, NULL, 1004 },
		{ "fault-vanish", required_argument, NULL, 1005 },
		{ "verify-every", no_argument, NULL, 1006 },
		{ "mqtt-url", required_argument, NULL, 1101 },
		{ "mqtt-cacert", required_argument, NULL, 1102 },
		{ "mqtt-username", required_argument, NULL, 1103 },
		{ "mqtt-password-file", required_argument, NULL, 1104 },
		{ "mqtt-prefix", required_argument, NULL, 1105 },
		{ "mqtt-window-ms", required_argument, NULL, 1106 },
		{ "mqtt-window-max-ms", required_argument, NULL, 1107 },
		{ "herd", no_argument, NULL, 1150 },
		{ "start-image", required_argument, NULL, 1160 },
		{ "start-image-share", required_argument, NULL, 1161 },
		{ "fault-corrupt-patch", required_argument, NULL, 1162 },
		{ "flag-crash", required_argument, NULL, 1170 },
		{ "flag", required_argument, NULL, 1171 },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	/* every device runs libotadev unless --engine model (the fast model
	 * for runs too big for the core, docs/fleetsim.md) */
	struct fleetsim_opts o = { .start_counter = 1, .concurrency = 256, .core = 1, .start_image_share = 1.0,
				   .flag_crash = -1 };
	struct sim_profile profile = { 0 };
	struct buf text = BUF_INIT, keyfile = BUF_INIT;
	const char *profile_path = NULL, *metrics_listen = NULL;
	char *until = NULL, *fleet_key = NULL;
	EVP_PKEY **keys = NULL;
	struct sim_enc_key *enc = NULL;
	size_t nkeys = 0, nenc = 0;
	struct fleetsim *fs = NULL;
	struct MHD_Daemon *mhd = NULL;
	struct sigaction sa = { .sa_handler = on_signal };
	int have_seed = 0, opt, rc = 0;
	uint64_t n;

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'u': o.url = optarg; break;
		case 'n':
			if ((rc = parse_u64("--devices", optarg, 16000000, &n)))
				goto out;
			o.devices = (uint32_t)n;
			break;
		case 's':
			if ((rc = parse_u64("--seed", optarg, UINT64_MAX, &o.seed)))
				goto out;
			have_seed = 1;
			break;
		case 'p': profile_path = optarg; break;
		case 'E': {
			/* [HARDWARE=]FILE */
			const char *eq = strchr(optarg, '='), *file = optarg;
			enc = xrealloc(enc, (nenc + 1) * sizeof(*enc));
			enc[nenc].hardware = NULL;
			if (eq && eq > optarg && !memchr(optarg, '/', (size_t)(eq - optarg))) {
				enc[nenc].hardware = xstrndup(optarg, (size_t)(eq - optarg));
				file = eq + 1;
			}
			rc = load_enc_key(&enc[nenc].key, file);
			nenc++;
			if (rc)
				goto out;
			o.enc = enc;
			o.nenc = nenc;
			break;
		}
		case 'k':
			keys = xrealloc(keys, (nkeys + 1) * sizeof(*keys));
			if ((rc = load_key(&keys[nkeys], optarg)))
				goto out;
			nkeys++;
			break;
		case 'f':
			free(fleet_key);
			if (optarg[0] == '@') {
				buf_clear(&keyfile);
				if ((rc = ota_read_file(&keyfile, optarg + 1, 4096))) {
					ota_error_prefix("--fleet-key: ");
					goto out;
				}
				while (keyfile.len && strchr("\r\n \t", keyfile.ptr[keyfile.len - 1]))
					keyfile.ptr[--keyfile.len] = 0;
				fleet_key = xstrdup(keyfile.ptr);
			} else {
				fleet_key = xstrdup(optarg);
			}
			break;
		case 'P': o.product = optarg; break;
		case 'd': {
			char *end;

			o.duration_s = strtod(optarg, &end);
			if (end == optarg || *end || o.duration_s < 0) {
				rc = ota_error_set(OTA_EINVAL, "--duration: '%s' is not seconds", optarg);
				goto out;
			}
			break;
		}
		case 'U': {
			char *colon, *end;

			free(until);
			until = xstrdup(optarg);
			colon = strrchr(until, ':');
			if (!colon || colon == until) {
				rc = ota_error_set(OTA_EINVAL, "--until: '%s' is not VERSION:FRACTION", optarg);
				goto out;
			}
			*colon = 0;
			o.until_fraction = strtod(colon + 1, &end);
			if (end == colon + 1 || *end || o.until_fraction < 0 || o.until_fraction > 1) {
				rc = ota_error_set(OTA_EINVAL, "--until: fraction '%s' is not in [0, 1]",
						   colon + 1);
				goto out;
			}
			o.until_version = until;
			break;
		}
		case 'm': metrics_listen = optarg; break;
		case 'S': o.stats_path = optarg; break;
		case 'V': o.start_version = optarg; break;
		case 'C':
			if ((rc = parse_u64("--start-counter", optarg, UINT32_MAX, &n)))
				goto out;
			o.start_counter = (uint32_t)n;
			break;
		case 'c':
			if ((rc = parse_u64("--concurrency", optarg, 100000, &n)))
				goto out;
			o.concurrency = n ? (unsigned)n : 1;
			break;
		case 'r': {
			int64_t ms;

			if ((rc = ota_parse_duration_ms(optarg, &ms)) || ms <= 0) {
				rc = ota_error_set(OTA_EINVAL, "--report-every: '%s' is not a duration",
						   optarg);
				goto out;
			}
			o.report_every_ms = ms;
			break;
		}
		case 'D': o.shared_downloads = 1; break;
		case 'q': o.quiet = 1; break;
		case 'A': o.cacert = optarg; break;
		case 'X': o.provisioner = optarg; break;
		case 'T': o.trust_root = optarg; break;
		case 1001:
			if (strcmp(optarg, "core") && strcmp(optarg, "model")) {
				rc = ota_error_set(OTA_EINVAL, "--engine: '%s' is not core or model", optarg);
				goto out;
			}
			o.core = !strcmp(optarg, "core");
			break;
		case 1002:
			if ((rc = parse_fraction("--fault-power-cut", optarg, &o.fault_power_cut)))
				goto out;
			break;
		case 1003:
			if ((rc = parse_fraction("--fault-corrupt", optarg, &o.fault_corrupt)))
				goto out;
			break;
		case 1004:
			if ((rc = parse_fraction("--fault-low-battery", optarg, &o.fault_low_battery)))
				goto out;
			break;
		case 1005: {
			char *end;

			o.vanish_at_s = strtod(optarg, &end);
			if (end == optarg || *end != ':' || o.vanish_at_s < 0 ||
			    (o.vanish_for_s = strtod(end + 1, &end), *end) || o.vanish_for_s <= 0) {
				rc = ota_error_set(OTA_EINVAL, "--fault-vanish: '%s' is not AT:SECONDS", optarg);
				goto out;
			}
			break;
		}
		case 1006: o.verify_every = 1; break;
		/* issue 15: push hints (push.h), the settings otacd-device has */
		case 1170: /* --flag-crash NAME */
		case 1171: /* --flag NAME */
			if (o.nflags == SIM_MAX_FLAGS || !*optarg || strlen(optarg) > 32 ||
			    strspn(optarg, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(optarg) ||
			    (opt == 1170 && o.flag_crash >= 0)) {
				rc = ota_error_set(OTA_EINVAL, "--flag and --flag-crash: flag names ([a-z0-9_-], 1..32),"
							       " at most %d, one --flag-crash", SIM_MAX_FLAGS);
				goto out;
			}
			if (opt == 1170)
				o.flag_crash = o.nflags;
			o.flags[o.nflags++] = optarg;
			break;
		case 1101: o.push.url = optarg; break;
		case 1102: o.push.cacert = optarg; break;
		case 1103: o.push.username = optarg; break;
		case 1104: o.push.password_file = optarg; break;
		case 1105: o.push.prefix = optarg; break;
		case 1106:
		case 1107:
			if ((rc = parse_u64(opt == 1106 ? "--mqtt-window-ms" : "--mqtt-window-max-ms", optarg, 86400000,
					    &n)))
				goto out;
			if (!n) {
				rc = ota_error_set(OTA_EINVAL, "--mqtt-window-ms / --mqtt-window-max-ms: 0 is no window");
				goto out;
			}
			*(opt == 1106 ? &o.push.window_ms : &o.push.window_max_ms) = (uint32_t)n;
			break;
		case 1150: o.herd = 1; break;
		case 1160: o.start_image = optarg; break;
		case 1161:
			if ((rc = parse_fraction("--start-image-share", optarg, &o.start_image_share)))
				goto out;
			break;
		case 1162:
			if ((rc = parse_fraction("--fault-corrupt-patch", optarg, &o.fault_corrupt_patch)))
				goto out;
			break;
		case 'h': usage(stdout); goto out;
		default: usage(stderr); rc = OTA_EINVAL; ota_error_set(rc, "bad arguments"); goto out;
		}
	}
	if (optind < argc || !o.url || !o.devices || !have_seed || (!nkeys && !o.trust_root) ||
	    (!fleet_key && !o.provisioner)) {
		usage(stderr);
		rc = ota_error_set(OTA_EINVAL, "--url, --devices, --seed, --key (or --trust-root) and --fleet-key (or --provisioner) are required");
		goto out;
	}
	if (!o.core && (o.start_image || o.fault_corrupt_patch > 0)) {
		rc = ota_error_set(OTA_EINVAL, "--start-image and --fault-corrupt-patch need --engine core");
		goto out;
	}
	if (o.nflags && !o.core) {
		rc = ota_error_set(OTA_EINVAL, "--flag and --flag-crash need --engine core");
		goto out;
	}
	o.fleet_key = fleet_key;
	if (profile_path) {
		if ((rc = ota_read_file(&text, profile_path, 16 << 20))) {
			ota_error_prefix("--profile: ");
			goto out;
		}
		rc = sim_profile_parse(&profile, text.ptr, text.len, profile_path);
	} else {
		rc = sim_profile_parse(&profile, NULL, 0, "default profile");
	}
	if (rc)
		goto out;
	if ((rc = httpc_global_init()))
		goto out;
	if ((rc = fleetsim_new(&fs, &o, &profile, keys, nkeys)))
		goto out;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (metrics_listen && (rc = metrics_start(&mhd, metrics_listen, fs)))
		goto out;
	rc = fleetsim_run(fs, &stop_flag);
out:
	if (rc)
		fprintf(stderr, "otacd-fleetsim: %s\n", ota_error_last());
	if (mhd)
		MHD_stop_daemon(mhd);
	fleetsim_free(fs);
	for (size_t k = 0; k < nkeys; k++)
		EVP_PKEY_free(keys[k]);
	free(keys);
	for (size_t k = 0; k < nenc; k++) {
		EVP_PKEY_free(enc[k].key);
		free((char *)enc[k].hardware);
	}
	free(enc);
	sim_profile_release(&profile);
	buf_release(&text);
	buf_release(&keyfile);
	free(until);
	free(fleet_key);
	return rc ? 1 : 0;
}
