/*
 * web.h - the status page's files, embedded into otacd at build time by
 * web/embed.sh (see the Makefile).  Served at / without authentication; the
 * page itself reads the JSON API with the viewer's token.
 */
#ifndef OTA_WEB_H
#define OTA_WEB_H

#include <stddef.h>

struct web_asset {
	const char *path;            /* "/index.html" */
	const unsigned char *data;
	size_t size;
};

extern const struct web_asset web_assets[];  /* terminated by path == NULL */

#endif
