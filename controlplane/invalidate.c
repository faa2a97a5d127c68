/*
 * invalidate.c - the invalidation channel between control planes: message
 * format, publish and wait, parse and apply (invalidate.h).
 */
#include "invalidate.h"

#include <hiredis/async.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "cp.h"
#include "log.h"
#include "redisbus.h"
#include "util.h"

#define INVALIDATE_WAIT_MS 1000
#define RELAY_PERIOD_MS 1000    /* how often each outbox is read: the bound on a lost publish */
#define RELAY_BATCH "200"       /* rows claimed per outbox per round */
#define RELAY_LEASE "10 seconds"  /* a claim another relay may take over after (its holder died) */
#define RELAY_MAX_POOLS (CP_MAX_GEOGRAPHIES + 1)

/* One outbox (the global database's or a geography's) and its round in flight. */
struct inval_relay {
    struct invalidate *inv;
    struct pgpool *pool;
    bool busy;                   /* a round (claim, publish, delete) is in flight */
    int pending;                 /* PUBLISH replies still awaited */
    bool failed;                 /* a PUBLISH failed: leave the rows to the lease */
    char *ids;                   /* the claimed ids, "{1,2,3}" */
};

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
    int64_t trust_ms;                /* cacheTrustMs */
    bool lapsed;                     /* subscribed, but not proven within trust_ms (logged once) */
    int64_t lapsed_at_ms;
    LIST_HEAD(, inval_wait) waits;   /* messages waiting to come back */
    struct inval_relay relay[RELAY_MAX_POOLS];
    int nrelay;
    struct event *relay_timer;
    const char *fault;               /* STAMPCP_FAULT (test-only), or NULL */
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

/* ---- the outbox relay ----
 *
 * Every change also wrote an outbox row in its own transaction (schema/geo/008,
 * schema/global/013). Each round claims a batch with a lease (SKIP LOCKED:
 * every control plane runs a relay), publishes each row, and deletes the
 * rows once Redis took every PUBLISH. A row whose request already published
 * is published again: a repeated invalidation only costs a cache miss. A
 * relay that dies mid-round leaves its rows to the next after the lease. */

static const char relay_claim_sql[] =
    "UPDATE invalidation_outbox o SET claimed_until = now() + interval '" RELAY_LEASE "'"
    " FROM (SELECT id FROM invalidation_outbox WHERE claimed_until < now() ORDER BY id"
    "       LIMIT " RELAY_BATCH " FOR UPDATE SKIP LOCKED) c"
    " WHERE o.id = c.id RETURNING o.id, o.kind, coalesce(o.tenant_id, ''), o.subject";
static const char relay_delete_sql[] = "DELETE FROM invalidation_outbox WHERE id = ANY($1::bigint[])";

static void relay_end(struct inval_relay *rl)
{
    free(rl->ids);
    rl->ids = NULL;
    rl->busy = false;
}

static void relay_on_deleted(const struct pgq_result *q, void *arg)
{
    struct inval_relay *rl = arg;
    if (q->status != PGQ_OK)   /* published anyway; the rows go out again after the lease */
        log_warn("event=invalidation_outbox_delete_failed");
    relay_end(rl);
}

static void relay_on_published(redisAsyncContext *ac, void *r, void *arg)
{
    struct inval_relay *rl = arg;
    redisReply *reply = r;
    const char *values[1];
    (void)ac;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        rl->failed = true;
    if (--rl->pending > 0)
        return;
    if (rl->failed) {   /* not all taken (or shutting down): the lease brings them back */
        relay_end(rl);
        return;
    }
    values[0] = rl->ids;
    pgpool_query(rl->pool, relay_delete_sql, 1, values, relay_on_deleted, rl);
}

/* The message for an outbox row, or NULL for a kind we don't know. */
static char *relay_payload(struct invalidate *inv, const char *kind, const char *tenant, const char *subject)
{
    char ps[PSEUDONYM_LEN], nonce[17];
    util_random_hex(nonce, 8);
    if (strcmp(kind, "device") == 0)
        return xasprintf("device %s %s %s #%s", tenant, pseudonym_device(&inv->cp->pseudo, tenant, subject, ps),
                         pseudonym_key_id(&inv->cp->pseudo), nonce);
    if (strcmp(kind, "tenant") == 0 || strcmp(kind, "apikey") == 0)
        return xasprintf("%s %s #%s", kind, subject, nonce);
    return NULL;
}

static void relay_on_claimed(const struct pgq_result *q, void *arg)
{
    struct inval_relay *rl = arg;
    redisAsyncContext *ac = redisbus_cmd(rl->inv->bus);
    size_t len = 0, cap;
    int n = q->status == PGQ_OK ? PQntuples(q->res) : 0;
    if (n == 0 || !ac) {   /* nothing to do, or Redis went away: the lease brings them back */
        relay_end(rl);
        return;
    }
    cap = (size_t)n * 21 + 3;   /* a bigint is at most 20 digits, plus a separator */
    rl->ids = xcalloc(1, cap);
    rl->failed = false;
    rl->pending = 1;   /* held until every PUBLISH is queued */
    for (int i = 0; i < n; i++) {
        char *msg = relay_payload(rl->inv, PQgetvalue(q->res, i, 1), PQgetvalue(q->res, i, 2),
                                  PQgetvalue(q->res, i, 3));
        len += (size_t)snprintf(rl->ids + len, cap - len, "%s%s", i ? "," : "{", PQgetvalue(q->res, i, 0));
        if (!msg)
            continue;   /* an unknown kind (a newer writer): delete it, nobody here can apply it */
        if (redisAsyncCommand(ac, relay_on_published, rl, "PUBLISH %s %s", INVALIDATE_CHANNEL, msg) == REDIS_OK)
            rl->pending++;
        else
            rl->failed = true;
        free(msg);
    }
    snprintf(rl->ids + len, cap - len, "}");
    log_debug("event=invalidation_outbox_relayed rows=%d", n);
    relay_on_published(NULL, &(redisReply){.type = REDIS_REPLY_STATUS}, rl);   /* release the hold */
}

