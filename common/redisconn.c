/*
 * redisconn.c - owns a reconnecting hiredis async connection: where it goes
 * (a server, or the master the Sentinels name), the hiredis context's
 * lifetime, the connect deadline, AUTH, the handshake, the heartbeat and
 * the backoff (redisconn.h).
 *
 * States (rc_set_state() logs every transition at debug):
 *   WAITING --timer--> [SENTINEL --finder names the master-->] RESOLVING --dns-->
 *   CONNECTING --TCP--> HANDSHAKE --[AUTH ok,] PING/ROLE ok--> UP
 *   any of SENTINEL..HANDSHAKE --error / deadline--> WAITING (backoff doubles)
 *   UP --disconnect / drop / heartbeat / replica--> WAITING
 *   UP --redisconn_disconnect()--> CLOSING --disconnect cb--> CLOSED
 *   any --redisconn_close()--> CLOSED
 *
 * hiredis frees its context itself after a failed connect and after the
 * disconnect callback; we free it only from our own timer/event callbacks,
 * after forgetting the pointer, so callbacks of a context we gave up see a
 * stranger (rc->ac != ac) and return. hiredis 0.14 keeps using the context
 * after the connect callback, so nothing there frees or disconnects it.
 *
 * Sentinel mode: the finder is a redisconn of its own (is_finder) whose
 * addresses are the Sentinels, tried in turn (each failure moves to the
 * next). Every time it comes up it asks for the master's address and then
 * subscribes to +switch-master; a subscribed connection can't ask again, so
 * the owner that needs a fresh answer drops the finder.
 */
#include "redisconn.h"

#include <hiredis/adapters/libevent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

enum rc_state {
    RC_WAITING, RC_SENTINEL, RC_RESOLVING, RC_CONNECTING, RC_HANDSHAKE, RC_UP, RC_CLOSING, RC_CLOSED
};

static const char *const rc_state_names[] = {
    "waiting", "sentinel", "resolving", "connecting", "handshake", "up", "closing", "closed"
};

struct redisconn {
    struct event_base *base;
    struct dns *dns;
    char *name;
    struct redis_target target;       /* owned copy */
    struct redis_auth auth;           /* owned copy; the password is never logged */
    int connect_timeout_ms, ping_interval_ms, ping_timeout_ms;
    void (*on_up)(struct redisconn *rc, void *arg);
    void (*on_down)(struct redisconn *rc, void *arg);
    void *arg;

    bool is_finder;                   /* a connection to the Sentinels (target.sentinels[cur]) */
    int cur;                          /* the finder's current Sentinel */
    struct redisconn *finder;         /* Sentinel mode: the connection to a Sentinel */
    char *master_host;                /* Sentinel mode: the master named last; NULL: ask */
    int master_port;
    bool keep_master;                 /* the next loss keeps master_host (it came from +switch-master) */

    enum rc_state state;
    redisAsyncContext *ac;            /* CONNECTING, HANDSHAKE, UP, CLOSING */
    struct dns_req *dreq;             /* RESOLVING */
    char peer[REDIS_TARGET_HOST_MAX + DNS_ADDR_MAX + 16];   /* "host:port (addr)" for logs */
    int peer_port;
    struct event *timer;              /* backoff while WAITING, deadline while CONNECTING/HANDSHAKE */
    struct event *ping_timer;         /* heartbeat while UP */
    struct event *drop_ev;            /* redisconn_drop()'s work, from the loop */
    bool drop_pending;
    bool drop_quiet;                  /* a deliberate drop (the finder asked again): no outage */
    char drop_reason[64];
    int backoff_ms;
    bool ping_outstanding;
    int64_t ping_sent_ms;
    bool outage_logged;               /* one warning per outage, not one per attempt */
    int64_t down_since_ms;
    unsigned attempts, auth_failures;
    bool logged_ping_error, logged_role_unchecked;
    bool failure_noted;               /* this attempt's failure is logged already (rc_fail_in_reply) */
};

static void rc_start(struct redisconn *rc);
static struct redisconn *rc_new(struct event_base *base, const struct redisconn_opts *o, bool finder);

