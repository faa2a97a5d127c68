/*
 * strmap.c - chained string hash map with FNV-1a hashing.
 */
#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct strmap_node {
    struct strmap_node *next;
    uint64_t hash;
    void *value;
    char key[];
};

struct strmap {
    struct strmap_node **buckets;
    size_t nbuckets;   /* power of two */
    size_t count;
};

static uint64_t strmap_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

struct strmap *strmap_new(void)
{
    struct strmap *m = xcalloc(1, sizeof *m);
    m->nbuckets = 64;
    m->buckets = xcalloc(m->nbuckets, sizeof *m->buckets);
    return m;
}

void strmap_clear(struct strmap *m, void (*free_value)(void *))
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct strmap_node *n = m->buckets[i], *next;
        for (; n; n = next) {
            next = n->next;
            if (free_value) free_value(n->value);
            free(n);
        }
        m->buckets[i] = NULL;
    }
    m->count = 0;
}

void strmap_free(struct strmap *m, void (*free_value)(void *))
{
    if (!m) return;
    strmap_clear(m, free_value);
    free(m->buckets);
    free(m);
}

static struct strmap_node **strmap_slot(const struct strmap *m, const char *key, uint64_t h)
{
    struct strmap_node **p = &m->buckets[h & (m->nbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->hash == h && strcmp((*p)->key, key) == 0)
            break;
    return p;
}

void *strmap_get(const struct strmap *m, const char *key)
{
    struct strmap_node **p = strmap_slot(m, key, strmap_hash(key));
    return *p ? (*p)->value : NULL;
}

static void strmap_grow(struct strmap *m)
{
    size_t nb = m->nbuckets * 2;
    struct strmap_node **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct strmap_node *n = m->buckets[i], *next;
        for (; n; n = next) {
            next = n->next;
            n->next = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
}

void *strmap_put(struct strmap *m, const char *key, void *value)
{
    uint64_t h = strmap_hash(key);
    struct strmap_node **p = strmap_slot(m, key, h), *n;
    size_t klen;
    if (*p) {
        void *old = (*p)->value;
        (*p)->value = value;
        return old;
    }
    klen = strlen(key);
    n = xmalloc(sizeof *n + klen + 1);
    memcpy(n->key, key, klen + 1);
    n->hash = h;
    n->value = value;
    n->next = NULL;
    *p = n;
    if (++m->count > m->nbuckets)
        strmap_grow(m);
    return NULL;
}

void *strmap_del(struct strmap *m, const char *key)
{
    struct strmap_node **p = strmap_slot(m, key, strmap_hash(key)), *n = *p;
    void *v;
    if (!n) return NULL;
    *p = n->next;
    v = n->value;
    free(n);
    m->count--;
    return v;
}

size_t strmap_count(const struct strmap *m)
{
    return m->count;
}
