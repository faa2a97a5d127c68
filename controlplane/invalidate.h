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
 * been lost), this instance's caches are cleared.
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

/* Apply a message's payload to this process's caches (also used by tests). */
void invalidate_apply(struct cp *cp, const char *payload);

/* Apply what is already waiting on the subscription socket; call before
 * answering from a cache. */
void invalidate_drain(struct invalidate *inv);

#endif
