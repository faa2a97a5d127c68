/*
 * strmap.h - a string-keyed hash map (chained, power-of-two buckets, grows
 * at load factor 1). Values are opaque pointers the caller owns.
 */
#ifndef STAMPCP_STRMAP_H
#define STAMPCP_STRMAP_H

#include <stddef.h>

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
/* Remove everything, calling free_value on each value. */
void strmap_clear(struct strmap *m, void (*free_value)(void *));

#endif
