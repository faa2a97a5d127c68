/*
 * redisfeed.c - the stamp load feed: the stamps:load:* subscription and the
 * snapshot of every stamp's load hash (redisfeed.h), on the control plane's
 * Redis connections (redisbus.c). A subscription alone would miss reports
 * sent while we were disconnected, so every (re)subscribe is followed by a
 * snapshot on the command connection.
 *
 * A report counts only for the stamp its channel or key names: the Redis
 * ACLs let each agent write only its own, and this check makes that the
 * limit of what an agent can claim.
 */
#include "redisfeed.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "redisbus.h"
#include "util.h"

struct redisfeed {
    struct event_base *base;
    struct loadtable *lt;
    struct redisbus *bus;
    bool subscribed;
    int64_t subscribed_mono_ms;  /* when the current load subscription was confirmed */
    bool want_snapshot;      /* a subscribe happened; snapshot once cmd is up */
    bool snapshot_running;
    int64_t bad_reports;
};

/* The report must be about the stamp its channel or key names (expect). */
static bool feed_names_stamp(const json_t *report, const char *expect, size_t expect_len)
{
    const char *id = json_string_value(json_object_get(report, "stampId"));
    return id && strlen(id) == expect_len && memcmp(id, expect, expect_len) == 0;
}

static void feed_apply(struct redisfeed *f, json_t *report, const char *source, enum load_source src,
                       const char *expect, size_t expect_len)
{
    if (report && !feed_names_stamp(report, expect, expect_len)) {
        if (f->bad_reports++ % 1000 < 3)
            log_warn("event=load_report_stamp_mismatch source=%s expected=%.*s count=%lld", source,
                     (int)(expect_len > 63 ? 63 : expect_len), expect, (long long)f->bad_reports);
        return;
    }
    if (!loadtable_apply_from(f->lt, report, src, f->subscribed_mono_ms, util_wall_ms(), util_mono_ms())) {
        /* Log the first few and then every 1000th, not every tick of a broken agent. */
        if (f->bad_reports++ % 1000 < 3)
            log_warn("event=bad_load_report source=%s count=%lld", source, (long long)f->bad_reports);
    }
}

/* ---- snapshot: SCAN stamp:*:load, then HGETALL each ---- */

static void feed_snapshot_scan(struct redisfeed *f, const char *cursor);

static json_t *feed_hash_to_report(const redisReply *r)
{
    json_t *obj = json_object();
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        int64_t n;
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "load") == 0) {
            json_t *load = json_loadb(v->str, v->len, 0, NULL);
            if (load) json_object_set_new(obj, "load", load);
        } else if (strcmp(k->str, "ts") == 0 || strcmp(k->str, "intervalMs") == 0 ||
                   strcmp(k->str, "seq") == 0) {
            if (util_parse_int64(v->str, 0, INT64_MAX, &n))
                json_object_set_new(obj, k->str, json_integer(n));
        } else {
            json_object_set_new(obj, k->str, json_stringn(v->str, v->len));
        }
    }
    return obj;
}

/* One HGETALL of a snapshot: which stamp the key names. */
struct feed_hget {
    struct redisfeed *f;
    size_t stamp_len;
    char stamp[64];
};

static void feed_on_hgetall(redisAsyncContext *ac, void *r, void *privdata)
{
    struct feed_hget *h = privdata;
    redisReply *reply = r;
    json_t *report;
    (void)ac;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        report = feed_hash_to_report(reply);
        feed_apply(h->f, report, "snapshot", LOAD_SNAPSHOT, h->stamp, h->stamp_len);
        json_decref(report);
    }   /* else gone meanwhile (TTL) or connection lost */
    free(h);
}

/* HGETALL key "stamp:{id}:load"; keys of another shape are skipped. */
static void feed_snapshot_get(struct redisfeed *f, redisAsyncContext *ac, const char *key, size_t len)
{
    static const char pre[] = "stamp:", post[] = ":load";
    struct feed_hget *h;
    size_t n;

    if (len <= sizeof pre - 1 + sizeof post - 1 || memcmp(key, pre, sizeof pre - 1) != 0 ||
        memcmp(key + len - (sizeof post - 1), post, sizeof post - 1) != 0)
        return;
    n = len - (sizeof pre - 1) - (sizeof post - 1);
    if (n >= sizeof h->stamp)
        return;
    h = xcalloc(1, sizeof *h);
    h->f = f;
    memcpy(h->stamp, key + sizeof pre - 1, n);
    h->stamp_len = n;
    if (redisAsyncCommand(ac, feed_on_hgetall, h, "HGETALL %b", key, len) != REDIS_OK)
        free(h);
}

