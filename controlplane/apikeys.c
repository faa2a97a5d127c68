/*
 * apikeys.c - API key verification with a short-lived cache (apikeys.h).
 *
 * Each entry is the key's row as last read (or "no such key"), valid for
 * APIKEYS_FRESH_MS. A verification with a fresh entry is decided in memory;
 * otherwise it waits for the one query in flight for that id. A forget()
 * during a query marks the entry so that the answer of that query, which
 * may predate the change, is not used: the query is made again.
 *
 * Ids never seen before cost a query each, so their fetches take a token
 * from a small bucket (made-up keys must not turn into a flood of queries);
 * beyond it such a key is refused without one.
 */
#include "apikeys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "strmap.h"
#include "util.h"

#define APIKEYS_MAX_ENTRIES 10000
#define APIKEYS_UNKNOWN_RATE 200.0     /* fetches of ids not known to exist, per second */
#define APIKEYS_UNKNOWN_BURST 400.0

struct ak_waiter {
    char sha[65];
    apikeys_cb cb;
    void *arg;
    struct ak_waiter *next;
};

/* Every entry is on the list (oldest use first), which owns it; the map
 * indexes those that are current. An entry dropped from the map while its
 * query runs stays on the list until the query's callback has answered its
 * waiters. */
struct ak_entry {
    struct apikeys *owner;
    struct ak_entry *prev, *next;
    char id[APIKEY_ID_LEN + 1];
    bool in_map;
    bool found;                 /* the row exists */
    bool usable;                /* not revoked, and its tenant not removed */
    struct principal p;
    char sha[65], prev_sha[65];
    int64_t prev_until_ms;      /* wall clock; 0: no previous secret */
    int64_t expires_ms;         /* wall clock; 0: never */
    int64_t fetched_mono;       /* when the query that filled it was sent; 0: never (or forgotten) */
    int64_t started_mono;       /* when the query in flight was sent */
    bool fetching, refetch;
    struct ak_waiter *waiters;
};

struct apikeys {
    struct pgpool *global;
    struct strmap *entries;     /* id -> struct ak_entry (current ones) */
    struct ak_entry *head, *tail;
    size_t nlist;
    double tokens;
    int64_t tokens_at;
};

static const char ak_fetch_sql[] =
    "SELECT k.name, coalesce(k.tenant_id, ''), array_to_string(k.scopes, ' '), "
    "encode(k.secret_sha256, 'hex'), coalesce(encode(k.previous_sha256, 'hex'), ''), "
    "coalesce((extract(epoch FROM k.previous_valid_until) * 1000)::bigint, 0), "
    "coalesce((extract(epoch FROM k.expires_at) * 1000)::bigint, 0), "
    "k.revoked_at IS NULL AND (k.tenant_id IS NULL OR (t.id IS NOT NULL AND t.deleted_at IS NULL"
    " AND t.offboarding_at IS NULL)), "
    "coalesce(array_to_string(t.residency_geographies, ' '), '') "
    "FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1";

struct apikeys *apikeys_new(struct pgpool *global)
{
    struct apikeys *k = xcalloc(1, sizeof *k);
    k->global = global;
    k->entries = strmap_new();
    k->tokens = APIKEYS_UNKNOWN_BURST;
    k->tokens_at = util_mono_ms();
    return k;
}

static void ak_list_unlink(struct apikeys *k, struct ak_entry *e)
{
    if (e->prev) e->prev->next = e->next; else k->head = e->next;
    if (e->next) e->next->prev = e->prev; else k->tail = e->prev;
    e->prev = e->next = NULL;
    k->nlist--;
}

static void ak_list_append(struct apikeys *k, struct ak_entry *e)
{
    e->prev = k->tail;
    e->next = NULL;
    if (k->tail) k->tail->next = e; else k->head = e;
    k->tail = e;
    k->nlist++;
}

static void ak_entry_destroy(struct apikeys *k, struct ak_entry *e)
{
    struct ak_waiter *w, *n;
    if (e->in_map)
        strmap_del(k->entries, e->id);
    ak_list_unlink(k, e);
    for (w = e->waiters; w; w = n) {
        n = w->next;
        free(w);
    }
    free(e);
}

void apikeys_free(struct apikeys *k)
{
    if (!k)
        return;
    /* the global pool is freed before this: no callback will come, and the
     * requests still waiting were abandoned with the listener */
    while (k->head)
        ak_entry_destroy(k, k->head);
    strmap_free(k->entries, NULL);
    free(k);
}

/* Room for one more entry: drop the oldest entries that are idle and either
 * absent or stale (a known, fresh key is never pushed out by made-up ids). */
