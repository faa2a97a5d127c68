/*
 * agent_redis.h - the agent's one Redis connection: hiredis async on the
 * agent's event_base, reconnected with exponential backoff by a timer.
 *
 * Ownership: hiredis owns the redisAsyncContext. It frees it itself after the
 * disconnect callback and after a failed connect callback; this module frees
 * it only from libevent timer/signal context (never from inside a hiredis
 * callback), and forgets the pointer before it does, so stale callbacks are
 * recognised and ignored. Callers never see the context except in their own
 * reply callbacks.
 */
#ifndef STAMPAGENT_REDIS_H
#define STAMPAGENT_REDIS_H

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>

#include "redisauth.h"
#include "util.h"

#define AGENT_REDIS_BACKOFF_MIN_MS     100
#define AGENT_REDIS_BACKOFF_MAX_MS     5000
/* Deadline for TCP connect, AUTH and the first PING reply. */
#define AGENT_REDIS_CONNECT_TIMEOUT_MS 2000

enum agent_redis_state {
    AGENT_REDIS_WAITING,     /* no context; the retry timer is armed */
    AGENT_REDIS_CONNECTING,  /* context exists; TCP connect, AUTH or PING pending; deadline armed */
    AGENT_REDIS_CONNECTED,   /* commands may be sent */
    AGENT_REDIS_CLOSING,     /* graceful disconnect requested; no reconnect follows */
    AGENT_REDIS_CLOSED,      /* no context, no timers: final */
};

/*
 * Called (at most once per transition) when the connection comes up, and when
 * an up connection goes away for any reason other than agent_redis_close().
 * They may call any agent_redis_* function except agent_redis_free(), and
 * agent_redis_drop() only when not inside a hiredis callback (on_down may be).
 */
typedef void (*agent_redis_cb)(void *owner);

struct agent_redis {
    struct event_base *base;
    char *host;
    int port;
    enum agent_redis_state state;
    redisAsyncContext *ac;        /* NULL unless CONNECTING, CONNECTED or CLOSING */
    struct event *retry_timer;
    struct event *connect_timer;
    int backoff_ms;               /* delay before the next attempt */
    bool outage_logged;           /* warn once per outage, not every attempt */
    unsigned attempts;            /* failed attempts in this outage */
    int64_t down_since_ms;        /* monotonic, start of the current outage */
    struct redis_auth auth;       /* owned copy; empty: no AUTH. The password is never logged */
    unsigned auth_failures;       /* refused AUTHs in this outage */
    agent_redis_cb on_up;
    agent_redis_cb on_down;
    void *owner;
};

/*
 * Set up (no I/O yet). auth (copied; NULL or empty: none) is sent as AUTH
 * after every connect; a refused AUTH is logged without the password and
 * retried with the backoff. Returns false if libevent could not allocate timers.
 */
bool agent_redis_init(struct agent_redis *r, struct event_base *base, const char *host,
                      int port, const struct redis_auth *auth, agent_redis_cb on_up,
                      agent_redis_cb on_down, void *owner) MUSTCHECK;
/* Start the first connection attempt now. */
void agent_redis_start(struct agent_redis *r);

static inline bool agent_redis_connected(const struct agent_redis *r)
{
    return r->state == AGENT_REDIS_CONNECTED;
}

/*
 * Queue a command (hiredis format). cb runs exactly once: with the reply, or
 * with NULL if the connection goes away first. Returns false (cb not called)
 * when not connected or hiredis refuses the command.
 */
bool agent_redis_command(struct agent_redis *r, redisCallbackFn *cb, void *privdata,
                         const char *fmt, ...) MUSTCHECK;
/* The owner given to agent_redis_init(), for use inside reply callbacks. */
void *agent_redis_owner(const redisAsyncContext *ac);

/*
 * Abandon the current connection (e.g. Redis stopped answering) and schedule a
 * reconnect. Pending reply callbacks run with NULL, then on_down. Must not be
 * called from inside a hiredis callback.
 */
void agent_redis_drop(struct agent_redis *r, const char *reason);
/*
 * Disconnect once pending replies are in, and never reconnect; on_down runs
 * when it is done. Safe inside hiredis callbacks. Returns false (and does
 * nothing) unless CONNECTED; use agent_redis_close() then.
 */
bool agent_redis_disconnect(struct agent_redis *r);
/* Stop now: free any context (pending callbacks get NULL), cancel timers. Not
 * from inside a hiredis callback. on_down is not called. */
void agent_redis_close(struct agent_redis *r);
/* agent_redis_close() plus freeing the timers and host. */
void agent_redis_free(struct agent_redis *r);

#endif
