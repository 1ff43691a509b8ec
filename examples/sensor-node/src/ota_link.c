/*
 * ota_link.c - the text of the UART1 update link (see ota_link.h).
 *
 * Only building the request line, checking the answer's header and reading
 * the provisioning sector live here, so the host unit tests and
 * fuzz/fuzz_sensorlink.c cover them; src/ota_port.c moves the bytes.
 */
#include "ota_link.h"

#include <string.h>

struct line {
	char *p;
	size_t len, cap;
	int bad;
};

static void put(struct line *l, const char *s, int word)
{
	for (; *s; s++) {
		if (word && ((unsigned char)*s <= ' ' || (unsigned char)*s >= 0x7f))
			l->bad = 1;
		if (l->len + 1 >= l->cap) {
			l->bad = 1;
			return;
		}
		l->p[l->len++] = *s;
	}
	l->p[l->len] = '\0';
}

static void put_num(struct line *l, long v)
{
	char t[24];
	int i = 23;
	unsigned long u = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;

	t[i] = '\0';
	do {
		t[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		t[--i] = '-';
	put(l, t + i, 0);
}

int link_req_line(char *out, size_t cap, const struct otadev_http_req *req)
{
	struct line l = { out, 0, cap, 0 };

	if (!cap)
		return -1;
	out[0] = '\0';
	put(&l, "REQ ", 0);
	put(&l, req->method, 1);
	put(&l, " ", 0);
	put_num(&l, req->range_start);
	put(&l, " ", 0);
	put_num(&l, req->range_end);
	put(&l, " ", 0);
	put_num(&l, req->body ? (long)req->body_len : 0);
	put(&l, " ", 0);
	put(&l, req->path, 1);
	put(&l, " ", 0);
	put(&l, req->device, 1);
	put(&l, " ", 0);
	put(&l, req->credential && *req->credential ? req->credential : "-", 1);
	put(&l, "\n", 0);
	return l.bad || !*req->method || !*req->path || !*req->device ? -1 : 0;
}

/* A decimal at *s (a leading '-' when neg_ok), at most 9 digits, then
 * the character sep; *s moves past sep. */
static int num(const char **s, long *out, int neg_ok, char sep)
{
	const char *p = *s;
	long v = 0;
	int neg = 0, digits = 0;

	if (*p == '-' && neg_ok) {
		neg = 1;
		p++;
	}
	while (*p >= '0' && *p <= '9' && digits < 9) {
		v = v * 10 + (*p++ - '0');
		digits++;
	}
	if (!digits || *p != sep)
		return -1;
	*out = neg ? -v : v;
	*s = sep ? p + 1 : p;
	return 0;
}

int link_rsp_line(const char *line, int *status, long *total, size_t *len, size_t cap)
{
	const char *p = line;
	long st, tot, n;

	if (strncmp(p, "RSP ", 4) != 0)
		return -1;
	p += 4;
	if (num(&p, &st, 0, ' ') < 0 || num(&p, &tot, 1, ' ') < 0 || num(&p, &n, 0, '\0') < 0)
		return -1;
	if (st > 999 || tot < -1 || (size_t)n > cap)
		return -1;
	*status = (int)st;
	*total = tot;
	*len = (size_t)n;
	return 0;
}

int link_prov_parse(const uint8_t *p, size_t n, char *dev, char *cred, size_t cap)
{
	char key[16], *val = NULL;
	size_t i, kn = 0, vn = 0;
	int in_val = 0, got_dev = 0;

	dev[0] = cred[0] = '\0';
	for (i = 0; i < n && p[i] != 0xff && p[i] != 0; i++) {
		uint8_t c = p[i];
		if (c == '\n') {
			if (!in_val || !vn)
				return -1;
			val[vn] = '\0';
			got_dev |= val == dev;
			in_val = 0;
			kn = vn = 0;
		} else if (!in_val && c == '=') {
			key[kn] = '\0';
			if (!strcmp(key, "device"))
				val = dev;
			else if (!strcmp(key, "credential"))
				val = cred;
			else
				return -1;
			if (val[0])
				return -1; /* a second line for the same key */
			in_val = 1;
		} else if (c <= ' ' || c >= 0x7f) {
			return -1;
		} else if (in_val) {
			if (vn + 1 >= cap)
				return -1;
			val[vn++] = (char)c;
		} else {
			if (kn + 1 >= sizeof(key))
				return -1;
			key[kn++] = (char)c;
		}
	}
	return in_val || kn || !got_dev ? -1 : 0;
}
