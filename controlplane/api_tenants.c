/*
 * api_tenants.c - tenant handlers: onboarding, update, enrollment key
 * rotation, removal (installer tokens: api_installer_tokens.c).
 *
 * The enrollment key (32 random bytes, base64) is returned once, in the
 * answer to the create or the rotation; devices derive their keys from it as
 * Azure DPS group enrollments do. A rotation keeps the previous key valid
 * until the next one. A removed tenant stays as a keyless tombstone (its id
 * is never reused). Installer tokens are stored only as SHA-256. Every change
 * is answered once every control plane has been told to drop its cached copy
 * of the tenant (invalidate.h), and wakes the reconciler.
 *
 * Quotas (quotas.maxDevices, quotas.maxProvisionsPerMinute; null or absent:
 * unlimited) are set at creation and by PATCH, and enforced by the device
 * routes (router.c, ratelimit.c). Suspend and resume flip the tenant's
 * status: the device routes refuse a suspended tenant's devices and the
 * reconciler writes its groups disabled at every stamp; nothing is deleted.
 */
#include "api_tenants.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "installer_tokens.h"
#include "jobs.h"
#include "listpage.h"
#include "tenant_change.h"
#include "log.h"
#include "sas.h"
#include "util.h"

#define TENANT_MAX_GEOS 16
#define TENANT_MAX_REGIONS 64
#define TENANT_MAX_STAMPS 64
#define TENANT_MAX_DEVICES_LIMIT 1000000000LL        /* quotas.maxDevices at most (schema CHECK too) */
#define TENANT_MAX_PER_MINUTE_LIMIT 1000000LL        /* quotas.maxProvisionsPerMinute at most */

/* A validated "quotas" object: for each field, whether it was given and its
 * value as SQL text (NULL: unlimited). */
struct tenant_quotas {
    bool has_devices, has_per_minute;
    char devices[24], per_minute[24];
    bool devices_null, per_minute_null;
};

static bool tenant_quota_field(json_t *q, const char *key, int64_t max, bool *has, bool *is_null, char *out,
                               size_t outlen, struct jv_err *e)
{
    char path[64];
    int64_t v = 0;
    json_t *f = json_object_get(q, key);
    snprintf(path, sizeof path, "quotas.%s", key);
    *has = f != NULL;
    *is_null = f == NULL || json_is_null(f);
    if (!f || json_is_null(f))
        return true;
    if (!json_is_integer(f)) {
        jv_set(e, "invalid_type", path, "field '%s' must be an integer or null (unlimited)", path);
        return false;
    }
    if (!jv_int(q, "quotas", key, true, 1, max, &v, e))
        return false;
    snprintf(out, outlen, "%lld", (long long)v);
    return true;
}

/* body's optional "quotas" into *out (nothing given: every has_* false). */
static bool tenant_quotas_validate(json_t *body, struct tenant_quotas *out, struct jv_err *e)
{
    static const char *const keys[] = {"maxDevices", "maxProvisionsPerMinute", NULL};
    json_t *q = NULL;
    memset(out, 0, sizeof *out);
    out->devices_null = out->per_minute_null = true;
    if (!jv_object(body, "", "quotas", false, &q, e))
        return false;
    if (!q)
        return true;
    if (!json_is_object(q)) {
        jv_set(e, "invalid_type", "quotas", "field 'quotas' must be an object");
        return false;
    }
    return jv_only_keys(q, "quotas", keys, e) &&
           tenant_quota_field(q, "maxDevices", TENANT_MAX_DEVICES_LIMIT, &out->has_devices, &out->devices_null,
                              out->devices, sizeof out->devices, e) &&
           tenant_quota_field(q, "maxProvisionsPerMinute", TENANT_MAX_PER_MINUTE_LIMIT, &out->has_per_minute,
                              &out->per_minute_null, out->per_minute, sizeof out->per_minute, e);
}

static const char tenant_public_sql[] =
    "json_build_object('id',t.id,'name',t.name,"
    "'residency',json_build_object('geographies',t.residency_geographies,'regions',t.residency_regions),"
    "'tenancy',t.tenancy,'dedicatedStamps',t.dedicated_stamps,'status',t.status,"
    "'quotas',json_build_object('maxDevices',t.max_devices,'maxProvisionsPerMinute',t.max_provisions_per_minute),"
    "'version',t.version,'createdAt',cp_ts(t.created_at),'updatedAt',cp_ts(t.updated_at))";

struct tenant_op {
    struct cp_req *r;
    char id[64];
    char secret[96];     /* enrollment key, shown once */
    char name[160];      /* suspend/resume: the event word for the log */
    int limit;
    /* delete: the device check across the tenant's geographies */
    int pending;
    long long devices;
    bool geo_failed;
    char geo_missing[64];
    /* the answer sent once the change is announced */
    int reply_status;    /* 204: no body */
    json_t *reply;
};

