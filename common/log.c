/*
 * log.c - one line per message, in the format the configuration chose, with
 * the ids of this thread's work (log.h).
 *
 * A line is built whole in a buffer and written with one write(2) under a
 * mutex, so lines from different threads never interleave, and a message is
 * escaped so that it can never end its line early: text from a job step, a
 * ref or a device cannot forge a second line.  JSON is made by jansson;
 * logfmt quotes a value when it holds a space, '=', '"', '\' or a control
 * character, with the escapes JSON uses.
 */
#include "log.h"
#include "utf8.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum ota_log_format g_format = OTA_LOG_TEXT;
static enum ota_log_level g_max = OTA_LOG_INFO;
static int g_fd = 2;
static pthread_mutex_t g_write_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local struct ota_log_ctx t_ctx;
static char g_program[32] = "otacd"; /* ota_log_set_origin */
static char g_agent[128];
static int g_origin_set;

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const char *const format_names[] = { "text", "logfmt", "json" };

int ota_log_format_parse(const char *s)
{
	for (size_t i = 0; s && i < OTA_ARRAY_SIZE(format_names); i++)
		if (!strcmp(s, format_names[i]))
			return (int)i;
	return -1;
}

int ota_log_level_parse(const char *s)
{
	for (size_t i = 0; s && i < OTA_ARRAY_SIZE(level_names); i++)
		if (!strcmp(s, level_names[i]))
			return (int)i;
	return -1;
}

const char *ota_log_format_name(enum ota_log_format f)
{
	return (unsigned)f < OTA_ARRAY_SIZE(format_names) ? format_names[f] : "text";
}

const char *ota_log_level_name(enum ota_log_level l)
{
	return (unsigned)l < OTA_ARRAY_SIZE(level_names) ? level_names[l] : "info";
}

void ota_log_setup(enum ota_log_format format, enum ota_log_level max_level, int fd)
{
	g_format = format;
	g_max = max_level;
	g_fd = fd;
}

enum ota_log_format ota_log_current_format(void)
{
	return g_format;
}

enum ota_log_level ota_log_current_level(void)
{
	return g_max;
}

void ota_log_set_origin(const char *program, const char *agent)
{
	snprintf(g_program, sizeof(g_program), "%s", program && *program ? program : "otacd");
	snprintf(g_agent, sizeof(g_agent), "%s", agent ? agent : "");
	g_origin_set = 1;
}

int ota_log_args(char **argv, int *i, const char *program, const char **why)
{
	int format = OTA_LOG_TEXT, level = OTA_LOG_INFO;

	ota_log_set_origin(program, NULL);
	for (; argv[*i] && argv[*i + 1]; *i += 2) {
		if (!strcmp(argv[*i], "--log-format"))
			format = ota_log_format_parse(argv[*i + 1]);
		else if (!strcmp(argv[*i], "--log-level"))
			level = ota_log_level_parse(argv[*i + 1]);
		else
			break;
		if (format < 0 || level < 0) {
			*why = format < 0 ? "--log-format: not one of text, logfmt, json"
					  : "--log-level: not one of error, warn, info, debug";
			return -1;
		}
	}
	ota_log_setup((enum ota_log_format)format, (enum ota_log_level)level, 2);
	return 0;
}

int ota_log_enabled(enum ota_log_level level)
{
	return level <= g_max;
}

/* ---- context ------------------------------------------------------------ */

void ota_log_ctx_request(const char *id)
{
	snprintf(t_ctx.request_id, sizeof(t_ctx.request_id), "%s", id ? id : "");
}

void ota_log_ctx_work(int64_t run_id, int64_t job_id)
{
	t_ctx.run_id = run_id;
	t_ctx.job_id = job_id;
}

void ota_log_ctx_save(struct ota_log_ctx *out)
{
	*out = t_ctx;
}

void ota_log_ctx_restore(const struct ota_log_ctx *saved)
{
	t_ctx = *saved;
}

void ota_log_ctx_clear(void)
{
	memset(&t_ctx, 0, sizeof(t_ctx));
}

int ota_log_request_id_ok(const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if (n == 0 || n > OTA_LOG_REQUEST_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-_.:/+=@", c)))
			return 0;
	}
	return 1;
}

void ota_log_request_id_new(char out[OTA_LOG_REQUEST_ID_MAX + 1])
{
	static _Atomic uint64_t fallback;
	if (ota_random_hex(out, 8) < 0) /* no random source: still unique in this process */
		snprintf(out, OTA_LOG_REQUEST_ID_MAX + 1, "%016llx", (unsigned long long)++fallback);
}

/* ---- formatting ----------------------------------------------------------- */

/* msg with each byte of an invalid UTF-8 sequence replaced by '?'. */
static void utf8_clean(struct buf *out, const char *msg)
{
	const unsigned char *s = (const unsigned char *)msg;
	size_t n = strlen(msg);

	for (size_t i = 0; i < n;) {
		size_t k = utf8_seq(s + i, n - i);
		if (k == 0) {
			buf_putc(out, '?');
			i++;
		} else {
			buf_put(out, s + i, k);
			i += k;
		}
	}
}

/* The escape of one byte inside a quoted value ("\n", "\u0001"), or NULL
 * when it stands for itself.  tmp holds the \u form. */
