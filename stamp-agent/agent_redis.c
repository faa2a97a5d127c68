/*
 * agent_redis.c - owns the agent's Redis connection: connect with a deadline,
 * reconnect with exponential backoff, and the hiredis context's lifetime.
 *
 * State machine (agent_redis_set_state() logs every transition):
 *   WAITING --retry timer--> CONNECTING --TCP up, [AUTH ok,] PING answered--> CONNECTED
 *   CONNECTING --connect error / AUTH refused / PING error / deadline--> WAITING
 *   CONNECTED --disconnect cb / agent_redis_drop()--> WAITING
 *   CONNECTED --agent_redis_disconnect()--> CLOSING --disconnect cb--> CLOSED
 *   any --agent_redis_close()--> CLOSED
 */
#include "agent_redis.h"

#include <hiredis/adapters/libevent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const char *const agent_redis_state_names[] = {
    "waiting", "connecting", "connected", "closing", "closed"
};

static void agent_redis_set_state(struct agent_redis *r, enum agent_redis_state s)
{
    if (r->state == s)
        return;
    log_debug("event=redis_state from=%s to=%s", agent_redis_state_names[r->state],
              agent_redis_state_names[s]);
    r->state = s;
}

static struct timeval agent_redis_tv(int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

/* Record a failure; the first one of an outage is a warning, the rest debug. */
static void agent_redis_note_failure(struct agent_redis *r, const char *what, const char *detail)
{
    char q[160];

    r->attempts++;
    log_quote(detail, q, sizeof q);
    if (!r->outage_logged) {
        r->outage_logged = true;
        r->down_since_ms = util_mono_ms();
        log_warn("event=redis_down addr=%s:%d reason=%s error=%s retry_ms=%d note=%s",
                 r->host, r->port, what, q, r->backoff_ms,
                 "\"reports skipped until reconnected\"");
    } else {
        log_debug("event=redis_retry_failed addr=%s:%d reason=%s error=%s attempt=%u",
                  r->host, r->port, what, q, r->attempts);
    }
}

/* Enter WAITING and arm the retry timer with the current backoff, then double it. */
static void agent_redis_schedule(struct agent_redis *r)
{
    struct timeval tv = agent_redis_tv(r->backoff_ms);

    agent_redis_set_state(r, AGENT_REDIS_WAITING);
    evtimer_del(r->connect_timer);
    if (evtimer_add(r->retry_timer, &tv) != 0)
        log_error("event=timer_failed timer=redis_retry");
    r->backoff_ms *= 2;
    if (r->backoff_ms > AGENT_REDIS_BACKOFF_MAX_MS)
        r->backoff_ms = AGENT_REDIS_BACKOFF_MAX_MS;
}

/* Forget and free the context. Only from libevent (non-hiredis) callbacks. */
static void agent_redis_free_ctx(struct agent_redis *r)
{
    redisAsyncContext *ac = r->ac;

    r->ac = NULL;   /* callbacks run by redisAsyncFree() see a stranger and return */
    if (ac)
        redisAsyncFree(ac);
}

/* PING answered: the connection is usable. Runs inside a hiredis callback. */
static void agent_redis_on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct agent_redis *r = ac->data;
    redisReply *rep = reply;

    if (r->ac != ac || r->state != AGENT_REDIS_CONNECTING || !rep)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        /* e.g. LOADING: hang up once this callback returns; on_disconnect retries. */
        agent_redis_note_failure(r, "handshake_failed", rep->str);
        redisAsyncDisconnect(ac);
        return;
    }
    evtimer_del(r->connect_timer);
    agent_redis_set_state(r, AGENT_REDIS_CONNECTED);
    if (r->auth_failures)
        log_info("event=redis_connected addr=%s:%d user=%s outage_ms=%lld attempts=%u auth_failures=%u",
                 r->host, r->port, redis_auth_user(&r->auth), (long long)(util_mono_ms() - r->down_since_ms),
                 r->attempts, r->auth_failures);
    else if (r->outage_logged)
        log_info("event=redis_connected addr=%s:%d outage_ms=%lld attempts=%u", r->host,
                 r->port, (long long)(util_mono_ms() - r->down_since_ms), r->attempts);
    else
        log_info("event=redis_connected addr=%s:%d", r->host, r->port);
    r->outage_logged = false;
    r->attempts = 0;
    r->auth_failures = 0;
    r->backoff_ms = AGENT_REDIS_BACKOFF_MIN_MS;
    r->on_up(r->owner);
}

