/*
 * invalidate.h - cache invalidations between control planes: the one owner of
 * the message format on the Redis channel cp:invalidate, of publishing a
 * message (and waiting for it to come back), and of parsing and applying the
 * messages other instances (and this one) send.
 *
 *   device <tenant> <pseudonym> <pseudonym key id> #<nonce>
 *   tenant <tenant> #<nonce>
 *   apikey <key id> #<nonce>
 *
 * A device is named by its keyed pseudonym (dev_..., pseudonym.h), never by
 * its registration id. (A control plane older than pseudonyms sent
 * "device <tenant> <registrationId>"; that is still understood.)
 *
 * A message is "delivered" once it came back on this process's own
 * subscription: Redis writes a message to every subscriber in the same pass,
 * so then it is waiting at every other control plane too, and a cache there
 * drains its socket (invalidate_drain) before answering from its cache.
 * While the subscription is down, or after it came back (messages may have
 * been lost), this instance's caches are cleared; while it is down, or not
 * proven alive within cacheTrustMs, they are also bypassed
 * (invalidate_cache_trusted).
 *
 * Delivery is guaranteed by an outbox: every change also writes a row in its
 * own transaction (triggers, schema/geo/008 and schema/global/013), and a
 * relay here - in every control plane, at start-up and every second - claims
 * rows (a lease, SKIP LOCKED), publishes them and deletes them. A request
 * still publishes at once after its commit (the fast path); the relay covers
 * a crash between commit and publish, within about a second.
 *
 * Ownership: done(delivered, arg) runs exactly once, never from inside the
 * call that queued it; the caller keeps arg alive until then.
 */
#ifndef CP_INVALIDATE_H
#define CP_INVALIDATE_H

#include <stdbool.h>

#define INVALIDATE_CHANNEL "cp:invalidate"

struct cp;
struct redisbus;
struct invalidate;

typedef void (*invalidate_done_cb)(bool delivered, void *arg);

/* Registers the subscription on bus (before the loop runs); free it after the bus. */
struct invalidate *invalidate_new(struct cp *cp, struct redisbus *bus);
/* Pending waits are dropped without their callbacks. */
void invalidate_free(struct invalidate *inv);

/* Whether a change can be announced now (command connection and subscription up):
 * changes that must not go unannounced are refused (503) otherwise. */
bool invalidate_can_announce(const struct invalidate *inv);

/* Drop the local copies, publish, and call done once the message came back
 * (delivered) or after a second, or at once on failure (not delivered). */
void invalidate_device(struct invalidate *inv, const char *tenant, const char *regid, invalidate_done_cb done,
                       void *arg);
void invalidate_tenant(struct invalidate *inv, const char *tenant, invalidate_done_cb done, void *arg);
void invalidate_apikey(struct invalidate *inv, const char *key_id, invalidate_done_cb done, void *arg);

/* Whether cached answers may be used (and stored): only while the
 * subscription is up AND proven alive within cacheTrustMs (redisbus.h: every
 * message Redis published before the proof has been applied). While it is
 * down the caches are empty and bypassed; when it comes back they are dropped
 * once more and trusted from then on. While it is up but unproven they are
 * bypassed, not dropped. Also decides for the tenant cache (tenants_set_trust). */
bool invalidate_cache_trusted(struct invalidate *inv);

/* Test-only fault injection: with STAMPCP_FAULT=exit_after_commit:<point>
 * in the environment, the process kills itself (SIGKILL) here. Called by a
 * change between its commit and its publish ("device_move",
 * "device_release"); the outbox relay must then deliver the change. */
void invalidate_fault(const struct invalidate *inv, const char *point);

/* Apply a message's payload to this process's caches (also used by tests). */
void invalidate_apply(struct cp *cp, const char *payload);

/* Apply what is already waiting on the subscription socket; call before
 * answering from a cache. */
void invalidate_drain(struct invalidate *inv);

#endif
