/*
 * api_keys.c - /v1/api-keys: scoped API keys for vendors' staff and scripts
 * (docs/tenancy.md).
 *
 * A key is cpk_<16 hex id>_<64 hex secret>; only the SHA-256 of the secret
 * is stored, and the whole key is in exactly one answer (the create or a
 * rotation). What a caller may do here:
 *  - see and revoke the keys of the tenants it sees (a tenant key: its own
 *    tenant's; another tenant's key answers 404 as if it did not exist);
 *  - create or rotate a key only with scopes it holds itself (platform:admin
 *    holds all): otherwise it could mint or read a stronger credential;
 *  - a key made by an expiring key expires no later than its maker.
 * A revocation or rotation is answered once every control plane has been
 * told to drop its cached copy (Redis "apikey <id>"); the cache's 1 s
 * freshness bound holds even when that message is lost.
 */
#include "api_keys.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "apikeys.h"
#include "invalidate.h"
#include "listpage.h"
#include "log.h"
#include "util.h"

#define APIKEYS_MAX_OVERLAP_S (7 * 24 * 3600)

static const char key_json_sql[] =
    "json_build_object('id',k.id,'name',k.name,'tenant',k.tenant_id,'scopes',k.scopes,"
    "'status',CASE WHEN k.revoked_at IS NOT NULL OR EXISTS (SELECT 1 FROM tenants d WHERE d.id = k.tenant_id"
    " AND d.deleted_at IS NOT NULL) THEN 'revoked' WHEN k.expires_at <= now() THEN 'expired'"
    " ELSE 'active' END,"
    "'expiresAt',cp_ts(k.expires_at),'createdAt',cp_ts(k.created_at),'createdBy',k.created_by,"
    "'rotatedAt',cp_ts(k.rotated_at),"
    "'previousValidUntil',CASE WHEN k.previous_valid_until > now() THEN cp_ts(k.previous_valid_until) END,"
    "'revokedAt',cp_ts(k.revoked_at),'version',k.version)";

struct key_op {
    struct cp_req *r;
    char id[APIKEY_ID_LEN + 1];
    char secret[APIKEY_SECRET_LEN + 1];
    int limit;
    int status;
    json_t *reply;
};

static void key_op_free(struct key_op *op)
{
    OPENSSL_cleanse(op->secret, sizeof op->secret);
    json_decref(op->reply);
    free(op);
}

bool api_keys_valid_timestamp(const char *s)
{
    /* YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+hh:mm|-hh:mm) */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t i, n = strlen(s);
    if (n < sizeof shape || n > 40)
        return false;
    for (i = 0; i < sizeof shape - 1; i++) {
        if (shape[i] == 'd' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != shape[i])
            return false;
    }
    if (s[i] == '.') {
        size_t f = ++i;
        while (s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == f || i - f > 9)
            return false;
    }
    if (s[i] == 'Z')
        return s[i + 1] == '\0';
    if (s[i] == '+' || s[i] == '-')
        return s[i + 1] >= '0' && s[i + 1] <= '9' && s[i + 2] >= '0' && s[i + 2] <= '9' && s[i + 3] == ':' &&
               s[i + 4] >= '0' && s[i + 4] <= '9' && s[i + 5] >= '0' && s[i + 5] <= '9' && s[i + 6] == '\0';
    return false;
}

/* Scopes as a PostgreSQL array literal, in canonical order; expand: let
 * platform:admin stand for every scope (a caller's reach). */
static void key_scopes_array(uint32_t scopes, bool expand, char *out, size_t outlen)
{
    size_t o = 0;
    if (expand && (scopes & SCOPE_PLATFORM_ADMIN))
        scopes = SCOPE_ALL;
    o += (size_t)snprintf(out + o, outlen - o, "{");
    for (uint32_t b = 1; b & SCOPE_ALL; b <<= 1)
        if (scopes & b)
            o += (size_t)snprintf(out + o, outlen - o, "%s\"%s\"", o > 1 ? "," : "", principal_scope_word(b));
    snprintf(out + o, outlen - o, "}");
}

