/*
 * main.c - otacd-device, the device side of an otacd update on embedded
 * Linux: libotadev's state machine on the Linux hooks (port_linux.c).
 *
 *   otacd-device -c CONF run      run until SIGTERM (exit 0) or until the
 *                                 update asks for a reboot (exit 10: the
 *                                 caller reboots; in tests: `boot`, then run)
 *   otacd-device -c CONF boot     the simulated MCUboot: apply the swap
 *                                 decision of the trailers (test/perm/revert)
 *   otacd-device -c CONF flash IMAGE   factory: write IMAGE to the primary slot
 *   otacd-device -c CONF status   the record and the slots as JSON
 *   otacd-device -c CONF check    the config parses, keys load, slots open
 */
#include "port_linux.h"
#include "linux/push.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXIT_REBOOT 10

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void hex(char *out, const uint8_t *p, size_t n)
{
	static const char h[] = "0123456789abcdef";
	size_t i;
	for (i = 0; i < n; i++) {
		out[2 * i] = h[p[i] >> 4];
		out[2 * i + 1] = h[p[i] & 15];
	}
	out[2 * n] = 0;
}

static int cmd_run(struct port_linux *p, const struct otadev_config *cfg)
{
	static struct otadev d;   /* a few KB: static, as on a device */
	struct sigaction sa;
	uint32_t wait, nudge_base = 0;
	int rc, nudged = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	if ((rc = otadev_init(&d, port_linux_hooks(p), p, cfg)) < 0) {
		fprintf(stderr, "otacd-device: %s\n", d.err[0] ? d.err : "start failed");
		return 1;
	}
	/* issue 15: hints from an MQTT broker, when configured (linux/push.c) */
	if (devpush_start(cfg->device, cfg->product, cfg->hardware) < 0)
		return 1;
	while (!stop) {
		uint32_t nudge;
		rc = otadev_step(&d, &wait);
		if (nudged && d.n_checkins != nudge_base) {
			fprintf(stderr, "otacd-device: push: checked in early (check-in %u)\n", (unsigned)d.n_checkins);
			nudged = 0;
		}
		if (rc < 0)
			fprintf(stderr, "otacd-device: step: %s (%d)\n", d.err, rc);
		if (port_linux_reboot_requested(p)) {
			devpush_stop();
			return EXIT_REBOOT;
		}
		if (rc < 0 && wait < 1000)
			wait = 1000;
		if (wait < port_linux_throttle_ms(p))
			wait = port_linux_throttle_ms(p);
		while (wait > 0 && !stop) {
			uint32_t slice = wait < 100 ? wait : 100;
			struct timespec ts = { 0, (long)slice * 1000000L };
			nanosleep(&ts, NULL);
			wait -= slice;
			if (devpush_take(&nudge)) {
				otadev_nudge(&d, nudge);
				nudged = 1;
				nudge_base = d.n_checkins;
				break;
			}
		}
	}
	devpush_stop();
	return 0;
}

static int cmd_status(struct port_linux *p, const struct otadev_config *cfg)
{
	static struct otadev d;
	const struct otadev_hooks *h = port_linux_hooks(p);
	struct otadev_image img, img2;
	struct otadev_trailer pt, st;
	int valid2;
	static const uint8_t zero[32];
	char hx[65], nh[65], buf[1024];
	const char *why = "";
	int n, valid, i, booted = port_linux_booted(p);

	memset(&d, 0, sizeof(d));
	n = h->persist_read(p, &d.rec, sizeof(d.rec));
	for (i = 0; i < cfg->nkeys; i++) {
		struct otadev_key *k = (struct otadev_key *)&cfg->keys[i];
		h->sha256_begin(p);
		h->sha256_update(p, k->der, k->len);
		h->sha256_end(p, k->hash);
	}
	valid = otadev_image_parse(&img, h, p, 0, cfg->slot_size - 432, (uint8_t *)buf, sizeof(buf)) == 0 &&
		otadev_image_verify(&img, h, p, 0, cfg->keys, cfg->nkeys, (uint8_t *)buf, sizeof(buf), &why) == 0;
	valid2 = otadev_image_parse(&img2, h, p, 1, cfg->slot_size - 432, (uint8_t *)buf, sizeof(buf)) == 0 &&
		 otadev_image_verify(&img2, h, p, 1, cfg->keys, cfg->nkeys, (uint8_t *)buf, sizeof(buf), &why) == 0;
	otadev_trailer_read(&pt, h, p, 0, cfg->slot_size);
	otadev_trailer_read(&st, h, p, 1, cfg->slot_size);
	hex(hx, img.sha256, 32);
	hex(nh, d.rec.new_hash, 32);
	printf("{\"record\": %s, \"phase\": \"%s\", \"version\": \"%s\", \"security_counter\": %u,"
	       " \"queued\": %u, \"next_seq\": %u, \"refused_image\": %s, \"dl_offset\": %u, \"offer\": \"%s\", \"new_hash\": \"%s\","
	       " \"primary\": {\"valid\": %s, \"hash\": \"%s\", \"version\": \"%u.%u.%u\", \"counter\": %u,"
	       " \"magic\": %d, \"image_ok\": %d, \"copy_done\": %d},"
	       " \"secondary\": {\"magic\": %d, \"image_ok\": %d, \"valid\": %s}, \"boot\": \"%s\"}\n",
	       n == (int)sizeof(d.rec) ? "true" : "false", otadev_phase_name(d.rec.phase), d.rec.version,
	       d.rec.security_counter, d.rec.nq, d.rec.next_seq,
	       memcmp(d.rec.refused_sha, zero, 32) ? "true" : "false", d.rec.dl_offset, d.rec.offer.version, nh,
	       valid ? "true" : "false", hx, img.major, img.minor, img.revision,
	       img.has_counter ? img.security_counter : 0, pt.magic, pt.image_ok, pt.copy_done, st.magic, st.image_ok,
	       valid2 ? "true" : "false", booted < 0 ? "mcuboot" : booted ? "uboot: booted b" : "uboot: booted a");
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: otacd-device -c CONFIG run | boot | flash IMAGE | status | check\n");
}

int main(int argc, char **argv)
{
	struct port_linux *p;
	struct otadev_config *cfg = NULL;
	const char *conf = NULL, *cmd = NULL, *decision;
	int i, rc = 2;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c") && i + 1 < argc)
			conf = argv[++i];
		else if (!cmd)
			cmd = argv[i];
		else
			break;
	}
	if (!conf || !cmd) {
		usage();
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (!(p = port_linux_open(conf, &cfg)))
		return 1;
	if (!strcmp(cmd, "run")) {
		rc = cmd_run(p, cfg);
	} else if (!strcmp(cmd, "boot")) {
		rc = port_linux_boot(p, &decision);
		printf("%s\n", decision);
		if (rc < 0)
			fprintf(stderr, "otacd-device: boot: no valid image in the primary slot\n");
		rc = rc < 0 ? 1 : 0;
	} else if (!strcmp(cmd, "flash") && i < argc) {
		rc = port_linux_flash_image(p, 0, argv[i]) < 0 ? 1 : 0;
		if (rc)
			fprintf(stderr, "otacd-device: flash: cannot write %s to the primary slot\n", argv[i]);
	} else if (!strcmp(cmd, "status")) {
		rc = cmd_status(p, cfg);
	} else if (!strcmp(cmd, "check")) {
		printf("%s: ok\n", conf);
		rc = 0;
	} else {
		usage();
	}
	port_linux_close(p);
	curl_global_cleanup();
	return rc;
}
