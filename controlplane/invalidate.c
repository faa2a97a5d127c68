/*
 * invalidate.c - the invalidation channel between control planes: message
 * format, publish and wait, parse and apply (invalidate.h).
 */
#include "invalidate.h"

#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "cp.h"
#include "log.h"
#include "redisbus.h"
#include "util.h"

#define INVALIDATE_WAIT_MS 1000

struct inval_wait {
    LIST_ENTRY(inval_wait) link;
    char nonce[17];
    bool delivered;
    struct event *ev;            /* deadline, or activated to report */
    invalidate_done_cb done;
    void *arg;
};

struct invalidate {
    struct cp *cp;
    struct redisbus *bus;
    bool subscribed;
    LIST_HEAD(, inval_wait) waits;   /* messages waiting to come back */
};

/* ---- applying ---- */

static void inval_device(struct cp *cp, const char *tenant, const char *who, const char *key_id)
{
    static int64_t mismatches;
    char q[40];
    if (!pseudonym_valid(who)) {
        assign_cache_forget(cp->cache, tenant, who);   /* an older sender: the registration id */
        return;
    }
    if (strcmp(key_id, pseudonym_key_id(&cp->pseudo)) == 0) {
        assign_cache_forget_pseudo(cp->cache, tenant, who);
        return;
    }
    /* Another pseudonym key: we can't tell which device it is, so nothing
     * cached may be trusted (pseudonymKey must match). */
    assign_cache_clear(cp->cache);
    if (mismatches++ % 1000 == 0)
        log_warn("event=pseudonym_key_mismatch theirs=%s ours=%s count=%lld action=cache_cleared "
                 "note=\"give every control plane the same pseudonymKey\"",
                 log_quote(key_id[0] == '#' ? "" : key_id, q, sizeof q), pseudonym_key_id(&cp->pseudo),
                 (long long)mismatches);
}

void invalidate_apply(struct cp *cp, const char *payload)
{
    char kind[16], a[64], b[132], k[16] = "";
    if (sscanf(payload, "%15s %63s %131s %15s", kind, a, b, k) >= 3 && strcmp(kind, "device") == 0)
        inval_device(cp, a, b, k);
    else if (sscanf(payload, "%15s %63s", kind, a) == 2 && strcmp(kind, "tenant") == 0)
        tenants_forget(cp->tenants, a);
    else if (sscanf(payload, "%15s %63s", kind, a) == 2 && strcmp(kind, "apikey") == 0)
        apikeys_forget(cp->keys, a);
}

/* ---- the subscription ---- */

static void inval_on_message(const char *chan, size_t chan_len, const char *msg, size_t len, void *arg)
{
    struct invalidate *inv = arg;
    char *payload = xstrndup(msg, len);   /* NUL-terminated for parsing */
    const char *hash = strrchr(payload, '#');
    struct inval_wait *w;
    (void)chan; (void)chan_len;
    invalidate_apply(inv->cp, payload);
    if (hash) {
        LIST_FOREACH(w, &inv->waits, link)
            if (!w->delivered && strcmp(w->nonce, hash + 1) == 0) {
                w->delivered = true;
                event_active(w->ev, EV_TIMEOUT, 1);
                break;
            }
    }
    free(payload);
}

/* The subscription is back: invalidations may have been missed meanwhile. */
static void inval_on_subscribed(void *arg)
{
    struct invalidate *inv = arg;
    inv->subscribed = true;
    assign_cache_clear(inv->cp->cache);
    tenants_forget_all(inv->cp->tenants);
}

static void inval_on_unsubscribed(void *arg)
{
    struct invalidate *inv = arg;
    inv->subscribed = false;
}