static void key_created_by(const struct principal *p, char *out, size_t outlen)
{
    if (p->kind == PRINCIPAL_OPERATOR)
        snprintf(out, outlen, "operator token");
    else
        snprintf(out, outlen, "key %s", p->key_id);
}

static void key_reply_db(struct key_op *op, const struct pgq_result *q)
{
    if (q->status == PGQ_SQL_ERROR) {
        log_write(LOG_ERROR, op->r->id, "event=sql_error sqlstate=%s error=\"%.300s\"", q->sqlstate,
                  q->message ? q->message : "");
        cpreq_reply_error(op->r, 500, "internal", NULL, "the request failed");
    } else {
        cpreq_reply_db_unavailable(op->r, q);
    }
}

/* ---- create ---- */

struct key_input {
    const char *name, *tenant, *expires;
    uint32_t scopes;
};

static bool key_validate(struct cp_req *r, json_t *body, struct key_input *in, struct jv_err *e)
{
    static const char *const keys[] = {"name", "tenant", "scopes", "expiresAt", NULL};
    const struct principal *who = &r->who;
    json_t *tenant = json_object_get(body, "tenant"), *scopes = NULL, *v;
    size_t i;

    memset(in, 0, sizeof *in);
    if (!jv_only_keys(body, "", keys, e) || !jv_string(body, "", "name", true, 1, 128, &in->name, e) ||
        !jv_array(body, "", "scopes", true, 16, &scopes, e))
        return false;
    if (!tenant && principal_is_platform(who)) {
        jv_set(e, "missing_field", "tenant", "'tenant' is required: a tenant id, or null for a platform key");
        return false;
    }
    if (tenant && !json_is_null(tenant)) {
        if (!json_is_string(tenant)) {
            jv_set(e, "invalid_type", "tenant", "'tenant' must be a tenant id or null");
            return false;
        }
        in->tenant = json_string_value(tenant);
        if (!jv_valid_id(in->tenant)) {
            jv_set(e, "invalid_value", "tenant", "'tenant' must match [a-z0-9][a-z0-9-]{0,62}");
            return false;
        }
    } else if (!tenant) {
        in->tenant = who->tenant;   /* a tenant key making a key of its own tenant */
    }
    if (json_array_size(scopes) == 0) {
        jv_set(e, "invalid_value", "scopes", "'scopes' must list at least one scope");
        return false;
    }
    json_array_foreach(scopes, i, v) {
        uint32_t bit;
        if (!json_is_string(v)) {
            jv_set(e, "invalid_type", "scopes", "'scopes' must hold strings");
            return false;
        }
        if (!(bit = principal_scope_from_word(json_string_value(v)))) {
            jv_set(e, "invalid_value", "scopes", "unknown scope '%.64s'", json_string_value(v));
            return false;
        }
        if (in->scopes & bit) {
            jv_set(e, "invalid_value", "scopes", "'scopes' lists '%s' twice", json_string_value(v));
            return false;
        }
        in->scopes |= bit;
    }
    if (in->tenant && (in->scopes & (SCOPE_PLATFORM_ADMIN | SCOPE_OPS_FAILOVER))) {
        jv_set(e, "invalid_value", "scopes", "platform:admin and ops:failover are only for platform keys (tenant null)");
        return false;
    }
    if (!jv_string(body, "", "expiresAt", false, 1, 40, &in->expires, e))
        return false;
    if (json_is_null(json_object_get(body, "expiresAt")))
        in->expires = NULL;
    if (in->expires && !api_keys_valid_timestamp(in->expires)) {
        jv_set(e, "invalid_value", "expiresAt", "'expiresAt' must be an RFC 3339 time with a zone, e.g. 2027-01-31T00:00:00Z");
        return false;
    }
    return true;
}

