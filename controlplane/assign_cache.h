/*
 * assign_cache.h - a bounded LRU of answered device assignments, for fast
 * repeat lookups (the status lookup devices make on every boot).
 *
 * Never wrong after a move: any change to an assignment is published on the
 * Redis channel cp:invalidate and every control plane drops the entry; when
 * the subscription is lost (messages may have been missed) the whole cache
 * is dropped. A lookup that raced an invalidation is not cached (epoch).
 *
 * Invalidations name a device by its pseudonym (pseudonym.h), never by its
 * registration id: with a pseudonym key set, every entry is also indexed by
 * tenant + pseudonym, at most one entry per pseudonym (should two ids of a
 * tenant share one, the newer entry pushes the older out: never a wrong
 * answer, only a miss).
 *
 * Ownership: the cache owns its copies of keys and answers; the pseudonym
 * key is borrowed and must outlive the cache.
 */
#ifndef CP_ASSIGN_CACHE_H
#define CP_ASSIGN_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "pseudonym.h"

struct assign_cache;

/* Entries also expire after ttl_ms, a backstop should an invalidation be lost. */
struct assign_cache *assign_cache_new(size_t max_entries, int64_t ttl_ms);
void assign_cache_free(struct assign_cache *c);

/* The cached answer (JSON text) for a device, or NULL. Marks it recently used. */
const char *assign_cache_get(struct assign_cache *c, const char *tenant, const char *regid);
/* The epoch to pass to assign_cache_put after an asynchronous lookup. */
uint64_t assign_cache_epoch(const struct assign_cache *c);
/* Store an answer unless something was invalidated since epoch was read. */
void assign_cache_put(struct assign_cache *c, uint64_t epoch, const char *tenant, const char *regid,
                      const char *json);
void assign_cache_forget(struct assign_cache *c, const char *tenant, const char *regid);
/* Index entries by pseudonym from now on (call before the first put). */
void assign_cache_set_pseudonym(struct assign_cache *c, const struct pseudonym *p);
/* Drop the entry of the device with this pseudonym (an invalidation message). */
void assign_cache_forget_pseudo(struct assign_cache *c, const char *tenant, const char *pseudo);
void assign_cache_clear(struct assign_cache *c);
size_t assign_cache_count(const struct assign_cache *c);

#endif
