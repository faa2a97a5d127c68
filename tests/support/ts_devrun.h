/*
 * ts_devrun.h - running the device library's example (sd-provision-one) from
 * a test and reading what it printed: its last JSON line, line counts, and a
 * run that is stopped with SIGTERM once it has shown enough refusals.
 *
 * Everything returned is library-owned (freed by ts_finish).
 */
#ifndef STAMPCP_TS_DEVRUN_H
#define STAMPCP_TS_DEVRUN_H

#include <jansson.h>

/* How many times needle occurs in text. */
int ts_count_lines(const char *text, const char *needle);
/* The last line of out that parses as a JSON object, or NULL. */
json_t *ts_last_json(const char *out);
/* Fail the test if out holds an ASan/UBSan report (such a run exits 1 too,
 * which runs that are expected to fail would otherwise hide). */
void ts_expect_no_sanitizer_report(const char *what, const char *out);
/*
 * Spawn argv (sd-provision-one ... -v) as name, wait at least min_ms and
 * until its log shows min_count "-> 401" answers (20 s at most), then stop it
 * with SIGTERM. Fails the test if it exits by itself, does not stop within
 * 3 s, or does not end "failed" with exit 1. *log_text gets its output;
 * returns its last JSON line.
 */
json_t *ts_sd_run_until_stopped(const char *name, char **argv, int min_ms, int min_count, const char **log_text);

#endif