/* Validate an array of ids into a PostgreSQL array literal "{a,b}" (ids need no quoting). */
static bool tenant_id_array(json_t *arr, const char *field, size_t min, size_t max, char *out,
                            size_t outlen, struct jv_err *e)
{
    size_t i, o = 0;
    json_t *v;
    /* arr may be NULL: an absent optional list is an empty one */
    if (json_array_size(arr) < min || json_array_size(arr) > max) {
        jv_set(e, "invalid_value", field, "'%s' must hold %zu to %zu ids", field, min, max);
        return false;
    }
    out[o++] = '{';
    json_array_foreach(arr, i, v) {
        const char *s = json_string_value(v);
        if (!json_is_string(v)) {
            jv_set(e, "invalid_type", field, "'%s' must hold strings", field);
            return false;
        }
        if (!jv_valid_id(s)) {
            jv_set(e, "invalid_value", field, "'%s' holds '%.64s', not an id", field, s);
            return false;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(json_string_value(json_array_get(arr, k)), s) == 0) {
                jv_set(e, "invalid_value", field, "'%s' lists '%s' twice", field, s);
                return false;
            }
        o += (size_t)snprintf(out + o, outlen - o, "%s%s", i ? "," : "", s);
    }
    snprintf(out + o, outlen - o, "}");
    return true;
}

struct tenant_input {
    const char *id, *name, *tenancy;
    struct tenant_quotas quotas;
    char geos[TENANT_MAX_GEOS * 66 + 4];
    char regions[TENANT_MAX_REGIONS * 66 + 4];
    char stamps[TENANT_MAX_STAMPS * 66 + 4];
    json_t *geo_list;
};

static bool tenant_validate(json_t *body, struct tenant_input *in, struct jv_err *e)
{
    static const char *const keys[] = {"id", "name", "residency", "tenancy", "dedicatedStamps", "quotas", NULL};
    static const char *const rkeys[] = {"geographies", "regions", NULL};
    json_t *res = NULL, *geos = NULL, *regions = NULL, *stamps = NULL;

    memset(in, 0, sizeof *in);
    in->tenancy = "pooled";
    if (!jv_only_keys(body, "", keys, e) ||
        !jv_string(body, "", "id", false, 1, 63, &in->id, e) ||
        !jv_string(body, "", "name", true, 1, 128, &in->name, e) ||
        !jv_object(body, "", "residency", true, &res, e) ||
        !jv_only_keys(res, "residency", rkeys, e) ||
        !jv_array(res, "residency", "geographies", true, TENANT_MAX_GEOS, &geos, e) ||
        !jv_array(res, "residency", "regions", false, TENANT_MAX_REGIONS, &regions, e) ||
        !jv_string(body, "", "tenancy", false, 1, 16, &in->tenancy, e) ||
        !jv_array(body, "", "dedicatedStamps", false, TENANT_MAX_STAMPS, &stamps, e) ||
        !tenant_quotas_validate(body, &in->quotas, e))
        return false;
    if (in->id && !jv_valid_id(in->id)) {
        jv_set(e, "invalid_value", "id", "'id' must match [a-z0-9][a-z0-9-]{0,62}");
        return false;
    }
    if (strcmp(in->tenancy, "pooled") != 0 && strcmp(in->tenancy, "dedicated") != 0) {
        jv_set(e, "invalid_value", "tenancy", "'tenancy' must be pooled or dedicated");
        return false;
    }
    if (!tenant_id_array(geos, "residency.geographies", 1, TENANT_MAX_GEOS, in->geos, sizeof in->geos, e) ||
        !tenant_id_array(regions, "residency.regions", 0, TENANT_MAX_REGIONS, in->regions,
                         sizeof in->regions, e))
        return false;
    if (strcmp(in->tenancy, "dedicated") == 0 && (!stamps || json_array_size(stamps) == 0)) {
        jv_set(e, "missing_field", "dedicatedStamps", "a dedicated tenant needs 'dedicatedStamps'");
        return false;
    }
    if (strcmp(in->tenancy, "pooled") == 0 && stamps && json_array_size(stamps) > 0) {
        jv_set(e, "invalid_value", "dedicatedStamps", "'dedicatedStamps' is only for dedicated tenants");
        return false;
    }
    if (!tenant_id_array(stamps, "dedicatedStamps", 0, TENANT_MAX_STAMPS, in->stamps, sizeof in->stamps, e))
        return false;
    in->geo_list = geos;
    return true;
}

/* Read-only fields a PATCH may not name (a 400 read_only_field each). */
static const char *const tenant_fixed[] = {"id", "residency", "tenancy", "dedicatedStamps", "createdAt",
                                           "updatedAt", "version", "enrollmentKey", "status", NULL};

