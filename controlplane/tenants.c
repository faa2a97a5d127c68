/*
 * tenants.c - tenant cache (refcounted entries, TTL), the bounded negative
 * cache (LRU), coalescing of concurrent fetches, the unknown-id fetch budget,
 * and parsing of the catalog row.
 */
#include "tenants.h"

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"
#include "sas.h"
#include "strmap.h"
#include "util.h"

/* One tenant's row: $1 = id. */
static const char tenants_select_sql[] =
    "SELECT json_build_object("
    "'public', json_build_object('id',t.id,'name',t.name,"
    "  'residency',json_build_object('geographies',t.residency_geographies,'regions',t.residency_regions),"
    "  'tenancy',t.tenancy,'dedicatedStamps',t.dedicated_stamps,'version',t.version,"
    "  'status',t.status,'quotas',json_build_object('maxDevices',t.max_devices,"
    "  'maxProvisionsPerMinute',t.max_provisions_per_minute),"
    "  'createdAt',cp_ts(t.created_at),'updatedAt',cp_ts(t.updated_at)),"
    "'enrollmentKey', t.enrollment_key, 'enrollmentKeyPrevious', t.enrollment_key_previous,"
    "'lookupGeographies', t.lookup_geographies,"
    "'installerTokens', (SELECT coalesce(json_agg(json_build_object('sha256', i.token_sha256, 'id', i.id,"
    "      'expiresAtMs', (extract(epoch FROM i.expires_at) * 1000)::bigint, 'prefix', i.registration_id_prefix)),"
    "      '[]') FROM installer_tokens i"
    "    WHERE i.tenant_id = t.id AND i.revoked_at IS NULL AND i.expires_at > now()),"
    "'caCertificates', (SELECT coalesce(json_agg(c.certificate_pem ORDER BY c.id), '[]') FROM tenant_cas c"
    "                   WHERE c.tenant_id = t.id AND c.enabled AND c.verified_at IS NOT NULL))"
    " FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL AND t.offboarding_at IS NULL";

/* An id the catalog did not have, remembered until expires. */
struct tenant_absent {
    TAILQ_ENTRY(tenant_absent) lru;
    int64_t expires_mono_ms;
    char id[];
};
TAILQ_HEAD(tenant_absent_list, tenant_absent);

struct tenant_waiter {
    struct tenant_waiter *next;
    tenants_cb cb;
    void *arg;
};

/* One catalog query and everyone waiting for it. */
struct tenant_fetch {
    LIST_ENTRY(tenant_fetch) link;
    struct tenants *ts;
    bool detached;              /* forgotten meanwhile: answer the waiters, cache nothing */
    struct tenant_waiter *head, **tail;
    char id[64];
};

struct tenants {
    struct pgpool *global;
    struct envelope *env;     /* opens the sealed enrollment keys (borrowed) */
    struct tenants_opts o;
    /* whether invalidations are surely reaching us (tenants_set_trust); NULL: always */
    bool (*trusted)(void *arg);
    void *trusted_arg;
    struct strmap *cache;     /* id -> struct tenant* */
    struct strmap *known;     /* ids found in the catalog once (value: non-NULL marker) */
    struct strmap *absent;    /* id -> struct tenant_absent* */
    struct tenant_absent_list absent_lru;   /* most recently used first */
    struct strmap *inflight;  /* id -> struct tenant_fetch* (not detached ones) */
    LIST_HEAD(, tenant_fetch) fetches;      /* every running fetch, detached too */
    double tokens;            /* unknown-id fetch budget */
    int64_t tokens_at_ms;
    struct tenants_stats st;
};

