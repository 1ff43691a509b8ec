/*
 * curlload.h - libcurl, loaded on the first HTTP request otacd makes.
 *
 * The daemon makes HTTP requests only for an update server's metrics, an
 * S3 artifact store and the HTTP client the agent and otactl share
 * (httpc.c); linked, libcurl and what it links (nghttp2, libssh2, librtmp,
 * LDAP, Kerberos, libpsl, brotli) are mapped into every otacd at start
 * (common/libload.h, issue 18).  So httpc.c, updsrv.c and s3.c reach it
 * through this table; its types are libcurl's own prototypes (typeof), so
 * a mismatch does not compile.  Calls through the table skip the
 * compile-time option type checks of curl's macros, as any C call does.
 *
 *   const struct curlload *cu = curlload_get();
 *   if (!cu) return ota_error_set(OTA_ERROR, "%s", curlload_error());
 *   CURL *h = cu->easy_init();
 *
 * Loaded once per process (pthread_once), never unloaded.  Any thread.
 * A function that only gets a handle made through the table can take the
 * table with curlload_get() without checking it.
 */
#ifndef OTA_CURLLOAD_H
#define OTA_CURLLOAD_H

#include <curl/curl.h>

/* The soname otacd was built against (libcurl's ABI). */
#define CURLLOAD_SONAME "libcurl.so.4"

struct curlload {
	__typeof__(&curl_global_init) global_init;
	__typeof__(&curl_global_cleanup) global_cleanup;
	__typeof__(&curl_easy_init) easy_init;
	__typeof__(&curl_easy_setopt) easy_setopt;
	__typeof__(&curl_easy_getinfo) easy_getinfo;
	__typeof__(&curl_easy_perform) easy_perform;
	__typeof__(&curl_easy_cleanup) easy_cleanup;
	__typeof__(&curl_easy_reset) easy_reset;
	__typeof__(&curl_easy_strerror) easy_strerror;
	__typeof__(&curl_easy_escape) easy_escape;
	__typeof__(&curl_free) free;
	__typeof__(&curl_slist_append) slist_append;
	__typeof__(&curl_slist_free_all) slist_free_all;
	__typeof__(&curl_url) url;
	__typeof__(&curl_url_set) url_set;
	__typeof__(&curl_url_get) url_get;
	__typeof__(&curl_url_cleanup) url_cleanup;
};

/* The table, or NULL when libcurl cannot be loaded (curlload_error says
 * why; every later call answers the same). */
const struct curlload *curlload_get(void);
const char *curlload_error(void);

#endif
