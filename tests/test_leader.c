/*
 * test_leader.c - the building blocks of several otacd instances on one
 * PostgreSQL database (issue 16; docs/scale.md), on a real cluster
 * (tests/pgcluster.h) with real child processes:
 *
 * - leadership (orchestrator/db/db_leader.c): three contending processes,
 *   exactly one leads; the leader SIGKILLed ten times in a row and each
 *   time exactly one other takes over with the next epoch; a server
 *   restart ends leadership and exactly one leads again;
 * - fencing: a leader whose session is cut by pg_terminate_backend has its
 *   epoch-checked write refused once another took over, before it has
 *   even noticed, then notices and steps down;
 * - notifications (orchestrator/db/db_notify.c): NOTIFY reaches a LISTENer
 *   in another process with its payload, at commit only, never after a
 *   rollback or an UNLISTEN; a listener whose connection broke listens
 *   again after db_listener_reconnect().
 *
 * "Nothing arrived" is never a timed wait: a marker sent after the thing
 * that must not arrive comes first, as PostgreSQL delivers in commit order.
 * Waits for something to happen poll with generous timeouts; takeover times
 * are printed, not asserted.
 */
#include <errno.h>
#include <execinfo.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/db/db_leader.h"
#include "../orchestrator/db/db_notify.h"
#include "dbconv.h"
#include "harness.h"
#include "pgcluster.h"

#define MAX_CHILDREN 16
#define POLL_MS 20   /* a contender's poll interval */
#define KILL_ROUNDS 10

/* generous: a loaded CI machine under ASan */
static int wait_ms(void)
{
	return getenv("OTACD_SLOW") ? 180000 : 60000;
}

static pid_t g_test_pid; /* the test itself, not a child */

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- child processes -------------------------------------------------------- */

/* In the child: die with the test, and do not keep the cluster's watchdog
 * pipe open (pgcluster_stop() waits for it to close). */
/* A child's crash: say where (addr2line -e test_leader ADDR) and die of it. */
static void child_crashed(int sig)
{
	void *frames[32];
	int n = backtrace(frames, 32);

	dprintf(2, "test_leader: child %d crashed with signal %d; its stack:\n", (int)getpid(), sig);
	backtrace_symbols_fd(frames, n, 2);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void become_child(pid_t parent)
{
	static const int crashes[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS, SIGABRT };

	/* a crash kills the child: cmocka's handlers would resume the test
	 * runner in it */
	for (size_t i = 0; i < OTA_ARRAY_SIZE(crashes); i++)
		signal(crashes[i], child_crashed);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	if (dbconv_cluster()->watch_fd >= 0)
		close(dbconv_cluster()->watch_fd);
	dbconv_cluster()->watch_fd = -1;
}

/* Every child still running, so a failed test still reaps its children. */
static pid_t g_children[64];
static int g_nchildren;

static pid_t fork_child(void)
{
	pid_t pid;

	assert_true(g_nchildren < (int)OTA_ARRAY_SIZE(g_children));
	pid = fork();
	assert_true(pid >= 0);
	if (pid > 0)
		g_children[g_nchildren++] = pid;
	return pid;
}

/* Kill and wait for pid; 1 if it had already ended by itself (a child
 * that crashed), else 0. */
static int reap_child(pid_t pid)
{
	for (int i = 0; i < g_nchildren; i++) {
		int ended;
		if (g_children[i] != pid)
			continue;
		ended = waitpid(pid, NULL, WNOHANG) == pid;
		if (!ended) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
		}
		g_children[i] = g_children[--g_nchildren];
		return ended;
	}
	return 0;
}

static int reap_all_children(void **state)
{
	while (g_nchildren > 0)
		reap_child(g_children[0]);
	return 0;
}

/* Lines from a pipe, one at a time, with a timeout. */
struct lines {
	int fd;
	char buf[16384];
	size_t len;
};