static void tenant_free_strv(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void tenant_ref(struct tenant *t)
{
    t->refs++;
}

void tenant_unref(struct tenant *t)
{
    if (!t || --t->refs > 0)
        return;
    OPENSSL_cleanse(t->key, sizeof t->key);
    OPENSSL_cleanse(t->prev_key, sizeof t->prev_key);
    free(t->id);
    json_decref(t->json);
    tenant_free_strv(t->geos, t->ngeos);
    tenant_free_strv(t->regions, t->nregions);
    tenant_free_strv(t->lookup_geos, t->nlookup);
    tenant_free_strv(t->stamps, t->nstamps);
    for (int i = 0; i < t->ninstaller; i++)
        free(t->installers[i].prefix);
    free(t->installers);
    for (int i = 0; i < t->ncas; i++)
        X509_free(t->cas[i]);
    free(t->cas);
    free(t);
}

static void tenant_unref_void(void *p)
{
    tenant_unref(p);
}

static char **tenant_strv(json_t *arr, int *n)
{
    char **v;
    size_t i;
    json_t *item;
    *n = 0;
    if (!json_is_array(arr))
        return NULL;
    v = xcalloc(json_array_size(arr) + 1, sizeof(char *));
    json_array_foreach(arr, i, item)
        if (json_is_string(item))
            v[(*n)++] = xstrdup(json_string_value(item));
    return v;
}

/* A stored enrollment key (sealed, or clear from before encryption) into
 * out; env NULL opens only clear values. Returns the length, or -1. */
static int tenant_open_key(struct envelope *env, const char *tenant_id, const char *stored, unsigned char *out,
                           size_t cap)
{
    char aad[ENVELOPE_AAD_MAX];
    size_t len = 0;
    if (!env)
        return envelope_is_sealed(stored) ? -1 : sas_b64_decode(stored, out, cap);
    envelope_aad_enrollment_key(aad, sizeof aad, tenant_id);
    return envelope_open_b64key(env, stored, aad, out, cap, &len) ? (int)len : -1;
}

/* The verified, enabled CA certificates (PEM strings; absent: none). False
 * when one does not parse (the row is then malformed). */
static bool tenant_load_cas(struct tenant *t, json_t *arr)
{
    size_t i;
    json_t *v;
    if (!arr)
        return true;
    if (!json_is_array(arr))
        return false;
    t->cas = xcalloc(json_array_size(arr) + 1, sizeof *t->cas);
    json_array_foreach(arr, i, v) {
        const char *pem = json_string_value(v);
        BIO *b = pem ? BIO_new_mem_buf(pem, -1) : NULL;
        X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (!x)
            return false;
        t->cas[t->ncas++] = x;
    }
    return true;
}

/* The row's installer tokens: [{"sha256","id","expiresAtMs","prefix"}]. An
 * entry without a usable hash or id is skipped (never matches). */
static void tenant_installers(struct tenant *t, json_t *arr)
{
    size_t i;
    json_t *item;
    t->ninstaller = 0;
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return;
    t->installers = xcalloc(json_array_size(arr), sizeof *t->installers);
    json_array_foreach(arr, i, item) {
        struct tenant_installer *ti = &t->installers[t->ninstaller];
        const char *sha = json_string_value(json_object_get(item, "sha256"));
        const char *id = json_string_value(json_object_get(item, "id"));
        const char *prefix = json_string_value(json_object_get(item, "prefix"));
        json_t *exp = json_object_get(item, "expiresAtMs");
        if (!sha || !id || strlen(sha) >= sizeof ti->sha256 || strlen(id) >= sizeof ti->id || !json_is_integer(exp))
            continue;
        memcpy(ti->sha256, sha, strlen(sha) + 1);
        memcpy(ti->id, id, strlen(id) + 1);
        ti->expires_wall_ms = json_integer_value(exp);
        ti->prefix = prefix ? xstrdup(prefix) : NULL;
        t->ninstaller++;
    }
}

struct tenant *tenant_from_row(json_t *row)
{
    return tenant_from_row_env(row, NULL);
}

struct tenant *tenant_from_row_env(json_t *row, struct envelope *env)
{
    json_t *pub = json_object_get(row, "public");
    json_t *res = json_object_get(pub, "residency");
    const char *id = json_string_value(json_object_get(pub, "id"));
    const char *key = json_string_value(json_object_get(row, "enrollmentKey"));
    const char *prev = json_string_value(json_object_get(row, "enrollmentKeyPrevious"));
    const char *tenancy = json_string_value(json_object_get(pub, "tenancy"));
    const char *status = json_string_value(json_object_get(pub, "status"));
    json_t *quotas = json_object_get(pub, "quotas");
    json_t *maxdev = json_object_get(quotas, "maxDevices"), *maxppm = json_object_get(quotas, "maxProvisionsPerMinute");
    struct tenant *t;
    int klen;

    if (!id || !key || !json_is_object(res))
        return NULL;
    t = xcalloc(1, sizeof *t);
    t->refs = 1;
    t->id = xstrdup(id);
    t->json = json_incref(pub);
    t->geos = tenant_strv(json_object_get(res, "geographies"), &t->ngeos);
    t->regions = tenant_strv(json_object_get(res, "regions"), &t->nregions);
    t->lookup_geos = tenant_strv(json_object_get(row, "lookupGeographies"), &t->nlookup);
    t->stamps = tenant_strv(json_object_get(pub, "dedicatedStamps"), &t->nstamps);
    tenant_installers(t, json_object_get(row, "installerTokens"));
    t->dedicated = tenancy && strcmp(tenancy, "dedicated") == 0;
    /* rows without these (older readers, tests): active, unlimited */
    t->suspended = status && strcmp(status, "suspended") == 0;
    t->max_devices = json_is_integer(maxdev) ? (int64_t)json_integer_value(maxdev) : -1;
    t->max_per_minute = json_is_integer(maxppm) ? (int64_t)json_integer_value(maxppm) : -1;
    if (!tenant_load_cas(t, json_object_get(row, "caCertificates"))) {
        tenant_unref(t);
        return NULL;
    }
    klen = tenant_open_key(env, id, key, t->key, sizeof t->key);
    if (klen <= 0 || t->ngeos == 0) {
        tenant_unref(t);
        return NULL;
    }
    t->keylen = klen;
    if (prev) {
        klen = tenant_open_key(env, id, prev, t->prev_key, sizeof t->prev_key);
        if (klen <= 0) {
            tenant_unref(t);
            return NULL;
        }
        t->prev_keylen = klen;
    }
    return t;
}

static bool tenant_in(char **v, int n, const char *s)
{
    for (int i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

bool tenant_allows_geo(const struct tenant *t, const char *geo)
{
    return tenant_in(t->geos, t->ngeos, geo);
}

bool tenant_allows_region(const struct tenant *t, const char *region)
{
    return t->nregions == 0 || tenant_in(t->regions, t->nregions, region);
}

bool tenant_has_stamp(const struct tenant *t, const char *stamp)
{
    return tenant_in(t->stamps, t->nstamps, stamp);
}

bool tenant_verify_device_sas(const struct tenant *t, const char *regid, const struct sas_token *tok)
{
    unsigned char dk[SAS_KEY_LEN];
    bool ok;
    sas_derive_key(t->key, (size_t)t->keylen, regid, dk);
    ok = sas_verify(tok, dk, sizeof dk);
    if (!ok && t->prev_keylen > 0) {
        sas_derive_key(t->prev_key, (size_t)t->prev_keylen, regid, dk);
        ok = sas_verify(tok, dk, sizeof dk);
    }
    OPENSSL_cleanse(dk, sizeof dk);
    return ok;
}

const struct tenant_installer *tenant_find_installer(const struct tenant *t, const char *sha256hex)
{
    const struct tenant_installer *found = NULL;
    size_t n = strlen(sha256hex);
    /* every entry is compared: the time does not tell which one matched */
    for (int i = 0; i < t->ninstaller; i++)
        if (strlen(t->installers[i].sha256) == n && CRYPTO_memcmp(t->installers[i].sha256, sha256hex, n) == 0)
            found = &t->installers[i];
    return found;
}

struct tenants *tenants_new(struct pgpool *global, const struct tenants_opts *o)
{
    struct tenants *ts = xcalloc(1, sizeof *ts);
    ts->global = global;
    ts->o = *o;
    if (ts->o.negative_cache_size <= 0) ts->o.negative_cache_size = TENANTS_DEFAULT_NEGATIVE_SIZE;
    if (ts->o.negative_ttl_ms <= 0) ts->o.negative_ttl_ms = TENANTS_DEFAULT_NEGATIVE_TTL_MS;
    if (ts->o.unknown_rate <= 0) ts->o.unknown_rate = TENANTS_DEFAULT_UNKNOWN_RATE;
    if (ts->o.unknown_burst <= 0) ts->o.unknown_burst = TENANTS_DEFAULT_UNKNOWN_BURST;
    ts->cache = strmap_new();
    ts->known = strmap_new();
    ts->absent = strmap_new();
    TAILQ_INIT(&ts->absent_lru);
    ts->inflight = strmap_new();
    LIST_INIT(&ts->fetches);
    ts->tokens = ts->o.unknown_burst;
    ts->tokens_at_ms = util_mono_ms();
    ts->st.negative_cap = ts->o.negative_cache_size;
    return ts;
}

static void tenants_absent_drop(struct tenants *ts, struct tenant_absent *a)
{
    strmap_del(ts->absent, a->id);
    TAILQ_REMOVE(&ts->absent_lru, a, lru);
    free(a);
}

static void tenants_absent_clear(struct tenants *ts)
{
    struct tenant_absent *a;
    while ((a = TAILQ_FIRST(&ts->absent_lru)) != NULL)
        tenants_absent_drop(ts, a);
}

/* Remember id as absent; the least recently used entry makes room. */
static void tenants_absent_put(struct tenants *ts, const char *id)
{
    struct tenant_absent *a = strmap_get(ts->absent, id);
    size_t n;
    if (!a) {
        if (strmap_count(ts->absent) >= (size_t)ts->o.negative_cache_size) {
            tenants_absent_drop(ts, TAILQ_LAST(&ts->absent_lru, tenant_absent_list));
            ts->st.negative_evictions++;
        }
        n = strlen(id);
        a = xmalloc(sizeof *a + n + 1);
        memcpy(a->id, id, n + 1);
        strmap_put(ts->absent, a->id, a);
    } else {
        TAILQ_REMOVE(&ts->absent_lru, a, lru);
    }
    a->expires_mono_ms = util_mono_ms() + ts->o.negative_ttl_ms;
    TAILQ_INSERT_HEAD(&ts->absent_lru, a, lru);
}

static void tenants_fetch_free(struct tenant_fetch *f)
{
    struct tenant_waiter *w, *next;
    for (w = f->head; w; w = next) {
        next = w->next;
        free(w);
    }
    free(f);
}

void tenants_set_envelope(struct tenants *ts, struct envelope *env)
{
    ts->env = env;
}

void tenants_free(struct tenants *ts)
{
    struct tenant_fetch *f;
    if (!ts) return;
    /* The pool is freed after us and drops its queries without calling back. */
    while ((f = LIST_FIRST(&ts->fetches)) != NULL) {
        LIST_REMOVE(f, link);
        tenants_fetch_free(f);
    }
    strmap_free(ts->cache, tenant_unref_void);
    strmap_free(ts->known, NULL);
    tenants_absent_clear(ts);
    strmap_free(ts->absent, NULL);
    strmap_free(ts->inflight, NULL);
    free(ts);
}

/* A running fetch can't be trusted after a change: new lookups start afresh. */
static void tenants_detach(struct tenants *ts, const char *id)
{
    struct tenant_fetch *f = strmap_del(ts->inflight, id);
    if (f)
        f->detached = true;
}

void tenants_forget(struct tenants *ts, const char *id)
{
    struct tenant_absent *a = strmap_get(ts->absent, id);
    tenant_unref(strmap_del(ts->cache, id));
    if (a)
        tenants_absent_drop(ts, a);
    tenants_detach(ts, id);
}

/* While invalidations may not be reaching us (invalidate.c says when), a
 * cached tenant answers only for TENANTS_DISTRUSTED_TTL_MS after it was read
 * (tenants_cached_ok). */
void tenants_set_trust(struct tenants *ts, bool (*trusted)(void *arg), void *arg)
{
    ts->trusted = trusted;
    ts->trusted_arg = arg;
}

static bool tenants_distrusted(const struct tenants *ts)
{
    return ts->trusted && !ts->trusted(ts->trusted_arg);
}

void tenants_forget_all(struct tenants *ts)
{
    struct tenant_fetch *f;
    strmap_clear(ts->cache, tenant_unref_void);
    tenants_absent_clear(ts);
    LIST_FOREACH(f, &ts->fetches, link)
        f->detached = true;
    strmap_clear(ts->inflight, NULL);
}

void tenants_stats(const struct tenants *ts, struct tenants_stats *out)
{
    *out = ts->st;
    out->cached = (int64_t)strmap_count(ts->cache);
    out->negative = (int64_t)strmap_count(ts->absent);
    out->inflight = (int64_t)strmap_count(ts->inflight);
}

/* Answer every waiter of f, then free it. t (may be NULL) is borrowed. */
static void tenants_answer(struct tenant_fetch *f, struct tenant *t, enum tenant_status st)
{
    struct tenant_waiter *w;
    if (t)
        tenant_ref(t);   /* held across the callbacks in case one forgets the tenant */
    while ((w = f->head) != NULL) {
        f->head = w->next;
        w->cb(t, st, w->arg);
        free(w);
    }
    if (t)
        tenant_unref(t);
    free(f);
}

/* The catalog failed: may the expired entry t still be served? Never while
 * invalidations may be unheard. */
static bool tenants_may_serve_stale(const struct tenants *ts, const struct tenant *t, int64_t now)
{
    return !tenants_distrusted(ts) && ts->o.stale_on_error_ms > 0 && now < t->expires_mono_ms + ts->o.stale_on_error_ms;
}

/*
 * Whether a cached tenant may answer. Trusted (invalidations heard): within
 * its TTL, or stale while the catalog can't be read. Distrusted (the
 * subscription is down or not proven lately): a copy answers only within
 * TENANTS_DISTRUSTED_TTL_MS of its read, whenever that was - a change after
 * the read may be unheard, so it is seen within that time. A Redis outage
 * thus costs about one catalog read per tenant per second and router, not
 * one per request.
 */
static bool tenants_cached_ok(const struct tenants *ts, const struct tenant *t, int64_t now)
{
    if (tenants_distrusted(ts))
        return t->expires_mono_ms > now && t->expires_mono_ms - ts->o.ttl_ms + TENANTS_DISTRUSTED_TTL_MS > now;
    return t->expires_mono_ms > now || (t->retry_mono_ms > now && tenants_may_serve_stale(ts, t, now));
}


static void tenants_note_stale(struct tenants *ts, struct tenant *t)
{
    int64_t now = util_mono_ms();
    /* one query a second per tenant while the catalog is down, not one per request */
    t->retry_mono_ms = now + 1000;
    if (ts->st.stale_served++ % 10000 == 0)
        log_warn("event=tenant_served_stale tenant=%s expired_ms_ago=%lld count=%lld", t->id,
                 (long long)(now - t->expires_mono_ms), (long long)ts->st.stale_served);
}

struct tenants_servable {
    const struct tenants *ts;
    int64_t now;
    bool any;
};

static void tenants_servable_one(const char *key, void *value, void *arg)
{
    struct tenants_servable *v = arg;
    const struct tenant *t = value;
    (void)key;
    /* answered from the cache, or after a failed re-read */
    if (tenants_cached_ok(v->ts, t, v->now) || tenants_may_serve_stale(v->ts, t, v->now))
        v->any = true;
}

bool tenants_any_servable(const struct tenants *ts)
{
    struct tenants_servable v = {ts, util_mono_ms(), false};
    strmap_foreach(ts->cache, tenants_servable_one, &v);
    return v.any;
}

static void tenants_on_row(const struct pgq_result *q, void *arg)
{
    struct tenant_fetch *f = arg;
    struct tenants *ts = f->ts;
    struct tenant *t = NULL;
    json_t *row;

    LIST_REMOVE(f, link);
    if (!f->detached)
        strmap_del(ts->inflight, f->id);
    if (q->status != PGQ_OK) {
        if (q->status == PGQ_SQL_ERROR)
            log_error("event=tenant_query_failed sqlstate=%s", q->sqlstate);
        /* only an outage: an SQL error (grants, schema) must show, not hide behind stale copies */
        t = f->detached || q->status != PGQ_UNAVAILABLE ? NULL : strmap_get(ts->cache, f->id);
        if (t && tenants_may_serve_stale(ts, t, util_mono_ms())) {
            tenants_note_stale(ts, t);
            tenants_answer(f, t, TENANT_OK);
            return;
        }
        tenants_answer(f, NULL, TENANT_UNAVAILABLE);
        return;
    }
    if (PQntuples(q->res) == 0) {
        if (!f->detached) {
            tenants_absent_put(ts, f->id);
            tenant_unref(strmap_del(ts->cache, f->id));
            strmap_del(ts->known, f->id);
        }
        tenants_answer(f, NULL, TENANT_NOT_FOUND);
        return;
    }
    row = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL);
    t = row ? tenant_from_row_env(row, ts->env) : NULL;
    json_decref(row);
    if (!t) {
        log_error("event=tenant_row_malformed tenant=%s", f->id);
        tenants_answer(f, NULL, TENANT_UNAVAILABLE);
        return;
    }
    t->expires_mono_ms = util_mono_ms() + ts->o.ttl_ms;
    strmap_put(ts->known, t->id, ts);
    if (!f->detached) {
        tenant_ref(t);
        tenant_unref(strmap_put(ts->cache, t->id, t));
    }
    tenants_answer(f, t, TENANT_OK);
    tenant_unref(t);
}

/* The unknown-id budget: a token bucket refilled continuously. */
static bool tenants_take_token(struct tenants *ts, int64_t now)
{
    double cap = ts->o.unknown_burst;
    ts->tokens += (double)(now - ts->tokens_at_ms) * ts->o.unknown_rate / 1000.0;
    ts->tokens_at_ms = now;
    if (ts->tokens > cap)
        ts->tokens = cap;
    if (ts->tokens < 1.0)
        return false;
    ts->tokens -= 1.0;
    return true;
}

void tenants_get(struct tenants *ts, const char *id, bool trusted, tenants_cb cb, void *arg)
{
    struct tenant *t = strmap_get(ts->cache, id);
    struct tenant_absent *a;
    struct tenant_fetch *f;
    struct tenant_waiter *w;
    int64_t now = util_mono_ms();
    const char *values[1] = {id};

    if (t && tenants_cached_ok(ts, t, now)) {
        if (t->expires_mono_ms <= now)
            ts->st.stale_served++;
        tenant_ref(t);
        cb(t, TENANT_OK, arg);
        tenant_unref(t);
        return;
    }
    if ((a = strmap_get(ts->absent, id)) != NULL) {
        if (a->expires_mono_ms > now && !tenants_distrusted(ts)) {
            TAILQ_REMOVE(&ts->absent_lru, a, lru);
            TAILQ_INSERT_HEAD(&ts->absent_lru, a, lru);
            cb(NULL, TENANT_NOT_FOUND, arg);
            return;
        }
        tenants_absent_drop(ts, a);
    }
    w = xcalloc(1, sizeof *w);
    w->cb = cb;
    w->arg = arg;
    if ((f = strmap_get(ts->inflight, id)) != NULL) {
        *f->tail = w;
        f->tail = &w->next;
        ts->st.coalesced++;
        return;
    }
    if (strlen(id) >= sizeof f->id ||
        (!trusted && !t && !strmap_get(ts->known, id) && !tenants_take_token(ts, now))) {
        free(w);
        ts->st.refused++;
        cb(NULL, TENANT_REFUSED, arg);
        return;
    }
    f = xcalloc(1, sizeof *f);
    f->ts = ts;
    memcpy(f->id, id, strlen(id) + 1);
    f->head = w;
    f->tail = &w->next;
    ts->st.queries++;
    strmap_put(ts->inflight, f->id, f);
    LIST_INSERT_HEAD(&ts->fetches, f, link);
    pgpool_query(ts->global, tenants_select_sql, 1, values, tenants_on_row, f);
}
