/*
 * reports.h - test and analysis reports: JUnit XML, cppcheck XML, SARIF.
 *
 * Jobs of kind test, hil and analysis upload the report files their
 * pipeline names (`reports: {junit: "build/test/report-*.xml"}`); these parsers
 * turn each file into one JSON document that the engine stores with the
 * job and the API, CLI and page show.  XML goes through libxml2 with
 * network access, entity substitution and DTD loading off, so hostile
 * documents (billion laughs, external entities) are rejected, not
 * expanded; SARIF is JSON (jansson).
 *
 * The JSON shapes (every string may be absent when the report has none):
 *
 *   junit:    {"format":"junit", "name":NAME,
 *              "tests":N, "passed":N, "failures":N, "errors":N, "skipped":N, "time":SECONDS,
 *              "cases":[{"suite":S, "classname":C, "name":N, "time":SECONDS,
 *                        "status":"passed"|"failed"|"error"|"skipped",
 *                        "message":M, "output":TEXT}]}
 *              counts are recomputed from the cases (nested <testsuite>s
 *              flattened), not trusted from attributes.
 *
 *   cppcheck, sarif:
 *             {"format":"cppcheck"|"sarif", "name":NAME,
 *              "counts":{"error":N, "warning":N, ...},      per severity
 *              "findings":[{"rule":R, "severity":S, "file":F, "line":N,
 *                           "column":N, "message":M, "fingerprint":HEX}]}
 *              cppcheck severities are kept (error, warning, style,
 *              performance, portability, information); SARIF levels map
 *              to error, warning, note, none (absent level: warning).
 *              fingerprint = sha256 hex of rule NUL file NUL message, so a
 *              finding keeps its identity when lines move (baseline mode).
 *
 *   pmccabe:  {"format":"pmccabe", "name":NAME,
 *              "metrics":{"functions":N, "complexity_max":N, "complexity_mean":X},
 *              "functions":[{"function":F, "file":P, "line":N, "complexity":N}]}
 *              from `pmccabe FILES` (text: five numbers, then FILE(LINE): NAME);
 *              complexity is the traditional McCabe number; most complex first.
 *   jscpd:    {"format":"jscpd", "name":NAME,
 *              "metrics":{"lines":N, "duplicated_lines":N, "clones":N, "duplicated_percent":X},
 *              "clones":[{"lines":N, "first":{"file","start","end"}, "second":{...}}]}
 *              from jscpd's json reporter (jscpd-report.json); the percentage
 *              is recomputed from the counts (two decimals).
 *   power:    {"format":"power", "name":NAME, "board":B, "source":TEXT, "voltage_v":V,
 *              "metrics":{"avg_current_ma":X, "sleep_current_ma":X, "cycle_energy_uj":X,
 *                         "energy_uj":X, "duration_ms":X, "cycles":N},
 *              "samples":[{"t_ms", "ms", "current_ma", "cycles"}]}
 *              from a rig's "otacd-power/1" JSON (power_report.c); the
 *              figures are computed from the samples; cycle_energy_uj is
 *              absent when no cycle was counted.
 *   Every "metrics" member is also stored per run (table run_metrics).
 */
#ifndef OTA_REPORTS_H
#define OTA_REPORTS_H

#include <jansson.h>
#include <stddef.h>

/* Bounds checked before libxml2 parses an XML report (docs/security.md). */
#define REPORT_XML_MAX_ATTRS 256
#define REPORT_XML_MAX_DEPTH 256
#define OTA_STR_(x) #x
#define OTA_STR(x) OTA_STR_(x)

/* Largest report accepted (bytes). */
#define REPORT_MAX_BYTES (64 * 1024 * 1024)

/*
 * Parse data (len bytes) in `format` ("junit", "cppcheck", "sarif", "pmccabe", "jscpd", "power") into
 * *out (new reference).  name is the file name, kept in the result and
 * used in messages.  OTA_EINVAL with a message naming the file and, where
 * libxml2 gives one, the line: "hil.xml:3: unknown element <tset>".
 */
int report_parse(json_t **out, const char *format, const void *data, size_t len, const char *name);
int report_parse_junit(json_t **out, const void *data, size_t len, const char *name);
int report_parse_cppcheck(json_t **out, const void *data, size_t len, const char *name);
int report_parse_sarif(json_t **out, const void *data, size_t len, const char *name);
int report_parse_pmccabe(json_t **out, const void *data, size_t len, const char *name);  /* metrics_report.c */
int report_parse_jscpd(json_t **out, const void *data, size_t len, const char *name);
int report_parse_power(json_t **out, const void *data, size_t len, const char *name);   /* power_report.c */

/* The JSON document of a report in *doc (caller json_decref's), read with
 * duplicate keys refused and the size bounded; OTA_EINVAL naming the file,
 * line and column when it is not JSON, OTA_ETOOBIG past REPORT_MAX_BYTES.
 * The one prologue of the JSON formats' parsers. */
int report_json_load(json_t **doc, const void *data, size_t len, const char *name);

/* Is format one of the names above? */
int report_format_known(const char *format);

#endif