bool api_tenants_validate(enum api_tenants_body kind, json_t *body, struct jv_err *e)
{
    static const char *const patch_keys[] = {"name", "quotas", "id", "residency", "tenancy", "dedicatedStamps",
                                             "createdAt", "updatedAt", "version", "enrollmentKey", "status", NULL};
    static const char *const none[] = {NULL};
    struct tenant_input in;
    const char *name = NULL;

    switch (kind) {
    case API_TENANTS_CREATE:
        return tenant_validate(body, &in, e);
    case API_TENANTS_PATCH:
        if (!jv_only_keys(body, "", patch_keys, e))
            return false;
        for (int i = 0; tenant_fixed[i]; i++)
            if (json_object_get(body, tenant_fixed[i])) {
                jv_set(e, "read_only_field", tenant_fixed[i],
                       strcmp(tenant_fixed[i], "status") == 0
                           ? "field '%s' cannot be changed by PATCH (use POST .../suspend or .../resume)"
                           : "field '%s' cannot be changed (residency and tenancy are fixed at creation: "
                             "create another tenant)", tenant_fixed[i]);
                return false;
            }
        {
            struct tenant_quotas q;
            return jv_string(body, "", "name", false, 1, 128, &name, e) && tenant_quotas_validate(body, &q, e);
        }
    case API_TENANTS_INSTALLER_TOKEN: {
        struct installer_new tok;
        return installer_tokens_validate(body, util_wall_ms(), &tok, e);
    }
    case API_TENANTS_ROTATE:
    case API_TENANTS_SUSPEND:
        return jv_only_keys(body, "", none, e);
    }
    jv_set(e, "invalid_value", "", "unknown tenant route");
    return false;
}

static void tenant_reply_unavailable_or_error(struct tenant_op *op, const struct pgq_result *q)
{
    if (q->status == PGQ_UNAVAILABLE) {
        cpreq_reply_db_unavailable(op->r, q);
    } else if (strcmp(q->sqlstate, "23505") == 0) {
        cpreq_reply_error(op->r, 409, "already_exists", "id", "a tenant with this id already exists");
    } else if (strcmp(q->sqlstate, "SC409") == 0 && q->message && strstr(q->message, "stamp_not_exclusive:")) {
        /* schema/global/011_jobs.sql: a dedicated stamp belongs to one live tenant */
        const char *s = strstr(q->message, "stamp_not_exclusive:") + strlen("stamp_not_exclusive:");
        cpreq_reply_error(op->r, 409, "stamp_not_exclusive", "dedicatedStamps",
                          "dedicated stamp '%.64s' already belongs to another tenant", s);
    } else {
        log_write(LOG_ERROR, op->r->id, "event=sql_error sqlstate=%s error=\"%.300s\"", q->sqlstate,
                  q->message ? q->message : "");
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
    }
}

static void tenant_on_created(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    json_t *body;
    if (q->status != PGQ_OK) {
        tenant_reply_unavailable_or_error(op, q);
    } else if (strcmp(PQgetvalue(q->res, 0, 0), "t") != 0) {
        cpreq_reply_error(op->r, 422, "invalid_reference", "residency.geographies",
                          "a residency geography does not exist");
    } else if (strcmp(PQgetvalue(q->res, 0, 1), "t") != 0) {
        cpreq_reply_error(op->r, 422, "invalid_reference", "residency.regions",
                          "a residency region does not exist or is outside the listed geographies");
    } else if (strcmp(PQgetvalue(q->res, 0, 2), "t") != 0) {
        cpreq_reply_error(op->r, 422, "invalid_reference", "dedicatedStamps",
                          "a dedicated stamp does not exist, is pooled, or is outside the residency");
    } else if (PQgetisnull(q->res, 0, 3) || !(body = json_loads(PQgetvalue(q->res, 0, 3), 0, NULL))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "the tenant was not created");
    } else {
        char *loc = xasprintf("/v1/tenants/%s", op->id);
        json_object_set_new(body, "enrollmentKey", json_string(op->secret));
        cpreq_add_header(op->r, "Location", loc);
        cpreq_add_header(op->r, "Cache-Control", "no-store");
        enroll_sync_soon(op->r->cp->sync);
        free(loc);
        cpreq_reply_json(op->r, 201, body);
    }
    OPENSSL_cleanse(op->secret, sizeof op->secret);
    free(op);
}

/* The enrollment key as stored: sealed under the current KEK, bound to the
 * tenant (caller frees; NULL if sealing failed). */
static char *tenant_seal_key(struct cp *cp, const char *tenant_id, const char *key_b64)
{
    char aad[ENVELOPE_AAD_MAX];
    envelope_aad_enrollment_key(aad, sizeof aad, tenant_id);
    return envelope_seal_text(cp->env, key_b64, aad);
}

static void tenant_create(struct cp_req *r)
{
    static const char sql[] =
        "WITH chk AS (SELECT"
        "  (SELECT count(*) FROM geographies WHERE id = ANY($3::text[])) = cardinality($3::text[]) AS geos_ok,"
        "  (SELECT count(*) FROM regions WHERE id = ANY($4::text[]) AND geography_id = ANY($3::text[]))"
        "     = cardinality($4::text[]) AS regions_ok,"
        "  (SELECT count(*) FROM stamps s JOIN regions g ON g.id = s.region_id WHERE s.id = ANY($6::text[])"
        "     AND s.tenancy = 'dedicated' AND g.geography_id = ANY($3::text[])"
        "     AND (cardinality($4::text[]) = 0 OR g.id = ANY($4::text[]))) = cardinality($6::text[]) AS stamps_ok),"
        " ins AS (INSERT INTO tenants AS t (id, name, residency_geographies, residency_regions, tenancy,"
        "   dedicated_stamps, lookup_geographies, enrollment_key, max_devices, max_provisions_per_minute)"
        "   SELECT $1, $2, $3::text[], $4::text[], $5, $6::text[], $3::text[], $7, $8::bigint, $9::integer FROM chk"
        "   WHERE geos_ok AND regions_ok AND stamps_ok RETURNING %s)"
        " SELECT chk.geos_ok, chk.regions_ok, chk.stamps_ok, (SELECT * FROM ins) FROM chk";
    struct tenant_input in;
    struct jv_err e;
    struct tenant_op *op;
    unsigned char key[32];
    const char *values[9];
    json_t *body = cpreq_json_body(r, false);
    char *q, *sealed;
    size_t i;
    json_t *g;

    if (!body)
        return;
    if (!tenant_validate(body, &in, &e)) {
        json_decref(body);
        cpreq_reply_jv(r, &e);
        return;
    }
    json_array_foreach(in.geo_list, i, g)
        if (!cp_config_geo_conninfo(&r->cp->cfg, json_string_value(g))) {
            cpreq_reply_error(r, 422, "geography_not_configured", "residency.geographies",
                              "geography '%s' has no database in this control plane", json_string_value(g));
            json_decref(body);
            return;
        }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    if (in.id)
        snprintf(op->id, sizeof op->id, "%s", in.id);
    else {
        char hex[17];
        util_random_hex(hex, 8);
        snprintf(op->id, sizeof op->id, "t-%s", hex);
    }
    if (!util_random_bytes(key, sizeof key)) {
        json_decref(body);
        free(op);
        cpreq_reply_error(r, 500, "internal", NULL, "no randomness available");
        return;
    }
    sas_b64_encode(key, sizeof key, op->secret, sizeof op->secret);
    OPENSSL_cleanse(key, sizeof key);
    values[0] = op->id;
    values[1] = in.name;
    values[2] = in.geos;
    values[3] = in.regions;
    values[4] = in.tenancy;
    values[5] = in.stamps;
    /* stored sealed (envelope.h): the clear key only ever leaves in this answer */
    if (!(sealed = tenant_seal_key(r->cp, op->id, op->secret))) {
        OPENSSL_cleanse(op->secret, sizeof op->secret);
        free(op);
        json_decref(body);
        cpreq_reply_error(r, 500, "internal", NULL, "the enrollment key could not be sealed");
        return;
    }
    values[6] = sealed;
    values[7] = in.quotas.devices_null ? NULL : in.quotas.devices;
    values[8] = in.quotas.per_minute_null ? NULL : in.quotas.per_minute;
    q = xasprintf(sql, tenant_public_sql);
    pgpool_query(r->cp->global, q, 9, values, tenant_on_created, op);
    free(sealed);
    free(q);
    json_decref(body);
}

static void tenant_on_row(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    if (q->status != PGQ_OK)
        tenant_reply_unavailable_or_error(op, q);
    else if (PQntuples(q->res) == 0)
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no tenant '%s'", op->id);
    else
        cpreq_reply_text(op->r, 200, PQgetvalue(q->res, 0, 0), (size_t)PQgetlength(q->res, 0, 0));
    free(op);
}

static void tenant_get(struct cp_req *r, const char *id)
{
    struct tenant_op *op = xcalloc(1, sizeof *op);
    const char *values[1] = {id};
    char *q = xasprintf("SELECT %s FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL", tenant_public_sql);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    pgpool_query(r->cp->global, q, 1, values, tenant_on_row, op);
    free(q);
}

static void tenant_on_list(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    json_t *items, *body;
    int n;
    if (q->status != PGQ_OK) {
        tenant_reply_unavailable_or_error(op, q);
        free(op);
        return;
    }
    n = PQntuples(q->res);
    items = json_array();
    for (int i = 0; i < n && i < op->limit; i++) {
        json_t *item = json_loads(PQgetvalue(q->res, i, 0), 0, NULL);
        if (item) json_array_append_new(items, item);
    }
    body = list_page_body(items, "c1", n > op->limit ? PQgetvalue(q->res, op->limit - 1, 1) : NULL);
    cpreq_reply_json(op->r, 200, body);
    free(op);
}

static void tenant_list(struct cp_req *r)
{
    static const char *const allowed[] = {"limit", "cursor", NULL};
    const char *values[3];
    struct list_page pg;
    struct tenant_op *op;
    char *q;

    if (!cpreq_check_query(r, allowed) || !list_page_parse(r, "c1", jv_valid_id, &pg))
        return;
    values[0] = list_page_after(&pg);
    values[1] = pg.fetch;
    values[2] = r->who.tenant;   /* a tenant key lists its own tenant only */
    op = xcalloc(1, sizeof *op);
    op->r = r;
    op->limit = pg.limit;
    q = xasprintf("SELECT %s, t.id FROM tenants t WHERE t.deleted_at IS NULL AND ($1::text IS NULL OR t.id > $1) "
                  "AND ($3 = '' OR t.id = $3) ORDER BY t.id LIMIT $2", tenant_public_sql);
    pgpool_query(r->cp->global, q, 3, values, tenant_on_list, op);
    free(q);
}

/* ---- changes: update, rotation, removal ---- */

static void tenant_op_free(struct tenant_op *op)
{
    OPENSSL_cleanse(op->secret, sizeof op->secret);
    json_decref(op->reply);
    free(op);
}

static void tenant_on_announced(void *arg)
{
    struct tenant_op *op = arg;
    cpreq_reply_held(op->r, op->reply_status, op->reply);
    op->reply = NULL;
    tenant_op_free(op);
}

/* The change committed: drop the tenant everywhere, then answer (reply stolen). */
static void tenant_announce(struct tenant_op *op, int status, json_t *reply)
{
    op->reply_status = status;
    op->reply = reply;
    tenant_change_announce(op->r->cp, op->id, tenant_on_announced, op);
}

/* Whether the statement ran and found the live tenant; replies (error or
 * 404) when not. */
static bool tenant_row_found(struct tenant_op *op, const struct pgq_result *q)
{
    if (q->status != PGQ_OK) {
        tenant_reply_unavailable_or_error(op, q);
        return false;
    }
    if (PQntuples(q->res) == 0) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no tenant '%s'", op->id);
        return false;
    }
    return true;
}

/* A change statement's answer: one row of tenant_public_sql (*body, new
 * reference), or none (no such live tenant). Replies on false. */
static bool tenant_changed_row(struct tenant_op *op, const struct pgq_result *q, json_t **body)
{
    *body = NULL;
    if (!tenant_row_found(op, q))
        return false;
    if (PQgetisnull(q->res, 0, 0) || !(*body = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL))) {
        log_write(LOG_ERROR, op->r->id, "event=tenant_row_malformed tenant=%s", op->id);
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
        return false;
    }
    return true;
}

static void tenant_on_patched(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    json_t *body;
    if (!tenant_changed_row(op, q, &body)) {
        tenant_op_free(op);
        return;
    }
    if (PQnfields(q->res) > 1 && !PQgetisnull(q->res, 0, 1)) {
        json_decref(op->r->audit_before);
        op->r->audit_before = json_loads(PQgetvalue(q->res, 0, 1), 0, NULL);
    }
    tenant_announce(op, 200, body);
}

/* PATCH: only name may change; residency and tenancy are fixed at creation
 * (changing them would strand devices placed under the old policy). */
static void tenant_patch(struct cp_req *r, const char *id)
{
    json_t *body = cpreq_json_body(r, true);
    struct jv_err e;
    struct tenant_quotas quotas;
    const char *name = NULL;
    const char *values[6];
    struct tenant_op *op;
    char *q;

    if (!body)
        return;
    if (!api_tenants_validate(API_TENANTS_PATCH, body, &e) || !tenant_quotas_validate(body, &quotas, &e)) {
        json_decref(body);
        cpreq_reply_jv(r, &e);
        return;
    }
    if ((quotas.has_devices || quotas.has_per_minute) && !principal_is_platform(&r->who)) {
        /* a tenant's own key may rename it, never raise its own limits */
        json_decref(body);
        cpreq_reply_error(r, 403, "insufficient_scope", "quotas", "only a platform credential may change quotas");
        return;
    }
    name = json_string_value(json_object_get(body, "name"));
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    values[0] = op->id;
    values[1] = name;
    values[2] = quotas.has_devices ? "true" : "false";
    values[3] = quotas.devices_null ? NULL : quotas.devices;
    values[4] = quotas.has_per_minute ? "true" : "false";
    values[5] = quotas.per_minute_null ? NULL : quotas.per_minute;
    if (name || quotas.has_devices || quotas.has_per_minute) {
        /* o: the row as it was, for the audit entry (audit.h) */
        q = xasprintf("UPDATE tenants t SET name = coalesce($2, t.name),"
                      " max_devices = CASE WHEN $3::boolean THEN $4::bigint ELSE t.max_devices END,"
                      " max_provisions_per_minute = CASE WHEN $5::boolean THEN $6::integer"
                      "   ELSE t.max_provisions_per_minute END,"
                      " version = t.version + 1, updated_at = now()"
                      " FROM (SELECT t.id, %s AS before FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL"
                      " AND t.offboarding_at IS NULL FOR UPDATE) o WHERE t.id = o.id RETURNING %s, o.before",
                      tenant_public_sql, tenant_public_sql);
        pgpool_query(r->cp->global, q, 6, values, tenant_on_patched, op);
    } else {   /* {}: nothing changes, the version stays */
        q = xasprintf("SELECT %s FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL", tenant_public_sql);
        pgpool_query(r->cp->global, q, 1, values, tenant_on_row, op);
    }
    free(q);
    json_decref(body);
}

