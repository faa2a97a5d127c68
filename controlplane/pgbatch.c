/*
 * pgbatch.c - natural batching in front of a pgpool (see pgbatch.h).
 *
 * An item is QUEUED, then SENT in a batch, then ANSWERED (its callback ran,
 * it is freed). An item whose deadline passes while QUEUED is answered
 * unsent (and expired, when it was its caller's deadline): it is never part
 * of a batch sent after its deadline, and a batch carries the earliest
 * caller deadline of its items to the pool's queue. Flushing runs from a libevent event activated by submit and
 * by each completed batch, so everything queued during one pass of the loop
 * (a burst of requests, the callbacks of a finished batch) can go out
 * together, and no callback ever runs inside pgbatch_submit().
 */
#include "pgbatch.h"

#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"
#include "util.h"

struct pgb_item {
    TAILQ_ENTRY(pgb_item) link;
    struct pgbatch *b;
    char *values[PGBATCH_MAX_COLS];
    pgbatch_cb cb;
    void *arg;
    int64_t deadline_ms;     /* while queued: the queue timeout or the caller's deadline, the first of them */
    int64_t caller_deadline_ms;   /* pgbatch_submit_until's, 0: none */
};
TAILQ_HEAD(pgb_item_list, pgb_item);

struct pgb_batch {
    struct pgbatch *b;
    int n;
    struct pgb_item **items;
};

struct pgbatch {
    struct event_base *base;
    struct pgpool *pool;
    char *name;
    const char *sql_one, *sql_many;
    int ncols, max_inflight, max_batch, queue_timeout_ms;
    struct pgb_item_list queue;
    int queue_len;
    int inflight;            /* batches sent and not answered (fallback singles not counted) */
    struct event *flush_ev;  /* activated to send what is queued */
    struct event *timer;     /* the earliest deadline of what is queued */
    int64_t timer_at;        /* ... when it is armed */
    bool flush_pending;
    struct pgbatch_stats stats;
};

/* ---- array literals ---- */

