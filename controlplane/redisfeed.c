/*
 * redisfeed.c - subscribe + snapshot of stamp load reports.
 *
 * Two connections: "sub" holds the SUBSCRIBE (a subscribed connection can't
 * run other commands), "cmd" runs the snapshot SCAN/HGETALLs and the PING
 * heartbeat. A subscription alone would miss reports sent while we were
 * disconnected, so every (re)subscribe is followed by a snapshot. Both
 * connections AUTH as the control plane's Redis user (redisconn.c).
 *
 * A report counts only for the stamp its channel or key names: the Redis
 * ACLs let each agent write only its own, and this check makes that the
 * limit of what an agent can claim.
 */
#include "redisfeed.h"

#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"
#include "redisconn.h"
#include "util.h"

#define REDISFEED_WAIT_MS 1000

struct feed_wait {
    LIST_ENTRY(feed_wait) link;
    struct redisfeed *f;
    char nonce[17];
    bool delivered;
    struct event *ev;            /* deadline, or activated to report */
    redisfeed_done_cb done;
    void *arg;
};

struct redisfeed {
    struct event_base *base;
    struct loadtable *lt;
    struct redisconn *sub;
    struct redisconn *cmd;
    bool subscribed;
    int64_t subscribed_mono_ms;  /* when the current load subscription was confirmed */
    bool want_snapshot;      /* a subscribe happened; snapshot once cmd is up */
    bool snapshot_running;
    int64_t bad_reports;
    struct redisfeed_hooks hooks;
    LIST_HEAD(, feed_wait) waits;   /* invalidations waiting to come back */
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
    redisAsyncContext *ac = redisconn_ctx(f->cmd);
    if (!ac || redisAsyncCommand(ac, feed_on_scan, f, "SCAN %s MATCH %s COUNT 1000", cursor,
                                 REDISFEED_KEY_PATTERN) != REDIS_OK) {
        f->snapshot_running = false;
        f->want_snapshot = true;
    }
}

static void feed_maybe_snapshot(struct redisfeed *f)
{
    if (!f->want_snapshot || f->snapshot_running || !redisconn_ctx(f->cmd))
        return;
    f->want_snapshot = false;
    f->snapshot_running = true;
    feed_snapshot_scan(f, "0");
}

/* ---- subscription ---- */

static void feed_on_message(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisfeed *f = privdata;
    redisReply *reply = r;
    const redisReply *kind;
    (void)ac;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    kind = reply->element[0];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind->str, "subscribe") == 0) {
        /* cp:invalidate; confirmed before the load pattern (sent first). */
        if (f->hooks.on_resubscribed)
            f->hooks.on_resubscribed(f->hooks.arg);
    } else if (strcmp(kind->str, "psubscribe") == 0) {
        f->subscribed = true;
        f->subscribed_mono_ms = util_mono_ms();
        f->want_snapshot = true;
        log_info("event=subscribed pattern=%s", REDISFEED_CHANNEL_PATTERN);
        feed_maybe_snapshot(f);
    } else if (strcmp(kind->str, "pmessage") == 0 && reply->elements == 4 &&
               reply->element[2]->type == REDIS_REPLY_STRING && reply->element[3]->type == REDIS_REPLY_STRING &&
               reply->element[2]->len > sizeof REDISFEED_CHANNEL_PREFIX - 1 &&
               memcmp(reply->element[2]->str, REDISFEED_CHANNEL_PREFIX, sizeof REDISFEED_CHANNEL_PREFIX - 1) == 0) {
        const redisReply *chan = reply->element[2];
        json_t *report = json_loadb(reply->element[3]->str, reply->element[3]->len, 0, NULL);
        feed_apply(f, report, "publish", LOAD_LIVE, chan->str + sizeof REDISFEED_CHANNEL_PREFIX - 1,
                   chan->len - (sizeof REDISFEED_CHANNEL_PREFIX - 1));
        json_decref(report);
    } else if (strcmp(kind->str, "message") == 0 && reply->element[1]->type == REDIS_REPLY_STRING &&
               strcmp(reply->element[1]->str, REDISFEED_INVALIDATE_CHANNEL) == 0 &&
               reply->element[2]->type == REDIS_REPLY_STRING) {
        const char *payload = reply->element[2]->str, *hash = strrchr(payload, '#');
        if (f->hooks.on_invalidate)
            f->hooks.on_invalidate(payload, f->hooks.arg);
        if (hash) {
            struct feed_wait *w;
            LIST_FOREACH(w, &f->waits, link)
                if (!w->delivered && strcmp(w->nonce, hash + 1) == 0) {
                    w->delivered = true;
                    event_active(w->ev, EV_TIMEOUT, 1);
                    break;
                }
        }
    }
}