static void rc_set_state(struct redisconn *rc, enum rc_state s)
{
    if (rc->state == s)
        return;
    log_debug("event=redis_state conn=%s from=%s to=%s", rc->name, rc_state_names[rc->state], rc_state_names[s]);
    rc->state = s;
}

static void rc_arm(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (event_add(ev, &tv) != 0)
        log_error("event=timer_failed timer=redis");
}

static bool rc_sentinel_mode(const struct redisconn *rc)
{
    return !rc->is_finder && redis_target_sentinel(&rc->target);
}

/* A failed attempt or a lost connection: the first of an outage is a warning, the rest debug. */
static void rc_note_failure(struct redisconn *rc, const char *what, const char *detail)
{
    char q[200];
    rc->attempts++;
    log_quote(detail ? detail : "", q, sizeof q);
    if (!rc->outage_logged) {
        rc->outage_logged = true;
        rc->down_since_ms = util_mono_ms();
        log_warn("event=redis_down conn=%s target=%s addr=%s reason=%s error=%s retry_ms=%d", rc->name,
                 rc->target.text, rc->peer[0] ? rc->peer : "-", what, q, rc->backoff_ms);
    } else {
        log_debug("event=redis_retry_failed conn=%s addr=%s reason=%s error=%s attempt=%u", rc->name,
                  rc->peer[0] ? rc->peer : "-", what, q, rc->attempts);
    }
}

static void rc_forget_master(struct redisconn *rc)
{
    free(rc->master_host);
    rc->master_host = NULL;
}

/*
 * The attempt failed or the connection is gone; hiredis has freed (or is
 * freeing) the context. what NULL: already noted. Schedules the retry and
 * tells the owner if it was up.
 */
static void rc_lost(struct redisconn *rc, const char *what, const char *detail)
{
    bool was_up = rc->state == RC_UP || rc->state == RC_CLOSING;
    int delay;
    rc->ac = NULL;
    rc->ping_outstanding = false;
    event_del(rc->ping_timer);
    event_del(rc->timer);
    if (rc->state == RC_CLOSING) {
        rc->failure_noted = false;
        log_info("event=redis_disconnected conn=%s addr=%s", rc->name, rc->peer);
        rc_set_state(rc, RC_CLOSED);
        if (rc->on_down)
            rc->on_down(rc, rc->arg);
        return;
    }
    if (what && !rc->failure_noted)
        rc_note_failure(rc, what, detail);
    rc->failure_noted = false;
    if (rc->is_finder && rc->target.n_sentinels > 0)
        rc->cur = (rc->cur + 1) % rc->target.n_sentinels;   /* the next Sentinel */
    if (rc_sentinel_mode(rc) && !rc->keep_master)
        rc_forget_master(rc);                              /* ask the Sentinels again */
    /* A master named by +switch-master is tried at once. */
    delay = rc->keep_master ? 0 : rc->backoff_ms;
    if (!rc->keep_master)
        rc->backoff_ms = rc->backoff_ms * 2 > REDISCONN_BACKOFF_MAX_MS ? REDISCONN_BACKOFF_MAX_MS : rc->backoff_ms * 2;
    rc->keep_master = false;
    rc_set_state(rc, RC_WAITING);
    rc_arm(rc->timer, delay);
    if (was_up && rc->on_down)
        rc->on_down(rc, rc->arg);
}

static void rc_go_up(struct redisconn *rc)
{
    event_del(rc->timer);
    rc_set_state(rc, RC_UP);
    if (rc->auth_failures)
        log_info("event=redis_connected conn=%s target=%s addr=%s user=%s outage_ms=%lld attempts=%u "
                 "auth_failures=%u", rc->name, rc->target.text, rc->peer, redis_auth_user(&rc->auth),
                 (long long)(util_mono_ms() - rc->down_since_ms), rc->attempts, rc->auth_failures);
    else if (rc->outage_logged)
        log_info("event=redis_connected conn=%s target=%s addr=%s outage_ms=%lld attempts=%u", rc->name,
                 rc->target.text, rc->peer, (long long)(util_mono_ms() - rc->down_since_ms), rc->attempts);
    else if (rc->is_finder)   /* it reconnects each time its owner asks again: not news */
        log_debug("event=redis_connected conn=%s target=%s addr=%s", rc->name, rc->target.text, rc->peer);
    else
        log_info("event=redis_connected conn=%s target=%s addr=%s", rc->name, rc->target.text, rc->peer);
    rc->backoff_ms = REDISCONN_BACKOFF_MIN_MS;
    rc->outage_logged = false;
    rc->logged_ping_error = false;
    rc->attempts = 0;
    rc->auth_failures = 0;
    if (rc->ping_interval_ms > 0)
        rc_arm(rc->ping_timer, rc->ping_interval_ms);
    if (rc->on_up)
        rc->on_up(rc, rc->arg);
}