/* 1 and the line (without '\n') in out, or 0 when timeout_ms passed. */
static int next_line(struct lines *in, int timeout_ms, char *out, size_t cap)
{
	int64_t deadline = mono_ms() + timeout_ms;

	for (;;) {
		char *nl = memchr(in->buf, '\n', in->len);
		struct pollfd pfd = { .fd = in->fd, .events = POLLIN };
		int64_t left = deadline - mono_ms();
		ssize_t n;

		if (nl) {
			size_t len = (size_t)(nl - in->buf);
			snprintf(out, cap, "%.*s", (int)len, in->buf);
			memmove(in->buf, nl + 1, in->len - len - 1);
			in->len -= len + 1;
			return 1;
		}
		if (left <= 0)
			return 0;
		if (poll(&pfd, 1, (int)left) <= 0)
			continue;
		n = read(in->fd, in->buf + in->len, sizeof(in->buf) - in->len - 1);
		if (n == 0 && getpid() != g_test_pid)
			_exit(0); /* a child whose test went away */
		if (n == 0)
			fail_msg("a child's pipe closed (every child died?)");
		if (n < 0 && errno != EINTR)
			fail_msg("read: %s", strerror(errno));
		if (n > 0)
			in->len += (size_t)n;
	}
}

/* ---- contenders for leadership ---------------------------------------------- */

struct contender {
	pid_t pid;
	char name[16];
	int alive;
	enum db_leader_state state;
	int64_t epoch;
};

struct contest {
	struct contender c[MAX_CHILDREN];
	int n;
	struct lines events; /* every contender writes "NAME STATE EPOCH" lines */
	int wfd;
	/* check that at most one live process believes it leads; off where a
	 * leader may not have polled yet when another takes over (the window
	 * the epoch fences, docs/scale.md) */
	int one_belief;
};

/* A contender polls every POLL_MS and reports each change of its state. */
static void contender_main(const char *name, int wfd)
{
	enum db_leader_state st, last = (enum db_leader_state)-1;
	struct db_leader *l;

	/* as an instance starting while the server restarts: try again */
	for (int tries = 0; db_leader_open(&l, dbconv_pg_url(), name) < 0; tries++) {
		if (tries == 0)
			fprintf(stderr, "contender %s: %s (trying again)\n", name, ota_error_last());
		usleep(POLL_MS * 1000);
	}
	for (;;) {
		int rc = db_leader_poll(l, &st);
		if (rc < 0 && st != last)
			fprintf(stderr, "contender %s: %s\n", name, ota_error_last());
		if (st != last)
			dprintf(wfd, "%s %s %lld\n", name, db_leader_state_name(st), (long long)db_leader_epoch(l));
		last = st;
		usleep(POLL_MS * 1000);
	}
}

static struct contender *spawn_contender(struct contest *t)
{
	struct contender *c = &t->c[t->n];
	pid_t parent = getpid();

	assert_true(t->n < MAX_CHILDREN);
	snprintf(c->name, sizeof(c->name), "c%d", t->n);
	c->state = DB_LEADER_FOLLOWER;
	c->pid = fork_child();
	if (c->pid == 0) {
		become_child(parent);
		close(t->events.fd);
		contender_main(c->name, t->wfd);
		_exit(0);
	}
	c->alive = 1;
	t->n++;
	return c;
}

static void contest_init(struct contest *t)
{
	int fds[2];

	memset(t, 0, sizeof(*t));
	t->one_belief = 1;
	assert_int_equal(pipe(fds), 0);
	t->events.fd = fds[0];
	t->wfd = fds[1];
}

static void kill_contender(struct contender *c)
{
	if (!c->alive)
		return;
	c->alive = 0;
	if (reap_child(c->pid))
		fail_msg("contender %s had died by itself (crashed? its stack is above)", c->name);
}

static void contest_end(struct contest *t)
{
	for (int i = 0; i < t->n; i++)
		kill_contender(&t->c[i]);
	close(t->events.fd);
	close(t->wfd);
}

static struct contender *by_name(struct contest *t, const char *name)
{
	for (int i = 0; i < t->n; i++)
		if (strcmp(t->c[i].name, name) == 0)
			return &t->c[i];
	fail_msg("an event from unknown contender '%s'", name);
	return NULL;
}

/* Read one event, apply it and check that at most one live process
 * believes it leads. */
static struct contender *take_event(struct contest *t, int timeout_ms)
{
	char line[256], name[32], state[32];
	long long epoch;
	struct contender *c;
	int leaders = 0;

