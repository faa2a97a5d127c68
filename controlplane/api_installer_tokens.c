/*
 * api_installer_tokens.c - a tenant's installer tokens over the admin API:
 * issue, list, get, revoke (installer_tokens.h has the token rules and the
 * placement count).
 *
 * The secret is in the answer to the issue only; lists and gets show the
 * public id, expiry, scope and the placements made so far. A token of
 * another tenant, like a missing tenant, is 404 (existence does not leak);
 * so is every tenant a tenant-scoped caller does not see (principal.h).
 */
#include "api_installer_tokens.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "installer_tokens.h"
#include "listpage.h"
#include "log.h"
#include "tenant_change.h"
#include "util.h"

/* A token's public representation (alias i), never its hash. */
static const char inst_public_sql[] =
    "json_build_object('id', i.id, 'tenantId', i.tenant_id, 'name', i.name, 'scope', 'provision:on-behalf',"
    " 'expiresAt', cp_ts(i.expires_at), 'registrationIdPrefix', i.registration_id_prefix,"
    " 'maxPlacements', i.max_placements, 'placements', i.placements,"
    " 'status', CASE WHEN i.revoked_at IS NOT NULL THEN 'revoked' WHEN i.expires_at <= now() THEN 'expired'"
    "  ELSE 'active' END,"
    " 'revokedAt', cp_ts(i.revoked_at), 'createdAt', cp_ts(i.created_at))";

struct inst_op {
    struct cp_req *r;
    char tenant[64];
    char id[INSTALLER_ID_LEN + 1];
    char token[INSTALLER_TOKEN_MAX];   /* issue: shown once, wiped with the op */
    int limit;
    int reply_status;                  /* after the announcement; 204: no body */
    json_t *reply;
};

static void inst_op_free(struct inst_op *op)
{
    OPENSSL_cleanse(op->token, sizeof op->token);
    json_decref(op->reply);
    free(op);
}

static struct inst_op *inst_op_new(struct cp_req *r, const char *tenant, const char *id)
{
    struct inst_op *op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->tenant, sizeof op->tenant, "%s", tenant);
    if (id)
        snprintf(op->id, sizeof op->id, "%s", id);
    return op;
}

/* Replies for a failed statement. */
static void inst_reply_failed(struct inst_op *op, const struct pgq_result *q)
{
    if (q->status == PGQ_UNAVAILABLE) {
        cpreq_reply_db_unavailable(op->r, q);
        return;
    }
    log_write(LOG_ERROR, op->r->id, "event=sql_error sqlstate=%s error=\"%.300s\"", q->sqlstate,
              q->message ? q->message : "");
    cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
}

/* ---- announce: every control plane drops its cached copy of the tenant ---- */

static void inst_on_announced(void *arg)
{
    struct inst_op *op = arg;
    cpreq_reply_held(op->r, op->reply_status, op->reply);
    op->reply = NULL;
    inst_op_free(op);
}

/* The change committed: tell every control plane, then answer (reply stolen). */
static void inst_announce(struct inst_op *op, int status, json_t *reply)
{
    op->reply_status = status;
    op->reply = reply;
    tenant_change_announce(op->r->cp, op->tenant, inst_on_announced, op);
}

/* ---- issue ---- */

static void inst_on_created(const struct pgq_result *q, void *arg)
{
    struct inst_op *op = arg;
    json_t *body;
    char *loc;

    if (q->status != PGQ_OK) {
        inst_reply_failed(op, q);
        inst_op_free(op);
        return;
    }
    if (PQntuples(q->res) == 0) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no tenant '%s'", op->tenant);
        inst_op_free(op);
        return;
    }
    if (!(body = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
        inst_op_free(op);
        return;
    }
    json_object_set_new(body, "token", json_string(op->token));
    OPENSSL_cleanse(op->token, sizeof op->token);
    loc = xasprintf("/v1/tenants/%s/installer-tokens/%s", op->tenant, op->id);
    cpreq_add_header(op->r, "Location", loc);
    cpreq_add_header(op->r, "Cache-Control", "no-store");
    free(loc);
    log_write(LOG_INFO, op->r->id, "event=installer_token_issued tenant=%s token=%s", op->tenant, op->id);
    inst_announce(op, 201, body);
}

