/*
 * pgpool.h - an asynchronous PostgreSQL connection pool on the libevent loop.
 *
 * One pool per database (the global catalog, each geography). Every connection
 * is driven by libpq's non-blocking API with its socket watched by libevent, so
 * a slow or dead database never blocks the loop. Connections reconnect by
 * themselves with exponential backoff. The first connection of a pool applies
 * the pool's migrations (skipping those its table records as applied) before
 * any query runs; for a geography database every connection, also after a
 * reconnect, checks which geography it reached before its first query, and a
 * connection to another geography's database is dropped, never used.
 *
 * Bounds and failover (see pgpool_opts): every connection carries server-side
 * timeouts and TCP keepalives; a statement past its deadline fails at once
 * and its backend is cancelled (on a small detached thread: libpq 15's
 * PQcancel blocks), the connection reused once the statement ended; a
 * read-only or shutting-down server drops the connection, which reconnects
 * through the conninfo's host list (target_session_attrs=read-write finds the
 * primary). Host names are resolved on the loop (dns.h), libpq gets hostaddr.
 */
#ifndef CP_PGPOOL_H
#define CP_PGPOOL_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "dns.h"
#include "migrate.h"
#include "util.h"

enum pgq_status {
    PGQ_OK,           /* the statement ran; res holds its result */
    PGQ_SQL_ERROR,    /* the server refused it; sqlstate and message say why */
    PGQ_UNAVAILABLE,  /* no connection, queue full or timed out, the connection broke, or the
                       * server said it cannot serve this now: read-only (25006, a demoted
                       * primary), shutting down (57P01-57P03), statement cancelled or timed
                       * out (57014), lock wait timed out (55P03). Callers answer 503. */
};

struct pgq_result {
    enum pgq_status status;
    const PGresult *res;      /* PGQ_OK: tuples or command result; valid during the callback only */
    const char *sqlstate;     /* PGQ_SQL_ERROR: five characters */
    const char *message;      /* PGQ_SQL_ERROR / PGQ_UNAVAILABLE: for logs, never for clients */
    const char *constraint;   /* PGQ_SQL_ERROR: violated constraint, or NULL */
    const char *column;       /* PGQ_SQL_ERROR: column named by the error, or NULL */
    const char *table;        /* PGQ_SQL_ERROR: table named by the error, or NULL */
    /* PGQ_UNAVAILABLE: the statement never reached the server (no connection,
     * queue full, it waited past the queue timeout or the caller's deadline):
     * nothing of it ran. With sqlstate set (a 57014, 55P03, ... answer) it
     * ran and the server ended it without effect. Otherwise it was sent and
     * its fate is unknown (pgq_in_doubt). */
    bool unsent;
    bool expired;             /* unsent because the caller's deadline passed while it waited */
};

/* Whether a statement that did not answer OK may still have committed: it
 * was sent, and neither an answer nor an error came back (the connection
 * broke, or query_timeout_ms passed while it ran). */
bool pgq_in_doubt(const struct pgq_result *q);

/* Called exactly once per query, never from inside pgpool_query() itself. */
typedef void (*pgpool_cb)(const struct pgq_result *r, void *arg);

struct pgpool_opts {
    const char *name;            /* for logs and readiness: "global", "geo:eu" */
    const char *conninfo;
    int size;                    /* connections */
    int connect_timeout_ms;
    int query_timeout_ms;
    int queue_timeout_ms;        /* how long a query may wait for a free connection */
    int max_queue;
    /*
     * Server-side bounds, sent at connect in the startup packet ("options=-c
     * ..."; an "options" of the conninfo is kept and comes after them, so it
     * wins). 0 derives the default from query_timeout_ms, -1 leaves the
     * server's own setting:
     *   statement_timeout_ms   default query_timeout_ms
     *   lock_timeout_ms        default query_timeout_ms / 2
     *   idle_in_tx_timeout_ms  default 2 * query_timeout_ms
     */
    int statement_timeout_ms;
    int lock_timeout_ms;
    int idle_in_tx_timeout_ms;
    /* TCP keepalives on every connection (the conninfo may override them):
     * 0 takes the default 10 s idle, 3 s interval, 3 probes. */
    int keepalives_idle_s, keepalives_interval_s, keepalives_count;
    /* A statement that overruns query_timeout_ms fails at once (PGQ_UNAVAILABLE)
     * and its backend is asked to cancel it; the connection is reused once the
     * statement has ended, or dropped if that takes longer than this.
     * 0: query_timeout_ms. */
    int cancel_grace_ms;
    /* fallback_application_name (pg_stat_activity), NULL: none; the conninfo's
     * application_name wins. */
    const char *application_name;
    /* Resolves the conninfo's host names on the loop before each connect;
     * libpq then gets "hostaddr" (and keeps "host" for TLS verification and
     * the password file). Numeric hosts, unix sockets and a conninfo with its
     * own hostaddr need none. NULL: libpq resolves by itself (it blocks: only
     * for one-shot tools such as --migrate). Borrowed: outlives the pool. */
    struct dns *dns;
    const struct migration *migrations;
    int n_migrations;
    /* The table recording applied migrations: one per migration set, so that
     * the control plane's and a stamp agent's tables can share a database.
     * NULL: "schema_migrations". */
    const char *migrations_table;
    const char *geography;       /* non-NULL: check/record geo_identity, on every connection */
    /* Only read geo_identity, never write its row (a stamp agent's role may
     * not): a database without the row or the table is the wrong one. */
    bool geography_check_only;
    /* Called (may be NULL) each time a connection is refused because its
     * database belongs to another geography; ever_ready: the pool has served
     * before. Must not free the pool. */
    void (*on_wrong_geography)(void *arg, bool ever_ready);
    void *cb_arg;
};

struct pgpool;

struct pgpool *pgpool_new(struct event_base *base, const struct pgpool_opts *opts);
/* Closes every connection. Queued queries are dropped without their callbacks:
 * free a pool only once nothing waits on it. */
void pgpool_free(struct pgpool *p);

/*
 * Run one parameterised statement (text parameters, text results). values may
 * hold NULL for SQL NULL; the pool copies sql and values. cb is always called,
 * exactly once and never from inside this call: a query the pool can't run
 * (no connection, queue full) fails with PGQ_UNAVAILABLE on the next loop turn.
 */
void pgpool_query(struct pgpool *p, const char *sql, int nparams, const char *const *values,
                  pgpool_cb cb, void *arg);
/* The same for a caller with a deadline (deadline_ms on util_mono_ms()'s
 * clock; 0: none): a statement still queued when it passes is dropped, never
 * sent, and fails PGQ_UNAVAILABLE with unsent and expired set (also when the
 * deadline has passed already). A statement sent in time runs to its end or
 * to query_timeout_ms, as any other. */
void pgpool_query_until(struct pgpool *p, int64_t deadline_ms, const char *sql, int nparams,
                        const char *const *values, pgpool_cb cb, void *arg);

/* Whether the pool has a live, migrated connection right now. */
bool pgpool_is_ready(const struct pgpool *p);
/* A short word for readiness answers: "ok", "connecting", "unreachable", "migration_failed", "wrong_geography",
 * "identity_check_failed". */
const char *pgpool_state_word(const struct pgpool *p);
const char *pgpool_name(const struct pgpool *p);

#endif
