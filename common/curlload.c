/*
 * curlload.c - libcurl loaded on first use; see curlload.h for why.
 */
#include "curlload.h"

#include <pthread.h>

#include "libload.h"

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static struct curlload api;
static int loaded;
static char load_error[256];

static void load(void)
{
	static const struct libload_sym syms[] = {
		{ "curl_global_init", &api.global_init },
		{ "curl_global_cleanup", &api.global_cleanup },
		{ "curl_easy_init", &api.easy_init },
		{ "curl_easy_setopt", &api.easy_setopt },
		{ "curl_easy_getinfo", &api.easy_getinfo },
		{ "curl_easy_perform", &api.easy_perform },
		{ "curl_easy_cleanup", &api.easy_cleanup },
		{ "curl_easy_reset", &api.easy_reset },
		{ "curl_easy_strerror", &api.easy_strerror },
		{ "curl_easy_escape", &api.easy_escape },
		{ "curl_free", &api.free },
		{ "curl_slist_append", &api.slist_append },
		{ "curl_slist_free_all", &api.slist_free_all },
		{ "curl_url", &api.url },
		{ "curl_url_set", &api.url_set },
		{ "curl_url_get", &api.url_get },
		{ "curl_url_cleanup", &api.url_cleanup },
	};

	loaded = libload_open(CURLLOAD_SONAME, "HTTP requests", syms, sizeof(syms) / sizeof(syms[0]), load_error,
			      sizeof(load_error)) == 0;
}

const struct curlload *curlload_get(void)
{
	pthread_once(&load_once, load);
	return loaded ? &api : NULL;
}

const char *curlload_error(void)
{
	pthread_once(&load_once, load);
	return loaded ? "" : load_error;
}
