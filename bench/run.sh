#!/bin/sh
# make bench: build and run the benchmark program against the built binaries.
# Sizes can be lowered for a quick look: BENCH_ARGS="50 100 500 50" make bench
set -eu
"$OTACD_BIN/otacd-bench" "$OTACD_BIN" ${BENCH_ARGS:-200 1000 10000 200}
echo
# issue 18
echo "== idle memory: otacd (2 local agents) and a Buildbot master, private and shared pages, same run"
sh bench/memory.sh "$OTACD_BIN"
echo
echo "== report ingestion (JUnit, cppcheck, SARIF; 10,000 items each)"
"$OTACD_BIN/reports-bench"
echo
echo "== device API: check-ins and report batches under wrk (64 connections)"
"$OTACD_BIN/devapi-bench" 5
echo
echo "== durability: synchronous=FULL (the daemon's) against NORMAL, same run, same disk"
"$OTACD_BIN/sync-bench"
echo
echo "== gate evaluation with 1M devices aggregated"
"$OTACD_BIN/gate-bench" ${GATE_BENCH_ARGS:-1000000 20000}
echo
echo "== rollout safety table (fleetsim device model)"
"$OTACD_BIN/safety-bench" ${SAFETY_BENCH_ARGS:-20000 20 50}
echo
echo "== status page: first render with 10,000 runs, API p99 under 64 connections (wrk)"
sh bench/web.sh "$OTACD_BIN" 10000
echo
echo "== sample firmware pipeline: otacd vs the same commands by hand"
sh bench/firmware.sh "$OTACD_BIN" 3
echo
echo "== the API under hostile load: p50/p99 at 64 connections, with and without 1,000 slow clients (wrk)"
sh bench/load.sh "$OTACD_BIN" 10000
echo
# issue 13, device certificates
echo "== device identity: client certificate check against the HMAC credential check, same run"
"$OTACD_BIN/devca-bench" ${DEVCA_BENCH_ARGS:-2000 2}
# issue 13, TLS
echo "== device check-ins over TLS (full and resumed handshakes, kept-alive) against plain HTTP, same run"
"$OTACD_BIN/tls-bench" 5
echo
echo "== fleet store: bytes written per accepted report at 1M devices, snapshot layout against the legacy one"
"$OTACD_BIN/fleetstore-bench" ${FLEETSTORE_BENCH_ARGS:-1000000 6}
echo
echo "== fleet store: a device snapshot at 1M devices, and a clean stop in the middle of one against an idle close"
"$OTACD_BIN/snapshot-bench" ${SNAPSHOT_BENCH_ARGS:-1000000}
echo
echo "== fleet store behind the real device API: otacd + otacd-fleetsim, 1M devices at time scale 300, both layouts"
sh bench/fleetstore_e2e.sh "$OTACD_BIN" ${FLEETSTORE_E2E_ARGS:-1000000 240}
# issue 14, the device core
echo
echo "== libotadev footprint per build configuration (flash, RAM), ratios to the default build"
sh bench/device_footprint.sh
# issue 14, the simulator on the device core
echo "== otacd-fleetsim: the device model against every device running libotadev (--engine core), same run"
sh bench/fleetsim_core.sh "$OTACD_BIN" ${FLEETSIM_CORE_ARGS:-20000 20}
echo "== libotadev's image verification per simulated device (sparse flash rebuild, hash, ECDSA), with and without the memo"
"$OTACD_BIN/fscore-verify-bench" ${FSCORE_VERIFY_ARGS:-64 2000}
# issue 13, encrypted images
echo "== MCUboot image encryption: signing and device decrypt+verify against a clear image, same run"
"$OTACD_BIN/enc-bench" ${ENC_BENCH_ARGS:-1024 20}
# issue 13, device identity by certificate (s5-mtls)
echo
echo "== otacd-fleetsim check-ins over mTLS (device certificates) against tokens over TLS, same run"
sh bench/mtls_fleetsim.sh "$OTACD_BIN" ${MTLS_FLEETSIM_ARGS:-3000 20}
# issue 19 part 5, the 1M-device rollout
echo
echo "== rollout to 1M devices behind the real otacd: reports accepted/demanded, bytes per report, gate lag, check-ins vs trivial handler"
sh bench/rollout_1m.sh "$OTACD_BIN" ${ROLLOUT_1M_ARGS:-1000000}
# issue 15, object storage and CDN origin
echo
echo "== image bytes of one rollout served by otacd, the origin (S3, s3rver) and the cache (nginx), against otacd alone"
sh bench/origin.sh "$OTACD_BIN" ${ORIGIN_ARGS:-20000}
# issue 15, push hints
echo
echo "== push hints: fleet_set_exposure per step with the MQTT notifier against none, same run"
"$OTACD_BIN/push-bench" ${PUSH_BENCH_ARGS:-1000000}
# issue 15, delta updates
echo
echo "== delta updates: patch size per format, libotadev apply time against a plain write, five sensor-node versions"
sh bench/delta.sh "$OTACD_BIN"
echo
echo "== a rollout's fleet bytes with and without deltas (otacd-fleetsim core devices on the patch's base), same fleet, same run"
sh bench/fsdelta.sh "$OTACD_BIN" ${FSDELTA_ARGS:-10000}
# issue 15, push hints measured with fleetsim
echo
echo "== push hints against 6 h polling (otacd-fleetsim --mqtt-url): time from a step opening to 95 % of its cohort, first-minute check-in rate vs capacity"
sh bench/pushsim.sh "$OTACD_BIN" ${PUSHSIM_ARGS:-20000 500}
# issue 15, thundering-herd control
echo
echo "== a million devices at once (power restored) against a check-in capacity: rate vs capacity, time to serve all, against no admission"
sh bench/admission.sh "$OTACD_BIN" ${ADMISSION_ARGS:-1000000}
# issue 18, retention
echo
echo "== otacd.db's size after 100,000 runs with retention on and off, and the writer time per pruning batch, same run"
"$OTACD_BIN/retention-bench" ${RETENTION_BENCH_ARGS:-100000}
# issue 16, the storage layer
echo
echo "== storage backends: SQLite (synchronous=FULL) against PostgreSQL (fsync on, unix socket), same run, same disk"
"$OTACD_BIN/db-bench" ${DB_BENCH_ARGS:-1000 50000 50000}
# issue 17, caches
echo
echo "== caches between runs: a 100 MiB cache cold, restored, and cp -a of the same tree, same run"
sh bench/cache.sh "$OTACD_BIN" 3
# issue 16, measure: the fleet store and the engine on PostgreSQL against SQLite
echo
echo "== fleet store at 10M devices, SQLite against PostgreSQL (fsync on), same run: register, check in, RSS per device, bytes per report, size, reopen, a gate check's reads"
"$OTACD_BIN/fleetstore-bench" --backends ${FLEETSTORE_BACKENDS_ARGS:-10000000 1}
echo
echo "== otacd on SQLite against PostgreSQL, same run: pickup latency, API p50/p99 under 64 connections (wrk)"
"$OTACD_BIN/otacd-bench" "$OTACD_BIN" --backends ${ENGINE_BACKENDS_ARGS:-200 3}
# issue 16, several instances
echo
echo "== the device API on 1, 2 and 3 instances (PostgreSQL, haproxy round robin) against one on SQLite, same run: check-ins/s, report events/s, p50/p99, CPU per instance"
sh bench/fleet_scale.sh "$OTACD_BIN" ${FLEET_SCALE_ARGS:-20000 3}
