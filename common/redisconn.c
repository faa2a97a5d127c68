/*
 * redisconn.c - reconnecting hiredis async connection with deadlines.
 *
 * States: DOWN (waiting for the backoff timer) -> CONNECTING (deadline armed)
 * -> AUTH (credentials configured: AUTH sent, same deadline) -> UP (heartbeat
 * running) -> DOWN on any error. A refused AUTH hangs up and counts as a
 * failed attempt: the backoff keeps growing until AUTH succeeds. hiredis
 * frees its context itself after a failed connect or a disconnect; we only
 * forget the pointer.
 */
#include "redisconn.h"

#include <hiredis/adapters/libevent.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define RC_BACKOFF_MIN_MS 100
#define RC_BACKOFF_MAX_MS 5000

enum rc_state { RC_DOWN, RC_CONNECTING, RC_AUTH, RC_UP };

struct redisconn {
    struct event_base *base;
    struct redisconn_opts o;
    char *name, *host;
    enum rc_state state;
    redisAsyncContext *ac;
    struct event *timer;        /* backoff while DOWN, deadline while CONNECTING */
    struct event *ping_timer;   /* heartbeat while UP */
    int backoff_ms;
    bool ping_outstanding;
    int64_t ping_sent_ms;
    bool freeing;
    bool logged_down;           /* one warning per outage, not one per attempt */
    struct redis_auth auth;     /* owned copy; the password is never logged */
    unsigned auth_failures;     /* refused AUTHs in this outage */
    bool logged_ping_error;
};

static void rc_connect(struct redisconn *rc);

static void rc_arm(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ev, &tv);
}

/* The connection is gone (hiredis already freed, or is freeing, the context). */
static void rc_lost(struct redisconn *rc, const char *why)
{
    bool was_up = rc->state == RC_UP;
    rc->ac = NULL;
    rc->state = RC_DOWN;
    rc->ping_outstanding = false;
    event_del(rc->ping_timer);
    if (rc->freeing)
        return;
    if (!rc->logged_down) {
        log_warn("event=redis_down conn=%s addr=%s:%d error=\"%s\"", rc->name, rc->host, rc->o.port,
                 why ? why : "");
        rc->logged_down = true;
    }
    rc_arm(rc->timer, rc->backoff_ms);
    rc->backoff_ms = rc->backoff_ms * 2 > RC_BACKOFF_MAX_MS ? RC_BACKOFF_MAX_MS : rc->backoff_ms * 2;
    if (was_up && rc->o.on_down)
        rc->o.on_down(rc, rc->o.arg);
}

static void rc_go_up(struct redisconn *rc)
{
    event_del(rc->timer);
    rc->state = RC_UP;
    rc->backoff_ms = RC_BACKOFF_MIN_MS;
    if (rc->auth_failures)
        log_info("event=redis_connected conn=%s addr=%s:%d user=%s auth_failures=%u", rc->name, rc->host,
                 rc->o.port, redis_auth_user(&rc->auth), rc->auth_failures);
    else
        log_info("event=redis_connected conn=%s addr=%s:%d", rc->name, rc->host, rc->o.port);
    rc->logged_down = false;
    rc->logged_ping_error = false;
    rc->auth_failures = 0;
    if (rc->o.ping_interval_ms > 0)
        rc_arm(rc->ping_timer, rc->o.ping_interval_ms);
    if (rc->o.on_up)
        rc->o.on_up(rc, rc->o.arg);
}

/* The answer to AUTH. Redis's error text never contains the password. */
static void rc_on_auth(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisconn *rc = privdata;
    redisReply *reply = r;

    if (!reply || rc->freeing || rc->ac != ac || rc->state != RC_AUTH)
        return;   /* the connection went away first; rc_lost handles it */
    if (reply->type != REDIS_REPLY_ERROR) {
        rc_go_up(rc);
        return;
    }
    rc->auth_failures++;
    if (rc->auth_failures == 1 || rc->auth_failures % 100 == 0)
        log_error("event=redis_auth_failed conn=%s addr=%s:%d user=%s error=\"%.200s\" attempts=%u retry_ms=%d",
                  rc->name, rc->host, rc->o.port, redis_auth_user(&rc->auth), reply->str ? reply->str : "",
                  rc->auth_failures, rc->backoff_ms);
    else
        log_debug("event=redis_auth_failed conn=%s user=%s attempts=%u", rc->name, redis_auth_user(&rc->auth),
                  rc->auth_failures);
    rc->logged_down = true;   /* the line above says it all */
    /* Hang up once this callback returns; rc_on_disconnect schedules the retry. */
    redisAsyncDisconnect(ac);
}

static void rc_on_connect(const redisAsyncContext *ac, int status)
{
    struct redisconn *rc = ac->data;
    if (status != REDIS_OK) {
        event_del(rc->timer);
        rc_lost(rc, ac->errstr);
        return;
    }
    if (!redis_auth_enabled(&rc->auth)) {
        rc_go_up(rc);
        return;
    }
    /* The connect deadline stays armed until AUTH is answered. If queueing
     * fails, the deadline drops the connection (hiredis 0.14 still uses the
     * context after this callback, so it is not disconnected here). */
    rc->state = RC_AUTH;
    if (redis_auth_send(rc->ac, &rc->auth, rc_on_auth, rc) != REDIS_OK)
        log_warn("event=redis_auth_send_failed conn=%s", rc->name);
}

static void rc_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redisconn *rc = ac->data;
    if (rc->ac != ac)
        return;   /* a context we already gave up (deadline, drop, free) */
    rc_lost(rc, status == REDIS_OK ? "closed" : ac->errstr);
}

