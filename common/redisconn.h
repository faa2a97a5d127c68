/*
 * redisconn.h - one self-healing asynchronous Redis connection (hiredis async
 * on libevent): connect deadline, reconnect with exponential backoff, and an
 * optional PING heartbeat that drops a connection whose server stopped
 * answering, and AUTH (user + password) after every connect. hiredis 0.14
 * has no timeouts of its own, so they live here.
 */
#ifndef STAMPCP_REDISCONN_H
#define STAMPCP_REDISCONN_H

#include <event2/event.h>
#include <hiredis/async.h>
#include <stdbool.h>

#include "redisauth.h"

struct redisconn;

struct redisconn_opts {
    const char *name;              /* for logs: "sub", "cmd" */
    const char *host;
    int port;
    int connect_timeout_ms;        /* default 2000 */
    int ping_interval_ms;          /* 0: no heartbeat (required for SUBSCRIBE connections) */
    int ping_timeout_ms;           /* a PING unanswered this long drops the connection */
    /* Credentials sent (AUTH) after every connect, before on_up; copied.
     * NULL or empty: no AUTH. A refused AUTH is logged without the password
     * and retried with the reconnect backoff. */
    const struct redis_auth *auth;
    /* Called from inside hiredis callbacks: they may issue commands, but must
     * not free the redisconn. */
    void (*on_up)(struct redisconn *rc, void *arg);
    void (*on_down)(struct redisconn *rc, void *arg);
    void *arg;
};

struct redisconn *redisconn_new(struct event_base *base, const struct redisconn_opts *opts);
/* Disconnects; pending command callbacks run with a NULL reply first. Not from a callback. */
void redisconn_free(struct redisconn *rc);
/* The live context, or NULL while disconnected. Commands issued on it get a
 * NULL reply if the connection drops before they are answered. */
redisAsyncContext *redisconn_ctx(struct redisconn *rc);
/* Connected, and (with a heartbeat) the last PING was answered in time. */
bool redisconn_is_up(const struct redisconn *rc);
/* Drop the connection and reconnect after the backoff. Safe from a timer or
 * another connection's callback, not from this connection's own callbacks. */
void redisconn_drop(struct redisconn *rc);

#endif