	if (!next_line(&t->events, timeout_ms, line, sizeof(line)))
		return NULL;
	if (sscanf(line, "%31s %31s %lld", name, state, &epoch) != 3)
		fail_msg("bad event line '%s'", line);
	c = by_name(t, name);
	c->state = strcmp(state, "leader") == 0 ? DB_LEADER_LEADER
		   : strcmp(state, "lost") == 0 ? DB_LEADER_LOST
						: DB_LEADER_FOLLOWER;
	c->epoch = epoch;
	for (int i = 0; i < t->n; i++)
		leaders += t->c[i].alive && t->c[i].state == DB_LEADER_LEADER;
	if (leaders > 1 && t->one_belief)
		fail_msg("%d live processes lead at once (last: %s at epoch %lld)", leaders, name, epoch);
	return c;
}

/* The next live contender to report LEADER with an epoch past after. */
static struct contender *wait_for_leader(struct contest *t, int64_t after)
{
	int64_t deadline = mono_ms() + wait_ms();
	struct contender *c;

	while (mono_ms() < deadline) {
		c = take_event(t, (int)(deadline - mono_ms()));
		if (c && c->alive && c->state == DB_LEADER_LEADER && c->epoch > after)
			return c;
	}
	fail_msg("no contender took over within %d ms (after epoch %lld)", wait_ms(), (long long)after);
	return NULL;
}

static void wait_for_state(struct contest *t, struct contender *who, enum db_leader_state want)
{
	int64_t deadline = mono_ms() + wait_ms();

	while (who->state != want && mono_ms() < deadline)
		take_event(t, (int)(deadline - mono_ms()));
	if (who->state != want)
		fail_msg("%s did not report %s within %d ms", who->name, db_leader_state_name(want), wait_ms());
}

/* ---- what the database says -------------------------------------------------- */

static struct db *open_admin(void)
{
	struct db *db;

	if (db_open(&db, dbconv_pg_url(), 0) < 0)
		fail_msg("open %s: %s", dbconv_pg_url(), ota_error_last());
	return db;
}

/* The server process ids of sessions that hold the leadership lock. */
static int lock_holders(struct db *adm, int64_t key, int64_t *pid)
{
	struct db_stmt *st = db_stmt(adm, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
					  " AND classid = ? AND objid = ? AND objsubid = 1");
	int n = 0, rc;

	assert_non_null(st);
	db_bind_int64(st, 1, (int64_t)((uint64_t)key >> 32));
	db_bind_int64(st, 2, (int64_t)((uint64_t)key & 0xffffffffu));
	while ((rc = db_step(st)) == 1) {
		*pid = db_column_int64(st, 0);
		n++;
	}
	assert_int_equal(rc, 0);
	db_reset(st);
	return n;
}

