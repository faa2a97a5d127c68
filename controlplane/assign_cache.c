/*
 * assign_cache.c - string map plus an intrusive LRU list.
 */
#include "assign_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "strmap.h"
#include "util.h"

struct ac_entry {
    TAILQ_ENTRY(ac_entry) lru;
    char *key;
    char *pkey;               /* tenant + pseudonym, or NULL */
    char *json;
    int64_t expires_mono_ms;
};
TAILQ_HEAD(ac_list, ac_entry);

struct assign_cache {
    struct strmap *map;
    struct strmap *pmap;      /* pkey -> entry */
    const struct pseudonym *pseudo;
    struct ac_list lru;       /* most recently used first */
    size_t max;
    int64_t ttl_ms;
    uint64_t epoch;
};

static void ac_key(char *buf, size_t len, const char *tenant, const char *regid)
{
    snprintf(buf, len, "%s\x1f%s", tenant, regid);
}

struct assign_cache *assign_cache_new(size_t max_entries, int64_t ttl_ms)
{
    struct assign_cache *c = xcalloc(1, sizeof *c);
    c->ttl_ms = ttl_ms;
    c->map = strmap_new();
    c->pmap = strmap_new();
    TAILQ_INIT(&c->lru);
    c->max = max_entries ? max_entries : 1;
    return c;
}

/* Unlink e from both maps and the LRU, and free it. */
static void ac_entry_drop(struct assign_cache *c, struct ac_entry *e)
{
    strmap_del(c->map, e->key);
    if (e->pkey)
        strmap_del(c->pmap, e->pkey);
    TAILQ_REMOVE(&c->lru, e, lru);
    free(e->key);
    free(e->pkey);
    free(e->json);
    free(e);
}

void assign_cache_clear(struct assign_cache *c)
{
    struct ac_entry *e;
    while ((e = TAILQ_FIRST(&c->lru)) != NULL)
        ac_entry_drop(c, e);
    c->epoch++;
}

void assign_cache_free(struct assign_cache *c)
{
    if (!c) return;
    assign_cache_clear(c);
    strmap_free(c->map, NULL);
    strmap_free(c->pmap, NULL);
    free(c);
}

void assign_cache_set_pseudonym(struct assign_cache *c, const struct pseudonym *p)
{
    c->pseudo = p;
}

const char *assign_cache_get(struct assign_cache *c, const char *tenant, const char *regid)
{
    char key[256];
    struct ac_entry *e;
    ac_key(key, sizeof key, tenant, regid);
    e = strmap_get(c->map, key);
    if (!e)
        return NULL;
    if (e->expires_mono_ms <= util_mono_ms()) {
        ac_entry_drop(c, e);
        return NULL;
    }
    TAILQ_REMOVE(&c->lru, e, lru);
    TAILQ_INSERT_HEAD(&c->lru, e, lru);
    return e->json;
}

uint64_t assign_cache_epoch(const struct assign_cache *c)
{
    return c->epoch;
}

void assign_cache_put(struct assign_cache *c, uint64_t epoch, const char *tenant, const char *regid,
                      const char *json)
{
    char key[256];
    struct ac_entry *e;
    if (epoch != c->epoch)
        return;
    ac_key(key, sizeof key, tenant, regid);
    if ((e = strmap_get(c->map, key)) != NULL) {
        free(e->json);
        e->json = xstrdup(json);
        e->expires_mono_ms = util_mono_ms() + c->ttl_ms;
        TAILQ_REMOVE(&c->lru, e, lru);
        TAILQ_INSERT_HEAD(&c->lru, e, lru);
        return;
    }
    if (strmap_count(c->map) >= c->max)
        ac_entry_drop(c, TAILQ_LAST(&c->lru, ac_list));
    e = xcalloc(1, sizeof *e);
    e->key = xstrdup(key);
    e->json = xstrdup(json);
    e->expires_mono_ms = util_mono_ms() + c->ttl_ms;
    if (c->pseudo) {
        char ps[PSEUDONYM_LEN], pkey[128];
        struct ac_entry *other;
        ac_key(pkey, sizeof pkey, tenant, pseudonym_device(c->pseudo, tenant, regid, ps));
        if ((other = strmap_get(c->pmap, pkey)) != NULL)
            ac_entry_drop(c, other);   /* two ids, one pseudonym: keep the newer */
        e->pkey = xstrdup(pkey);
        strmap_put(c->pmap, pkey, e);
    }
    TAILQ_INSERT_HEAD(&c->lru, e, lru);
    strmap_put(c->map, key, e);
}

void assign_cache_forget(struct assign_cache *c, const char *tenant, const char *regid)
{
    char key[256];
    struct ac_entry *e;
    ac_key(key, sizeof key, tenant, regid);
    c->epoch++;
    if ((e = strmap_get(c->map, key)) != NULL)
        ac_entry_drop(c, e);
}

void assign_cache_forget_pseudo(struct assign_cache *c, const char *tenant, const char *pseudo)
{
    char pkey[128];
    struct ac_entry *e;
    ac_key(pkey, sizeof pkey, tenant, pseudo);
    c->epoch++;
    if ((e = strmap_get(c->pmap, pkey)) != NULL)
        ac_entry_drop(c, e);
}

size_t assign_cache_count(const struct assign_cache *c)
{
    return strmap_count(c->map);
}