static void inst_create(struct cp_req *r, const char *tenant)
{
    static const char sql_fmt[] =
        "INSERT INTO installer_tokens AS i (token_sha256, tenant_id, name, id, expires_at,"
        "  registration_id_prefix, max_placements)"
        " SELECT $1, t.id, $3, $4, to_timestamp($5::bigint / 1000.0), $6, $7::bigint"
        "   FROM tenants t WHERE t.id = $2 AND t.deleted_at IS NULL AND t.offboarding_at IS NULL"
        " RETURNING %s";
    json_t *body = cpreq_json_body(r, false);
    struct installer_new in;
    struct jv_err e;
    struct inst_op *op;
    char hash[INSTALLER_SHA_HEX], exp[24], max[24];
    const char *values[7];
    char *q;

    if (!body)
        return;
    if (!installer_tokens_validate(body, util_wall_ms(), &in, &e)) {
        json_decref(body);
        cpreq_reply_jv(r, &e);
        return;
    }
    /* a token made by an expiring key expires no later than its maker: it
     * provisions devices, and must not outlive the credential that made it */
    if (r->who.kind == PRINCIPAL_KEY && r->who.expires_ms > 0 && in.expires_wall_ms > r->who.expires_ms) {
        if (json_object_get(body, "expiresAt") && !json_is_null(json_object_get(body, "expiresAt"))) {
            json_decref(body);
            cpreq_reply_error(r, 400, "out_of_range", "expiresAt",
                              "'expiresAt' is later than the expiry of the key making the token");
            return;
        }
        in.expires_wall_ms = r->who.expires_ms;
    }
    op = inst_op_new(r, tenant, NULL);
    installer_tokens_mint(op->id, op->token, hash);
    snprintf(exp, sizeof exp, "%lld", (long long)in.expires_wall_ms);
    snprintf(max, sizeof max, "%lld", (long long)in.max_placements);
    values[0] = hash;
    values[1] = op->tenant;
    values[2] = in.name;
    values[3] = op->id;
    values[4] = exp;
    values[5] = in.prefix;
    values[6] = in.max_placements > 0 ? max : NULL;
    q = xasprintf(sql_fmt, inst_public_sql);
    pgpool_query(r->cp->global, q, 7, values, inst_on_created, op);
    free(q);
    json_decref(body);
}

/* ---- list ---- */

static void inst_on_list(const struct pgq_result *q, void *arg)
{
    struct inst_op *op = arg;
    json_t *all, *items;
    const char *last = NULL;
    size_t n;

    if (q->status != PGQ_OK) {
        inst_reply_failed(op, q);
        inst_op_free(op);
        return;
    }
    if (strcmp(PQgetvalue(q->res, 0, 0), "t") != 0) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no tenant '%s'", op->tenant);
        inst_op_free(op);
        return;
    }
    all = json_loads(PQgetvalue(q->res, 0, 1), 0, NULL);
    if (!json_is_array(all)) {
        json_decref(all);
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
        inst_op_free(op);
        return;
    }
    n = json_array_size(all);
    items = json_array();
    for (size_t i = 0; i < n && i < (size_t)op->limit; i++)
        json_array_append(items, json_array_get(all, i));
    if (n > (size_t)op->limit)   /* one more row than asked for: there is a next page */
        last = json_string_value(json_object_get(json_array_get(all, (size_t)op->limit - 1), "id"));
    cpreq_reply_json(op->r, 200, list_page_body(items, "i1", last));
    json_decref(all);
    inst_op_free(op);
}