/* One session holds the lock, and otacd_leader names c at its epoch. */
static void database_agrees(struct db *adm, int64_t key, const struct contender *c)
{
	int64_t pid, epoch;
	char *holder;

	assert_int_equal(lock_holders(adm, key, &pid), 1);
	assert_int_equal(db_leader_current(adm, &epoch, &holder), 0);
	assert_int_equal(epoch, c->epoch);
	assert_non_null(holder);
	assert_string_equal(holder, c->name);
	free(holder);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* ---- leadership ----------------------------------------------------------------- */

static void one_of_three_leads_and_each_sigkilled_leader_is_replaced(void **state)
{
	struct contest t;
	struct db_leader *probe; /* never polls: only tells the key */
	struct contender *leader, *next;
	int64_t took[KILL_ROUNDS];
	struct db *adm;

	dbconv_need_pg();
	dbconv_pg_reset();
	adm = open_admin();
	assert_int_equal(db_leader_open(&probe, dbconv_pg_url(), "probe"), 0);
	contest_init(&t);
	for (int i = 0; i < 3; i++)
		spawn_contender(&t);

	leader = wait_for_leader(&t, 0);
	assert_int_equal(leader->epoch, 1); /* a fresh database: the first epoch */
	database_agrees(adm, db_leader_key(probe), leader);

	for (int round = 0; round < KILL_ROUNDS; round++) {
		int64_t t0;

		kill_contender(leader);
		t0 = mono_ms();
		spawn_contender(&t); /* three contenders again, one of them new */
		next = wait_for_leader(&t, leader->epoch);
		took[round] = mono_ms() - t0;
		/* exactly one takeover: the next epoch, by another process */
		assert_int_equal(next->epoch, leader->epoch + 1);
		assert_ptr_not_equal(next, leader);
		database_agrees(adm, db_leader_key(probe), next);
		leader = next;
	}
	qsort(took, KILL_ROUNDS, sizeof(took[0]), cmp_i64);
	fprintf(stderr, "takeover after SIGKILL, %d rounds, contenders polling every %d ms: min %lld ms, median %lld ms,"
			" max %lld ms\n",
		KILL_ROUNDS, POLL_MS, (long long)took[0], (long long)took[KILL_ROUNDS / 2],
		(long long)took[KILL_ROUNDS - 1]);
	contest_end(&t);
	db_leader_close(probe);
	db_close(adm);
}

/* A server restart ends every session: the leader says lost, and exactly
 * one instance leads again, at the next epoch. */
static void restarted_server_ends_leadership_and_one_leads_again(void **state)
{
	struct contender *leader, *next;
	struct db_leader *probe;
	struct contest t;
	struct db *adm;
	int64_t epoch;

	dbconv_need_pg();
	dbconv_pg_reset();
	assert_int_equal(db_leader_open(&probe, dbconv_pg_url(), "probe"), 0);
	contest_init(&t);
	t.one_belief = 0;
	for (int i = 0; i < 3; i++)
		spawn_contender(&t);
	leader = wait_for_leader(&t, 0);
	epoch = leader->epoch;

	if (pgcluster_restart(dbconv_cluster()) < 0)
		fail_msg("pg_ctl restart: %s", ota_error_last());
	wait_for_state(&t, leader, DB_LEADER_LOST);
	next = wait_for_leader(&t, epoch);
	assert_int_equal(next->epoch, epoch + 1);
	adm = open_admin();
	database_agrees(adm, db_leader_key(probe), next);

	contest_end(&t);
	db_close(adm);
	db_leader_close(probe);
}

/* ---- fencing --------------------------------------------------------------------- */

/* Poll l, as an instance does, until it leads. */
static void poll_until_leader(struct db_leader *l)
{
	int64_t deadline = mono_ms() + wait_ms();
	enum db_leader_state st;

	for (;;) {
		db_leader_poll(l, &st);
		if (st == DB_LEADER_LEADER)
			return;
		if (mono_ms() > deadline)
			fail_msg("no leadership within %d ms: %s", wait_ms(), ota_error_last());
		usleep(POLL_MS * 1000);
	}
}

/* Insert v in a transaction fenced by epoch; the fence's answer.  A refused
 * transaction must not commit even if its writer carried on. */
static int fenced_write(struct db *w, int64_t epoch, const char *v)
{
	struct db_stmt *st;
	int rc;

	assert_int_equal(db_begin(w), 0);
	st = db_stmt(w, "INSERT INTO fenced (v) VALUES (?)");
	assert_non_null(st);
	db_bind_text(st, 1, v);
	assert_int_equal(db_run(st), 0);
	rc = db_leader_fence(w, epoch);
	if (rc == 0)
		assert_int_equal(db_commit(w), 0);
	else
		assert_true(db_commit(w) < 0); /* the failed fence spoiled it */
	db_rollback(w);
	return rc;
}

static int64_t rows_with(struct db *db, const char *v)
{
	struct db_stmt *st = db_stmt(db, "SELECT COUNT(*) FROM fenced WHERE v = ?");
	int64_t n;

	db_bind_text(st, 1, v);
	assert_int_equal(db_step(st), 1);
	n = db_column_int64(st, 0);
	db_reset(st);
	return n;
}

static void cut_off_leader_is_fenced_then_steps_down(void **state)
{
	struct db_leader *a;
	enum db_leader_state st;
	struct contender *b;
	struct contest t;
	struct db *w, *adm;
	struct db_stmt *q;
	int64_t pid, epoch_a;

	dbconv_need_pg();
	dbconv_pg_reset();
	adm = open_admin();
	w = open_admin(); /* instance A's engine connection */
	assert_int_equal(db_exec(adm, "CREATE TABLE fenced (v TEXT NOT NULL)"), 0);

	/* A leads alone (once the previous test's killed leader's session has
	 * ended) and writes under its epoch */
	assert_int_equal(db_leader_open(&a, dbconv_pg_url(), "A"), 0);
	poll_until_leader(a);
	epoch_a = db_leader_epoch(a);
	assert_int_equal(epoch_a, 1);
	assert_int_equal(fenced_write(w, epoch_a, "while leading"), 0);
	assert_int_equal(rows_with(adm, "while leading"), 1);
	/* the fence guards a transaction, nothing else */
	assert_true(db_leader_fence(w, epoch_a) < 0);

	/* B contends and follows */
	contest_init(&t);
	b = spawn_contender(&t);
	wait_for_state(&t, b, DB_LEADER_FOLLOWER);

	/* cut A's leadership session (its engine connection stays up) */
	assert_int_equal(lock_holders(adm, db_leader_key(a), &pid), 1);
	q = db_stmt(adm, "SELECT pg_terminate_backend(CAST(? AS INT), 30000)");
	db_bind_int64(q, 1, pid);
	assert_int_equal(db_step(q), 1);
	assert_int_equal(db_column_int64(q, 0), 1);
	db_reset(q);

	b = wait_for_leader(&t, epoch_a);
	assert_int_equal(b->epoch, epoch_a + 1);

	/* A has not noticed yet: its write under the old epoch is refused */
	assert_int_equal(fenced_write(w, epoch_a, "after takeover"), OTA_ECONFLICT);
	assert_non_null(strstr(ota_error_last(), "stale"));
	assert_non_null(strstr(ota_error_last(), "holder 'c0'"));
	assert_int_equal(rows_with(adm, "after takeover"), 0);

	/* its next poll says so, once; then it follows */
	assert_int_equal(db_leader_poll(a, &st), 0);
	assert_int_equal(st, DB_LEADER_LOST);
	assert_int_equal(db_leader_epoch(a), 0);
	db_leader_poll(a, &st);
	assert_int_equal(st, DB_LEADER_FOLLOWER);

	/* the new leader's epoch passes the same fence */
	assert_int_equal(fenced_write(w, b->epoch, "new leader"), 0);
	assert_int_equal(rows_with(adm, "new leader"), 1);

	/* B dies: A takes over again, at the next epoch */
	kill_contender(b);
	poll_until_leader(a);
	assert_int_equal(db_leader_epoch(a), epoch_a + 2);
	assert_int_equal(fenced_write(w, epoch_a + 1, "dead leader"), OTA_ECONFLICT);
	assert_int_equal(rows_with(adm, "dead leader"), 0);

	contest_end(&t);
	db_leader_close(a);
	db_close(w);
	db_close(adm);
}

/* ---- notifications ------------------------------------------------------------- */

/* The listening process: commands on one pipe ("L chan", "U chan", "W"),
 * answers on another ("ok", "got chan\tpayload", "timeout", "err ..."). */
static void listener_main(int cmd_fd, int out_fd)
{
	struct lines in = { .fd = cmd_fd };
	struct db_listener *l;
	char line[256];

	if (db_listener_open(&l, dbconv_pg_url()) < 0) {
		dprintf(out_fd, "err %s\n", ota_error_last());
		_exit(1);
	}
	for (;;) {
		struct db_notification n;
		int rc;

		if (!next_line(&in, 3600 * 1000, line, sizeof(line)))
			_exit(0);
		if (line[0] == 'L' || line[0] == 'U') {
			rc = line[0] == 'L' ? db_listen(l, line + 2) : db_unlisten(l, line + 2);
			if (rc < 0)
				dprintf(out_fd, "err %s\n", ota_error_last());
			else
				dprintf(out_fd, "ok\n");
		} else {
			rc = db_listener_wait(l, wait_ms(), &n);
			if (rc == 1)
				dprintf(out_fd, "got %s\t%s\n", n.channel, n.payload);
			else if (rc == 0)
				dprintf(out_fd, "timeout\n");
			else
				dprintf(out_fd, "err %s\n", ota_error_last());
			if (rc == 1)
				db_notification_release(&n);
		}
	}
}

struct listener_proc {
	pid_t pid;
	int cmd;
	struct lines out;
};

static void ask(struct listener_proc *p, const char *cmd, const char *want)
{
	char line[8192];

	dprintf(p->cmd, "%s\n", cmd);
	if (!next_line(&p->out, wait_ms() + 10000, line, sizeof(line)))
		fail_msg("the listener did not answer '%s'", cmd);
	if (strcmp(line, want) != 0)
		fail_msg("'%s': the listener answered '%s', expected '%s'", cmd, line, want);
}

static void notify_now(struct db *db, const char *channel, const char *payload)
{
	if (db_notify(db, channel, payload) < 0)
		fail_msg("notify %s: %s", channel, ota_error_last());
}

static void notify_reaches_another_process_at_commit_until_unlisten(void **state)
{
	const char *odd = "Mixed \"Case\" ch";
	const char *hostile = "it's \"quoted\"; UNLISTEN *; -- $1 \\ end";
	struct listener_proc p;
	struct db *w, *other;
	pid_t parent = getpid();
	int to_child[2], from_child[2];
	char want[256];

	dbconv_need_pg();
	w = open_admin();
	other = open_admin();
	assert_int_equal(pipe(to_child), 0);
	assert_int_equal(pipe(from_child), 0);
	p.pid = fork_child();
	if (p.pid == 0) {
		become_child(parent);
		close(to_child[1]);
		close(from_child[0]);
		listener_main(to_child[0], from_child[1]);
		_exit(0);
	}
	close(to_child[0]);
	close(from_child[1]);
	p.cmd = to_child[1];
	memset(&p.out, 0, sizeof(p.out));
	p.out.fd = from_child[0];

	ask(&p, "L gen", "ok");
	snprintf(want, sizeof(want), "L %s", odd);
	ask(&p, want, "ok");

	/* outside a transaction: delivered at once, with its payload */
	notify_now(w, "gen", "1");
	ask(&p, "W", "got gen\t1");

	/* a rolled-back notification never arrives; a committed one arrives at
	 * its commit, after one another connection sent meanwhile */
	assert_int_equal(db_begin(w), 0);
	notify_now(w, "gen", "rolled back");
	db_rollback(w);
	assert_int_equal(db_begin(w), 0);
	notify_now(w, "gen", "committed");
	notify_now(other, "gen", "sent during the transaction");
	assert_int_equal(db_commit(w), 0);
	ask(&p, "W", "got gen\tsent during the transaction");
	ask(&p, "W", "got gen\tcommitted");

	/* a quoted channel name and a payload full of SQL are only data */
	notify_now(w, odd, hostile);
	snprintf(want, sizeof(want), "got %s\t%s", odd, hostile);
	ask(&p, "W", want);

	/* after UNLISTEN: the marker sent later arrives first, so the
	 * unlistened one never will */
	ask(&p, "U gen", "ok");
	notify_now(w, "gen", "after unlisten");
	notify_now(w, odd, "marker");
	snprintf(want, sizeof(want), "got %s\tmarker", odd);
	ask(&p, "W", want);

	reap_child(p.pid);
	close(p.cmd);
	close(p.out.fd);
	db_close(w);
	db_close(other);
}

static void listener_hears_again_after_its_connection_broke(void **state)
{
	struct db_listener *l;
	struct db_notification n;
	struct db *adm;
	struct db_stmt *q;

	dbconv_need_pg();
	adm = open_admin();
	assert_int_equal(db_listener_open(&l, dbconv_pg_url()), 0);
	assert_true(db_listener_fd(l) >= 0);
	assert_int_equal(db_listen(l, "gen"), 0);

	q = db_stmt(adm, "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid, 30000) AS gone"
			 " FROM pg_stat_activity WHERE query LIKE 'LISTEN%gen%' AND pid <> pg_backend_pid()) AS t"
			 " WHERE gone");
	assert_int_equal(db_step(q), 1);
	assert_true(db_column_int64(q, 0) >= 1);
	db_reset(q);

	assert_int_equal(db_listener_wait(l, wait_ms(), &n), DB_ECONN);
	assert_int_equal(db_listener_reconnect(l), 0);
	notify_now(adm, "gen", "again");
	assert_int_equal(db_listener_wait(l, wait_ms(), &n), 1);
	assert_string_equal(n.channel, "gen");
	assert_string_equal(n.payload, "again");
	db_notification_release(&n);
	db_listener_close(l);
	db_close(adm);
}

/* ---- both backends ------------------------------------------------------------------ */

static void bad_channels_and_payloads_are_refused(void **state)
{
	char url[512], path[400], *big = xmalloc(DB_PAYLOAD_MAX + 2);
	struct db_listener *l;
	struct db_notification n;
	struct db *db;
	char longname[DB_CHANNEL_MAX + 2];

	if (dbconv_backend(state) == DB_POSTGRES) {
		dbconv_need_pg();
		snprintf(url, sizeof(url), "%s", dbconv_pg_url());
	} else {
		dbconv_new_sqlite_path(path, sizeof(path));
		snprintf(url, sizeof(url), "sqlite:%s", path);
	}
	assert_int_equal(db_open(&db, url, 0), 0);
	assert_int_equal(db_listener_open(&l, url), 0);
	memset(longname, 'c', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	memset(big, 'p', DB_PAYLOAD_MAX + 1);
	big[DB_PAYLOAD_MAX + 1] = '\0';

	assert_int_equal(db_notify(db, "", "x"), OTA_EINVAL);
	assert_int_equal(db_notify(db, longname, "x"), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "channel name of 64 bytes"));
	assert_int_equal(db_notify(db, "gen", big), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "payload of 8000 bytes"));
	assert_int_equal(db_listen(l, longname), OTA_EINVAL);
	assert_int_equal(db_listen(l, ""), OTA_EINVAL);

	/* the largest payload goes through whole */
	assert_int_equal(db_listen(l, "gen"), 0);
	big[DB_PAYLOAD_MAX] = '\0';
	assert_int_equal(db_notify(db, "gen", big), 0);
	if (dbconv_backend(state) == DB_POSTGRES) {
		assert_int_equal(db_listener_wait(l, wait_ms(), &n), 1);
		assert_int_equal(strlen(n.payload), DB_PAYLOAD_MAX);
		db_notification_release(&n);
	} else {
		/* one instance: nothing to hear, and waiting says so */
		assert_int_equal(db_listener_wait(l, 10, &n), 0);
		assert_int_equal(db_listener_fd(l), -1);
	}
	db_listener_close(l);
	db_close(db);
	free(big);
}