static void feed_on_scan(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisfeed *f = privdata;
    redisReply *reply = r;
    const redisReply *cursor, *keys;

    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_warn("event=load_snapshot_failed error=\"%.200s\"", reply->str ? reply->str : "");
        f->snapshot_running = false;
        f->want_snapshot = true;   /* try again on the next connect */
        return;
    }
    cursor = reply->element[0];
    keys = reply->element[1];
    for (size_t i = 0; keys->type == REDIS_REPLY_ARRAY && i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        if (k->type == REDIS_REPLY_STRING)
            feed_snapshot_get(f, ac, k->str, k->len);
    }
    if (cursor->type == REDIS_REPLY_STRING && strcmp(cursor->str, "0") != 0) {
        feed_snapshot_scan(f, cursor->str);
        return;
    }
    f->snapshot_running = false;
    log_info("event=load_snapshot_done");
}

static void feed_snapshot_scan(struct redisfeed *f, const char *cursor)
{
    redisAsyncContext *ac = redisbus_cmd(f->bus);
    if (!ac || redisAsyncCommand(ac, feed_on_scan, f, "SCAN %s MATCH %s COUNT 1000", cursor,
                                 REDISFEED_KEY_PATTERN) != REDIS_OK) {
        f->snapshot_running = false;
        f->want_snapshot = true;
    }
}

static void feed_maybe_snapshot(struct redisfeed *f)
{
    if (!f->want_snapshot || f->snapshot_running || !redisbus_cmd(f->bus))
        return;
    f->want_snapshot = false;
    f->snapshot_running = true;
    feed_snapshot_scan(f, "0");
}

/* ---- subscription ---- */

static void feed_on_subscribed(void *arg)
{
    struct redisfeed *f = arg;
    f->subscribed = true;
    f->subscribed_mono_ms = util_mono_ms();
    f->want_snapshot = true;
    feed_maybe_snapshot(f);
}

static void feed_on_unsubscribed(void *arg)
{
    struct redisfeed *f = arg;
    f->subscribed = false;
}

static void feed_on_message(const char *chan, size_t chan_len, const char *msg, size_t len, void *arg)
{
    struct redisfeed *f = arg;
    json_t *report;
    if (chan_len <= sizeof REDISFEED_CHANNEL_PREFIX - 1 ||
        memcmp(chan, REDISFEED_CHANNEL_PREFIX, sizeof REDISFEED_CHANNEL_PREFIX - 1) != 0)
        return;
    report = json_loadb(msg, len, 0, NULL);
    feed_apply(f, report, "publish", LOAD_LIVE, chan + sizeof REDISFEED_CHANNEL_PREFIX - 1,
               chan_len - (sizeof REDISFEED_CHANNEL_PREFIX - 1));
    json_decref(report);
}

static void feed_cmd_up(void *arg)
{
    feed_maybe_snapshot(arg);
}

static void feed_cmd_down(void *arg)
{
    struct redisfeed *f = arg;
    if (f->snapshot_running) {
        f->snapshot_running = false;
        f->want_snapshot = true;
    }
}

struct redisfeed *redisfeed_new(struct redisbus *bus, struct loadtable *lt)
{
    struct redisfeed *f = xcalloc(1, sizeof *f);
    struct redisbus_sub sub = {.pattern = true, .channel = REDISFEED_CHANNEL_PATTERN,
                               .on_subscribed = feed_on_subscribed, .on_unsubscribed = feed_on_unsubscribed,
                               .on_message = feed_on_message, .arg = f};
    f->bus = bus;
    f->lt = lt;
    redisbus_subscribe(bus, &sub);
    redisbus_on_cmd(bus, feed_cmd_up, feed_cmd_down, f);
    return f;
}

void redisfeed_free(struct redisfeed *f)
{
    free(f);
}