static void feed_sub_up(struct redisconn *rc, void *arg)
{
    struct redisfeed *f = arg;
    redisAsyncContext *ac = redisconn_ctx(rc);
    if (redisAsyncCommand(ac, feed_on_message, f, "SUBSCRIBE %s", REDISFEED_INVALIDATE_CHANNEL) != REDIS_OK ||
        redisAsyncCommand(ac, feed_on_message, f, "PSUBSCRIBE %s", REDISFEED_CHANNEL_PATTERN) != REDIS_OK)
        log_warn("event=subscribe_failed");
}

static void feed_sub_down(struct redisconn *rc, void *arg)
{
    struct redisfeed *f = arg;
    (void)rc;
    f->subscribed = false;
}

static void feed_cmd_up(struct redisconn *rc, void *arg)
{
    (void)rc;
    feed_maybe_snapshot(arg);
}

static void feed_cmd_down(struct redisconn *rc, void *arg)
{
    struct redisfeed *f = arg;
    (void)rc;
    if (f->snapshot_running) {
        f->snapshot_running = false;
        f->want_snapshot = true;
    }
    /* The subscriber can't ping; if the server stopped answering the command
     * connection, the subscription is no better off. */
    redisconn_drop(f->sub);
}

struct redisfeed *redisfeed_new(struct event_base *base, const char *host, int port, const struct redis_auth *auth,
                                struct loadtable *lt, const struct redisfeed_hooks *hooks)
{
    struct redisfeed *f = xcalloc(1, sizeof *f);
    struct redisconn_opts sub = {
        .name = "sub", .host = host, .port = port, .connect_timeout_ms = 2000, .auth = auth,
        .on_up = feed_sub_up, .on_down = feed_sub_down, .arg = f,
    };
    struct redisconn_opts cmd = {
        .name = "cmd", .host = host, .port = port, .connect_timeout_ms = 2000, .auth = auth,
        .ping_interval_ms = 1000, .ping_timeout_ms = 3000,
        .on_up = feed_cmd_up, .on_down = feed_cmd_down, .arg = f,
    };
    f->base = base;
    f->lt = lt;
    LIST_INIT(&f->waits);
    if (hooks)
        f->hooks = *hooks;
    f->sub = redisconn_new(base, &sub);
    f->cmd = redisconn_new(base, &cmd);
    return f;
}

void redisfeed_free(struct redisfeed *f)
{
    if (!f) return;
    while (!LIST_EMPTY(&f->waits)) {
        struct feed_wait *w = LIST_FIRST(&f->waits);
        LIST_REMOVE(w, link);
        event_free(w->ev);
        free(w);
    }
    redisconn_free(f->sub);
    redisconn_free(f->cmd);
    free(f);
}

bool redisfeed_is_ready(const struct redisfeed *f)
{
    return f->subscribed && redisconn_is_up(f->sub) && redisconn_is_up(f->cmd);
}

struct redisAsyncContext *redisfeed_cmd(struct redisfeed *f)
{
    return redisconn_is_up(f->cmd) ? redisconn_ctx(f->cmd) : NULL;
}

static void feed_on_wait(evutil_socket_t fd, short what, void *arg)
{
    struct feed_wait *w = arg;
    (void)fd; (void)what;
    LIST_REMOVE(w, link);
    if (!w->delivered)
        log_warn("event=invalidation_not_confirmed waited_ms=%d", REDISFEED_WAIT_MS);
    w->done(w->delivered, w->arg);
    event_free(w->ev);
    free(w);
}

void redisfeed_invalidate_wait(struct redisfeed *f, const char *payload, redisfeed_done_cb done, void *arg)
{
    struct feed_wait *w = xcalloc(1, sizeof *w);
    struct timeval tv = {REDISFEED_WAIT_MS / 1000, (REDISFEED_WAIT_MS % 1000) * 1000};
    redisAsyncContext *ac = redisconn_ctx(f->cmd);
    char *message;
    w->f = f;
    w->done = done;
    w->arg = arg;
    util_random_hex(w->nonce, 8);
    w->ev = event_new(f->base, -1, 0, feed_on_wait, w);
    if (!w->ev) {
        log_error("event=event_new_failed");
        abort();
    }
    LIST_INSERT_HEAD(&f->waits, w, link);
    /* One argument: hiredis splits its format string on spaces, not %s values. */
    message = xasprintf("%s #%s", payload, w->nonce);
    if (!ac || !f->subscribed ||
        redisAsyncCommand(ac, NULL, NULL, "PUBLISH %s %s", REDISFEED_INVALIDATE_CHANNEL, message) != REDIS_OK) {
        free(message);
        event_active(w->ev, EV_TIMEOUT, 1);
        return;
    }
    free(message);
    event_add(w->ev, &tv);
}

void redisfeed_drain(struct redisfeed *f)
{
    redisAsyncContext *ac = redisconn_ctx(f->sub);
    /* A read with nothing pending returns EAGAIN, which hiredis ignores. */
    if (ac && f->subscribed)
        redisAsyncHandleRead(ac);
}