static void sqlite_instance_always_leads_and_fences_nothing(void **state)
{
	char url[512], path[400];
	struct db_leader *l;
	enum db_leader_state st;
	struct db *db;
	int64_t epoch;
	char *holder;

	dbconv_new_sqlite_path(path, sizeof(path));
	snprintf(url, sizeof(url), "sqlite:%s", path);
	assert_int_equal(db_leader_open(&l, url, "solo"), 0);
	assert_int_equal(db_leader_poll(l, &st), 0);
	assert_int_equal(st, DB_LEADER_LEADER);
	assert_int_equal(db_leader_epoch(l), 1);
	assert_int_equal(db_open(&db, url, 0), 0);
	assert_int_equal(db_begin(db), 0);
	assert_int_equal(db_leader_fence(db, db_leader_epoch(l)), 0);
	assert_int_equal(db_commit(db), 0);
	assert_int_equal(db_leader_current(db, &epoch, &holder), 0);
	assert_int_equal(epoch, 1);
	assert_null(holder);
	db_close(db);
	db_leader_close(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sqlite_instance_always_leads_and_fences_nothing),
		DBCONV_BOTH(bad_channels_and_payloads_are_refused),
		cmocka_unit_test_teardown(one_of_three_leads_and_each_sigkilled_leader_is_replaced, reap_all_children),
		cmocka_unit_test_teardown(restarted_server_ends_leadership_and_one_leads_again, reap_all_children),
		cmocka_unit_test_teardown(cut_off_leader_is_fenced_then_steps_down, reap_all_children),
		cmocka_unit_test_teardown(notify_reaches_another_process_at_commit_until_unlisten, reap_all_children),
		cmocka_unit_test(listener_hears_again_after_its_connection_broke),
	};
	int rc;

	signal(SIGPIPE, SIG_IGN);
	g_test_pid = getpid();
	dbconv_start("test_leader");
	rc = cmocka_run_group_tests_name("leader", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
