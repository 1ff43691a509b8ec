# otacd - continuous delivery for firmware.
#
#   make            build bin/otacd, bin/otacd-agent, bin/otactl
#   make demo       install what is missing, build, run the demo
#   make check      all tests (unit + end-to-end on loopback)
#   make asan       the whole suite under AddressSanitizer + UBSan
#   make bench      benchmarks (figures printed, nothing asserted)
#   make fuzz       libFuzzer targets (clang), a short run each
#   make deps       apt-get install the Debian packages we link (DEPS=all: the test tools too)
#   make lint       cppcheck on our own code
#   make format     clang-format in place
#   make install    programs, man pages, systemd units, bash completion (PREFIX, DESTDIR)
#   make deb        the Debian package (debian/) in build/deb
#
# Out-of-tree objects: BUILD=dir (default build/).  SANITIZE=1 adds
# -fsanitize=address,undefined.  OPT sets optimisation (default -O2 -g).

# nettle: SHA-256 of tokens without waking OpenSSL's providers at idle
# (common/sha256.h); GnuTLS, which libmicrohttpd links, maps it anyway
PKGS      := yaml-0.1 sqlite3 openssl libcurl libgit2 libmicrohttpd jansson libarchive libxml-2.0 gnutls libmosquitto libpq \
             nettle
DEB_PKGS  := build-essential pkg-config libyaml-dev libsqlite3-dev libssl-dev libgnutls28-dev nettle-dev \
             libcurl4-openssl-dev libgit2-dev libmicrohttpd-dev libjansson-dev \
             libcmocka-dev libxml2-dev libarchive-dev sqlite3 curl git openssl procps \
             softhsm2 libengine-pkcs11-openssl opensc libjsmn-dev libmosquitto-dev help2man libpq-dev
# for the tests, not the demo: firmware cross builds and HIL, real peers
DEB_EXTRA := clang cppcheck gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm python3 \
             prometheus chromium wrk nginx-light u-boot-tools libubootenv-tool systemd mosquitto \
             xdelta3 bsdiff zstd pmccabe postgresql libseccomp-dev help2man debhelper devscripts lintian fakeroot

CC        ?= cc
BUILD     ?= build
BIN       := $(BUILD)/bin
VERSION   := 0.1.0
# issue 18: bench/memory.sh measures a Buildbot master next to otacd
DEB_EXTRA += buildbot

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# issue 18: libxml2 is dlopen()ed on first use (orchestrator/xmlload.h), not
# linked: linked, it and ICU cost otacd ~1.7 MB of idle Rss
PKG_LIBS   := $(shell pkg-config --libs $(filter-out libxml-2.0,$(PKGS)) 2>/dev/null)
# libcurl and libpq stay on the link line for the programs that call them
# directly (tests, fleetsim, otacd-device), but otacd reaches them through
# dlopen (common/curlload.h, orchestrator/db/pgload.h): no object of its
# calls them, so --as-needed leaves them out of it (~1.5 MB of idle Rss
# with what they link)

OPT      ?= -O2 -g
CFLAGS   += $(OPT) -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
            -D_GNU_SOURCE -DOTACD_VERSION='"$(VERSION)"' $(PKG_CFLAGS)
LDFLAGS  += -Wl,--as-needed
LDLIBS   += $(PKG_LIBS) -lpthread -lm

ifeq ($(SANITIZE),1)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif

