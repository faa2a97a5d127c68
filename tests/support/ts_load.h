/*
 * ts_load.h - open-loop load for the overload tests, and a watcher that
 * samples a probe and a process's memory while the load runs.
 *
 * Open loop: request k is due at t0 + k / rate, whether or not earlier ones
 * were answered (as a fleet of devices would: none of them waits for another),
 * and its latency and client deadline count from that due time, not from when
 * a connection was free to send it. The driver is one thread with epoll over
 * plain-HTTP keep-alive connections to 127.0.0.1 (no TLS: the generator must
 * stay cheap on a machine it shares with the server), at most one request in
 * flight per connection; a connection whose request passed its deadline is
 * closed (its answer would come too late to count) and a new one is opened
 * for the next request.
 *
 * Ownership: the caller owns the items and the records and keeps both alive
 * until ts_load_wait returns; the driver writes only into the records. The
 * watcher's samples are library-owned (freed by ts_finish).
 */
#ifndef STAMPCP_TS_LOAD_H
#define STAMPCP_TS_LOAD_H

#include <stdint.h>
#include <sys/types.h>

/* One request: POST path with "Authorization: authz" (NULL: none), no body. */
struct ts_load_item {
    const char *path;
    const char *authz;
};

struct ts_load_opts {
    int port;                          /* plain HTTP on 127.0.0.1 */
    const struct ts_load_item *items;  /* request k is items[k] */
    int nitems;
    double rate;                       /* requests due per second */
    int duration_ms;                   /* requests are due during this long (at most nitems of them) */
    int timeout_ms;                    /* client deadline of each request, from its due time */
    int max_conns;                     /* connections open at once at most; 0: 2048 */
};

enum ts_load_outcome {
    TS_LOAD_NOT_DUE = 0,  /* past the duration or the items: never due */
    TS_LOAD_ANSWERED,     /* a complete answer before the deadline (status, body) */
    TS_LOAD_TIMEOUT,      /* no complete answer before the deadline */
    TS_LOAD_FAILED,       /* transport error or a malformed answer (body says which) */
    TS_LOAD_NO_CONN,      /* due while max_conns connections were busy: never sent */
};

#define TS_LOAD_BODY 512

struct ts_load_rec {
    unsigned char outcome;         /* enum ts_load_outcome */
    short status;                  /* HTTP status when ANSWERED */
    int latency_ms;                /* due time to complete answer (ANSWERED) */
    int64_t due_ms;                /* ts_now_ms() clock */
    char retry_after[16];          /* the Retry-After value, "" when absent */
    char body[TS_LOAD_BODY];       /* the answer's body (cut), or why it FAILED */
};

struct ts_load_summary {
    int64_t t0_ms, end_ms;         /* first due time; when the last request ended (ts_now_ms clock) */
    int due;                       /* requests that became due */
    int answered, timeouts, failed, no_conn;
    int by_class[6];               /* answered by status / 100 */
    int conns_opened, conns_peak;  /* connections opened in all; open at once at most */
    int64_t max_lag_ms;            /* the latest a request was sent after its due time */
    int64_t cpu_ms;                /* CPU time (user + system) the driver thread used */
};

struct ts_load;
/* Start the driver thread: recs[0..nitems) are cleared and then filled. */
struct ts_load *ts_load_start(const struct ts_load_opts *o, struct ts_load_rec *recs);
/* Wait until every due request has ended (answer, deadline or failure), join and free. */
void ts_load_wait(struct ts_load *l, struct ts_load_summary *s);

/* ---- watching while the load runs ---- */

struct ts_watch_sample {
    int64_t at_ms;                 /* ts_now_ms() when the probe was sent */
    int status;                    /* the probe's HTTP status; 0: no answer within timeout_ms */
    int latency_ms;
    char word[16];                 /* the body's "status" member, "" when none */
    long rss_kb;                   /* VmRSS of pid then; -1 when unreadable */
    int64_t cpu_ms;                /* CPU time (user + system) pid had used by then; -1 when unreadable */
};

struct ts_watch_opts {
    int port;                      /* plain HTTP on 127.0.0.1 */
    const char *path;              /* GET this, e.g. "/readyz" */
    int interval_ms;               /* between the starts of two probes */
    int timeout_ms;                /* each probe's deadline */
    pid_t pid;                     /* whose VmRSS to sample (0: none) */
};

struct ts_watch;
struct ts_watch *ts_watch_start(const struct ts_watch_opts *o);
/* Stop, join; *samples (library-owned) gets what was seen, in order; returns how many. */
int ts_watch_stop(struct ts_watch *w, const struct ts_watch_sample **samples);

/* VmRSS of a process in kB from /proc/<pid>/status; -1 when unreadable. */
long ts_proc_rss_kb(pid_t pid);
/* CPU time (user + system) a process has used, in ms, from /proc/<pid>/stat; -1 when unreadable. */
int64_t ts_proc_cpu_ms(pid_t pid);

#endif