static void key_on_created(const struct pgq_result *q, void *arg)
{
    struct key_op *op = arg;
    json_t *body;
    if (q->status != PGQ_OK) {
        if (q->status == PGQ_SQL_ERROR && strncmp(q->sqlstate, "22", 2) == 0)
            cpreq_reply_error(op->r, 400, "invalid_value", "expiresAt", "'expiresAt' is not a valid time");
        else
            key_reply_db(op, q);
    } else if (strcmp(PQgetvalue(q->res, 0, 0), "t") != 0) {
        if (principal_is_platform(&op->r->who))
            cpreq_reply_error(op->r, 422, "invalid_reference", "tenant", "no such tenant");
        else
            cpreq_reply_error(op->r, 404, "not_found", "tenant", "no such tenant");
    } else if (strcmp(PQgetvalue(q->res, 0, 1), "t") != 0) {
        cpreq_reply_error(op->r, 400, "invalid_value", "expiresAt", "'expiresAt' is in the past");
    } else if (strcmp(PQgetvalue(q->res, 0, 2), "t") != 0) {
        cpreq_reply_error(op->r, 400, "out_of_range", "expiresAt",
                          "'expiresAt' is more than 10 years away, or later than the expiry of the key making it");
    } else if (PQgetisnull(q->res, 0, 3) || !(body = json_loads(PQgetvalue(q->res, 0, 3), 0, NULL))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "the key was not created");
    } else {
        char *loc = xasprintf("/v1/api-keys/%s", op->id);
        char *key = xasprintf(APIKEY_PREFIX "%s_%s", op->id, op->secret);
        json_object_set_new(body, "key", json_string(key));
        OPENSSL_cleanse(key, strlen(key));
        free(key);
        cpreq_add_header(op->r, "Location", loc);
        cpreq_add_header(op->r, "Cache-Control", "no-store");
        free(loc);
        log_write(LOG_INFO, op->r->id, "event=api_key_created id=%s", op->id);
        cpreq_reply_json(op->r, 201, body);
    }
    key_op_free(op);
}

static void key_create(struct cp_req *r)
{
    static const char sql_fmt[] =
        "WITH x AS (SELECT coalesce($6::timestamptz, to_timestamp(nullif($8, '')::float8 / 1000)) AS exp),"
        " chk AS (SELECT"
        "  ($3::text IS NULL OR EXISTS (SELECT 1 FROM tenants WHERE id = $3 AND deleted_at IS NULL)) AS tenant_ok,"
        "  (x.exp IS NULL OR x.exp > now()) AS future_ok,"
        "  (x.exp IS NULL OR (x.exp <= now() + interval '10 years' AND"
        "   ($8 = '' OR x.exp <= to_timestamp($8::float8 / 1000)))) AS range_ok, x.exp FROM x),"
        " ins AS (INSERT INTO api_keys AS k (id, name, tenant_id, scopes, secret_sha256, expires_at, created_by)"
        "   SELECT $1, $2, $3, $4::text[], decode($5, 'hex'), chk.exp, $7 FROM chk"
        "   WHERE tenant_ok AND future_ok AND range_ok RETURNING %s)"
        " SELECT tenant_ok, future_ok, range_ok, (SELECT * FROM ins) FROM chk";
    const struct principal *who = &r->who;
    struct key_input in;
    struct jv_err e;
    struct key_op *op;
    json_t *body;
    char scopes[400], sha[65], by[80], caller_exp[24] = "";
    const char *values[8];
    char *sql;

    if (!cpreq_check_query(r, NULL) || !(body = cpreq_json_body(r, false)))
        return;
    if (!key_validate(r, body, &in, &e)) {
        json_decref(body);
        cpreq_reply_jv(r, &e);
        return;
    }
    if (in.tenant && !principal_sees_tenant(who, in.tenant)) {
        json_decref(body);
        cpreq_reply_error(r, 404, "not_found", "tenant", "no such tenant");
        return;
    }
    if (!in.tenant && !principal_is_platform(who)) {
        json_decref(body);
        cpreq_reply_error(r, 403, "insufficient_scope", "tenant", "a tenant key cannot make platform keys");
        return;
    }
    if (!(who->scopes & SCOPE_PLATFORM_ADMIN) && (in.scopes & ~who->scopes)) {
        json_decref(body);
        cpreq_reply_error(r, 403, "insufficient_scope", "scopes",
                          "a key can only be given scopes its maker holds");
        return;
    }
    if (in.tenant)
        snprintf(r->audit_tenant, sizeof r->audit_tenant, "%s", in.tenant);
    op = xcalloc(1, sizeof *op);
    op->r = r;
    util_random_hex(op->id, APIKEY_ID_LEN / 2);
    util_random_hex(op->secret, APIKEY_SECRET_LEN / 2);
    apikeys_hash_hex(op->secret, sha);
    key_scopes_array(in.scopes, false, scopes, sizeof scopes);
    key_created_by(who, by, sizeof by);
    if (who->kind == PRINCIPAL_KEY && who->expires_ms > 0)
        snprintf(caller_exp, sizeof caller_exp, "%lld", (long long)who->expires_ms);
    values[0] = op->id;
    values[1] = in.name;
    values[2] = in.tenant;
    values[3] = scopes;
    values[4] = sha;
    values[5] = in.expires;
    values[6] = by;
    values[7] = caller_exp;
    sql = xasprintf(sql_fmt, key_json_sql);
    pgpool_query(r->cp->global, sql, 8, values, key_on_created, op);
    free(sql);
    json_decref(body);
}