/* Hang up on a context in a reply callback: hiredis disconnects once the
 * callback returns, and rc_on_disconnect schedules the retry. */
static void rc_fail_in_reply(struct redisconn *rc, redisAsyncContext *ac, const char *what, const char *detail)
{
    rc_note_failure(rc, what, detail);
    rc->failure_noted = true;
    redisAsyncDisconnect(ac);
}

/* ROLE's answer: whether it names a master. NOPERM (an ACL without +role) can't tell: trusted. */
static bool rc_role_is_master(struct redisconn *rc, const redisReply *reply, const char **role)
{
    *role = "?";
    if (reply->type == REDIS_REPLY_ERROR) {
        if (reply->str && strncmp(reply->str, "NOPERM", 6) == 0) {
            if (!rc->logged_role_unchecked)
                log_warn("event=redis_role_unchecked conn=%s user=%s note=\"grant +role to check that the "
                         "server is the master\"", rc->name, redis_auth_user(&rc->auth));
            rc->logged_role_unchecked = true;
            return true;
        }
        *role = "error";
        return false;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 || reply->element[0]->type != REDIS_REPLY_STRING)
        return false;
    *role = reply->element[0]->str;
    return strcmp(*role, "master") == 0;
}

/* The handshake's answer (PING, or ROLE in Sentinel mode): the connection counts from here. */
static void rc_on_hello(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisconn *rc = privdata;
    redisReply *reply = r;
    const char *role;
    if (!reply || rc->ac != ac || rc->state != RC_HANDSHAKE)
        return;
    if (rc_sentinel_mode(rc)) {
        if (!rc_role_is_master(rc, reply, &role)) {
            log_warn("event=redis_not_master conn=%s addr=%s role=%s", rc->name, rc->peer, role);
            rc_fail_in_reply(rc, ac, "not_master", role);
            return;
        }
    } else if (reply->type == REDIS_REPLY_ERROR) {
        rc_fail_in_reply(rc, ac, "handshake_failed", reply->str);   /* e.g. LOADING */
        return;
    }
    rc_go_up(rc);
}

static void rc_send_hello(struct redisconn *rc)
{
    /* On failure the deadline drops the connection. */
    if (redisAsyncCommand(rc->ac, rc_on_hello, rc, rc_sentinel_mode(rc) ? "ROLE" : "PING") != REDIS_OK)
        log_warn("event=redis_handshake_send_failed conn=%s", rc->name);
}

/* The answer to AUTH. Redis's error text (WRONGPASS ...) never contains the password. */
static void rc_on_auth(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisconn *rc = privdata;
    redisReply *reply = r;
    char q[200];
    if (!reply || rc->ac != ac || rc->state != RC_HANDSHAKE)
        return;
    if (reply->type != REDIS_REPLY_ERROR) {
        rc_send_hello(rc);
        return;
    }
    rc->auth_failures++;
    if (rc->auth_failures == 1 || rc->auth_failures % 100 == 0)
        log_error("event=redis_auth_failed conn=%s addr=%s user=%s error=%s attempts=%u retry_ms=%d", rc->name,
                  rc->peer, redis_auth_user(&rc->auth), log_quote(reply->str, q, sizeof q), rc->auth_failures,
                  rc->backoff_ms);
    rc_fail_in_reply(rc, ac, "auth_failed", reply->str);
}