static void inst_list(struct cp_req *r, const char *tenant)
{
    static const char sql_fmt[] =
        "SELECT EXISTS (SELECT 1 FROM tenants t WHERE t.id = $1 AND t.deleted_at IS NULL),"
        " (SELECT coalesce(json_agg(p.j ORDER BY p.id), '[]') FROM"
        "   (SELECT %s AS j, i.id FROM installer_tokens i"
        "     WHERE i.tenant_id = $1 AND ($2::text IS NULL OR i.id > $2) ORDER BY i.id LIMIT $3::int) p)";
    static const char *const allowed[] = {"limit", "cursor", NULL};
    const char *values[3];
    struct list_page pg;
    struct inst_op *op;
    char *q;

    if (!cpreq_check_query(r, allowed) || !list_page_parse(r, "i1", installer_tokens_valid_id, &pg))
        return;
    op = inst_op_new(r, tenant, NULL);
    op->limit = pg.limit;
    values[0] = op->tenant;
    values[1] = list_page_after(&pg);
    values[2] = pg.fetch;
    q = xasprintf(sql_fmt, inst_public_sql);
    pgpool_query(r->cp->global, q, 3, values, inst_on_list, op);
    free(q);
}

/* ---- get ---- */

static void inst_on_get(const struct pgq_result *q, void *arg)
{
    struct inst_op *op = arg;
    if (q->status != PGQ_OK)
        inst_reply_failed(op, q);
    else if (PQntuples(q->res) == 0)
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no installer token '%s' in tenant '%s'", op->id,
                          op->tenant);
    else
        cpreq_reply_text(op->r, 200, PQgetvalue(q->res, 0, 0), (size_t)PQgetlength(q->res, 0, 0));
    inst_op_free(op);
}

static void inst_get(struct cp_req *r, const char *tenant, const char *id)
{
    static const char sql_fmt[] =
        "SELECT %s FROM installer_tokens i JOIN tenants t ON t.id = i.tenant_id AND t.deleted_at IS NULL"
        " WHERE i.tenant_id = $1 AND i.id = $2";
    struct inst_op *op = inst_op_new(r, tenant, id);
    const char *values[2] = {op->tenant, op->id};
    char *q = xasprintf(sql_fmt, inst_public_sql);
    pgpool_query(r->cp->global, q, 2, values, inst_on_get, op);
    free(q);
}

/* ---- revoke ---- */

static void inst_on_revoked(const struct pgq_result *q, void *arg)
{
    struct inst_op *op = arg;
    if (q->status != PGQ_OK) {
        inst_reply_failed(op, q);
        inst_op_free(op);
    } else if (PQntuples(q->res) == 0) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no installer token '%s' in tenant '%s'", op->id,
                          op->tenant);
        inst_op_free(op);
    } else {
        log_write(LOG_INFO, op->r->id, "event=installer_token_revoked tenant=%s token=%s", op->tenant, op->id);
        inst_announce(op, 204, NULL);
    }
}

/* Revoking again keeps the first revocation time and answers 204 again. */
static void inst_revoke(struct cp_req *r, const char *tenant, const char *id)
{
    static const char sql[] =
        "UPDATE installer_tokens i SET revoked_at = coalesce(i.revoked_at, now())"
        "  FROM tenants t WHERE t.id = i.tenant_id AND t.deleted_at IS NULL AND i.tenant_id = $1 AND i.id = $2"
        " RETURNING i.id";
    struct inst_op *op = inst_op_new(r, tenant, id);
    const char *values[2] = {op->tenant, op->id};
    pgpool_query(r->cp->global, sql, 2, values, inst_on_revoked, op);
}

/* ---- routes ---- */

void api_installer_tokens_handle(struct cp_req *r, const char *tenant, char **segs, int nsegs)
{
    if (!jv_valid_id(tenant) || !principal_sees_tenant(&r->who, tenant)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no tenant with that id");
        return;
    }
    /* the route table (routes.c) admitted GET/POST on the collection, GET/DELETE on a token */
    if (nsegs == 0) {
        if (r->method == EVHTTP_REQ_POST) {
            if (cpreq_check_query(r, NULL))
                inst_create(r, tenant);
        } else {
            inst_list(r, tenant);
        }
        return;
    }
    if (nsegs == 1) {
        if (!cpreq_check_query(r, NULL))
            return;
        if (!installer_tokens_valid_id(segs[0]))
            cpreq_reply_error(r, 404, "not_found", NULL, "no installer token with that id");
        else if (r->method == EVHTTP_REQ_GET)
            inst_get(r, tenant, segs[0]);
        else
            inst_revoke(r, tenant, segs[0]);
        return;
    }
    cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
}