/* ---- read ---- */

static void key_on_row(const struct pgq_result *q, void *arg)
{
    struct key_op *op = arg;
    if (q->status != PGQ_OK)
        key_reply_db(op, q);
    else if (PQntuples(q->res) != 1)
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no such API key");
    else
        cpreq_reply_text(op->r, 200, PQgetvalue(q->res, 0, 0), (size_t)PQgetlength(q->res, 0, 0));
    key_op_free(op);
}

/* Keys of the tenant the caller sees: $2 = '' for platform credentials. */
static void key_get(struct cp_req *r, const char *id)
{
    const char *values[2] = {id, r->who.tenant};
    struct key_op *op;
    char *sql;
    if (!cpreq_check_query(r, NULL))
        return;
    op = xcalloc(1, sizeof *op);
    op->r = r;
    sql = xasprintf("SELECT %s FROM api_keys k WHERE k.id = $1 AND ($2 = '' OR k.tenant_id = $2)", key_json_sql);
    pgpool_query(r->cp->global, sql, 2, values, key_on_row, op);
    free(sql);
}

static bool key_valid_id(const char *s)
{
    if (strlen(s) != APIKEY_ID_LEN)
        return false;
    for (size_t i = 0; i < APIKEY_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static void key_on_list(const struct pgq_result *q, void *arg)
{
    struct key_op *op = arg;
    json_t *items;
    int n;
    if (q->status != PGQ_OK) {
        key_reply_db(op, q);
        key_op_free(op);
        return;
    }
    n = PQntuples(q->res);
    items = json_array();
    for (int i = 0; i < n && i < op->limit; i++) {
        json_t *item = json_loads(PQgetvalue(q->res, i, 0), 0, NULL);
        if (item)
            json_array_append_new(items, item);
    }
    cpreq_reply_json(op->r, 200, list_page_body(items, "k1", n > op->limit ? PQgetvalue(q->res, op->limit - 1, 1) : NULL));
    key_op_free(op);
}

/* GET /v1/api-keys?tenant=&limit=&cursor=: a tenant key lists its own tenant's keys only. */
static void key_list(struct cp_req *r)
{
    static const char *const allowed[] = {"limit", "cursor", "tenant", NULL};
    const char *values[4], *tenant;
    struct list_page pg;
    struct key_op *op;
    char *sql;

    if (!cpreq_check_query(r, allowed) || !list_page_parse(r, "k1", key_valid_id, &pg))
        return;
    tenant = cpreq_query(r, "tenant");
    if (tenant && !jv_valid_id(tenant)) {
        cpreq_reply_error(r, 400, "invalid_query", "tenant", "'tenant' must be a tenant id");
        return;
    }
    if (tenant && !principal_sees_tenant(&r->who, tenant)) {
        cpreq_reply_error(r, 404, "not_found", "tenant", "no such tenant");
        return;
    }
    values[0] = list_page_after(&pg);
    values[1] = pg.fetch;
    values[2] = r->who.tenant;
    values[3] = tenant;
    op = xcalloc(1, sizeof *op);
    op->r = r;
    op->limit = pg.limit;
    sql = xasprintf("SELECT %s, k.id FROM api_keys k WHERE ($1::text IS NULL OR k.id > $1)"
                    " AND ($3 = '' OR k.tenant_id = $3) AND ($4::text IS NULL OR k.tenant_id = $4)"
                    " ORDER BY k.id LIMIT $2",
                    key_json_sql);
    pgpool_query(r->cp->global, sql, 4, values, key_on_list, op);
    free(sql);
}

/* ---- revoke, rotate: answered once every control plane dropped its copy ---- */

static void key_on_announced(bool delivered, void *arg)
{
    struct key_op *op = arg;
    (void)delivered;   /* lost: the cache's freshness bound (APIKEYS_FRESH_MS) still holds */
    apikeys_forget(op->r->cp->keys, op->id);
    if (op->status != 204)
        cpreq_add_header(op->r, "Cache-Control", "no-store");   /* a rotation's answer holds the new key */
    cpreq_reply_held(op->r, op->status, op->reply);
    op->reply = NULL;
    key_op_free(op);
}

static void key_announce(struct key_op *op, int status, json_t *reply)
{
    op->status = status;
    op->reply = reply;
    invalidate_apikey(op->r->cp->inval, op->id, key_on_announced, op);
}

static void key_on_revoked(const struct pgq_result *q, void *arg)
{
    struct key_op *op = arg;
    if (q->status != PGQ_OK) {
        key_reply_db(op, q);
    } else if (PQntuples(q->res) != 1) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no such API key");
    } else if (strcmp(PQgetvalue(q->res, 0, 2), "t") != 0) {
        cpreq_reply_error(op->r, 403, "insufficient_scope", NULL,
                          "revoking a key needs every scope of that key");
    } else {
        snprintf(op->r->audit_tenant, sizeof op->r->audit_tenant, "%s", PQgetvalue(q->res, 0, 1));
        log_write(LOG_INFO, op->r->id, "event=api_key_revoked id=%s", op->id);
        key_announce(op, 204, NULL);
        return;
    }
    key_op_free(op);
}

/* DELETE /v1/api-keys/{id}: idempotent (revoking a revoked key is 204 again). */
static void key_revoke(struct cp_req *r, const char *id)
{
    static const char sql[] =
        "WITH cur AS (SELECT id, scopes <@ $3::text[] AS reach FROM api_keys"
        "   WHERE id = $1 AND ($2 = '' OR tenant_id = $2) FOR UPDATE),"
        " upd AS (UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now()),"
        "   version = k.version + CASE WHEN k.revoked_at IS NULL THEN 1 ELSE 0 END"
        "   FROM cur WHERE k.id = cur.id AND cur.reach RETURNING k.id)"
        " SELECT cur.id, (SELECT coalesce(tenant_id, '') FROM api_keys WHERE id = cur.id), cur.reach FROM cur";
    char caller[400];
    const char *values[3] = {id, r->who.tenant, caller};
    struct key_op *op;
    if (!cpreq_check_query(r, NULL))
        return;
    key_scopes_array(r->who.scopes, true, caller, sizeof caller);
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    pgpool_query(r->cp->global, sql, 3, values, key_on_revoked, op);
}

static void key_on_rotated(const struct pgq_result *q, void *arg)
{
    struct key_op *op = arg;
    json_t *body;
    if (q->status != PGQ_OK) {
        key_reply_db(op, q);
    } else if (PQntuples(q->res) != 1) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no such API key");
    } else if (strcmp(PQgetvalue(q->res, 0, 0), "t") != 0) {
        cpreq_reply_error(op->r, 409, "key_revoked", NULL, "a revoked key cannot be rotated");
    } else if (strcmp(PQgetvalue(q->res, 0, 1), "t") != 0) {
        cpreq_reply_error(op->r, 403, "insufficient_scope", NULL,
                          "rotating a key reveals it: the caller must hold every scope of the key, "
                          "and an expiring caller may only rotate keys that expire no later");
    } else if (PQgetisnull(q->res, 0, 2) || !(body = json_loads(PQgetvalue(q->res, 0, 2), 0, NULL))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "the key was not rotated");
    } else {
        char *key = xasprintf(APIKEY_PREFIX "%s_%s", op->id, op->secret);
        json_object_set_new(body, "key", json_string(key));
        OPENSSL_cleanse(key, strlen(key));
        free(key);
        if (json_is_string(json_object_get(body, "tenant")))
            snprintf(op->r->audit_tenant, sizeof op->r->audit_tenant, "%s", json_string_value(json_object_get(body, "tenant")));
        log_write(LOG_INFO, op->r->id, "event=api_key_rotated id=%s", op->id);
        key_announce(op, 200, body);
        return;
    }
    key_op_free(op);
}