static void rc_on_connect(const redisAsyncContext *cac, int status)
{
    struct redisconn *rc = cac->data;
    if (rc->ac != cac)
        return;
    if (status != REDIS_OK) {
        rc_lost(rc, "connect_failed", cac->errstr);   /* hiredis frees it when we return */
        return;
    }
    rc_set_state(rc, RC_HANDSHAKE);   /* the connect deadline stays armed */
    if (!redis_auth_enabled(&rc->auth))
        rc_send_hello(rc);
    else if (redis_auth_send(rc->ac, &rc->auth, rc_on_auth, rc) != REDIS_OK)
        log_warn("event=redis_auth_send_failed conn=%s", rc->name);
}

static void rc_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redisconn *rc = ac->data;
    if (rc->ac != ac)
        return;   /* a context we already gave up (deadline, drop, close) */
    rc_lost(rc, "connection_lost", status == REDIS_OK ? "closed" : ac->errstr);
}

/* The address is known: connect to it (numeric, so hiredis resolves nothing). */
static void rc_on_resolved(int err, const char *addr, void *arg)
{
    struct redisconn *rc = arg;
    redisAsyncContext *ac;
    size_t n;
    rc->dreq = NULL;
    if (err) {
        rc_lost(rc, "resolve_failed", dns_strerror(err));
        return;
    }
    n = strlen(rc->peer);
    snprintf(rc->peer + n, sizeof rc->peer - n, " (%s)", addr);
    ac = redisAsyncConnect(addr, rc->peer_port);
    if (!ac || ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);   /* never attached: ours to free */
        rc_lost(rc, "connect_failed", why);
        return;
    }
    ac->data = rc;
    if (redisLibeventAttach(ac, rc->base) != REDIS_OK || redisAsyncSetConnectCallback(ac, rc_on_connect) != REDIS_OK ||
        redisAsyncSetDisconnectCallback(ac, rc_on_disconnect) != REDIS_OK) {
        redisAsyncFree(ac);
        rc_lost(rc, "connect_failed", "cannot attach to the event loop");
        return;
    }
    rc->ac = ac;
    rc_set_state(rc, RC_CONNECTING);
    rc_arm(rc->timer, rc->connect_timeout_ms);
}

/* Ask the finder for the master. A subscribed finder can't ask: it reconnects and asks then. */
static void rc_ask_sentinels(struct redisconn *rc)
{
    rc_set_state(rc, RC_SENTINEL);
    if (rc->finder->state == RC_UP && !rc->finder->drop_pending) {
        rc->finder->drop_quiet = true;
        redisconn_drop(rc->finder, "master_wanted");
    }
}

/* One attempt: find the address, resolve it, connect. */
static void rc_start(struct redisconn *rc)
{
    const char *host;
    if (rc_sentinel_mode(rc) && !rc->master_host) {
        rc_ask_sentinels(rc);
        return;
    }
    if (rc_sentinel_mode(rc)) {
        host = rc->master_host;
        rc->peer_port = rc->master_port;
    } else if (rc->is_finder) {
        host = rc->target.sentinels[rc->cur].host;
        rc->peer_port = rc->target.sentinels[rc->cur].port;
    } else {
        host = rc->target.direct.host;
        rc->peer_port = rc->target.direct.port;
    }
    snprintf(rc->peer, sizeof rc->peer, "%s:%d", host, rc->peer_port);
    rc_set_state(rc, RC_RESOLVING);
    rc->dreq = dns_resolve(rc->dns, host, rc_on_resolved, rc);
}

static void rc_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct redisconn *rc = arg;
    (void)fd; (void)what;
    if (rc->state == RC_WAITING) {
        rc_start(rc);
    } else if (rc->state == RC_CONNECTING || rc->state == RC_HANDSHAKE) {
        /* rc->ac first: the callbacks redisAsyncFree runs then ignore it. */
        redisAsyncContext *ac = rc->ac;
        bool shaking = rc->state == RC_HANDSHAKE;
        rc->ac = NULL;
        redisAsyncFree(ac);
        rc_lost(rc, "connect_timeout", shaking ? "no answer to the handshake in time" : "TCP connect timed out");
    }
}

