/*
 * redisconn.h - one self-healing asynchronous Redis connection (hiredis async
 * on libevent), the one both daemons use:
 *
 *  - where: one server by name or address (resolved with dns.c at every
 *    connect: never getaddrinfo on the loop; hiredis only ever sees a numeric
 *    address), or the master a set of Sentinels names (redistarget.h);
 *  - a connect deadline covering TCP, AUTH and the handshake (PING, or in
 *    Sentinel mode ROLE, which must say "master"); hiredis 0.14 has no
 *    timeouts of its own, so they live here;
 *  - reconnect with exponential backoff, 100 ms doubling to 5 s; one warning
 *    per outage, and its length when it ends;
 *  - AUTH (user + password) after every connect; a refused AUTH is logged
 *    without the password and retried with the backoff;
 *  - an optional heartbeat (PING, in Sentinel mode ROLE) that drops a
 *    connection whose server stopped answering or became a replica;
 *  - Sentinel mode: a connection to one of the Sentinels (tried in turn)
 *    asks SENTINEL get-master-addr-by-name, then stays subscribed to
 *    +switch-master; a switch of our master reconnects at once to the new
 *    one, and so does a connection that finds itself on a replica (ROLE, or
 *    a READONLY answer passed to redisconn_note_reply()).
 *
 * Ownership: the redisconn owns its hiredis context (hiredis frees it itself
 * after a failed connect or a disconnect; callers never free it) and copies
 * everything in the opts (strings, target, credentials). Callbacks run from
 * hiredis or timer callbacks: they may issue commands and call
 * redisconn_drop(), never redisconn_free()/redisconn_close().
 */
#ifndef STAMPCP_REDISCONN_H
#define STAMPCP_REDISCONN_H

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>

#include "dns.h"
#include "redisauth.h"
#include "redistarget.h"

#define REDISCONN_BACKOFF_MIN_MS 100
#define REDISCONN_BACKOFF_MAX_MS 5000

struct redisconn;

struct redisconn_opts {
    const char *name;              /* for logs: "sub", "cmd", "report" */
    const struct redis_target *target;   /* copied */
    struct dns *dns;               /* borrowed; outlives the redisconn */
    int connect_timeout_ms;        /* default 2000: TCP + AUTH + handshake (not DNS: see dns.resolvConf) */
    int ping_interval_ms;          /* 0: no heartbeat (required for SUBSCRIBE connections) */
    int ping_timeout_ms;           /* a heartbeat unanswered this long drops the connection; default 3000 */
    /* Credentials sent (AUTH) after every connect, before on_up; copied.
     * NULL or empty: no AUTH. */
    const struct redis_auth *auth;
    /* on_up: the connection is usable. on_down: an up connection went away
     * (not after redisconn_close/free). At most one call per transition. */
    void (*on_up)(struct redisconn *rc, void *arg);
    void (*on_down)(struct redisconn *rc, void *arg);
    void *arg;
};

/* Starts connecting at once (answers arrive from the loop). Never NULL. */
struct redisconn *redisconn_new(struct event_base *base, const struct redisconn_opts *opts);
/* Close (pending command callbacks run with a NULL reply first) and free.
 * NULL-safe. Not from inside this connection's callbacks. */
void redisconn_free(struct redisconn *rc);

/* The live context, or NULL unless up. Commands issued on it get a NULL
 * reply if the connection drops before they are answered. */
redisAsyncContext *redisconn_ctx(struct redisconn *rc);
/* Up, and (with a heartbeat) the last heartbeat was answered in time. */
bool redisconn_is_up(const struct redisconn *rc);
/*
 * Queue a command (hiredis format). cb (may be NULL) runs exactly once: with
 * the reply, or with NULL if the connection goes away first. Returns false
 * (cb not called) when not up or hiredis refuses the command.
 */
bool redisconn_command(struct redisconn *rc, redisCallbackFn *cb, void *privdata, const char *fmt, ...)
    MUSTCHECK __attribute__((format(printf, 4, 5)));
/* The opts' arg, for reply callbacks of commands sent on this connection. */
void *redisconn_owner(const redisAsyncContext *ac);

/*
 * Abandon the connection (reason for the log) and reconnect after the
 * backoff; pending replies get NULL, then on_down. Safe from anywhere,
 * including this connection's own reply callbacks (the context is freed from
 * the loop right after); redisconn_ctx() is NULL from the call on.
 */
void redisconn_drop(struct redisconn *rc, const char *reason);
/*
 * Look at a command's reply: an error that says the server is a replica
 * (READONLY) drops the connection so that it reconnects to the master
 * (Sentinel mode: asking the Sentinels again). Safe in reply callbacks.
 */
void redisconn_note_reply(struct redisconn *rc, const redisReply *reply);

/*
 * Disconnect once pending replies are in, and never reconnect; on_down runs
 * when done. Safe in reply callbacks. Returns false (nothing done) unless up.
 */
bool redisconn_disconnect(struct redisconn *rc);
/* Stop now: pending callbacks get NULL, timers cancelled, no reconnect, no
 * on_down. Not from inside this connection's callbacks. */
void redisconn_close(struct redisconn *rc);

#endif