/* AUTH answered. Redis's error text (WRONGPASS ...) never holds the password. */
static void agent_redis_on_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct agent_redis *r = ac->data;
    redisReply *rep = reply;

    (void)privdata;
    if (r->ac != ac || r->state != AGENT_REDIS_CONNECTING || !rep)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        r->auth_failures++;
        if (r->auth_failures == 1 || r->auth_failures % 100 == 0) {
            char q[160];
            log_error("event=redis_auth_failed addr=%s:%d user=%s error=%s attempts=%u retry_ms=%d", r->host,
                      r->port, redis_auth_user(&r->auth), log_quote(rep->str, q, sizeof q), r->auth_failures,
                      r->backoff_ms);
        }
        agent_redis_note_failure(r, "auth_failed", rep->str);
        redisAsyncDisconnect(ac);   /* on_disconnect schedules the retry */
        return;
    }
    if (redisAsyncCommand(ac, agent_redis_on_ping, NULL, "PING") != REDIS_OK)
        log_warn("event=redis_ping_failed addr=%s:%d", r->host, r->port);
}

/*
 * TCP is up. The connection only counts once Redis answers a PING within the
 * connect deadline (still armed), so a Redis that accepts but never answers
 * stays one outage with growing backoff instead of a reconnect loop.
 */
static void agent_redis_on_connect(const redisAsyncContext *cac, int status)
{
    struct agent_redis *r = cac->data;
    redisAsyncContext *ac = r->ac;

    if (ac != cac)
        return;
    if (status != REDIS_OK) {
        r->ac = NULL;   /* hiredis frees it when we return */
        agent_redis_note_failure(r, "connect_failed", cac->errstr);
        agent_redis_schedule(r);
        return;
    }
    /* On failure, leave it to the deadline: hiredis 0.14 keeps using the context
     * after this callback, so it must not be disconnected from here. */
    if (redis_auth_enabled(&r->auth)) {
        if (redis_auth_send(ac, &r->auth, agent_redis_on_auth, NULL) != REDIS_OK)
            log_warn("event=redis_auth_send_failed addr=%s:%d", r->host, r->port);
    } else if (redisAsyncCommand(ac, agent_redis_on_ping, NULL, "PING") != REDIS_OK) {
        log_warn("event=redis_ping_failed addr=%s:%d", r->host, r->port);
    }
}

static void agent_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct agent_redis *r = ac->data;
    bool was_up = r->state == AGENT_REDIS_CONNECTED || r->state == AGENT_REDIS_CLOSING;

    if (r->ac != ac)
        return;
    r->ac = NULL;   /* hiredis frees it when we return */
    if (r->state == AGENT_REDIS_CLOSING) {
        log_info("event=redis_disconnected addr=%s:%d", r->host, r->port);
        agent_redis_set_state(r, AGENT_REDIS_CLOSED);
    } else {
        agent_redis_note_failure(r, was_up ? "connection_lost" : "handshake_failed",
                                 status == REDIS_OK ? "closed" : ac->errstr);
        agent_redis_schedule(r);
    }
    if (was_up)
        r->on_down(r->owner);
}

static void agent_redis_connect(struct agent_redis *r)
{
    struct timeval deadline = agent_redis_tv(AGENT_REDIS_CONNECT_TIMEOUT_MS);
    redisAsyncContext *ac;
#if HIREDIS_MAJOR >= 1
    redisOptions opts = {0};

    REDIS_OPTIONS_SET_TCP(&opts, r->host, r->port);
    opts.options |= REDIS_OPT_NONBLOCK;
    opts.connect_timeout = &deadline;
    ac = redisAsyncConnectWithOptions(&opts);
#else
    /* hiredis 0.14 has no async connect timeout; connect_timer is the deadline. */
    ac = redisAsyncConnect(r->host, r->port);
#endif
    if (!ac || ac->err) {
        agent_redis_note_failure(r, "connect_failed", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);   /* never attached: no callbacks, ours to free */
        agent_redis_schedule(r);
        return;
    }
    ac->data = r;
    r->ac = ac;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK
        || redisAsyncSetConnectCallback(ac, agent_redis_on_connect) != REDIS_OK
        || redisAsyncSetDisconnectCallback(ac, agent_redis_on_disconnect) != REDIS_OK) {
        agent_redis_free_ctx(r);
        agent_redis_note_failure(r, "connect_failed", "could not attach to event loop");
        agent_redis_schedule(r);
        return;
    }
    agent_redis_set_state(r, AGENT_REDIS_CONNECTING);
    if (evtimer_add(r->connect_timer, &deadline) != 0)
        log_error("event=timer_failed timer=redis_connect");
}