char *pgbatch_array_literal(const char *const *vals, int n)
{
    size_t len = 3;
    char *out, *p;
    for (int i = 0; i < n; i++) {
        len += 5;   /* quotes, comma, or NULL */
        if (vals[i])
            for (const char *s = vals[i]; *s; s++)
                len += (*s == '"' || *s == '\\') ? 2 : 1;
    }
    out = p = xmalloc(len);
    *p++ = '{';
    for (int i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        if (!vals[i]) {
            memcpy(p, "NULL", 4);
            p += 4;
            continue;
        }
        *p++ = '"';
        for (const char *s = vals[i]; *s; s++) {
            if (*s == '"' || *s == '\\')
                *p++ = '\\';
            *p++ = *s;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

/* ---- items ---- */

static void item_free(struct pgb_item *it)
{
    for (int i = 0; i < it->b->ncols; i++)
        free(it->values[i]);
    free(it);
}

static void item_answer(struct pgb_item *it, const struct pgq_result *q, int row)
{
    it->cb(q, row, it->arg);
    item_free(it);
}

/* Answer an item that was never sent: it waited past its queue deadline. */
static void item_drop(struct pgb_item *it, int64_t now)
{
    struct pgq_result q = {.status = PGQ_UNAVAILABLE, .unsent = true};
    q.expired = it->caller_deadline_ms && now >= it->caller_deadline_ms;
    q.message = q.expired ? "the caller's deadline passed while it waited" : "timed out waiting for a database connection";
    if (q.expired)
        it->b->stats.expired++;
    item_answer(it, &q, -1);
}

static void batch_free(struct pgb_batch *bt)
{
    free(bt->items);
    free(bt);
}

static void pgb_arm_timer(struct pgbatch *b);
static void pgb_schedule_flush(struct pgbatch *b);

/* The batch was dropped from the pool's queue because its earliest caller
 * deadline passed: items whose own deadline has not passed go back to the
 * head of the queue (in their order) for the next batch; the others are
 * answered. */
static void pgb_requeue_expired(struct pgb_batch *bt, const struct pgq_result *q)
{
    struct pgbatch *b = bt->b;
    int64_t now = util_mono_ms();
    for (int i = bt->n - 1; i >= 0; i--) {
        struct pgb_item *it = bt->items[i];
        if (it->caller_deadline_ms && now >= it->caller_deadline_ms) {
            b->stats.expired++;
            item_answer(it, q, -1);
            continue;
        }
        TAILQ_INSERT_HEAD(&b->queue, it, link);
        b->queue_len++;
    }
    pgb_arm_timer(b);
}

static void pgb_schedule_flush(struct pgbatch *b)
{
    if (b->flush_pending || TAILQ_EMPTY(&b->queue) || b->inflight >= b->max_inflight)
        return;
    b->flush_pending = true;
    event_active(b->flush_ev, EV_TIMEOUT, 1);
}

/* An item run on its own (after its batch failed with an SQL error). */
static void pgb_on_single(const struct pgq_result *q, void *arg)
{
    struct pgb_item *it = arg;
    item_answer(it, q, q->status == PGQ_OK && PQntuples(q->res) > 0 ? 0 : -1);
}

static void pgb_on_batch(const struct pgq_result *q, void *arg)
{
    struct pgb_batch *bt = arg;
    struct pgbatch *b = bt->b;
    int *row = NULL;

    b->inflight--;
    if (q->status == PGQ_SQL_ERROR && bt->n > 1) {
        /* One item's error (e.g. a registration id taken on the DPS) aborted
         * the whole statement: run each item alone, so each gets its own answer. */
        b->stats.fallbacks++;
        if (log_enabled(LOG_DEBUG))
            log_debug("event=pg_batch_fallback batcher=%s items=%d sqlstate=%s", b->name, bt->n, q->sqlstate);
        for (int i = 0; i < bt->n; i++)
            pgpool_query_until(b->pool, bt->items[i]->caller_deadline_ms, b->sql_one, b->ncols,
                               (const char *const *)bt->items[i]->values, pgb_on_single, bt->items[i]);
        batch_free(bt);
        pgb_schedule_flush(b);
        return;
    }
    if (q->status == PGQ_UNAVAILABLE && q->expired) {
        pgb_requeue_expired(bt, q);
        batch_free(bt);
        pgb_schedule_flush(b);
        return;
    }
    if (q->status == PGQ_OK) {
        int nt = PQntuples(q->res);
        row = xmalloc((size_t)bt->n * sizeof *row);
        for (int i = 0; i < bt->n; i++)
            row[i] = -1;
        for (int r = 0; r < nt; r++) {
            long ord = strtol(PQgetvalue(q->res, r, 0), NULL, 10);
            if (ord >= 1 && ord <= bt->n && row[ord - 1] < 0)
                row[ord - 1] = r;
        }
    }
    for (int i = 0; i < bt->n; i++)
        item_answer(bt->items[i], q, row ? row[i] : -1);
    free(row);
    batch_free(bt);
    pgb_schedule_flush(b);
}

/* Send up to n queued items as one batch; items whose deadline has passed
 * (their timer may not have run yet) are answered instead, never sent. */
static void pgb_send(struct pgbatch *b, int n)
{
    struct pgb_batch *bt = xcalloc(1, sizeof *bt);
    int64_t now = util_mono_ms(), deadline = 0;
    bt->b = b;
    bt->items = xmalloc((size_t)n * sizeof *bt->items);
    while (bt->n < n && !TAILQ_EMPTY(&b->queue)) {
        struct pgb_item *it = TAILQ_FIRST(&b->queue);
        TAILQ_REMOVE(&b->queue, it, link);
        b->queue_len--;
        if (it->deadline_ms <= now) {
            item_drop(it, now);
            continue;
        }
        if (it->caller_deadline_ms && (!deadline || it->caller_deadline_ms < deadline))
            deadline = it->caller_deadline_ms;
        bt->items[bt->n++] = it;
    }
    n = bt->n;
    if (n == 0) {
        batch_free(bt);
        return;
    }
    b->inflight++;
    b->stats.batches++;
    b->stats.items += n;
    if (n == 1) {
        pgpool_query_until(b->pool, deadline, b->sql_one, b->ncols, (const char *const *)bt->items[0]->values,
                           pgb_on_batch, bt);
        return;
    }
    {
        char *cols[PGBATCH_MAX_COLS];
        const char **vals = xmalloc((size_t)n * sizeof *vals);
        for (int c = 0; c < b->ncols; c++) {
            for (int i = 0; i < n; i++)
                vals[i] = bt->items[i]->values[c];
            cols[c] = pgbatch_array_literal(vals, n);
        }
        free(vals);
        pgpool_query_until(b->pool, deadline, b->sql_many, b->ncols, (const char *const *)cols, pgb_on_batch, bt);
        for (int c = 0; c < b->ncols; c++)
            free(cols[c]);
    }
}

static void pgb_on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct pgbatch *b = arg;
    (void)fd; (void)what;
    b->flush_pending = false;
    while (!TAILQ_EMPTY(&b->queue) && b->inflight < b->max_inflight)
        pgb_send(b, b->queue_len < b->max_batch ? b->queue_len : b->max_batch);
    if (TAILQ_EMPTY(&b->queue))
        event_del(b->timer);
}

/* The timer runs to the earliest deadline of what is queued (items carry
 * their callers' deadlines, so the head is not always the first due). */
static void pgb_arm_at(struct pgbatch *b, int64_t when)
{
    int64_t ms = when - util_mono_ms();
    struct timeval tv;
    b->timer_at = when;
    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    event_add(b->timer, &tv);
}

static void pgb_arm_timer(struct pgbatch *b)
{
    struct pgb_item *it;
    int64_t first = 0;
    TAILQ_FOREACH(it, &b->queue, link)
        if (!first || it->deadline_ms < first)
            first = it->deadline_ms;
    if (first)
        pgb_arm_at(b, first);
    else
        event_del(b->timer);
}

/* Items waited too long for a free batch slot, or past their caller's deadline. */
static void pgb_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pgbatch *b = arg;
    int64_t now = util_mono_ms();
    struct pgb_item_list due = TAILQ_HEAD_INITIALIZER(due);
    struct pgb_item *it, *next;
    (void)fd; (void)what;
    /* take them all out first: a callback may submit to this batcher */
    for (it = TAILQ_FIRST(&b->queue); it; it = next) {
        next = TAILQ_NEXT(it, link);
        if (it->deadline_ms <= now) {
            TAILQ_REMOVE(&b->queue, it, link);
            b->queue_len--;
            TAILQ_INSERT_TAIL(&due, it, link);
        }
    }
    pgb_arm_timer(b);
    while ((it = TAILQ_FIRST(&due)) != NULL) {
        TAILQ_REMOVE(&due, it, link);
        item_drop(it, now);
    }
}

/* ---- public ---- */

struct pgbatch *pgbatch_new(struct event_base *base, struct pgpool *pool, const struct pgbatch_opts *o)
{
    struct pgbatch *b = xcalloc(1, sizeof *b);
    b->base = base;
    b->pool = pool;
    b->name = xstrdup(o->name);
    b->sql_one = o->sql_one;
    b->sql_many = o->sql_many;
    b->ncols = o->ncols;
    b->max_inflight = o->max_inflight > 0 ? o->max_inflight : 1;
    b->max_batch = o->max_batch > 0 ? o->max_batch : 1;
    b->queue_timeout_ms = o->queue_timeout_ms;
    TAILQ_INIT(&b->queue);
    b->flush_ev = event_new(base, -1, 0, pgb_on_flush, b);
    b->timer = event_new(base, -1, 0, pgb_on_timer, b);
    if (!b->flush_ev || !b->timer || b->ncols < 1 || b->ncols > PGBATCH_MAX_COLS) {
        log_error("event=pgbatch_new_failed batcher=%s", b->name);
        abort();
    }
    return b;
}

void pgbatch_free(struct pgbatch *b)
{
    struct pgb_item *it;
    if (!b)
        return;
    if (b->stats.batches || b->stats.expired)
        log_info("event=pg_batch_stats batcher=%s batches=%ld items=%ld fallbacks=%ld expired=%ld", b->name,
                 b->stats.batches, b->stats.items, b->stats.fallbacks, b->stats.expired);
    while ((it = TAILQ_FIRST(&b->queue)) != NULL) {
        TAILQ_REMOVE(&b->queue, it, link);
        item_free(it);
    }
    event_free(b->flush_ev);
    event_free(b->timer);
    free(b->name);
    free(b);
}

void pgbatch_submit(struct pgbatch *b, const char *const *values, pgbatch_cb cb, void *arg)
{
    pgbatch_submit_until(b, 0, values, cb, arg);
}

void pgbatch_submit_until(struct pgbatch *b, int64_t deadline_ms, const char *const *values, pgbatch_cb cb,
                          void *arg)
{
    struct pgb_item *it = xcalloc(1, sizeof *it);
    it->b = b;
    for (int i = 0; i < b->ncols; i++)
        it->values[i] = values[i] ? xstrdup(values[i]) : NULL;
    it->cb = cb;
    it->arg = arg;
    it->deadline_ms = util_mono_ms() + b->queue_timeout_ms;
    it->caller_deadline_ms = deadline_ms;
    if (deadline_ms && deadline_ms < it->deadline_ms)
        it->deadline_ms = deadline_ms;
    TAILQ_INSERT_TAIL(&b->queue, it, link);
    b->queue_len++;
    if (!evtimer_pending(b->timer, NULL) || it->deadline_ms < b->timer_at)
        pgb_arm_at(b, it->deadline_ms);
    pgb_schedule_flush(b);
}

void pgbatch_get_stats(const struct pgbatch *b, struct pgbatch_stats *s)
{
    *s = b->stats;
}
