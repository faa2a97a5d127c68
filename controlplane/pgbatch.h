/*
 * pgbatch.h - natural batching of one kind of statement in front of a pgpool.
 *
 * Items (each with its own text parameters and callback) are submitted one at
 * a time. While fewer than max_inflight batches of this batcher are running,
 * what is queued is sent at once (at low load: a batch of one, no added
 * latency); otherwise items wait, and when a batch completes the queue is sent
 * as one statement of up to max_batch items. Parse, plan, round trip, wakeup
 * and commit are then paid once per batch instead of once per item.
 *
 * Two statements describe a kind:
 *   sql_one   the statement for a single item: $1..$ncols are the item's
 *             values; its first result column is the ordinal 1.
 *   sql_many  the statement for n items: $1..$ncols are text[] arrays of n
 *             elements (column k holds every item's value k); each result row
 *             starts with the item's ordinal (1..n, as WITH ORDINALITY gives).
 * Either may return at most one row per item.
 *
 * A batch of several items that fails with an SQL error (a unique violation,
 * a deadlock, ...) is run again item by item with sql_one, so every item gets
 * exactly the answer its own statement would have given. A batch that fails
 * as unavailable (no connection, the connection broke, a timeout) fails every
 * item as unavailable: whether a batch that lost its connection committed is
 * unknown, as for a single statement.
 */
#ifndef CP_PGBATCH_H
#define CP_PGBATCH_H

#include <event2/event.h>
#include <stdbool.h>

#include "pgpool.h"

#define PGBATCH_MAX_COLS 12

/*
 * Called exactly once per item, never from inside pgbatch_submit(). q is the
 * statement's result (status, errors); when q->status is PGQ_OK, row is the
 * item's row in q->res (its columns after the ordinal start at 1), or -1 if
 * the statement returned no row for it. q and its result are valid during the
 * callback only.
 */
typedef void (*pgbatch_cb)(const struct pgq_result *q, int row, void *arg);

struct pgbatch_opts {
    const char *name;          /* for logs: "lookup:eu" */
    const char *sql_one;       /* static storage: not copied */
    const char *sql_many;      /* static storage: not copied */
    int ncols;                 /* 1..PGBATCH_MAX_COLS */
    int max_inflight;          /* batches of this batcher running at once (>= 1) */
    int max_batch;             /* items per batch (>= 1) */
    int queue_timeout_ms;      /* how long an item may wait here before it fails as unavailable */
};

struct pgbatch;

/* The pool must outlive the batcher. */
struct pgbatch *pgbatch_new(struct event_base *base, struct pgpool *pool, const struct pgbatch_opts *o);
/* Queued items are dropped without their callbacks (as pgpool_free does):
 * free a batcher only once nothing waits on it, and before its pool. */
void pgbatch_free(struct pgbatch *b);

/* Queue one item: values[0..ncols-1] (NULL: SQL NULL) are copied. cb is called
 * exactly once. */
void pgbatch_submit(struct pgbatch *b, const char *const *values, pgbatch_cb cb, void *arg);
/* The same for a caller with a deadline (util_mono_ms() clock; 0: none). An
 * item still queued (here or, in its batch, in the pool's queue) when its
 * deadline passes is dropped, never sent: it is answered PGQ_UNAVAILABLE
 * with unsent and expired set (pgpool.h). A batch dropped from the pool's
 * queue for the deadline of one of its items puts the others back. */
void pgbatch_submit_until(struct pgbatch *b, int64_t deadline_ms, const char *const *values, pgbatch_cb cb,
                          void *arg);

struct pgbatch_stats {
    long batches;     /* statements sent (batches of one included, fallbacks not) */
    long items;       /* items sent in them */
    long fallbacks;   /* batches run again item by item after an SQL error */
    long expired;     /* items dropped unsent because their caller's deadline passed */
};
void pgbatch_get_stats(const struct pgbatch *b, struct pgbatch_stats *s);

/* One PostgreSQL array literal ("{...}", every element double-quoted, '"' and
 * '\' escaped, NULL unquoted) of n strings; NULL entries become NULL
 * elements. Returns a malloc'd string. */
char *pgbatch_array_literal(const char *const *vals, int n);

#endif
