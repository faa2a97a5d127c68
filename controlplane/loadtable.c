/*
 * loadtable.c - stamp load reports in memory; health from report age.
 *
 * Age is measured on this process's monotonic clock from the moment a report
 * arrived, so a stamp agent whose wall clock is off does not look dead (or
 * alive) for that reason alone; order comes from the agent's run id and
 * sequence number and from Redis's own order, never from the agent's clock.
 */
#include "loadtable.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonv.h"

struct loadtable {
    struct load_entry *v;
    size_t n, cap;
    int64_t stale_after, down_after;
};

struct loadtable *loadtable_new(int64_t stale_after_intervals, int64_t down_after_intervals)
{
    struct loadtable *lt = xcalloc(1, sizeof *lt);
    lt->stale_after = stale_after_intervals;
    lt->down_after = down_after_intervals;
    return lt;
}

void loadtable_free(struct loadtable *lt)
{
    if (!lt) return;
    for (size_t i = 0; i < lt->n; i++) {
        free(lt->v[i].stamp_id);
        json_decref(lt->v[i].load);
    }
    free(lt->v);
    free(lt);
}

static struct load_entry *loadtable_find(const struct loadtable *lt, const char *id)
{
    for (size_t i = 0; i < lt->n; i++)
        if (strcmp(lt->v[i].stamp_id, id) == 0)
            return &lt->v[i];
    return NULL;
}

static struct load_entry *loadtable_add(struct loadtable *lt, const char *id)
{
    struct load_entry *e;
    if (lt->n == lt->cap) {
        lt->cap = lt->cap ? lt->cap * 2 : 16;
        lt->v = xrealloc(lt->v, lt->cap * sizeof *lt->v);
    }
    e = &lt->v[lt->n++];
    memset(e, 0, sizeof *e);
    e->stamp_id = xstrdup(id);
    return e;
}

/* Whether a well-formed report is older than (or the same as) what e holds. */
static bool loadtable_is_older(const struct load_entry *e, const char *run, int64_t seq, enum load_source src,
                               int64_t subscribed_mono_ms)
{
    if (run[0] && strcmp(run, e->run_id) == 0)
        return seq < e->seq || (seq == e->seq && src == LOAD_SNAPSHOT);
    /* Another run, or no run id: Redis's order decides. A live report is the
     * newest there is; a snapshot read after a live report of this
     * subscription may predate it. */
    return src == LOAD_SNAPSHOT && e->live_mono_ms > 0 && e->live_mono_ms >= subscribed_mono_ms;
}

bool loadtable_apply(struct loadtable *lt, json_t *report, int64_t now_wall_ms, int64_t now_mono_ms)
{
    return loadtable_apply_from(lt, report, LOAD_LIVE, 0, now_wall_ms, now_mono_ms);
}

bool loadtable_apply_from(struct loadtable *lt, json_t *report, enum load_source src, int64_t subscribed_mono_ms,
                          int64_t now_wall_ms, int64_t now_mono_ms)
{
    struct jv_err err;
    const char *stamp = NULL, *health = NULL, *run = "", *region = "", *geography = "";
    int64_t ts = 0, interval = 0, seq = 0, age;
    json_t *load = NULL;
    struct load_entry *e;

    if (!json_is_object(report) ||
        !jv_string(report, "", "stampId", true, 1, 63, &stamp, &err) ||
        !jv_string(report, "", "health", true, 1, 16, &health, &err) ||
        !jv_int(report, "", "ts", true, 0, INT64_MAX, &ts, &err) ||
        !jv_int(report, "", "intervalMs", true, 1, 3600000, &interval, &err) ||
        !jv_int(report, "", "seq", false, 0, INT64_MAX, &seq, &err) ||
        !jv_string(report, "", "runId", false, 1, LOADTABLE_RUN_ID_MAX, &run, &err) ||
        !jv_object(report, "", "load", false, &load, &err) || !jv_valid_id(stamp) ||
        !jv_string(report, "", "region", false, 1, 63, &region, &err) ||
        !jv_string(report, "", "geography", false, 1, 63, &geography, &err) ||
        (run[0] && !jv_valid_id(run)))
        return false;

    e = loadtable_find(lt, stamp);
    if (e && loadtable_is_older(e, run, seq, src, subscribed_mono_ms))
        return true;   /* e.g. a snapshot racing a publish: keep the newer */
    if (!e)
        e = loadtable_add(lt, stamp);
    if (src == LOAD_LIVE) {
        age = 0;
        e->live_mono_ms = now_mono_ms;
    } else {
        age = now_wall_ms - ts;
        if (age < 0) age = 0;
        if (age > now_mono_ms) age = now_mono_ms;
    }
    e->seen_mono_ms = now_mono_ms - age;
    e->report_wall_ms = ts;
    e->interval_ms = interval;
    e->seq = seq;
    snprintf(e->run_id, sizeof e->run_id, "%s", run);
    e->said_down = strcmp(health, "down") == 0;
    snprintf(e->region, sizeof e->region, "%s", region);
    snprintf(e->geography, sizeof e->geography, "%s", geography);
    json_decref(e->load);
    e->load = load ? json_deep_copy(load) : NULL;
    return true;
}

const struct load_entry *loadtable_get(const struct loadtable *lt, const char *stamp_id)
{
    return loadtable_find(lt, stamp_id);
}

enum stamp_health loadtable_health(const struct loadtable *lt, const char *stamp_id, int64_t now_mono_ms)
{
    const struct load_entry *e = loadtable_find(lt, stamp_id);
    int64_t age;
    if (!e || e->said_down)
        return STAMP_DOWN;
    age = now_mono_ms - e->seen_mono_ms;
    if (age >= lt->down_after * e->interval_ms)
        return STAMP_DOWN;
    if (age >= lt->stale_after * e->interval_ms)
        return STAMP_STALE;
    return STAMP_HEALTHY;
}

const char *loadtable_health_word(enum stamp_health h)
{
    switch (h) {
    case STAMP_HEALTHY: return "healthy";
    case STAMP_STALE: return "stale";
    default: return "down";
    }
}