# Library code shared by the programs and the tests (everything but mains).
LIB_SRC  := $(wildcard common/*.c) $(wildcard stages/*.c) \
            $(filter-out orchestrator/main.c,$(wildcard orchestrator/*.c)) $(wildcard orchestrator/*/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/web/assets.o
LIB      := $(BUILD)/libota.a

# issue 14: libotadev, the device core: portable C99, no OS headers, its own flags
DEV_CORE_SRC := $(filter-out device/port_%.c device/main.c,$(wildcard device/*.c))
DEV_CORE_OBJ := $(DEV_CORE_SRC:%.c=$(BUILD)/obj/%.o)
DEV_PORT_OBJ := $(BUILD)/obj/device/port_linux.o $(BUILD)/obj/device/port_linux_x509.o $(BUILD)/obj/device/port_linux_enc.o \
                $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard device/linux/*.c))
LIBOTADEV    := $(BUILD)/libotadev.a
DEV_CFLAGS   := $(OPT) -std=c99 -pedantic -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wconversion \
                -Wno-sign-conversion $(filter -fsanitize% -fno-%,$(CFLAGS))

PROGS    := $(BIN)/otacd $(BIN)/otacd-agent $(BIN)/otactl $(BIN)/otacd-fleetsim $(BIN)/otacd-device $(BIN)/otacd-git \
            $(BIN)/otacd-reaper
TESTS    := $(patsubst tests/%.c,$(BIN)/%,$(wildcard tests/test_*.c))
BENCHES := $(BIN)/otacd-bench $(BIN)/reports-bench $(BIN)/devapi-bench $(BIN)/gate-bench $(BIN)/safety-bench \
           $(BIN)/hostile-bench $(BIN)/load-bench $(BIN)/sync-bench $(BIN)/tls-bench $(BIN)/devca-bench \
           $(BIN)/fleetstore-bench $(BIN)/enc-bench $(BIN)/fscore-verify-bench $(BIN)/push-bench \
           $(BIN)/snapshot-bench $(BIN)/retention-bench
# libotadev on an in-memory device (tests/memdev.h): it calls the core and
# the Linux port's AES-CTR, so only the tests that link those take it
MEMDEV_OBJ   := $(BUILD)/obj/tests/memdev.o
TEST_SUPPORT := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out tests/test_%.c tests/memdev.c,$(wildcard tests/*.c)))

WEB_FILES := $(sort $(wildcard web/*.html web/*.css web/*.js))

.PHONY: check-pg all check unit e2e asan bench fuzz deps demo lint format clean man install uninstall deb
all: $(PROGS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# The status page is embedded into otacd at build time (no Node step).
$(BUILD)/obj/web/assets.c: $(WEB_FILES) web/embed.sh
	@mkdir -p $(dir $@)
	sh web/embed.sh $(WEB_FILES) > $@

$(BUILD)/obj/web/assets.o: $(BUILD)/obj/web/assets.c
	$(CC) $(CFLAGS) -I. -c -o $@ $<

$(DEV_CORE_OBJ): $(BUILD)/obj/device/%.o: device/%.c
	@mkdir -p $(dir $@)
	$(CC) $(DEV_CFLAGS) -MMD -MP -c -o $@ $<

$(LIBOTADEV): $(DEV_CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN)/otacd-device: $(BUILD)/obj/device/main.o $(DEV_PORT_OBJ) $(LIBOTADEV)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 15, delta updates: libotadev's VCDIFF decoder against xdelta3 (and
# the whole path through otacd), and its apply time (bench/delta.sh)
BENCHES += $(BIN)/delta-bench
$(BIN)/delta-bench: $(BUILD)/obj/bench/delta_bench.o $(LIBOTADEV)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^

$(BIN)/test_delta: $(BUILD)/obj/tests/test_delta.o $(MEMDEV_OBJ) $(BUILD)/obj/device/port_linux_enc.o $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka
# issue 17: feature flags; libotadev must read an answer carrying every flag
$(BIN)/test_flags: $(BUILD)/obj/tests/test_flags.o $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# libotadev's CRC-32 against its bit-by-bit definition
$(BIN)/test_devcrc: $(BUILD)/obj/tests/test_devcrc.o $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# the device tests link the core (in-memory hooks) and the Linux port
$(BIN)/test_device: $(BUILD)/obj/tests/test_device.o $(MEMDEV_OBJ) $(DEV_PORT_OBJ) $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka
$(BIN)/test_devprocs: $(BUILD)/obj/tests/test_devprocs.o $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# issue 15: admission, with libotadev's side of it
$(BIN)/test_admission: $(BUILD)/obj/tests/test_admission.o $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# no patches of encrypted images: libotadev on in-memory flash with the Linux port's AES-CTR
$(BIN)/test_encdelta: $(BUILD)/obj/tests/test_encdelta.o $(MEMDEV_OBJ) $(DEV_PORT_OBJ) $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BIN)/test_devlinux: $(BUILD)/obj/tests/test_devlinux.o $(DEV_PORT_OBJ) $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# The torture test names the core's phases (otadev_phase_name); it builds
# otadev_chain.c into itself, so the archive only adds what it lacks.
$(BIN)/test_devtorture: $(BUILD)/obj/tests/test_devtorture.o $(TEST_SUPPORT) $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN)/otacd: $(BUILD)/obj/orchestrator/main.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 18: libgit2 and libarchive live in this helper, not in the daemon
# (orchestrator/gitsrc.c starts it on demand)
$(BIN)/otacd-git: $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard githelper/*.c)) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 18: the init of each step's PID namespace, with the log code alone
# (its lines in the agent's format), so a trivial job does not pay for
# re-executing the whole agent (agents/contain.c)
$(BIN)/otacd-reaper: $(BUILD)/obj/agents/reaper/main.o $(BUILD)/obj/agents/reaper.o $(BUILD)/obj/common/log.o \
		     $(BUILD)/obj/common/util.o
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/otacd-agent: $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard agents/*.c)) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/otactl: $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard cli/*.c)) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# --engine core --trust-root / --enc-key: the devices' X.509 and decryption hooks are the Linux port's (OpenSSL)
$(BIN)/otacd-fleetsim: $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard fleetsim/*.c)) $(BUILD)/obj/device/port_linux_x509.o \
		       $(BUILD)/obj/device/port_linux_enc.o \
		       $(BUILD)/obj/device/linux/pushhint.o $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 18: otacd under its unit's system-call filter (libseccomp)
$(BIN)/test_package: LDLIBS += -lseccomp

# The simulator's logic is not in libota; its test links it directly.
$(BIN)/test_fleetsim: $(BUILD)/obj/tests/test_fleetsim.o $(BUILD)/obj/fleetsim/sim.o $(TEST_SUPPORT) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# The signing PKI's test also checks the devices' side (fleetsim/trust.c).
$(BIN)/test_pki: $(BUILD)/obj/tests/test_pki.o $(BUILD)/obj/fleetsim/sim.o $(BUILD)/obj/fleetsim/trust.o $(TEST_SUPPORT) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BIN)/test_%: $(BUILD)/obj/tests/test_%.o $(TEST_SUPPORT) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# ---- tests ---------------------------------------------------------------
# Every test binary gets the directory of the programs under test.
# the benchmarks are built too (not run), so an API change that breaks one
# fails here rather than in the next `make bench`
check: $(PROGS) $(TESTS) $(BENCHES)
	@OTACD_BIN=$(abspath $(BIN)) OTACD_SRC=$(CURDIR) sh tests/run.sh $(TESTS)

# The end-to-end tests that pass with every daemon on a PostgreSQL cluster
# of its own (OTACD_DATABASE=pg: tests/harness.c, docs/storage.md). Not in
# `check`: each daemon starts a cluster (initdb), a few seconds each.
PG_TESTS := $(addprefix $(BIN)/,test_e2e test_webhook test_git test_ops test_agentauth test_api test_jobdur)
check-pg: $(PROGS) $(PG_TESTS)
	@OTACD_DATABASE=pg OTACD_BIN=$(abspath $(BIN)) OTACD_SRC=$(CURDIR) sh tests/run.sh $(PG_TESTS)

# OTACD_SLOW=1: tests that drive a browser or a simulated fleet allow for
# sanitized binaries being several times slower (waits, not assertions).
asan:
	OTACD_SLOW=1 $(MAKE) BUILD=build-asan SANITIZE=1 OPT="-O1 -g" check

$(BIN)/otacd-bench: $(BUILD)/obj/bench/bench.o $(BUILD)/obj/tests/pgcluster.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/reports-bench: $(BUILD)/obj/bench/reports_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(shell pkg-config --libs libxml-2.0)  # its baseline calls libxml2 directly

$(BIN)/devapi-bench: $(BUILD)/obj/bench/devapi_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/sync-bench: $(BUILD)/obj/bench/sync_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/fleetstore-bench: $(BUILD)/obj/bench/fleetstore_bench.o $(BUILD)/obj/tests/pgcluster.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/snapshot-bench: $(BUILD)/obj/bench/snapshot_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 18: otacd.db's size after 100,000 runs with retention on and off
$(BIN)/retention-bench: $(BUILD)/obj/bench/retention_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/gate-bench: $(BUILD)/obj/bench/gate_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/safety-bench: $(BUILD)/obj/bench/safety_bench.o $(BUILD)/obj/fleetsim/sim.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/hostile-bench: $(BUILD)/obj/bench/hostile_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/load-bench: $(BUILD)/obj/bench/load_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 13: what a device certificate check costs against an HMAC credential
$(BIN)/devca-bench: $(BUILD)/obj/bench/devca_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 13: check-ins over TLS (resumed, full) against plain HTTP
$(BIN)/tls-bench: $(BUILD)/obj/bench/tls_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 13: encrypted images against clear ones (sign; device decrypt + verify)
$(BIN)/push-bench: $(BUILD)/obj/bench/push_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/enc-bench: $(BUILD)/obj/bench/enc_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 14: libotadev's verification on the simulator's sparse flash
$(BIN)/fscore-verify-bench: $(BUILD)/obj/bench/fscore_verify_bench.o $(BUILD)/obj/fleetsim/port_sim.o \
			    $(BUILD)/obj/fleetsim/sim.o $(LIBOTADEV) $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# issue 16: the storage layer's backends, SQLite against PostgreSQL (a
# cluster it starts itself, tests/pgcluster.c), same run
BENCHES += $(BIN)/db-bench
$(BIN)/db-bench: $(BUILD)/obj/bench/db_bench.o $(BUILD)/obj/tests/pgcluster.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
# issue 16: a module converted to the storage layer against its raw
# sqlite3_* path, same connection, same run
BENCHES += $(BIN)/dbconv-bench
$(BIN)/dbconv-bench: $(BUILD)/obj/bench/dbconv_bench.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bench: $(PROGS) $(BENCHES)
	OTACD_BIN=$(abspath $(BIN)) OTACD_SRC=$(CURDIR) sh bench/run.sh

FUZZ_TARGETS := $(patsubst fuzz/%.c,$(BUILD)/fuzz/%,$(wildcard fuzz/fuzz_*.c))
# the library is compiled once for all targets (instrumented, no main),
# each target is its own file linked against it
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -DOTACD_VERSION='"$(VERSION)"' -I.
FUZZ_LIB    := $(BUILD)/fuzz/libota.a
FUZZ_OBJ    := $(LIB_SRC:%.c=$(BUILD)/fuzz/obj/%.o) $(BUILD)/fuzz/obj/web/assets.o
$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined $(PKG_CFLAGS) -MMD -MP -c -o $@ $<
$(BUILD)/fuzz/obj/web/assets.o: $(BUILD)/obj/web/assets.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<
$(FUZZ_LIB): $(FUZZ_OBJ)
	$(AR) rcs $@ $^
$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.c $(FUZZ_LIB)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined $(PKG_CFLAGS) -o $@ $< $(FUZZ_LIB) \
	    $(PKG_LIBS) -lpthread -lm
-include $(FUZZ_OBJ:.o=.d)
$(BUILD)/fuzz/fuzz_sensorlink: PKG_CFLAGS += -Idevice
fuzz: $(FUZZ_TARGETS)
	@for t in $(FUZZ_TARGETS); do \
	  n=$$(basename $$t); mkdir -p $(BUILD)/fuzz/corpus-$$n; \
	  echo "fuzz: $$n ($${FUZZ_SECONDS:-30}s)"; \
	  $$t -max_total_time=$${FUZZ_SECONDS:-30} -max_len=65536 $(BUILD)/fuzz/corpus-$$n fuzz/corpus/$$n || exit 1; \
	done

# ---- install (docs/operations.md, "Install") -----------------------------
# The daemon and the agent are system programs (section 8, sbin; otacd
# starts its local agents from its own directory), the rest user commands.
# The status page is compiled into otacd: no assets to install.
PREFIX         ?= /usr/local
BINDIR         ?= $(PREFIX)/bin
SBINDIR        ?= $(PREFIX)/sbin
DATADIR        ?= $(PREFIX)/share
MANDIR         ?= $(DATADIR)/man
SYSCONFDIR     ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR    ?= $(DATADIR)/bash-completion/completions
MANPAGES       := $(BUILD)/man/otacd.8 $(BUILD)/man/otactl.1 $(BUILD)/man/otacd-agent.8 \
                  $(BUILD)/man/otacd-fleetsim.1 $(BUILD)/man/otacd.yml.5 $(BUILD)/man/otacd-device.8

man: $(MANPAGES)
$(MANPAGES) &: $(PROGS) dist/man/mkman.sh dist/man/md2man.awk $(wildcard dist/man/*.h2m) \
		docs/config.md docs/pipeline.md docs/fleetsim.md docs/device.md
	sh dist/man/mkman.sh $(BIN) $(BUILD)/man $(VERSION)

# The configuration is installed only where there is none: an upgrade by
# `make install` keeps the operator's.
# The units name SBINDIR and SYSCONFDIR: written at install time, so they
# always say where this install put things.
install: $(PROGS) $(MANPAGES)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
	    $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(BASHCOMPDIR) \
	    $(DESTDIR)$(SYSCONFDIR)/otacd $(DESTDIR)$(DATADIR)/otacd/pipelines $(DESTDIR)$(DATADIR)/otacd/device
	install -m 0755 $(BIN)/otacd $(BIN)/otacd-agent $(BIN)/otacd-git $(BIN)/otacd-reaper $(DESTDIR)$(SBINDIR)
	install -m 0755 $(BIN)/otactl $(BIN)/otacd-fleetsim $(BIN)/otacd-device $(DESTDIR)$(BINDIR)
	install -m 0644 $(filter %.1,$(MANPAGES)) $(DESTDIR)$(MANDIR)/man1
	install -m 0644 $(filter %.5,$(MANPAGES)) $(DESTDIR)$(MANDIR)/man5
	install -m 0644 $(filter %.8,$(MANPAGES)) $(DESTDIR)$(MANDIR)/man8
	for u in otacd.service otacd-agent@.service; do \
	    sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' dist/systemd/$$u.in \
	        > $(DESTDIR)$(SYSTEMDUNITDIR)/$$u && chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$$u || exit 1; \
	done
	install -m 0644 dist/completion/otactl $(DESTDIR)$(BASHCOMPDIR)/otactl
	install -m 0644 pipelines/*.yml $(DESTDIR)$(DATADIR)/otacd/pipelines
	install -m 0644 device/contrib/otacd-device.service device/contrib/device.conf.example $(DESTDIR)$(DATADIR)/otacd/device
	[ -e $(DESTDIR)$(SYSCONFDIR)/otacd/config.yml ] || \
	    install -m 0640 dist/config.yml $(DESTDIR)$(SYSCONFDIR)/otacd/config.yml

# The Debian package (debian/), built from a copy of the tree into
# $(BUILD)/deb: dpkg-buildpackage -us -uc -b, debhelper 13.
deb:
	sh dist/build-deb.sh $(BUILD)/deb

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/otacd $(DESTDIR)$(SBINDIR)/otacd-agent $(DESTDIR)$(SBINDIR)/otacd-git $(DESTDIR)$(SBINDIR)/otacd-reaper $(DESTDIR)$(BINDIR)/otactl \
	    $(DESTDIR)$(BINDIR)/otacd-fleetsim $(DESTDIR)$(BINDIR)/otacd-device \
	    $(DESTDIR)$(MANDIR)/man1/otactl.1 $(DESTDIR)$(MANDIR)/man1/otacd-fleetsim.1 \
	    $(DESTDIR)$(MANDIR)/man5/otacd.yml.5 $(DESTDIR)$(MANDIR)/man8/otacd.8 $(DESTDIR)$(MANDIR)/man8/otacd-agent.8 \
	    $(DESTDIR)$(MANDIR)/man8/otacd-device.8 \
	    $(DESTDIR)$(SYSTEMDUNITDIR)/otacd.service $(DESTDIR)$(SYSTEMDUNITDIR)/otacd-agent@.service \
	    $(DESTDIR)$(BASHCOMPDIR)/otactl
	rm -rf $(DESTDIR)$(DATADIR)/otacd

deps:
	@missing=""; for p in $(DEB_PKGS) $(if $(filter all,$(DEPS)),$(DEB_EXTRA)); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y $$missing; \
	fi

demo: deps
	$(MAKE) all
	sh tests/demo.sh $(abspath $(BIN))

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --inline-suppr \
	    --suppress=missingIncludeSystem --include=/usr/include/jansson.h -D_GNU_SOURCE common orchestrator stages agents cli fleetsim device githelper

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan
