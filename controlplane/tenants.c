/*
 * tenants.c - tenant cache (refcounted entries, TTL, negative caching) and
 * parsing of the catalog row.
 */
#include "tenants.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sas.h"
#include "strmap.h"
#include "util.h"

#define TENANT_NEGATIVE_TTL_MS 2000

/* One tenant's row: $1 = id. */
static const char tenants_select_sql[] =
    "SELECT json_build_object("
    "'public', json_build_object('id',t.id,'name',t.name,"
    "  'residency',json_build_object('geographies',t.residency_geographies,'regions',t.residency_regions),"
    "  'tenancy',t.tenancy,'dedicatedStamps',t.dedicated_stamps,'version',t.version,"
    "  'createdAt',cp_ts(t.created_at),'updatedAt',cp_ts(t.updated_at)),"
    "'enrollmentKey', t.enrollment_key, 'enrollmentKeyPrevious', t.enrollment_key_previous,"
    "'lookupGeographies', t.lookup_geographies,"
    "'installerTokens', (SELECT coalesce(json_agg(i.token_sha256), '[]') FROM installer_tokens i"
    "                    WHERE i.tenant_id = t.id))"
    " FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL";

struct tenants {
    struct pgpool *global;
    int ttl_ms;
    struct strmap *cache;   /* id -> struct tenant*, or &tenants_absent */
    struct strmap *absent;  /* id -> expiry (int64 in a malloc'ed cell) */
};

struct tenant_fetch {
    struct tenants *ts;
    char id[64];
    tenants_cb cb;
    void *arg;
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
    tenant_free_strv(t->installer_hashes, t->ninstaller);
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

struct tenant *tenant_from_row(json_t *row)
{
    json_t *pub = json_object_get(row, "public");
    json_t *res = json_object_get(pub, "residency");
    const char *id = json_string_value(json_object_get(pub, "id"));
    const char *key = json_string_value(json_object_get(row, "enrollmentKey"));
    const char *prev = json_string_value(json_object_get(row, "enrollmentKeyPrevious"));
    const char *tenancy = json_string_value(json_object_get(pub, "tenancy"));
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
    t->installer_hashes = tenant_strv(json_object_get(row, "installerTokens"), &t->ninstaller);
    t->dedicated = tenancy && strcmp(tenancy, "dedicated") == 0;
    klen = sas_b64_decode(key, t->key, sizeof t->key);
    if (klen <= 0 || t->ngeos == 0) {
        tenant_unref(t);
        return NULL;
    }
    t->keylen = klen;
    if (prev) {
        klen = sas_b64_decode(prev, t->prev_key, sizeof t->prev_key);
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

bool tenant_has_installer(const struct tenant *t, const char *sha256hex)
{
    bool found = false;
    size_t n = strlen(sha256hex);
    for (int i = 0; i < t->ninstaller; i++)
        if (strlen(t->installer_hashes[i]) == n &&
            CRYPTO_memcmp(t->installer_hashes[i], sha256hex, n) == 0)
            found = true;
    return found;
}

struct tenants *tenants_new(struct pgpool *global, int ttl_ms)
{
    struct tenants *ts = xcalloc(1, sizeof *ts);
    ts->global = global;
    ts->ttl_ms = ttl_ms;
    ts->cache = strmap_new();
    ts->absent = strmap_new();
    return ts;
}

void tenants_free(struct tenants *ts)
{
    if (!ts) return;
    strmap_free(ts->cache, tenant_unref_void);
    strmap_free(ts->absent, free);
    free(ts);
}

void tenants_forget(struct tenants *ts, const char *id)
{
    tenant_unref(strmap_del(ts->cache, id));
    free(strmap_del(ts->absent, id));
}

void tenants_forget_all(struct tenants *ts)
{
    strmap_clear(ts->cache, tenant_unref_void);
    strmap_clear(ts->absent, free);
}

static void tenants_on_row(const struct pgq_result *q, void *arg)
{
    struct tenant_fetch *f = arg;
    struct tenants *ts = f->ts;
    struct tenant *t = NULL;
    json_t *row;

    if (q->status != PGQ_OK) {
        if (q->status == PGQ_SQL_ERROR)
            log_error("event=tenant_query_failed sqlstate=%s", q->sqlstate);
        f->cb(NULL, TENANT_UNAVAILABLE, f->arg);
        free(f);
        return;
    }
    if (PQntuples(q->res) == 0) {
        int64_t *exp = xmalloc(sizeof *exp);
        *exp = util_mono_ms() + TENANT_NEGATIVE_TTL_MS;
        free(strmap_put(ts->absent, f->id, exp));
        f->cb(NULL, TENANT_NOT_FOUND, f->arg);
        free(f);
        return;
    }
    row = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL);
    t = row ? tenant_from_row(row) : NULL;
    json_decref(row);
    if (!t) {
        log_error("event=tenant_row_malformed tenant=%s", f->id);
        f->cb(NULL, TENANT_UNAVAILABLE, f->arg);
        free(f);
        return;
    }
    t->expires_mono_ms = util_mono_ms() + ts->ttl_ms;
    tenant_unref(strmap_put(ts->cache, t->id, t));
    tenant_ref(t);   /* held across the callback in case it forgets the tenant */
    f->cb(t, TENANT_OK, f->arg);
    tenant_unref(t);
    free(f);
}

void tenants_get(struct tenants *ts, const char *id, tenants_cb cb, void *arg)
{
    struct tenant *t = strmap_get(ts->cache, id);
    int64_t *absent_until = strmap_get(ts->absent, id);
    int64_t now = util_mono_ms();
    struct tenant_fetch *f;
    const char *values[1] = {id};

    if (t && t->expires_mono_ms > now) {
        tenant_ref(t);
        cb(t, TENANT_OK, arg);
        tenant_unref(t);
        return;
    }
    if (absent_until && *absent_until > now) {
        cb(NULL, TENANT_NOT_FOUND, arg);
        return;
    }
    f = xcalloc(1, sizeof *f);
    f->ts = ts;
    snprintf(f->id, sizeof f->id, "%s", id);
    f->cb = cb;
    f->arg = arg;
    if (!pgpool_query(ts->global, tenants_select_sql, 1, values, tenants_on_row, f)) {
        free(f);
        cb(NULL, TENANT_UNAVAILABLE, arg);
    }
}
