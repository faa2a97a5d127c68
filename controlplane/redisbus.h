/*
 * redisbus.h - the control plane's two Redis connections, shared by the
 * modules that use Redis (the load feed, invalidations, rate limits):
 *
 *   cmd  every command, plus a 1 s PING heartbeat (3 s timeout);
 *   sub  the subscriptions (a subscribed connection can't run commands), and
 *        its own heartbeat: SUBSCRIBE again to the first registered channel
 *        every sub_heartbeat_ms (a 3 s silence drops it), whose answers prove
 *        the subscription alive (redisbus_sub_proven_ms).
 *
 * Modules register their subscriptions once, before the first connect; the
 * bus (re)sends them after every connect of `sub` and tells each module when
 * its own subscription is confirmed, so that the module can catch up on what
 * it may have missed. If `cmd`'s heartbeat fails, `sub` is dropped as well:
 * a server that stopped answering commands can't be trusted to deliver.
 *
 * Ownership: the bus copies nothing of a registration but the pointers; the
 * registering module outlives the bus's use of them (modules are freed after
 * redisbus_free, or unregister by freeing the bus first). Callbacks run from
 * hiredis callbacks: they may issue commands but must not free the bus.
 */
#ifndef CP_REDISBUS_H
#define CP_REDISBUS_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dns.h"
#include "redisauth.h"
#include "redistarget.h"

struct redisAsyncContext;
struct redisbus;

#define REDISBUS_MAX_SUBS 4

struct redisbus_sub {
    bool pattern;                 /* PSUBSCRIBE (true) or SUBSCRIBE */
    const char *channel;          /* the channel or pattern; static storage */
    /* (Re)subscribed: messages sent while we were not may have been missed. */
    void (*on_subscribed)(void *arg);
    /* The subscription is gone (connection lost): until on_subscribed, nothing
     * on this channel reaches us. May be NULL. */
    void (*on_unsubscribed)(void *arg);
    /* A message: channel is the one it was published on (pattern subs). */
    void (*on_message)(const char *channel, size_t chan_len, const char *msg, size_t len, void *arg);
    void *arg;
};

/* target: the server or the Sentinels (copied); dns: borrowed, outlives the bus;
 * auth: the control plane's Redis user (copied; NULL or empty: no AUTH);
 * sub_heartbeat_ms: how often `sub` is proven alive (<= 0: 250). */
struct redisbus *redisbus_new(struct event_base *base, struct dns *dns, const struct redis_target *target,
                              const struct redis_auth *auth, int sub_heartbeat_ms);
/* Disconnects; pending command callbacks run with a NULL reply. */
void redisbus_free(struct redisbus *b);

/* Register a subscription (at most REDISBUS_MAX_SUBS; before the loop runs). */
void redisbus_subscribe(struct redisbus *b, const struct redisbus_sub *s);
/* Called each time `cmd` comes up / goes down (one of each; may be NULL). */
void redisbus_on_cmd(struct redisbus *b, void (*up)(void *arg), void (*down)(void *arg), void *arg);

/* The command connection, or NULL while it is down. */
struct redisAsyncContext *redisbus_cmd(struct redisbus *b);
/* Both connections up, the heartbeat answered, every subscription confirmed. */
bool redisbus_is_ready(const struct redisbus *b);
/*
 * The subscription's proof of life, on util_mono_ms()'s clock: every message
 * Redis published before this time has been read (and handed to on_message).
 * It is the send time of the newest heartbeat answered (or of the
 * subscription itself). 0 while not every subscription is confirmed.
 */
int64_t redisbus_sub_proven_ms(const struct redisbus *b);
/* Apply any messages already waiting on the subscription socket (one
 * non-blocking read). Call before answering from a cache. */
void redisbus_drain(struct redisbus *b);

#endif
