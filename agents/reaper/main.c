/*
 * main.c - otacd-reaper, the init of a job step's PID namespace.
 *
 *   otacd-reaper [--log-format F] [--log-level L] -- PROGRAM ARGS...
 *
 * otacd-agent execs it in each step's new namespace (agents/contain.c),
 * passing its own log format and level; it runs PROGRAM, reaps orphans,
 * forwards SIGTERM/SIGINT/SIGHUP and exits with PROGRAM's status
 * (agents/reaper.c).  Not meant to be run by hand.
 */
#include "../contain.h"

int main(int argc, char **argv)
{
	(void)argc;
	return contain_reaper_main(argv + 1);
}