static void rc_on_pong(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisconn *rc = privdata;
    redisReply *reply = r;
    (void)ac;
    if (!reply || rc->freeing)
        return;   /* the connection is going away; rc_lost handles it */
    if (reply->type == REDIS_REPLY_ERROR) {
        /* e.g. NOAUTH, NOPERM: not an answer; the heartbeat deadline reconnects. */
        if (!rc->logged_ping_error)
            log_warn("event=redis_ping_error conn=%s user=%s error=\"%.200s\"", rc->name,
                     redis_auth_user(&rc->auth), reply->str ? reply->str : "");
        rc->logged_ping_error = true;
        return;
    }
    rc->ping_outstanding = false;
}

static void rc_on_ping_timer(evutil_socket_t fd, short what, void *arg)
{
    struct redisconn *rc = arg;
    (void)fd; (void)what;
    if (rc->state != RC_UP)
        return;
    if (rc->ping_outstanding) {
        if (util_mono_ms() - rc->ping_sent_ms >= rc->o.ping_timeout_ms) {
            log_warn("event=redis_unresponsive conn=%s waited_ms=%lld", rc->name,
                     (long long)(util_mono_ms() - rc->ping_sent_ms));
            redisconn_drop(rc);
            return;
        }
    } else if (redisAsyncCommand(rc->ac, rc_on_pong, rc, "PING") == REDIS_OK) {
        rc->ping_outstanding = true;
        rc->ping_sent_ms = util_mono_ms();
    }
    rc_arm(rc->ping_timer, rc->o.ping_interval_ms);
}

static void rc_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct redisconn *rc = arg;
    (void)fd; (void)what;
    if (rc->state == RC_DOWN) {
        rc_connect(rc);
    } else if (rc->state == RC_CONNECTING || rc->state == RC_AUTH) {
        /* rc->ac is cleared first: the disconnect callback (run when an
         * authenticating context is freed) and rc_on_auth then ignore it. */
        redisAsyncContext *ac = rc->ac;
        bool authing = rc->state == RC_AUTH;
        rc->ac = NULL;
        redisAsyncFree(ac);
        rc_lost(rc, authing ? "AUTH not answered in time" : "connect timed out");
    }
}

static void rc_connect(struct redisconn *rc)
{
    redisAsyncContext *ac = redisAsyncConnect(rc->host, rc->o.port);
    if (!ac || ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        rc->state = RC_CONNECTING;
        rc_lost(rc, why);
        return;
    }
    ac->data = rc;
    if (redisLibeventAttach(ac, rc->base) != REDIS_OK ||
        redisAsyncSetConnectCallback(ac, rc_on_connect) != REDIS_OK ||
        redisAsyncSetDisconnectCallback(ac, rc_on_disconnect) != REDIS_OK) {
        redisAsyncFree(ac);
        rc->state = RC_CONNECTING;
        rc_lost(rc, "cannot attach to the event loop");
        return;
    }
    rc->ac = ac;
    rc->state = RC_CONNECTING;
    rc_arm(rc->timer, rc->o.connect_timeout_ms);
}

struct redisconn *redisconn_new(struct event_base *base, const struct redisconn_opts *opts)
{
    struct redisconn *rc = xcalloc(1, sizeof *rc);
    rc->base = base;
    rc->o = *opts;
    rc->name = xstrdup(opts->name ? opts->name : "redis");
    rc->host = xstrdup(opts->host);
    redis_auth_copy(&rc->auth, opts->auth);
    rc->o.auth = NULL;   /* the caller's copy may go away */
    if (rc->o.connect_timeout_ms <= 0) rc->o.connect_timeout_ms = 2000;
    if (rc->o.ping_timeout_ms <= 0) rc->o.ping_timeout_ms = 3000;
    rc->backoff_ms = RC_BACKOFF_MIN_MS;
    rc->timer = event_new(base, -1, 0, rc_on_timer, rc);
    rc->ping_timer = event_new(base, -1, 0, rc_on_ping_timer, rc);
    if (!rc->timer || !rc->ping_timer) {
        log_error("event=event_new_failed");
        abort();
    }
    rc_connect(rc);
    return rc;
}

void redisconn_drop(struct redisconn *rc)
{
    redisAsyncContext *ac = rc->ac;
    if (!ac)
        return;
    if (rc->state == RC_UP) {
        /* Runs pending callbacks with NULL and then rc_on_disconnect. */
        redisAsyncFree(ac);
    } else {
        rc->ac = NULL;
        redisAsyncFree(ac);
        rc_lost(rc, "dropped");
    }
}

void redisconn_free(struct redisconn *rc)
{
    if (!rc) return;
    rc->freeing = true;
    if (rc->ac) {
        redisAsyncContext *ac = rc->ac;
        rc->ac = NULL;
        redisAsyncFree(ac);
    }
    event_free(rc->timer);
    event_free(rc->ping_timer);
    redis_auth_free(&rc->auth);
    free(rc->name);
    free(rc->host);
    free(rc);
}

redisAsyncContext *redisconn_ctx(struct redisconn *rc)
{
    return rc->state == RC_UP ? rc->ac : NULL;
}

bool redisconn_is_up(const struct redisconn *rc)
{
    if (rc->state != RC_UP)
        return false;
    if (rc->o.ping_interval_ms > 0 && rc->ping_outstanding &&
        util_mono_ms() - rc->ping_sent_ms >= rc->o.ping_timeout_ms)
        return false;
    return true;
}