/* POST /v1/api-keys/{id}/rotate {"overlapSeconds"?}: a new secret; the old
 * one stays valid for the overlap (default 0: at once invalid). */
static void key_rotate(struct cp_req *r, const char *id)
{
    static const char sql_fmt[] =
        "WITH cur AS (SELECT id, revoked_at IS NULL AS live,"
        "   scopes <@ $4::text[] AND ($6 = '' OR (expires_at IS NOT NULL AND"
        "     expires_at <= to_timestamp($6::float8 / 1000))) AS reach"
        "   FROM api_keys WHERE id = $1 AND ($2 = '' OR tenant_id = $2) FOR UPDATE),"
        " upd AS (UPDATE api_keys k SET"
        "   previous_sha256 = CASE WHEN $3::int > 0 THEN k.secret_sha256 END,"
        "   previous_valid_until = CASE WHEN $3::int > 0 THEN now() + make_interval(secs => $3::int) END,"
        "   secret_sha256 = decode($5, 'hex'), rotated_at = now(), version = k.version + 1"
        "   FROM cur WHERE k.id = cur.id AND cur.live AND cur.reach RETURNING %s)"
        " SELECT cur.live, cur.reach, (SELECT * FROM upd) FROM cur";
    static const char *const keys[] = {"overlapSeconds", NULL};
    const char *values[6];
    char overlap_s[16], caller[400], sha[65], caller_exp[24] = "";
    int64_t overlap = 0;
    struct key_op *op;
    struct jv_err e;
    json_t *body = NULL;
    char *sql;

    if (!cpreq_check_query(r, NULL))
        return;
    if (r->who.via_previous) {
        /* the old secret of an overlap could otherwise take the key over (and end the new secret) */
        cpreq_reply_error(r, 403, "insufficient_scope", NULL,
                          "a secret kept for a rotation overlap cannot rotate keys: use the current secret");
        return;
    }
    if (r->body_len > 0) {
        if (!(body = cpreq_json_body(r, false)))
            return;
        if (!jv_only_keys(body, "", keys, &e) ||
            !jv_int(body, "", "overlapSeconds", false, 0, APIKEYS_MAX_OVERLAP_S, &overlap, &e)) {
            json_decref(body);
            cpreq_reply_jv(r, &e);
            return;
        }
        json_decref(body);
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", id);
    util_random_hex(op->secret, APIKEY_SECRET_LEN / 2);
    apikeys_hash_hex(op->secret, sha);
    snprintf(overlap_s, sizeof overlap_s, "%lld", (long long)overlap);
    key_scopes_array(r->who.scopes, true, caller, sizeof caller);
    values[0] = id;
    values[1] = r->who.tenant;
    values[2] = overlap_s;
    values[3] = caller;
    values[4] = sha;
    if (r->who.kind == PRINCIPAL_KEY && r->who.expires_ms > 0)
        snprintf(caller_exp, sizeof caller_exp, "%lld", (long long)r->who.expires_ms);
    values[5] = caller_exp;
    sql = xasprintf(sql_fmt, key_json_sql);
    pgpool_query(r->cp->global, sql, 6, values, key_on_rotated, op);
    free(sql);
}

void api_keys_handle(struct cp_req *r, char **segs, int nsegs)
{
    /* the route table matched the method and shape; ids outside the syntax do not exist */
    if (nsegs >= 1 && !key_valid_id(segs[0])) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no such API key");
        return;
    }
    if (nsegs == 0 && r->method == EVHTTP_REQ_POST)
        key_create(r);
    else if (nsegs == 0)
        key_list(r);
    else if (nsegs == 1 && r->method == EVHTTP_REQ_DELETE)
        key_revoke(r, segs[0]);
    else if (nsegs == 1)
        key_get(r, segs[0]);
    else
        key_rotate(r, segs[0]);
}
