/*
 * flags_int.h - shared between flags.c (input, writes, reads, the live
 * table) and flags_ctl.c (the controller thread).
 */
#ifndef OTA_FLAGS_INT_H
#define OTA_FLAGS_INT_H

#include <jansson.h>

struct flags_live;
/* A new, empty live table; its rows are replaced whole by flags_live_load. */
struct flags_live *flags_live_new(void);
void flags_live_free(struct flags_live *l);
/* Replace the table's rows with list (flags_list's rows). */
void flags_live_load(struct flags_live *l, const json_t *list);

/* Every statement of the flags subsystem (tests prepare each on
 * PostgreSQL too: tests/test_flags.c). */
extern const char flags_sql_count[], flags_sql_upsert[], flags_sql_list[]; /* flags.c */
extern const char flags_sql_decide[], flags_sql_current[];                /* flags_ctl.c */

#endif
