/*
 * strmap.c - chained string hash map, hashed with SipHash-2-4 under a 128-bit
 * key drawn from the OS RNG at first use (one key per process), so a client
 * that chooses the keys (tenant ids, registration ids) cannot predict which
 * bucket they land in and degrade a map into one long chain.
 */
#include "strmap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

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

/* ---- SipHash-2-4 (Aumasson & Bernstein), 64-bit output ---- */

#define STRMAP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define STRMAP_SIPROUND                                                        \
    do {                                                                       \
        v0 += v1; v1 = STRMAP_ROTL(v1, 13); v1 ^= v0; v0 = STRMAP_ROTL(v0, 32); \
        v2 += v3; v3 = STRMAP_ROTL(v3, 16); v3 ^= v2;                          \
        v0 += v3; v3 = STRMAP_ROTL(v3, 21); v3 ^= v0;                          \
        v2 += v1; v1 = STRMAP_ROTL(v1, 17); v1 ^= v2; v2 = STRMAP_ROTL(v2, 32); \
    } while (0)

static uint64_t strmap_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

uint64_t strmap_siphash24(const unsigned char key[16], const void *data, size_t len)
{
    const unsigned char *in = data;
    uint64_t k0 = strmap_le64(key), k1 = strmap_le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    uint64_t m, b = (uint64_t)len << 56;
    size_t i, tail = len & 7;

    for (i = 0; i + 8 <= len; i += 8) {
        m = strmap_le64(in + i);
        v3 ^= m;
        STRMAP_SIPROUND;
        STRMAP_SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; j < tail; j++)
        b |= (uint64_t)in[i + j] << (8 * j);
    v3 ^= b;
    STRMAP_SIPROUND;
    STRMAP_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    STRMAP_SIPROUND;
    STRMAP_SIPROUND;
    STRMAP_SIPROUND;
    STRMAP_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the per-process key ---- */

static unsigned char strmap_key[16];
static pthread_once_t strmap_key_once = PTHREAD_ONCE_INIT;

static bool strmap_read_urandom(unsigned char *buf, size_t len)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    size_t got = 0;
    if (fd < 0)
        return false;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    return got == len;
}

static void strmap_key_init(void)
{
    size_t got = 0;
    while (got < sizeof strmap_key) {
        ssize_t n = getrandom(strmap_key + got, sizeof strmap_key - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got < sizeof strmap_key && !strmap_read_urandom(strmap_key, sizeof strmap_key)) {
        /* Without randomness every map would be predictable: refuse to run. */
        fprintf(stderr, "strmap: no randomness from the OS for the hash key\n");
        abort();
    }
}

static uint64_t strmap_hash(const char *s)
{
    pthread_once(&strmap_key_once, strmap_key_init);
    return strmap_siphash24(strmap_key, s, strlen(s));
}

struct strmap *strmap_new(void)
{
    struct strmap *m = xcalloc(1, sizeof *m);
    m->nbuckets = 64;
    m->buckets = xcalloc(m->nbuckets, sizeof *m->buckets);
    return m;
}

void strmap_foreach(const struct strmap *m, void (*fn)(const char *key, void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (const struct strmap_node *n = m->buckets[i]; n; n = n->next)
            fn(n->key, n->value, arg);
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
