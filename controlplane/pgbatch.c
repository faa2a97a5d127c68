/*
 * pgbatch.c - natural batching in front of a pgpool (see pgbatch.h).
 *
 * An item is QUEUED, then SENT in a batch, then ANSWERED (its callback ran,
 * it is freed). Flushing runs from a libevent event activated by submit and
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
    int64_t deadline_ms;     /* while queued */
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
    struct event *timer;     /* the queue head's deadline */
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

static void batch_free(struct pgb_batch *bt)
{
    free(bt->items);
    free(bt);
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
            pgpool_query(b->pool, b->sql_one, b->ncols, (const char *const *)bt->items[i]->values, pgb_on_single,
                         bt->items[i]);
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

static void pgb_send(struct pgbatch *b, int n)
{
    struct pgb_batch *bt = xcalloc(1, sizeof *bt);
    bt->b = b;
    bt->n = n;
    bt->items = xmalloc((size_t)n * sizeof *bt->items);
    for (int i = 0; i < n; i++) {
        struct pgb_item *it = TAILQ_FIRST(&b->queue);
        TAILQ_REMOVE(&b->queue, it, link);
        b->queue_len--;
        bt->items[i] = it;
    }
    b->inflight++;
    b->stats.batches++;
    b->stats.items += n;
    if (n == 1) {
        pgpool_query(b->pool, b->sql_one, b->ncols, (const char *const *)bt->items[0]->values, pgb_on_batch, bt);
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
        pgpool_query(b->pool, b->sql_many, b->ncols, (const char *const *)cols, pgb_on_batch, bt);
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

static void pgb_arm_timer(struct pgbatch *b)
{
    struct pgb_item *it = TAILQ_FIRST(&b->queue);
    int64_t ms;
    struct timeval tv;
    if (!it)
        return;
    ms = it->deadline_ms - util_mono_ms();
    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    event_add(b->timer, &tv);
}

/* The oldest items waited too long for a free batch slot. */
static void pgb_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pgbatch *b = arg;
    struct pgq_result q = {.status = PGQ_UNAVAILABLE, .message = "timed out waiting for a database connection"};
    int64_t now = util_mono_ms();
    struct pgb_item *it;
    (void)fd; (void)what;
    while ((it = TAILQ_FIRST(&b->queue)) != NULL && it->deadline_ms <= now) {
        TAILQ_REMOVE(&b->queue, it, link);
        b->queue_len--;
        item_answer(it, &q, -1);
    }
    pgb_arm_timer(b);
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
    if (b->stats.batches)
        log_info("event=pg_batch_stats batcher=%s batches=%ld items=%ld fallbacks=%ld", b->name, b->stats.batches,
                 b->stats.items, b->stats.fallbacks);
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
    struct pgb_item *it = xcalloc(1, sizeof *it);
    bool was_empty = TAILQ_EMPTY(&b->queue);
    it->b = b;
    for (int i = 0; i < b->ncols; i++)
        it->values[i] = values[i] ? xstrdup(values[i]) : NULL;
    it->cb = cb;
    it->arg = arg;
    it->deadline_ms = util_mono_ms() + b->queue_timeout_ms;
    TAILQ_INSERT_TAIL(&b->queue, it, link);
    b->queue_len++;
    if (was_empty)
        pgb_arm_timer(b);
    pgb_schedule_flush(b);
}

void pgbatch_get_stats(const struct pgbatch *b, struct pgbatch_stats *s)
{
    *s = b->stats;
}