static void relay_tick(evutil_socket_t fd, short what, void *arg)
{
    struct invalidate *inv = arg;
    struct timeval tv = {RELAY_PERIOD_MS / 1000, (RELAY_PERIOD_MS % 1000) * 1000};
    (void)fd; (void)what;
    for (int i = 0; i < inv->nrelay; i++) {
        struct inval_relay *rl = &inv->relay[i];
        if (rl->busy || !pgpool_is_ready(rl->pool) || !redisbus_cmd(inv->bus))
            continue;
        rl->busy = true;
        pgpool_query(rl->pool, relay_claim_sql, 0, NULL, relay_on_claimed, rl);
    }
    event_add(inv->relay_timer, &tv);
}

static void relay_start(struct invalidate *inv)
{
    struct timeval now = {0, 0};   /* the first round at start-up: what a crash left behind */
    inv->relay[inv->nrelay++] = (struct inval_relay){.inv = inv, .pool = inv->cp->global};
    for (int i = 0; i < inv->cp->cfg.n_geos && inv->nrelay < RELAY_MAX_POOLS; i++)
        inv->relay[inv->nrelay++] = (struct inval_relay){.inv = inv, .pool = inv->cp->geo[i]};
    inv->relay_timer = evtimer_new(inv->cp->base, relay_tick, inv);
    if (!inv->relay_timer) {
        log_error("event=event_new_failed");
        abort();
    }
    event_add(inv->relay_timer, &now);
}

/* ---- test-only fault injection ---- */

void invalidate_fault(const struct invalidate *inv, const char *point)
{
    /* STAMPCP_FAULT=exit_after_commit:<point>: die like kill -9 between a
     * committed change and its publish (tests only; see docs/architecture.md). */
    if (inv->fault && strncmp(inv->fault, "exit_after_commit:", 18) == 0 && strcmp(inv->fault + 18, point) == 0) {
        log_warn("event=fault_injected fault=%s", inv->fault);
        raise(SIGKILL);
    }
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

/* Drop every cached answer: invalidations may have been (or be being) missed. */
static void inval_forget_all(struct invalidate *inv)
{
    assign_cache_clear(inv->cp->cache);   /* also refuses puts of lookups begun before */
    tenants_forget_all(inv->cp->tenants);
    apikeys_forget_all(inv->cp->keys);   /* then fresh for APIKEYS_FRESH_MS at most, subscribed or not */
}

/* The subscription is back: invalidations may have been missed meanwhile, so
 * drop everything, and only then trust the caches again: from here on every
 * message is heard. An entry is thus only ever trusted while the
 * subscription has been up continuously since it was stored. */
static void inval_on_subscribed(void *arg)
{
    struct invalidate *inv = arg;
    inv->subscribed = true;
    inval_forget_all(inv);
}

/* Lost: a change made now would go unheard, so answer nothing from the caches
 * (they are emptied and bypassed) until on_subscribed. */
static void inval_on_unsubscribed(void *arg)
{
    struct invalidate *inv = arg;
    inv->subscribed = false;
    inval_forget_all(inv);
    log_warn("event=invalidations_unsubscribed action=caches_bypassed");
}

/*
 * Subscribed is not enough: a connection that silently stopped delivering
 * (no FIN, no RST: a partition, a stalled proxy) still looks up until a
 * heartbeat times out. So the caches are trusted only while the bus has
 * proven, within cacheTrustMs, that every message published until then
 * has reached us. A lapse loses nothing (it is the same connection, so what
 * was delayed arrives before the next proof): the entries stay, unused.
 */
bool invalidate_cache_trusted(struct invalidate *inv)
{
    int64_t proven = inv->subscribed ? redisbus_sub_proven_ms(inv->bus) : 0;
    int64_t now = util_mono_ms();
    bool fresh = proven > 0 && now - proven <= inv->trust_ms;
    if (inv->subscribed && !fresh && !inv->lapsed) {
        inv->lapsed = true;
        inv->lapsed_at_ms = now;
        log_warn("event=invalidations_unproven proven_ms_ago=%lld bound_ms=%lld action=caches_bypassed",
                 proven > 0 ? (long long)(now - proven) : -1LL, (long long)inv->trust_ms);
    } else if (fresh && inv->lapsed) {
        inv->lapsed = false;
        log_info("event=invalidations_proven lapse_ms=%lld", (long long)(now - inv->lapsed_at_ms));
    }
    return fresh;
}

static bool inval_trusted_hook(void *arg)
{
    return invalidate_cache_trusted(arg);
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
    inv->fault = getenv("STAMPCP_FAULT");
    inv->trust_ms = cp->cfg.cache_trust_ms;
    tenants_set_trust(cp->tenants, inval_trusted_hook, inv);   /* distrusted until the first subscription */
    redisbus_subscribe(bus, &sub);
    relay_start(inv);
    return inv;
}

void invalidate_free(struct invalidate *inv)
{
    if (!inv)
        return;
    tenants_set_trust(inv->cp->tenants, NULL, NULL);
    while (!LIST_EMPTY(&inv->waits)) {
        struct inval_wait *w = LIST_FIRST(&inv->waits);
        LIST_REMOVE(w, link);
        event_free(w->ev);
        free(w);
    }
    if (inv->relay_timer)
        event_free(inv->relay_timer);
    for (int i = 0; i < inv->nrelay; i++)
        free(inv->relay[i].ids);   /* the pools drop their queries, with no callback */
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
