/*
 * ts_internal.h - glue between the files of the test support library.
 * Not for tests: they include ts.h only.
 */
#ifndef STAMPCP_TS_INTERNAL_H
#define STAMPCP_TS_INTERNAL_H

#include "ts.h"

/* ts_env.c */
void ts_forget(void *p);                              /* stop tracking p (caller frees it) */
void ts_on_cleanup(void (*fn)(void *), void *arg);    /* run at ts_finish / exit, LIFO */
const char *ts_infra_dir(void);                       /* $STAMPCP_SOURCE_DIR/infra */

/* ts_proc.c */
void ts_procs_kill_all(int sig);                      /* async-signal-safe enough: kill() only */
void ts_procs_stop_all(int timeout_ms);               /* SIGTERM, wait, SIGKILL */
int ts_procs_scan_sanitizer(void);                    /* number of logs with sanitizer reports */
void ts_procs_dump_all(size_t max_bytes);
void ts_procs_free_all(void);

/* ts_http.c */
void ts_http_free_all(void);
/* An answer read to EOF (ts_http_exchange_mt), framed as ts_http frames one:
 * NULL unless complete (a body shorter than its Content-Length - the server
 * died writing it - is no answer). Thread-safe; tracked by nobody: free it
 * with ts_http_answer_free. */
struct ts_resp *ts_http_parse_raw(const char *buf, size_t len);
void ts_http_answer_free(struct ts_resp *r);

#endif
