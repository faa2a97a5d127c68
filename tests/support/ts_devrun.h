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
#include <stdbool.h>

struct ts_rt_stamp;

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

/* What a run of sd-provision-one gave. */
struct ts_sd_run {
    int rc;          /* exit code; -1: killed or timed out */
    json_t *json;    /* its JSON line (library-owned), never NULL */
    const char *out; /* stdout + stderr */
};
/* The state file a test gives the device regid: <ts_tmp()>/<regid>.state. */
const char *ts_sd_state_path(const char *regid);
/*
 * Run argv (sd-provision-one ...) to completion (90 s), log its output, with
 * check_sanitizer fail on a sanitizer report in it, and fail when it printed
 * no JSON line.
 */
struct ts_sd_run ts_sd_run(char **argv, const char *regid, bool check_sanitizer);
/* requests.<kind> of the run's JSON line, -1 when absent. */
json_int_t ts_sd_requests(const struct ts_sd_run *r, const char *kind);
/* Whether host is "<hub id>.hub.test" of one of the stamp's hubs. */
bool ts_rt_stamp_has_hub(const struct ts_rt_stamp *s, const char *host);

#endif