static void agent_redis_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent_redis *r = arg;

    if (r->state == AGENT_REDIS_WAITING)
        agent_redis_connect(r);
}

/* A black-holed address never answers the SYN, a frozen Redis never answers the
 * PING: give up on the attempt after the deadline. */
static void agent_redis_connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent_redis *r = arg;

    if (r->state != AGENT_REDIS_CONNECTING)
        return;
    agent_redis_free_ctx(r);   /* its callbacks see r->ac != ac and return */
    agent_redis_note_failure(r, "connect_timeout", "no answer within deadline");
    agent_redis_schedule(r);
}

bool agent_redis_init(struct agent_redis *r, struct event_base *base, const char *host,
                      int port, const struct redis_auth *auth, agent_redis_cb on_up,
                      agent_redis_cb on_down, void *owner)
{
    memset(r, 0, sizeof *r);
    r->base = base;
    r->host = xstrdup(host);
    redis_auth_copy(&r->auth, auth);
    r->port = port;
    r->state = AGENT_REDIS_WAITING;
    r->backoff_ms = AGENT_REDIS_BACKOFF_MIN_MS;
    r->on_up = on_up;
    r->on_down = on_down;
    r->owner = owner;
    r->retry_timer = evtimer_new(base, agent_redis_retry_cb, r);
    r->connect_timer = evtimer_new(base, agent_redis_connect_timeout_cb, r);
    if (!r->retry_timer || !r->connect_timer) {
        agent_redis_free(r);
        return false;
    }
    return true;
}

void agent_redis_start(struct agent_redis *r)
{
    if (r->state == AGENT_REDIS_WAITING) {
        evtimer_del(r->retry_timer);
        agent_redis_connect(r);
    }
}

bool agent_redis_command(struct agent_redis *r, redisCallbackFn *cb, void *privdata,
                         const char *fmt, ...)
{
    va_list ap;
    int rc;

    if (r->state != AGENT_REDIS_CONNECTED || !r->ac)
        return false;
    va_start(ap, fmt);
    rc = redisvAsyncCommand(r->ac, cb, privdata, fmt, ap);
    va_end(ap);
    return rc == REDIS_OK;
}

void *agent_redis_owner(const redisAsyncContext *ac)
{
    const struct agent_redis *r = ac->data;
    return r->owner;
}

void agent_redis_drop(struct agent_redis *r, const char *reason)
{
    if (r->state != AGENT_REDIS_CONNECTED)
        return;
    agent_redis_free_ctx(r);   /* pending callbacks get NULL; our disconnect cb ignores it */
    agent_redis_note_failure(r, reason, "connection dropped by agent");
    agent_redis_schedule(r);
    r->on_down(r->owner);
}

bool agent_redis_disconnect(struct agent_redis *r)
{
    if (r->state != AGENT_REDIS_CONNECTED)
        return false;
    agent_redis_set_state(r, AGENT_REDIS_CLOSING);
    redisAsyncDisconnect(r->ac);   /* deferred by hiredis until replies are in */
    return true;
}

void agent_redis_close(struct agent_redis *r)
{
    if (r->retry_timer)
        evtimer_del(r->retry_timer);
    if (r->connect_timer)
        evtimer_del(r->connect_timer);
    agent_redis_free_ctx(r);
    agent_redis_set_state(r, AGENT_REDIS_CLOSED);
}

void agent_redis_free(struct agent_redis *r)
{
    agent_redis_close(r);
    if (r->retry_timer)
        event_free(r->retry_timer);
    if (r->connect_timer)
        event_free(r->connect_timer);
    free(r->host);
    redis_auth_free(&r->auth);
    r->retry_timer = NULL;
    r->connect_timer = NULL;
    r->host = NULL;
}