/* The heartbeat's answer. */
static void rc_on_pong(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisconn *rc = privdata;
    redisReply *reply = r;
    const char *role;
    char q[200];
    if (!reply || rc->ac != ac || rc->state != RC_UP)
        return;   /* the connection is going away; rc_lost handles it */
    if (rc_sentinel_mode(rc)) {
        if (!rc_role_is_master(rc, reply, &role)) {
            log_warn("event=redis_not_master conn=%s addr=%s role=%s", rc->name, rc->peer, role);
            redisconn_drop(rc, "became_replica");
            return;
        }
    } else if (reply->type == REDIS_REPLY_ERROR) {
        /* e.g. NOAUTH, NOPERM: not an answer; the heartbeat deadline reconnects. */
        if (!rc->logged_ping_error)
            log_warn("event=redis_ping_error conn=%s user=%s error=%s", rc->name, redis_auth_user(&rc->auth),
                     log_quote(reply->str, q, sizeof q));
        rc->logged_ping_error = true;
        return;
    }
    rc->ping_outstanding = false;
}

static void rc_on_ping_timer(evutil_socket_t fd, short what, void *arg)
{
    struct redisconn *rc = arg;
    (void)fd; (void)what;
    if (rc->state != RC_UP || rc->drop_pending)
        return;
    if (rc->ping_outstanding) {
        if (util_mono_ms() - rc->ping_sent_ms >= rc->ping_timeout_ms) {
            log_warn("event=redis_unresponsive conn=%s addr=%s waited_ms=%lld", rc->name, rc->peer,
                     (long long)(util_mono_ms() - rc->ping_sent_ms));
            redisconn_drop(rc, "unresponsive");
            return;
        }
    } else if (redisAsyncCommand(rc->ac, rc_on_pong, rc, rc_sentinel_mode(rc) ? "ROLE" : "PING") == REDIS_OK) {
        rc->ping_outstanding = true;
        rc->ping_sent_ms = util_mono_ms();
    }
    rc_arm(rc->ping_timer, rc->ping_interval_ms);
}

/* redisconn_drop()'s work, outside any hiredis callback. */
static void rc_on_drop(evutil_socket_t fd, short what, void *arg)
{
    struct redisconn *rc = arg;
    redisAsyncContext *ac = rc->ac;
    enum rc_state st = rc->state;
    bool quiet = rc->drop_quiet;
    (void)fd; (void)what;
    rc->drop_pending = false;
    rc->drop_quiet = false;
    if (!ac || (st != RC_CONNECTING && st != RC_HANDSHAKE && st != RC_UP))
        return;   /* gone meanwhile */
    rc->ac = NULL;
    redisAsyncFree(ac);   /* pending callbacks get NULL; rc_on_disconnect sees a stranger */
    rc->state = st;       /* (the callbacks above can't have moved it: they ignore ac now) */
    if (quiet)
        log_debug("event=redis_drop conn=%s addr=%s reason=%s", rc->name, rc->peer, rc->drop_reason);
    rc_lost(rc, quiet ? NULL : "dropped", rc->drop_reason);
}

void redisconn_drop(struct redisconn *rc, const char *reason)
{
    if (!rc || rc->drop_pending || !rc->ac || rc->state == RC_CLOSING)
        return;
    rc->drop_pending = true;
    snprintf(rc->drop_reason, sizeof rc->drop_reason, "%s", reason ? reason : "dropped");
    event_active(rc->drop_ev, EV_TIMEOUT, 1);
}

/* ---- Sentinel mode: the finder's callbacks (arg: the owning connection) ---- */

/* Reconnect the owner now to the master the Sentinels just named, unless it is there already. */
static void rc_follow_master(struct redisconn *rc)
{
    char want[REDIS_TARGET_HOST_MAX + 16];
    snprintf(want, sizeof want, "%s:%d", rc->master_host, rc->master_port);
    switch (rc->state) {
    case RC_SENTINEL:
    case RC_WAITING:
        event_del(rc->timer);
        rc_start(rc);
        break;
    case RC_RESOLVING:
    case RC_CONNECTING:
    case RC_HANDSHAKE:
    case RC_UP:
        if (strncmp(rc->peer, want, strlen(want)) == 0 && rc->peer[strlen(want)] == ' ')
            break;   /* already there */
        if (rc->state == RC_RESOLVING) {
            dns_cancel(rc->dreq);
            rc->dreq = NULL;
            rc_start(rc);
            break;
        }
        rc->keep_master = true;
        redisconn_drop(rc, "master_switched");
        break;
    default:
        break;
    }
}