static const char *escape_of(unsigned char c, char tmp[8])
{
	switch (c) {
	case '"': return "\\\"";
	case '\\': return "\\\\";
	case '\n': return "\\n";
	case '\r': return "\\r";
	case '\t': return "\\t";
	}
	if (c < 0x20 || c == 0x7f) {
		snprintf(tmp, 8, "\\u%04x", c);
		return tmp;
	}
	return NULL;
}

/* The text format: the message as written, control characters escaped (a
 * quote or backslash stands for itself: this line is for people). */
static void put_text_escaped(struct buf *b, const char *s)
{
	char tmp[8];
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		const char *e = c == '"' || c == '\\' ? NULL : escape_of(c, tmp);
		if (e)
			buf_puts(b, e);
		else
			buf_putc(b, (char)c);
	}
}

static int logfmt_needs_quotes(const char *s)
{
	if (!*s)
		return 1;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f)
			return 1;
	}
	return 0;
}

static void logfmt_pair(struct buf *b, const char *key, const char *value)
{
	char tmp[8];
	buf_printf(b, "%s%s=", b->len ? " " : "", key);
	if (!logfmt_needs_quotes(value)) {
		buf_puts(b, value);
		return;
	}
	buf_putc(b, '"');
	for (; *value; value++) {
		const char *e = escape_of((unsigned char)*value, tmp);
		if (e)
			buf_puts(b, e);
		else
			buf_putc(b, *value);
	}
	buf_putc(b, '"');
}

static void time_rfc3339(char out[64], int64_t ms)
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
		 tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

void ota_log_format_line(struct buf *out, enum ota_log_format format, int64_t time_ms, enum ota_log_level level,
			 const char *msg, const struct ota_log_ctx *ctx)
{
	struct buf clean = BUF_INIT;
	char when[64], num[24];

	utf8_clean(&clean, msg ? msg : "");
	if (format == OTA_LOG_TEXT) {
		buf_printf(out, "%s: ", g_program);
		put_text_escaped(out, buf_cstr(&clean));
		buf_putc(out, '\n');
		buf_release(&clean);
		return;
	}
	time_rfc3339(when, time_ms);
	if (format == OTA_LOG_JSON) {
		json_t *o = json_pack("{ss ss ss}", "time", when, "level", ota_log_level_name(level), "msg",
				      buf_cstr(&clean));
		char *text;
		if (g_origin_set) /* names are the process's own: kept as given */
			json_object_set_new(o, "program", json_string(g_program));
		if (g_agent[0])
			json_object_set_new(o, "agent", json_string(g_agent));
		if (ctx && ctx->request_id[0])
			json_object_set_new(o, "request_id", json_string(ctx->request_id));
		if (ctx && ctx->run_id > 0)
			json_object_set_new(o, "run_id", json_integer(ctx->run_id));
		if (ctx && ctx->job_id > 0)
			json_object_set_new(o, "job_id", json_integer(ctx->job_id));
		text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		buf_puts(out, text ? text : "{}");
		buf_putc(out, '\n');
		free(text);
		json_decref(o);
		buf_release(&clean);
		return;
	}
	{
		/* logfmt: pairs are put in a buffer of their own to know when to
		 * add the separating space */
		struct buf line = BUF_INIT;
		logfmt_pair(&line, "time", when);
		logfmt_pair(&line, "level", ota_log_level_name(level));
		logfmt_pair(&line, "msg", buf_cstr(&clean));
		if (g_origin_set)
			logfmt_pair(&line, "program", g_program);
		if (g_agent[0])
			logfmt_pair(&line, "agent", g_agent);
		if (ctx && ctx->request_id[0])
			logfmt_pair(&line, "request_id", ctx->request_id);
		if (ctx && ctx->run_id > 0) {
			snprintf(num, sizeof(num), "%" PRId64, ctx->run_id);
			logfmt_pair(&line, "run_id", num);
		}
		if (ctx && ctx->job_id > 0) {
			snprintf(num, sizeof(num), "%" PRId64, ctx->job_id);
			logfmt_pair(&line, "job_id", num);
		}
		buf_put(out, line.ptr, line.len);
		buf_putc(out, '\n');
		buf_release(&line);
	}
	buf_release(&clean);
}

/* ---- writing ---------------------------------------------------------------- */

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return; /* nowhere to report that the log cannot be written */
		p += w;
		n -= (size_t)w;
	}
}

void ota_logv(enum ota_log_level level, const char *fmt, va_list ap)
{
	struct buf msg = BUF_INIT, line = BUF_INIT;
	int errno_saved = errno;

	if (!ota_log_enabled(level))
		return;
	buf_vprintf(&msg, fmt, ap);
	/* callers used to end their fprintf with '\n': one line is one message */
	while (msg.len && msg.ptr[msg.len - 1] == '\n')
		msg.ptr[--msg.len] = '\0';
	ota_log_format_line(&line, g_format, wall_ms(), level, buf_cstr(&msg), &t_ctx);
	pthread_mutex_lock(&g_write_lock);
	write_all(g_fd, line.ptr, line.len);
	pthread_mutex_unlock(&g_write_lock);
	buf_release(&msg);
	buf_release(&line);
	errno = errno_saved;
}

void ota_log(enum ota_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ota_logv(level, fmt, ap);
	va_end(ap);
}
