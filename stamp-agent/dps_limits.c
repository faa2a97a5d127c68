/*
 * dps_limits.c - token bucket, GCRA and the one-minute counter.
 */
#include "dps_limits.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "strmap.h"

void dps_bucket_init(struct dps_bucket *b, int64_t capacity, int64_t period_ms, int64_t now_ms)
{
    b->capacity = capacity > 0 ? (double)capacity : 1.0;
    b->tokens = b->capacity;
    b->per_ms = b->capacity / (double)(period_ms > 0 ? period_ms : 1);
    b->last_ms = now_ms;
}

static void dps_bucket_refill(struct dps_bucket *b, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * b->per_ms;
        if (b->tokens > b->capacity)
            b->tokens = b->capacity;
        b->last_ms = now_ms;
    }
}

bool dps_bucket_take(struct dps_bucket *b, int64_t now_ms)
{
    dps_bucket_refill(b, now_ms);
    if (b->tokens < 1.0)
        return false;
    b->tokens -= 1.0;
    return true;
}

int64_t dps_bucket_wait_ms(struct dps_bucket *b, int64_t now_ms)
{
    dps_bucket_refill(b, now_ms);
    if (b->tokens >= 1.0)
        return 0;
    return (int64_t)ceil((1.0 - b->tokens) / b->per_ms);
}

bool dps_gcra_admit(struct dps_gcra *g, int64_t limit, int64_t window_ms, int64_t now_ms, int64_t *retry_ms)
{
    int64_t t = window_ms / (limit > 0 ? limit : 1);      /* emission interval */
    int64_t tau = window_ms - t;                         /* burst tolerance */
    int64_t tat = g->tat_ms > now_ms ? g->tat_ms : now_ms;
    if (t <= 0)
        t = 1;
    if (tat - now_ms > tau) {
        if (retry_ms)
            *retry_ms = tat - now_ms - tau;
        return false;
    }
    g->tat_ms = tat + t;
    return true;
}

bool dps_gcra_idle(const struct dps_gcra *g, int64_t now_ms)
{
    return g->tat_ms <= now_ms;
}

void dps_minute_add(struct dps_minute *m, int64_t now_ms)
{
    int64_t s = now_ms / 1000;
    int i = (int)(s % 60);
    if (m->sec[i] != s) {
        m->sec[i] = s;
        m->count[i] = 0;
    }
    m->count[i]++;
}

uint64_t dps_minute_sum(const struct dps_minute *m, int64_t now_ms)
{
    int64_t s = now_ms / 1000;
    uint64_t sum = 0;
    for (int i = 0; i < 60; i++)
        if (m->sec[i] > s - 60 && m->sec[i] <= s)
            sum += m->count[i];
    return sum;
}

int dps_retry_after_s(int64_t wait_ms)
{
    int64_t s = (wait_ms + 999) / 1000;
    if (s < 1)
        s = 1;
    if (s > 3600)
        s = 3600;
    return (int)s;
}

/* Keyed states in least-recently-touched order: the sweep walks from the
 * oldest and stops at the first state still busy (a state touched later may
 * linger up to one window longer: harmless). */
struct gcra_entry {
    TAILQ_ENTRY(gcra_entry) link;
    struct dps_gcra g;
    char key[];
};

struct dps_keyed_gcra {
    struct strmap *map;
    TAILQ_HEAD(, gcra_entry) lru;
};

struct dps_keyed_gcra *dps_keyed_gcra_new(void)
{
    struct dps_keyed_gcra *k = xcalloc(1, sizeof *k);
    k->map = strmap_new();
    TAILQ_INIT(&k->lru);
    return k;
}

void dps_keyed_gcra_free(struct dps_keyed_gcra *k)
{
    if (!k) return;
    strmap_free(k->map, free);
    free(k);
}

bool dps_keyed_gcra_admit(struct dps_keyed_gcra *k, const char *key, int64_t limit, int64_t window_ms,
                          int64_t now_ms, int64_t *retry_ms)
{
    struct gcra_entry *e = strmap_get(k->map, key);
    if (!e) {
        size_t n = strlen(key);
        e = xcalloc(1, sizeof *e + n + 1);
        memcpy(e->key, key, n + 1);
        strmap_put(k->map, e->key, e);
    } else {
        TAILQ_REMOVE(&k->lru, e, link);
    }
    TAILQ_INSERT_TAIL(&k->lru, e, link);
    return dps_gcra_admit(&e->g, limit, window_ms, now_ms, retry_ms);
}

bool dps_keyed_gcra_peek(const struct dps_keyed_gcra *k, const char *key, int64_t limit, int64_t window_ms,
                         int64_t now_ms, int64_t *retry_ms)
{
    const struct gcra_entry *e = strmap_get(k->map, key);
    struct dps_gcra probe;
    if (!e)
        return true;
    probe = e->g;
    return dps_gcra_admit(&probe, limit, window_ms, now_ms, retry_ms);
}

size_t dps_keyed_gcra_trim(struct dps_keyed_gcra *k, size_t max)
{
    struct gcra_entry *e;
    while (strmap_count(k->map) > max && (e = TAILQ_FIRST(&k->lru)) != NULL) {
        TAILQ_REMOVE(&k->lru, e, link);
        strmap_del(k->map, e->key);
        free(e);
    }
    return strmap_count(k->map);
}

size_t dps_keyed_gcra_sweep(struct dps_keyed_gcra *k, int64_t now_ms)
{
    struct gcra_entry *e;
    while ((e = TAILQ_FIRST(&k->lru)) != NULL && dps_gcra_idle(&e->g, now_ms)) {
        TAILQ_REMOVE(&k->lru, e, link);
        strmap_del(k->map, e->key);
        free(e);
    }
    return strmap_count(k->map);
}