static void rc_set_master(struct redisconn *rc, const char *host, size_t hostlen, int port)
{
    rc_forget_master(rc);
    rc->master_host = xstrndup(host, hostlen);
    rc->master_port = port;
}

static bool rc_parse_port(const char *s, int *port)
{
    int64_t v;
    if (!util_parse_int64(s, 1, 65535, &v))
        return false;
    *port = (int)v;
    return true;
}

/* SENTINEL get-master-addr-by-name's answer: [ip, port], or nil for a master it doesn't know. */
static void rc_on_master_named(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisconn *rc = privdata;
    redisReply *reply = r;
    int port;
    (void)ac;
    if (!reply)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING || !rc_parse_port(reply->element[1]->str, &port)) {
        log_warn("event=sentinel_no_master conn=%s sentinel=%s master_name=%s answer=%s", rc->finder->name,
                 rc->finder->peer, rc->target.master_name,
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "none");
        redisconn_drop(rc->finder, "no_master");   /* the next Sentinel */
        return;
    }
    rc_set_master(rc, reply->element[0]->str, reply->element[0]->len, port);
    log_info("event=sentinel_master conn=%s master_name=%s master=%s:%d sentinel=%s", rc->name,
             rc->target.master_name, rc->master_host, port, rc->finder->peer);
    rc_follow_master(rc);
}

/* The +switch-master subscription: "<name> <old-ip> <old-port> <new-ip> <new-port>". */
static void rc_on_switch(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisconn *rc = privdata;
    redisReply *reply = r;
    char name[160], oldh[REDIS_TARGET_HOST_MAX], newh[REDIS_TARGET_HOST_MAX], oldp[8], newp[8];
    int port;
    (void)ac;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING || strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    if (sscanf(reply->element[2]->str, "%159s %255s %7s %255s %7s", name, oldh, oldp, newh, newp) != 5 ||
        strcmp(name, rc->target.master_name) != 0 || !rc_parse_port(newp, &port))
        return;
    log_warn("event=sentinel_switch_master conn=%s master_name=%s from=%s:%s to=%s:%s", rc->name, name, oldh, oldp,
             newh, newp);
    rc_set_master(rc, newh, strlen(newh), port);
    rc_follow_master(rc);
}

static void rc_finder_up(struct redisconn *f, void *arg)
{
    struct redisconn *rc = arg;
    /* The question first: once subscribed, the connection can't ask. */
    if (!redisconn_command(f, rc_on_master_named, rc, "SENTINEL get-master-addr-by-name %s", rc->target.master_name) ||
        !redisconn_command(f, rc_on_switch, rc, "SUBSCRIBE +switch-master"))
        redisconn_drop(f, "query_failed");
}

/* ---- life cycle ---- */

