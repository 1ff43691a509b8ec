/*
 * run.h - the simulator's event loop (run.c), used by main.c.
 *
 * One thread runs everything: an event heap in otacd time decides when each
 * device polls, reports or finishes a test boot, and a libcurl multi handle
 * carries up to `concurrency` requests at once.  The only other thread is
 * libmicrohttpd's, which serves the text fleetsim_metrics_snapshot() hands
 * out (a copy made under a mutex once a second by the loop).
 */
#ifndef OTA_FLEETSIM_RUN_H
#define OTA_FLEETSIM_RUN_H

#include <signal.h>
#include <stdint.h>

#include "push.h"
#include "sim.h"

struct fleetsim_opts {
	const char *url;             /* device API base: http://HOST:PORT */
	uint32_t devices;
	uint64_t seed;
	const char *product;         /* default "sensor-node" */
	const char *fleet_key;
	double duration_s;           /* real seconds; 0: no limit */
	const char *until_version;   /* stop when this version runs on until_fraction */
	double until_fraction;
	const char *start_version;   /* "1.0.0" */
	uint32_t start_counter;      /* 1 */
	unsigned concurrency;        /* 256 */
	int64_t report_every_ms;     /* otacd ms between heartbeats (3600 s) */
	int shared_downloads;        /* one download per image instead of one per device */
	const char *stats_path;      /* JSON written at exit, or NULL */
	int quiet;                   /* no summary lines */
	const char *cacert;          /* https: verify the server against this PEM CA file (NULL: system CAs) */
	const char *provisioner;     /* issue 13: provision each device a client certificate with this
				      * provisioner token and speak mTLS (NULL: tokens, the fleet key) */
	const char *trust_root;      /* issue 13: releases must chain to this root (trust.h);
				      * the keys are then the bootloader's key slots */
	const struct sim_enc_key *enc;  /* borrowed: private keys for encrypted images (--enc-key) */
	size_t nenc;
	/* issue 14, --engine core: every device runs libotadev (core.c) */
	int core;
	double fault_power_cut;      /* fraction of downloads cut by a power loss at one byte */
	double fault_corrupt;        /* fraction of downloads with one byte corrupted in transit */
	double fault_corrupt_patch;  /* issue 15: fraction of patch downloads with one byte corrupted */
	const char *start_image;     /* issue 15: a signed image some devices run at start (a release's,
				      * so a patch's base); NULL: the synthetic factory image */
	double start_image_share;    /* the fraction of devices flashed with it (the rest: factory) */
	double fault_low_battery;    /* fraction of devices starting on a low battery */
	double vanish_at_s, vanish_for_s;   /* the server vanishes (real seconds from start) */
	int verify_every;            /* no signature memo: every device checks every signature */
	struct fs_push_opts push;    /* issue 15, --mqtt-url: push hints (push.h); url NULL: none */
	int herd;                    /* issue 15: every device's first poll at once (power restored);
				      * the run ends once every device was served */
	/* issue 17, feature flags (core engine): a device whose check-in answer
	 * has flag flags[i] on reports the tag flag.NAME=on while it is on;
	 * with flag_crash (an index, -1: none) it also crashes like a crasher */
	const char *flags[SIM_MAX_FLAGS];
	int nflags, flag_crash;
};

struct fleetsim;

/* Build the fleet (devices drawn from the seed); profile and keys are
 * borrowed and must outlive the simulator. */
int fleetsim_new(struct fleetsim **out, const struct fleetsim_opts *o,
		 const struct sim_profile *profile, EVP_PKEY **keys, size_t nkeys);
/* Run until the duration is over, --until is reached or *stop is set.
 * 0 on a normal end; an error when the server refuses the fleet (401, 400
 * on the first check-in).  Writes the stats file when asked. */
int fleetsim_run(struct fleetsim *fs, volatile sig_atomic_t *stop);
void fleetsim_free(struct fleetsim *fs);

/* The latest Prometheus text (new string, caller frees).  Any thread. */
char *fleetsim_metrics_snapshot(struct fleetsim *fs);

#endif