static void tenant_on_rotated(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    json_t *body;
    if (!tenant_changed_row(op, q, &body)) {
        tenant_op_free(op);
        return;
    }
    json_object_set_new(body, "enrollmentKey", json_string(op->secret));
    cpreq_add_header(op->r, "Cache-Control", "no-store");
    log_write(LOG_INFO, op->r->id, "event=enrollment_key_rotated tenant=%s", op->id);
    tenant_announce(op, 200, body);
}

/* POST .../enrollment-key/rotate: a fresh key becomes primary, the old
 * primary stays valid as secondary until the next rotation. No parameters:
 * no body or {} (any field is 400 unknown_field). */
static void tenant_rotate(struct cp_req *r, const char *id)
{
    static const char sql[] =
        "UPDATE tenants t SET enrollment_key_previous = t.enrollment_key, enrollment_key = $2,"
        " version = t.version + 1, updated_at = now() WHERE t.id = $1 AND t.deleted_at IS NULL AND t.offboarding_at IS NULL RETURNING %s";
    struct tenant_op *op;
    unsigned char key[32];
    const char *values[2];
    char *q, *sealed;

    if (r->body_len > 0) {
        json_t *body = cpreq_json_body(r, false);
        struct jv_err e;
        if (!body)
            return;
        if (!api_tenants_validate(API_TENANTS_ROTATE, body, &e)) {
            json_decref(body);
            cpreq_reply_jv(r, &e);
            return;
        }
        json_decref(body);
    }
    if (!util_random_bytes(key, sizeof key)) {
        cpreq_reply_error(r, 500, "internal", NULL, "no randomness available");
        return;
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    sas_b64_encode(key, sizeof key, op->secret, sizeof op->secret);
    OPENSSL_cleanse(key, sizeof key);
    values[0] = op->id;
    if (!(sealed = tenant_seal_key(r->cp, op->id, op->secret))) {
        tenant_op_free(op);
        cpreq_reply_error(r, 500, "internal", NULL, "the enrollment key could not be sealed");
        return;
    }
    values[1] = sealed;
    q = xasprintf(sql, tenant_public_sql);
    pgpool_query(r->cp->global, q, 2, values, tenant_on_rotated, op);
    free(sealed);
    free(q);
}

static void tenant_on_status(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    json_t *body;
    if (!tenant_changed_row(op, q, &body)) {
        tenant_op_free(op);
        return;
    }
    if (strcmp(PQgetvalue(q->res, 0, 1), "t") == 0)
        log_write(LOG_INFO, op->r->id, "event=tenant_%s tenant=%s", op->name, op->id);
    /* announced even when unchanged: a retry also re-wakes the reconciler */
    tenant_announce(op, 200, body);
}

/* POST .../suspend and .../resume: set the status (idempotent: the same
 * state again answers 200 with the tenant, its version unchanged). No
 * parameters: no body or {}. */
static void tenant_set_status(struct cp_req *r, const char *id, bool suspend)
{
    static const char sql[] =
        "WITH upd AS (UPDATE tenants t SET status = $2,"
        "   suspended_at = CASE WHEN $2 = 'suspended' THEN now() END,"
        "   version = t.version + 1, updated_at = now()"
        "   WHERE t.id = $1 AND t.deleted_at IS NULL AND t.offboarding_at IS NULL AND t.status <> $2 RETURNING %s AS pub)"
        " SELECT pub, true FROM upd"
        " UNION ALL SELECT %s, false FROM tenants t"
        "   WHERE t.id = $1 AND t.deleted_at IS NULL AND t.offboarding_at IS NULL AND NOT EXISTS (SELECT 1 FROM upd)";
    struct tenant_op *op;
    const char *values[2];
    char *q;

    if (!principal_sees_tenant(&r->who, id)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no tenant '%s'", id);
        return;
    }
    if (!principal_is_platform(&r->who)) {
        cpreq_reply_error(r, 403, "insufficient_scope", NULL, "only a platform credential may %s a tenant",
                          suspend ? "suspend" : "resume");
        return;
    }
    if (r->body_len > 0) {
        json_t *body = cpreq_json_body(r, false);
        struct jv_err e;
        if (!body)
            return;
        if (!api_tenants_validate(API_TENANTS_SUSPEND, body, &e)) {
            json_decref(body);
            cpreq_reply_jv(r, &e);
            return;
        }
        json_decref(body);
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    snprintf(op->name, sizeof op->name, "%s", suspend ? "suspended" : "resumed");
    values[0] = op->id;
    values[1] = suspend ? "suspended" : "active";
    q = xasprintf(sql, tenant_public_sql, tenant_public_sql);
    pgpool_query(r->cp->global, q, 2, values, tenant_on_status, op);
    free(q);
}

static void tenant_on_removed(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    if (!tenant_row_found(op, q)) {
        tenant_op_free(op);
        return;
    }
    if (PQnfields(q->res) > 1 && !PQgetisnull(q->res, 0, 1)) {
        json_decref(op->r->audit_before);
        op->r->audit_before = json_loads(PQgetvalue(q->res, 0, 1), 0, NULL);
    }
    log_write(LOG_INFO, op->r->id, "event=tenant_removed tenant=%s", op->id);
    tenant_announce(op, 204, NULL);
}

/* Every geography answered: refuse while devices are assigned, else remove. */
static void tenant_delete_decide(struct tenant_op *op)
{
    static const char sql[] =
        "WITH del AS (UPDATE tenants t SET deleted_at = now(), enrollment_key = NULL, enrollment_key_previous = NULL,"
        "   version = t.version + 1, updated_at = now()"
        "   FROM (SELECT t.id, %s AS before FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL FOR UPDATE) o"
        "   WHERE t.id = o.id RETURNING t.id, o.before),"
        " tok AS (DELETE FROM installer_tokens i USING del WHERE i.tenant_id = del.id)"
        " SELECT id, before FROM del";
    const char *values[1] = {op->id};
    char *q = NULL;

    if (op->geo_missing[0]) {
        cpreq_reply_error(op->r, 503, "database_unavailable", NULL,
                          "geography '%s' may hold the tenant's devices and has no database here", op->geo_missing);
        tenant_op_free(op);
    } else if (op->geo_failed) {
        cpreq_reply_db_unavailable(op->r, NULL);
        tenant_op_free(op);
    } else if (op->devices > 0) {
        cpreq_reply_error(op->r, 409, "tenant_has_devices", NULL,
                          "tenant '%s' still has %lld assigned device(s); deprovision or retire them first",
                          op->id, op->devices);
        tenant_op_free(op);
    } else {
        q = xasprintf(sql, tenant_public_sql);   /* before: the tenant as it was, for the audit entry */
        pgpool_query(op->r->cp->global, q, 1, values, tenant_on_removed, op);
        free(q);
    }
}

static void tenant_on_geo_count(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    if (q->status != PGQ_OK) {
        if (q->status == PGQ_SQL_ERROR)
            log_write(LOG_ERROR, op->r->id, "event=sql_error sqlstate=%s error=\"%.300s\"", q->sqlstate,
                      q->message ? q->message : "");
        op->geo_failed = true;
    } else {
        op->devices += strtoll(PQgetvalue(q->res, 0, 0), NULL, 10);
    }
    if (--op->pending == 0)
        tenant_delete_decide(op);
}

/* The tenant's geographies are known: count its assigned devices in each. */
static void tenant_on_delete_lookup(const struct pgq_result *q, void *arg)
{
    static const char sql[] = "SELECT count(*) FROM devices WHERE tenant_id = $1 AND status = 'assigned'";
    struct tenant_op *op = arg;
    struct cp *cp = op->r->cp;
    const char *values[1] = {op->id};
    json_t *geos, *g;
    size_t i;

    if (!tenant_row_found(op, q)) {
        tenant_op_free(op);
        return;
    }
    geos = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL);
    if (!json_is_array(geos) || json_array_size(geos) == 0) {
        log_write(LOG_ERROR, op->r->id, "event=tenant_row_malformed tenant=%s", op->id);
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
        json_decref(geos);
        tenant_op_free(op);
        return;
    }
    op->pending = 1;   /* held until every query is sent */
    json_array_foreach(geos, i, g) {
        const char *geo = json_string_value(g);
        int k;
        for (k = 0; geo && k < cp->cfg.n_geos; k++)
            if (strcmp(cp->cfg.geos[k].id, geo) == 0)
                break;
        if (!geo || k == cp->cfg.n_geos) {
            snprintf(op->geo_missing, sizeof op->geo_missing, "%s", geo ? geo : "?");
            continue;
        }
        op->pending++;
        pgpool_query(cp->geo[k], sql, 1, values, tenant_on_geo_count, op);
    }
    json_decref(geos);
    if (--op->pending == 0)
        tenant_delete_decide(op);
}

/* DELETE: refused (409 tenant_has_devices) while a geography the tenant's
 * devices may live in holds an assigned one; otherwise the tenant becomes a
 * tombstone (keys cleared, installer tokens deleted, id kept). A placement
 * already past authentication when the delete commits can still land (a
 * window of milliseconds); such a device shows in the tenant's device list. */
static void tenant_delete(struct cp_req *r, const char *id)
{
    static const char sql[] =
        "SELECT to_json(t.lookup_geographies) FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL";
    struct tenant_op *op = xcalloc(1, sizeof *op);
    const char *values[1];
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    values[0] = op->id;
    pgpool_query(r->cp->global, sql, 1, values, tenant_on_delete_lookup, op);
}

static void tenant_offboard_query(struct tenant_op *op);

static void tenant_on_offboard(const struct pgq_result *q, void *arg)
{
    struct tenant_op *op = arg;
    json_t *body;
    const char *job;
    char *loc;
    if (q->status == PGQ_SQL_ERROR && strcmp(q->sqlstate, "23505") == 0 && ++op->limit < 3) {
        /* a concurrent DELETE ?cascade=true queued the job first: answer that one */
        tenant_offboard_query(op);
        return;
    }
    if (!tenant_changed_row(op, q, &body)) {
        tenant_op_free(op);
        return;
    }
    job = json_string_value(json_object_get(body, "id"));
    loc = xasprintf("/v1/jobs/%s", job ? job : "");
    cpreq_add_header(op->r, "Location", loc);
    free(loc);
    log_write(LOG_INFO, op->r->id, "event=tenant_offboarding tenant=%s job=%s", op->id, job ? job : "?");
    jobs_kick(op->r->cp->jobs);
    tenant_announce(op, 202, body);   /* every instance refuses the tenant's devices before the answer */
}

static void tenant_offboard_query(struct tenant_op *op)
{
    static const char sql[] =
        "WITH t AS (UPDATE tenants t SET offboarding_at = coalesce(t.offboarding_at, now()),"
        "   version = t.version + CASE WHEN t.offboarding_at IS NULL THEN 1 ELSE 0 END, updated_at = now()"
        "   WHERE t.id = $1 AND t.deleted_at IS NULL RETURNING t.id),"
        " ex AS (SELECT j.* FROM jobs j JOIN t ON j.tenant_id = t.id"
        "   WHERE j.kind = 'tenant-offboard' AND j.state IN ('queued', 'running')),"
        " ins AS (INSERT INTO jobs (id, kind, tenant_id, steps) SELECT $2, 'tenant-offboard', t.id, $3::jsonb FROM t"
        "   WHERE NOT EXISTS (SELECT 1 FROM ex) RETURNING *)"
        " SELECT %s FROM (SELECT * FROM ins UNION ALL SELECT * FROM ex) j";
    json_t *steps = jobs_steps_doc("tenant-offboard");
    char *steps_s = json_dumps(steps, JSON_COMPACT);
    char *q = xasprintf(sql, jobs_public_sql);
    const char *values[3];
    jobs_new_id(op->name, sizeof op->name);   /* the new job's id: a fresh one on every try */
    values[0] = op->id;
    values[1] = op->name;
    values[2] = steps_s;
    pgpool_query(op->r->cp->global, q, 3, values, tenant_on_offboard, op);
    free(q);
    free(steps_s);
    json_decref(steps);
}

/* DELETE ?cascade=true: mark the tenant offboarding and queue the job that
 * removes everything of it (offboard.h); 202 with the job. Again while the
 * job runs: the same job. */
static void tenant_offboard(struct cp_req *r, const char *id)
{
    struct tenant_op *op;
    if (!principal_sees_tenant(&r->who, id)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no tenant '%s'", id);
        return;
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    tenant_offboard_query(op);
}

void api_tenants_handle(struct cp_req *r, char **segs, int nsegs)
{
    if (nsegs == 0) {
        if (r->method == EVHTTP_REQ_POST) {
            if (cpreq_check_query(r, NULL))
                tenant_create(r);
        } else if (r->method == EVHTTP_REQ_GET) {
            tenant_list(r);
        } else {
            cpreq_add_header(r, "Allow", "GET, POST");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET or POST on /v1/tenants");
        }
        return;
    }
    if (!jv_valid_id(segs[0])) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no tenant with that id");
        return;
    }
    if (nsegs == 1) {
        if (r->method != EVHTTP_REQ_GET && r->method != EVHTTP_REQ_PATCH && r->method != EVHTTP_REQ_DELETE) {
            cpreq_add_header(r, "Allow", "GET, PATCH, DELETE");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET, PATCH or DELETE on a tenant");
        } else if (r->method == EVHTTP_REQ_DELETE) {
            static const char *const allowed[] = {"cascade", NULL};
            const char *cascade;
            if (!cpreq_check_query(r, allowed))
                return;
            cascade = cpreq_query(r, "cascade");
            if (cascade && strcmp(cascade, "true") != 0 && strcmp(cascade, "false") != 0)
                cpreq_reply_error(r, 400, "invalid_value", "cascade", "'cascade' must be true or false");
            else if (cascade && strcmp(cascade, "true") == 0)
                tenant_offboard(r, segs[0]);
            else
                tenant_delete(r, segs[0]);
        } else if (cpreq_check_query(r, NULL)) {
            if (r->method == EVHTTP_REQ_GET)
                tenant_get(r, segs[0]);
            else
                tenant_patch(r, segs[0]);
        }
        return;
    }
    if (nsegs == 3 && strcmp(segs[1], "enrollment-key") == 0 && strcmp(segs[2], "rotate") == 0) {
        if (r->method != EVHTTP_REQ_POST) {
            cpreq_add_header(r, "Allow", "POST");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use POST to rotate the enrollment key");
        } else if (cpreq_check_query(r, NULL)) {
            tenant_rotate(r, segs[0]);
        }
        return;
    }
    if (nsegs == 2 && (strcmp(segs[1], "suspend") == 0 || strcmp(segs[1], "resume") == 0)) {
        if (r->method != EVHTTP_REQ_POST) {
            cpreq_add_header(r, "Allow", "POST");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use POST to %s a tenant", segs[1]);
        } else if (cpreq_check_query(r, NULL)) {
            tenant_set_status(r, segs[0], segs[1][0] == 's');
        }
        return;
    }
    cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
}