static void ak_make_room(struct apikeys *k)
{
    struct ak_entry *e, *n;
    int64_t now = util_mono_ms();
    if (k->nlist < APIKEYS_MAX_ENTRIES)
        return;
    for (e = k->head; e && k->nlist >= APIKEYS_MAX_ENTRIES * 9 / 10; e = n) {
        n = e->next;
        if (!e->fetching && !e->waiters && (!e->found || now - e->fetched_mono >= APIKEYS_FRESH_MS))
            ak_entry_destroy(k, e);
    }
}
bool apikeys_parse(const char *token, char id[APIKEY_ID_LEN + 1], char secret[APIKEY_SECRET_LEN + 1])
{
    const char *p;
    if (!token || strncmp(token, APIKEY_PREFIX, 4) != 0)
        return false;
    p = token + 4;
    for (int i = 0; i < APIKEY_ID_LEN; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    if (p[APIKEY_ID_LEN] != '_')
        return false;
    for (int i = 0; i < APIKEY_SECRET_LEN; i++) {
        char c = p[APIKEY_ID_LEN + 1 + i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    if (p[APIKEY_ID_LEN + 1 + APIKEY_SECRET_LEN] != '\0')
        return false;
    memcpy(id, p, APIKEY_ID_LEN);
    id[APIKEY_ID_LEN] = '\0';
    memcpy(secret, p + APIKEY_ID_LEN + 1, APIKEY_SECRET_LEN);
    secret[APIKEY_SECRET_LEN] = '\0';
    return true;
}

void apikeys_hash_hex(const char *secret, char out[65])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)secret, strlen(secret), d);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static bool ak_fresh(const struct ak_entry *e)
{
    return e->fetched_mono > 0 && util_mono_ms() - e->fetched_mono < APIKEYS_FRESH_MS;
}

/* The verdict for a secret's hash; *p is the caller on APIKEY_OK. A secret
 * kept for a rotation overlap is the key only until the overlap ends: its
 * principal expires then and may not rotate the key (principal.h). */
static enum apikey_verdict ak_decide(const struct ak_entry *e, const char *sha, struct principal *p)
{
    int64_t now = util_wall_ms();
    if (!e->found || !e->usable)
        return APIKEY_INVALID;
    if (e->expires_ms && now >= e->expires_ms)
        return APIKEY_INVALID;
    *p = e->p;
    if (CRYPTO_memcmp(sha, e->sha, 64) == 0)
        return APIKEY_OK;
    if (e->prev_sha[0] && now < e->prev_until_ms && CRYPTO_memcmp(sha, e->prev_sha, 64) == 0) {
        p->via_previous = true;
        if (!p->expires_ms || e->prev_until_ms < p->expires_ms)
            p->expires_ms = e->prev_until_ms;
        return APIKEY_OK;
    }
    return APIKEY_INVALID;
}

/* Fill the entry from the row (or mark it absent). */
static void ak_load_row(struct ak_entry *e, const PGresult *res)
{
    char *scopes, *geos, *save = NULL, *w;
    memset(&e->p, 0, sizeof e->p);
    e->found = PQntuples(res) == 1;
    e->usable = false;
    if (!e->found)
        return;
    e->p.kind = PRINCIPAL_KEY;
    snprintf(e->p.key_id, sizeof e->p.key_id, "%s", e->id);
    snprintf(e->p.name, sizeof e->p.name, "%s", PQgetvalue(res, 0, 0));
    snprintf(e->p.tenant, sizeof e->p.tenant, "%s", PQgetvalue(res, 0, 1));
    scopes = xstrdup(PQgetvalue(res, 0, 2));
    for (w = strtok_r(scopes, " ", &save); w; w = strtok_r(NULL, " ", &save))
        e->p.scopes |= principal_scope_from_word(w);
    free(scopes);
    snprintf(e->sha, sizeof e->sha, "%s", PQgetvalue(res, 0, 3));
    snprintf(e->prev_sha, sizeof e->prev_sha, "%s", PQgetvalue(res, 0, 4));
    e->prev_until_ms = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
    e->expires_ms = strtoll(PQgetvalue(res, 0, 6), NULL, 10);
    e->p.expires_ms = e->expires_ms;
    e->usable = strcmp(PQgetvalue(res, 0, 7), "t") == 0;
    geos = xstrdup(PQgetvalue(res, 0, 8));
    save = NULL;
    for (w = strtok_r(geos, " ", &save); w && e->p.nresidency < PRINCIPAL_MAX_GEOS; w = strtok_r(NULL, " ", &save))
        snprintf(e->p.residency[e->p.nresidency++], sizeof e->p.residency[0], "%s", w);
    free(geos);
}

static void ak_fetch(struct apikeys *k, struct ak_entry *e);

static void ak_on_fetched(const struct pgq_result *q, void *arg)
{
    struct ak_entry *e = arg;
    struct apikeys *k = e->owner;
    struct ak_waiter *w, *n;
    bool ok = q->status == PGQ_OK;

    e->fetching = false;
    if (ok && e->refetch) {
        e->refetch = false;
        ak_fetch(k, e);   /* a change was announced while this query ran: its answer may predate it */
        return;
    }
    if (ok) {
        ak_load_row(e, q->res);
        e->fetched_mono = e->started_mono;
    } else {
        log_warn("event=apikey_fetch_failed status=%d error=\"%.200s\"", (int)q->status,
                 q->message ? q->message : "");
    }
    w = e->waiters;
    e->waiters = NULL;
    for (; w; w = n) {
        struct principal p;
        n = w->next;
        if (!ok) {
            w->cb(APIKEY_UNAVAILABLE, NULL, w->arg);
        } else {
            enum apikey_verdict v = ak_decide(e, w->sha, &p);
            w->cb(v, v == APIKEY_OK ? &p : NULL, w->arg);
        }
        free(w);
    }
    if (!e->in_map)
        ak_entry_destroy(k, e);   /* replaced or dropped while its query ran */
    else {
        ak_list_unlink(k, e);     /* most recently used last */
        ak_list_append(k, e);
    }
}

static void ak_fetch(struct apikeys *k, struct ak_entry *e)
{
    const char *values[1] = {e->id};
    e->fetching = true;
    e->started_mono = util_mono_ms();
    pgpool_query(k->global, ak_fetch_sql, 1, values, ak_on_fetched, e);
}

static bool ak_take_unknown_token(struct apikeys *k)
{
    int64_t now = util_mono_ms();
    k->tokens += (double)(now - k->tokens_at) * APIKEYS_UNKNOWN_RATE / 1000.0;
    if (k->tokens > APIKEYS_UNKNOWN_BURST)
        k->tokens = APIKEYS_UNKNOWN_BURST;
    k->tokens_at = now;
    if (k->tokens < 1.0)
        return false;
    k->tokens -= 1.0;
    return true;
}

void apikeys_verify(struct apikeys *k, const char *token, apikeys_cb cb, void *arg)
{
    char id[APIKEY_ID_LEN + 1], secret[APIKEY_SECRET_LEN + 1], sha[65];
    struct ak_entry *e;
    struct ak_waiter *w;
    struct principal p;

    if (!apikeys_parse(token, id, secret)) {
        cb(APIKEY_INVALID, NULL, arg);
        return;
    }
    apikeys_hash_hex(secret, sha);
    OPENSSL_cleanse(secret, sizeof secret);
    e = strmap_get(k->entries, id);
    if (e && ak_fresh(e) && !e->fetching) {
        enum apikey_verdict v = ak_decide(e, sha, &p);
        cb(v, v == APIKEY_OK ? &p : NULL, arg);
        return;
    }
    /* A query for an id not known to exist (new, or absent when last read)
     * takes a token; with none left the answer is "busy", never "invalid":
     * a flood of made-up keys must not lock out a real one. */
    if ((!e || (!e->found && !e->fetching)) && !ak_take_unknown_token(k)) {
        cb(APIKEY_BUSY, NULL, arg);
        return;
    }
    if (!e) {
        ak_make_room(k);
        e = xcalloc(1, sizeof *e);
        e->owner = k;
        snprintf(e->id, sizeof e->id, "%s", id);
        e->in_map = true;
        strmap_put(k->entries, id, e);
        ak_list_append(k, e);
    }
    w = xcalloc(1, sizeof *w);
    memcpy(w->sha, sha, sizeof w->sha);
    w->cb = cb;
    w->arg = arg;
    w->next = e->waiters;
    e->waiters = w;
    if (!e->fetching)
        ak_fetch(k, e);
}

bool apikeys_maybe_valid(struct apikeys *k, const char *token)
{
    char id[APIKEY_ID_LEN + 1], secret[APIKEY_SECRET_LEN + 1], sha[65];
    struct ak_entry *e;
    struct principal p;
    bool ok;
    if (!apikeys_parse(token, id, secret))
        return false;
    if (!(e = strmap_get(k->entries, id)) || !ak_fresh(e) || e->fetching) {
        OPENSSL_cleanse(secret, sizeof secret);
        return true;
    }
    apikeys_hash_hex(secret, sha);
    OPENSSL_cleanse(secret, sizeof secret);
    ok = ak_decide(e, sha, &p) == APIKEY_OK;
    return ok;
}

void apikeys_forget(struct apikeys *k, const char *id)
{
    struct ak_entry *e = strmap_get(k->entries, id);
    if (!e)
        return;
    e->fetched_mono = 0;
    if (e->fetching)
        e->refetch = true;
}

static void ak_forget_one(const char *key, void *value, void *arg)
{
    struct ak_entry *e = value;
    (void)key; (void)arg;
    e->fetched_mono = 0;
    if (e->fetching)
        e->refetch = true;
}

void apikeys_forget_all(struct apikeys *k)
{
    strmap_foreach(k->entries, ak_forget_one, NULL);
}
