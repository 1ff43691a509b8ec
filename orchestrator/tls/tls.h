/*
 * tls.h - TLS for otacd's listeners (libmicrohttpd over GnuTLS).
 *
 * A struct tls_server is one listener's certificate chain, private key and
 * optional client CA, loaded from PEM files and reloadable while the
 * listener runs (SIGHUP, tls_reload_all).  The listener passes the options
 * of tls_server_mhd_options() to MHD_start_daemon (MHD_OPTION_ARRAY) with
 * MHD_USE_TLS, and calls tls_server_conn_started() from its
 * MHD_CONNECTION_NOTIFY_STARTED callback.  TLS 1.2 and 1.3 only.
 *
 * With a client CA (the device listener's `client_ca`), every connection
 * is asked for a client certificate; one that does not verify against the
 * CA (foreign, expired, not for client use) fails the handshake, and a
 * connection without one goes on (token authentication).  Handlers get
 * the verified certificate with tls_peer_cert_der().
 *
 * Configuration (docs/config.md, "tls"): tls_listener_files() resolves the
 * shared and per-listener keys of the `tls:` block for one listener.
 */
#ifndef OTA_TLS_H
#define OTA_TLS_H

#include <stddef.h>
#include <jansson.h>
#include <microhttpd.h>

/* TLS 1.2 and 1.3, GnuTLS's NORMAL cipher suites. */
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

/* One listener's files; cert NULL: the listener speaks plain HTTP. */
struct tls_files {
	const char *cert;      /* PEM: the certificate, then its chain */
	const char *key;       /* PEM: the private key */
	const char *client_ca; /* PEM: CA(s) for client certificates, or NULL */
};

/*
 * Check the `tls:` block (as JSON): known keys, string file names, a cert
 * with its key.  0, or OTA_EINVAL with a message naming the key.
 */
int tls_config_check(const json_t *tls);

/*
 * The files of listener `which` ("api", "agents" or "devices") in the
 * checked `tls:` block (NULL: none).  Borrowed strings.
 */
void tls_listener_files(struct tls_files *out, const json_t *tls, const char *which);

struct tls_server;

/*
 * Load cert, key (and client CA) for the listener called name (in log
 * lines).  The new server is registered for tls_reload_all().  OTA_EINVAL
 * with the file and reason when a file does not load or the key does not
 * match the certificate.
 */
int tls_server_new(struct tls_server **out, const char *name, const struct tls_files *files);
/* Unregister and free (after the listener stopped).  NULL is a no-op. */
void tls_server_free(struct tls_server *t);

/*
 * Read the files again.  On success new handshakes use them; on failure
 * the old certificate, key and CA stay and the error is returned.
 */
int tls_server_reload(struct tls_server *t);
/* tls_server_reload() on every registered server, errors logged to stderr. */
void tls_reload_all(void);

/*
 * MHD options for t (NULL: none), terminated by MHD_OPTION_END, for
 * MHD_OPTION_ARRAY.  opts needs TLS_MHD_OPTIONS_MAX items.  Returns the
 * MHD_USE_TLS flag to add (0 without TLS).
 */
#define TLS_MHD_OPTIONS_MAX 4
unsigned tls_server_mhd_options(struct tls_server *t, struct MHD_OptionItem *opts);

/* From the listener's MHD_CONNECTION_NOTIFY_STARTED callback: session
 * tickets (resumption) and, with a client CA, the client certificate
 * request and check.  NULL t is a no-op. */
void tls_server_conn_started(struct tls_server *t, struct MHD_Connection *c);

/* The serial number of t's current certificate as lowercase hex (for logs
 * and tests); a new string. */
char *tls_server_serial(struct tls_server *t);

/*
 * The client certificate of connection c, verified against the listener's
 * client CA, as DER in a new buffer *der (free with free()) of *len bytes.
 * OTA_ENOTFOUND when the connection is not TLS or sent no certificate,
 * OTA_EAUTH when it does not verify (a resumed session after the CA
 * changed).  Safe from any request handler.
 */
int tls_peer_cert_der(struct MHD_Connection *c, unsigned char **der, size_t *len);

/*
 * Warn on stderr when a listener without TLS (t NULL) is bound to an
 * address that is not loopback: tokens and firmware would cross the
 * network in clear.
 */
struct sockaddr;
void tls_warn_if_plain(const char *name, const char *listen, const struct sockaddr *sa, const struct tls_server *t);

/* Handshakes refused because of a client certificate, since start. */
unsigned long tls_client_cert_refusals(void);

#endif
