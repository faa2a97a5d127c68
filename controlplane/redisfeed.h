/*
 * redisfeed.h - the control plane's Redis side: subscribes to the stamp load
 * channel, reads a snapshot of every stamp's load hash whenever it
 * (re)subscribes, and feeds both into the load table.
 *
 * Key and message formats (docs/architecture.md): hash stamp:{id}:load with
 * fields stampId, region, health, ts, intervalMs, seq, runId, load; channel
 * stamps:load:{id} carrying the same fields as one JSON object. Each agent's
 * Redis user may write only its own key and channel (docs/security.md), and
 * a report whose stampId is not the one its key or channel names is refused
 * here, so an agent cannot speak for another stamp.
 */
#ifndef CP_REDISFEED_H
#define CP_REDISFEED_H

#include <event2/event.h>
#include <stdbool.h>

#include "loadtable.h"
#include "redisauth.h"

/* Stamp agents publish on stamps:load:{stampId}; we PSUBSCRIBE the pattern. */
#define REDISFEED_CHANNEL_PREFIX "stamps:load:"
#define REDISFEED_CHANNEL_PATTERN "stamps:load:*"
#define REDISFEED_KEY_PATTERN "stamp:*:load"
/* Cache invalidations between control planes: "device <tenant> <regid>" or "tenant <id>". */
#define REDISFEED_INVALIDATE_CHANNEL "cp:invalidate"

struct redisfeed;

struct redisfeed_hooks {
    /* A message on the invalidation channel (payload NUL-terminated). */
    void (*on_invalidate)(const char *payload, void *arg);
    /* The subscription was (re)established: messages may have been missed. */
    void (*on_resubscribed)(void *arg);
    void *arg;
};

/* auth: the control plane's Redis user (copied; NULL or empty: no AUTH). */
struct redisfeed *redisfeed_new(struct event_base *base, const char *host, int port, const struct redis_auth *auth,
                                struct loadtable *lt, const struct redisfeed_hooks *hooks);
void redisfeed_free(struct redisfeed *f);
/* Both connections up and the heartbeat answered recently. */
bool redisfeed_is_ready(const struct redisfeed *f);
/* The command connection for other modules' commands, or NULL while down. */
struct redisAsyncContext *redisfeed_cmd(struct redisfeed *f);
/*
 * Publish an invalidation and call done once it has come back to this
 * process's own subscription (delivered true), or after a second or on
 * failure (false). Redis writes a message to every subscriber in the same
 * pass, so when it is back here it is waiting at every other control plane
 * too: a change answered after done() can't be contradicted by a cache
 * elsewhere that drains before answering (redisfeed_drain). done never runs
 * inside this call.
 */
typedef void (*redisfeed_done_cb)(bool delivered, void *arg);
void redisfeed_invalidate_wait(struct redisfeed *f, const char *payload, redisfeed_done_cb done, void *arg);

/* Apply any invalidations already waiting on the subscription socket (one
 * non-blocking read). Call before answering from a cache. */
void redisfeed_drain(struct redisfeed *f);

#endif
