/*
 * main.c - otacd-reaper, the init of a job step's PID namespace.
 *
 *   otacd-reaper -- PROGRAM ARGS...
 *
 * otacd-agent execs it in each step's new namespace (agents/contain.c); it
 * runs PROGRAM, reaps orphans, forwards SIGTERM/SIGINT/SIGHUP and exits
 * with PROGRAM's status (agents/reaper.c).  Not meant to be run by hand.
 */
#include <stdio.h>
#include <string.h>

#include "../contain.h"

int main(int argc, char **argv)
{
	if (argc < 3 || strcmp(argv[1], "--")) {
		fprintf(stderr, "usage: otacd-reaper -- PROGRAM ARGS... (started by otacd-agent)\n");
		return 127;
	}
	return contain_reaper_main(argv + 2);
}