struct invalidate *invalidate_new(struct cp *cp, struct redisbus *bus)
{
    struct invalidate *inv = xcalloc(1, sizeof *inv);
    struct redisbus_sub sub = {.pattern = false, .channel = INVALIDATE_CHANNEL,
                               .on_subscribed = inval_on_subscribed, .on_unsubscribed = inval_on_unsubscribed,
                               .on_message = inval_on_message, .arg = inv};
    inv->cp = cp;
    inv->bus = bus;
    LIST_INIT(&inv->waits);
    redisbus_subscribe(bus, &sub);
    return inv;
}

void invalidate_free(struct invalidate *inv)
{
    if (!inv)
        return;
    while (!LIST_EMPTY(&inv->waits)) {
        struct inval_wait *w = LIST_FIRST(&inv->waits);
        LIST_REMOVE(w, link);
        event_free(w->ev);
        free(w);
    }
    free(inv);
}

bool invalidate_can_announce(const struct invalidate *inv)
{
    return inv->subscribed && redisbus_cmd(inv->bus) != NULL;
}

void invalidate_drain(struct invalidate *inv)
{
    if (inv->subscribed)
        redisbus_drain(inv->bus);
}

/* ---- publishing ---- */

static void inval_on_wait(evutil_socket_t fd, short what, void *arg)
{
    struct inval_wait *w = arg;
    (void)fd; (void)what;
    LIST_REMOVE(w, link);
    if (!w->delivered)
        log_warn("event=invalidation_not_confirmed waited_ms=%d", INVALIDATE_WAIT_MS);
    w->done(w->delivered, w->arg);
    event_free(w->ev);
    free(w);
}

static void inval_publish(struct invalidate *inv, const char *payload, invalidate_done_cb done, void *arg)
{
    struct inval_wait *w = xcalloc(1, sizeof *w);
    struct timeval tv = {INVALIDATE_WAIT_MS / 1000, (INVALIDATE_WAIT_MS % 1000) * 1000};
    redisAsyncContext *ac = redisbus_cmd(inv->bus);
    char *message;
    w->done = done;
    w->arg = arg;
    util_random_hex(w->nonce, 8);
    w->ev = event_new(inv->cp->base, -1, 0, inval_on_wait, w);
    if (!w->ev) {
        log_error("event=event_new_failed");
        abort();
    }
    LIST_INSERT_HEAD(&inv->waits, w, link);
    /* One argument: hiredis splits its format string on spaces, not %s values. */
    message = xasprintf("%s #%s", payload, w->nonce);
    if (!ac || !inv->subscribed ||
        redisAsyncCommand(ac, NULL, NULL, "PUBLISH %s %s", INVALIDATE_CHANNEL, message) != REDIS_OK) {
        free(message);
        event_active(w->ev, EV_TIMEOUT, 1);
        return;
    }
    free(message);
    event_add(w->ev, &tv);
}

void invalidate_device(struct invalidate *inv, const char *tenant, const char *regid, invalidate_done_cb done,
                       void *arg)
{
    char ps[PSEUDONYM_LEN];
    /* Redis carries the device's pseudonym, never its registration id. */
    char *payload = xasprintf("device %s %s %s", tenant, pseudonym_device(&inv->cp->pseudo, tenant, regid, ps),
                              pseudonym_key_id(&inv->cp->pseudo));
    assign_cache_forget(inv->cp->cache, tenant, regid);
    inval_publish(inv, payload, done, arg);
    free(payload);
}

void invalidate_tenant(struct invalidate *inv, const char *tenant, invalidate_done_cb done, void *arg)
{
    char payload[80];
    snprintf(payload, sizeof payload, "tenant %s", tenant);
    tenants_forget(inv->cp->tenants, tenant);
    inval_publish(inv, payload, done, arg);
}

void invalidate_apikey(struct invalidate *inv, const char *key_id, invalidate_done_cb done, void *arg)
{
    char payload[64];
    snprintf(payload, sizeof payload, "apikey %s", key_id);
    apikeys_forget(inv->cp->keys, key_id);
    inval_publish(inv, payload, done, arg);
}