static struct redisconn *rc_new(struct event_base *base, const struct redisconn_opts *o, bool finder)
{
    struct redisconn *rc = xcalloc(1, sizeof *rc);
    rc->base = base;
    rc->dns = o->dns;
    rc->name = xstrdup(o->name ? o->name : "redis");
    redis_target_copy(&rc->target, o->target);
    redis_auth_copy(&rc->auth, o->auth);
    rc->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 2000;
    rc->ping_interval_ms = o->ping_interval_ms;
    rc->ping_timeout_ms = o->ping_timeout_ms > 0 ? o->ping_timeout_ms : 3000;
    rc->on_up = o->on_up;
    rc->on_down = o->on_down;
    rc->arg = o->arg;
    rc->is_finder = finder;
    rc->backoff_ms = REDISCONN_BACKOFF_MIN_MS;
    rc->state = RC_WAITING;
    rc->timer = event_new(base, -1, 0, rc_on_timer, rc);
    rc->ping_timer = event_new(base, -1, 0, rc_on_ping_timer, rc);
    rc->drop_ev = event_new(base, -1, 0, rc_on_drop, rc);
    if (!rc->timer || !rc->ping_timer || !rc->drop_ev) {
        log_error("event=event_new_failed");
        abort();
    }
    if (rc_sentinel_mode(rc)) {
        char fname[96];
        struct redisconn_opts fo = {
            .name = fname, .target = &rc->target, .dns = rc->dns, .connect_timeout_ms = rc->connect_timeout_ms,
            .on_up = rc_finder_up, .arg = rc,
            .auth = &rc->target.sentinel_auth,   /* theirs, not the data user's (redistarget.h) */
        };
        snprintf(fname, sizeof fname, "%s.sentinel", rc->name);
        rc->finder = rc_new(base, &fo, true);
        rc_set_state(rc, RC_SENTINEL);   /* the finder's first answer starts us */
    } else {
        rc_start(rc);
    }
    return rc;
}

struct redisconn *redisconn_new(struct event_base *base, const struct redisconn_opts *opts)
{
    return rc_new(base, opts, false);
}

void redisconn_close(struct redisconn *rc)
{
    redisAsyncContext *ac = rc->ac;
    if (rc->finder)
        redisconn_close(rc->finder);
    event_del(rc->timer);
    event_del(rc->ping_timer);
    event_del(rc->drop_ev);
    rc->drop_pending = false;
    dns_cancel(rc->dreq);
    rc->dreq = NULL;
    rc->ac = NULL;
    rc_set_state(rc, RC_CLOSED);
    if (ac)
        redisAsyncFree(ac);   /* pending callbacks get NULL; rc_on_disconnect sees a stranger */
}

bool redisconn_disconnect(struct redisconn *rc)
{
    if (rc->state != RC_UP || rc->drop_pending)
        return false;
    if (rc->finder)
        redisconn_close(rc->finder);   /* not inside its callbacks: we are the owner */
    event_del(rc->ping_timer);
    rc_set_state(rc, RC_CLOSING);
    redisAsyncDisconnect(rc->ac);   /* deferred by hiredis until the replies are in */
    return true;
}

void redisconn_free(struct redisconn *rc)
{
    if (!rc)
        return;
    redisconn_close(rc);
    redisconn_free(rc->finder);
    event_free(rc->timer);
    event_free(rc->ping_timer);
    event_free(rc->drop_ev);
    redis_auth_free(&rc->auth);
    redis_target_free(&rc->target);
    rc_forget_master(rc);
    free(rc->name);
    free(rc);
}

redisAsyncContext *redisconn_ctx(struct redisconn *rc)
{
    return rc->state == RC_UP && !rc->drop_pending ? rc->ac : NULL;
}

bool redisconn_is_up(const struct redisconn *rc)
{
    if (rc->state != RC_UP || rc->drop_pending)
        return false;
    if (rc->ping_interval_ms > 0 && rc->ping_outstanding && util_mono_ms() - rc->ping_sent_ms >= rc->ping_timeout_ms)
        return false;
    return true;
}

bool redisconn_command(struct redisconn *rc, redisCallbackFn *cb, void *privdata, const char *fmt, ...)
{
    va_list ap;
    int r;
    redisAsyncContext *ac = redisconn_ctx(rc);
    if (!ac)
        return false;
    va_start(ap, fmt);
    r = redisvAsyncCommand(ac, cb, privdata, fmt, ap);
    va_end(ap);
    return r == REDIS_OK;
}

void *redisconn_owner(const redisAsyncContext *ac)
{
    const struct redisconn *rc = ac->data;
    return rc->arg;
}

struct redisconn *redisconn_of(const redisAsyncContext *ac)
{
    return ac->data;
}

void redisconn_note_reply(struct redisconn *rc, const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ERROR || !reply->str || strncmp(reply->str, "READONLY", 8) != 0)
        return;
    log_warn("event=redis_not_master conn=%s addr=%s role=replica note=\"READONLY answer\"", rc->name, rc->peer);
    redisconn_drop(rc, "readonly_replica");
}
