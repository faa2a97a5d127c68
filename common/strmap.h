/*
 * strmap.h - a string-keyed hash map (chained, power-of-two buckets, grows
 * at load factor 1). Values are opaque pointers the caller owns; the map owns
 * its copies of the keys. Keys are hashed with SipHash-2-4 under a random
 * per-process key, so keys chosen by a client cannot be made to collide.
 */
#ifndef STAMPCP_STRMAP_H
#define STAMPCP_STRMAP_H

#include <stddef.h>
#include <stdint.h>

struct strmap;

struct strmap *strmap_new(void);
/* Frees the map; calls free_value (if not NULL) on every value. */
void strmap_free(struct strmap *m, void (*free_value)(void *));
void *strmap_get(const struct strmap *m, const char *key);
/* Insert or replace; returns the previous value (or NULL) for the caller to free. */
void *strmap_put(struct strmap *m, const char *key, void *value);
/* Remove; returns the value (or NULL). */
void *strmap_del(struct strmap *m, const char *key);
size_t strmap_count(const struct strmap *m);
/* Call fn on every entry, in no particular order; fn must not change the map. */
void strmap_foreach(const struct strmap *m, void (*fn)(const char *key, void *value, void *arg), void *arg);
/* Remove everything, calling free_value on each value. */
void strmap_clear(struct strmap *m, void (*free_value)(void *));

/* SipHash-2-4 of len bytes under a 16-byte key (exposed for its test vectors). */
uint64_t strmap_siphash24(const unsigned char key[16], const void *data, size_t len);

#endif
