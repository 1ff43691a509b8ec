/*
 * fuzz_gitreply.c - libFuzzer target for the daemon's check of its git
 * helper's replies (gitproto_reply_parse, orchestrator/gitproto.c).
 *
 * The first input byte picks the operation, the rest is the reply.  Besides
 * crashes, leaks and UB, the target aborts when an accepted reply carries a
 * commit id or tree that is not 40 lowercase hex digits, a read length over
 * the cap, or an archive path outside the archive directory.
 *
 *   make fuzz   or   build/fuzz/fuzz_gitreply fuzz/corpus/fuzz_gitreply
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/gitproto.h"

#define ARCHIVES "/state/git/archives"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hex40(const char *s)
{
	size_t i;

	for (i = 0; i < 40; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[40] == '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gitproto_reply r;
	enum gitproto_op op;

	if (size < 1)
		return 0;
	op = (enum gitproto_op)(data[0] % 4);
	if (gitproto_reply_parse(&r, op, (const char *)data + 1, size - 1, 1000, ARCHIVES) < 0)
		return 0;
	if (r.rc > 0 || r.rc < OTA_EPERM)
		abort();
	if (r.rc == 0 && op == GITPROTO_RESOLVE && (!hex40(r.commit.id) || !hex40(r.commit.tree)))
		abort();
	if (r.rc == 0 && op == GITPROTO_READ && r.len > 1000)
		abort();
	if (r.rc == 0 && op == GITPROTO_ARCHIVE &&
	    (strncmp(r.path, ARCHIVES "/", sizeof(ARCHIVES)) || strchr(r.path + sizeof(ARCHIVES), '/') ||
	     strstr(r.path, "..")))
		abort();
	gitproto_reply_release(&r);
	return 0;
}
