/*
 * libload.c - dlopen and dlsym into a table; see libload.h for why.
 */
#include "libload.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int libload_open(const char *soname, const char *what, const struct libload_sym *syms, size_t n, char *err,
		 size_t errlen)
{
	void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);

	if (!lib) {
		snprintf(err, errlen, "cannot load %s (for %s): %s", soname, what, dlerror());
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		void *p = dlsym(lib, syms[i].name);
		if (!p) {
			snprintf(err, errlen, "%s: no symbol %s", soname, syms[i].name);
			return -1;
		}
		memcpy(syms[i].slot, &p, sizeof(p)); /* object to function pointer, as POSIX dlsym allows */
	}
	return 0;
}
