/*
 * libload.h - a shared library opened on first use and its functions
 * looked up into a table: what xmlload.h does for libxml2, shared by the
 * loaders of libpq (orchestrator/db/pgload.h) and libcurl (curlload.h).
 *
 * Why (issue 18, idle Rss): a library linked into otacd is mapped, with
 * everything it links, and relocated at every start, used or not; libpq
 * and libcurl bring Kerberos, LDAP, SASL, nghttp2, libssh2, librtmp, …
 * (about 1.5 MB of idle Rss) into a daemon that, configured without
 * PostgreSQL, an update server or S3, never calls them.
 *
 *   static const struct libload_sym syms[] = { { "PQexec", &api.exec }, … };
 *   if (libload_open(XYZ_SONAME, "PostgreSQL databases", syms, n, err, sizeof(err)) < 0) …
 */
#ifndef OTA_LIBLOAD_H
#define OTA_LIBLOAD_H

#include <stddef.h>

struct libload_sym {
	const char *name;   /* the library's symbol */
	void *slot;         /* the address of a function pointer to fill */
};

/* dlopen soname (RTLD_LOCAL: its symbols stay out of the global scope)
 * and fill every slot; 0, or -1 with "cannot load SONAME (for what): …"
 * or "SONAME: no symbol NAME" in err.  The handle is never closed: a
 * half-usable library is not unloaded under a caller. */
int libload_open(const char *soname, const char *what, const struct libload_sym *syms, size_t n, char *err,
		 size_t errlen);

#endif
