/*
 * api_certificates.c - a tenant's X.509 CA certificates.
 *
 * Upload (unverified, with a fresh verification code) -> verify (a leaf with
 * CN = the code signed by the CA: proof that the tenant holds the CA's key)
 * -> verified. Only verified, enabled CAs count: the tenant cache
 * (tenants.c) hands them to the device routes, and the reconciler
 * (enroll_sync.c) keeps one X.509 enrollment group per such CA at each DPS
 * instance the tenant may use. Every change that alters that set (verify,
 * enable, disable, delete) is answered once every control plane has been
 * told to drop its cached copy of the tenant, and wakes the reconciler.
 *
 * Another tenant's certificate id, like an unknown one, answers 404.
 */
#include "api_certificates.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tenant_change.h"
#include "x509ca.h"

/* The public representation of row c (tenant_cas). */
#define CA_JSON_SQL                                                                                          \
    "json_build_object('id',c.id,'tenantId',c.tenant_id,'name',c.name,'subject',c.subject,"                   \
    "'thumbprint',c.thumbprint,'notBefore',cp_ts(c.not_before),'notAfter',cp_ts(c.not_after),"                \
    "'state',CASE WHEN c.verified_at IS NULL THEN 'unverified' ELSE 'verified' END,'enabled',c.enabled,"      \
    "'verificationCode',CASE WHEN c.verified_at IS NULL THEN c.verification_code END,"                       \
    "'verifiedAt',cp_ts(c.verified_at),'createdAt',cp_ts(c.created_at),'updatedAt',cp_ts(c.updated_at),"     \
    "'version',c.version)"

#define CA_LIVE_TENANT_SQL "EXISTS (SELECT 1 FROM tenants t WHERE t.id = c.tenant_id AND t.deleted_at IS NULL)"

struct ca_op {
    struct cp_req *r;
    char tenant[64];
    char id[17];
    X509 *proof;           /* verify: the uploaded leaf */
    int reply_status;      /* 204: no body */
    json_t *reply;
};

static void ca_op_free(struct ca_op *op)
{
    X509_free(op->proof);
    json_decref(op->reply);
    free(op);
}

bool api_certificates_validate(enum api_certificates_body kind, json_t *body, struct jv_err *e)
{
    static const char *const create_keys[] = {"name", "certificate", NULL};
    static const char *const verify_keys[] = {"certificate", NULL};
    static const char *const patch_keys[] = {"name", "enabled", NULL};
    const char *s = NULL;
    bool b;
    switch (kind) {
    case API_CERTIFICATES_CREATE:
        return jv_only_keys(body, "", create_keys, e) && jv_string(body, "", "name", false, 1, 128, &s, e) &&
               jv_string(body, "", "certificate", true, 1, X509CA_MAX_PEM, &s, e);
    case API_CERTIFICATES_VERIFY:
        return jv_only_keys(body, "", verify_keys, e) &&
               jv_string(body, "", "certificate", true, 1, X509CA_MAX_PEM, &s, e);
    case API_CERTIFICATES_PATCH:
        return jv_only_keys(body, "", patch_keys, e) && jv_string(body, "", "name", false, 1, 128, &s, e) &&
               jv_bool(body, "", "enabled", false, &b, e);
    }
    jv_set(e, "invalid_value", "", "unknown certificate route");
    return false;
}

static void ca_reply_sql_error(struct ca_op *op, const struct pgq_result *q)
{
    if (q->status == PGQ_UNAVAILABLE) {
        cpreq_reply_db_unavailable(op->r, q);
    } else if (q->sqlstate && strcmp(q->sqlstate, "23505") == 0) {
        cpreq_reply_error(op->r, 409, "already_exists", "certificate",
                          "this tenant already has this CA certificate (same thumbprint)");
    } else {
        log_write(LOG_ERROR, op->r->id, "event=sql_error sqlstate=%s error=\"%.300s\"", q->sqlstate ? q->sqlstate : "",
                  q->message ? q->message : "");
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
    }
}

static void ca_not_found(struct ca_op *op)
{
    cpreq_reply_error(op->r, 404, "not_found", NULL, "no such certificate");
}

/* ---- announce: drop the tenant everywhere, wake the reconciler, answer ---- */

static void ca_on_announced(void *arg)
{
    struct ca_op *op = arg;
    cpreq_reply_held(op->r, op->reply_status, op->reply);
    op->reply = NULL;
    ca_op_free(op);
}

/* The change committed: reply (stolen) once every control plane knows. */
static void ca_announce(struct ca_op *op, int status, json_t *reply)
{
    op->reply_status = status;
    op->reply = reply;
    tenant_change_announce(op->r->cp, op->tenant, ca_on_announced, op);
}

/* One row of CA_JSON_SQL in column col (new reference) or NULL after replying. */
static json_t *ca_row_json(struct ca_op *op, const struct pgq_result *q, int col)
{
    json_t *j;
    if (q->status != PGQ_OK) {
        ca_reply_sql_error(op, q);
        return NULL;
    }
    if (PQntuples(q->res) == 0 || PQgetisnull(q->res, 0, col)) {
        ca_not_found(op);
        return NULL;
    }
    if (!(j = json_loads(PQgetvalue(q->res, 0, col), 0, NULL))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
        return NULL;
    }
    return j;
}

/* ---- create ---- */

static void ca_on_created(const struct pgq_result *q, void *arg)
{
    struct ca_op *op = arg;
    json_t *j;
    if (q->status != PGQ_OK) {
        ca_reply_sql_error(op, q);
    } else if (strcmp(PQgetvalue(q->res, 0, 0), "0") == 0) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no such tenant");
    } else if (PQgetisnull(q->res, 0, 2)) {
        cpreq_reply_error(op->r, 409, "limit_exceeded", NULL,
                          "a tenant holds at most %d CA certificates; delete one first", API_CERTIFICATES_MAX);
    } else if (!(j = json_loads(PQgetvalue(q->res, 0, 2), 0, NULL))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
    } else {
        char *loc = xasprintf("/v1/tenants/%s/certificates/%s", op->tenant, op->id);
        cpreq_add_header(op->r, "Location", loc);
        free(loc);
        log_write(LOG_INFO, op->r->id, "event=tenant_ca_added tenant=%s certificate=%s", op->tenant, op->id);
        cpreq_reply_json(op->r, 201, j);
    }
    ca_op_free(op);
}

static void ca_create(struct cp_req *r, const char *tenant)
{
    static const char sql[] =
        "WITH t AS (SELECT id FROM tenants WHERE id = $1 AND deleted_at IS NULL AND offboarding_at IS NULL),"
        " n AS (SELECT count(*) AS c FROM tenant_cas WHERE tenant_id = $1),"
        " ins AS (INSERT INTO tenant_cas AS c (id, tenant_id, name, certificate_pem, subject, thumbprint, not_before,"
        "   not_after, verification_code)"
        "   SELECT $2, t.id, $3, $4, $5, $6, $7::timestamptz, $8::timestamptz, $9 FROM t, n WHERE n.c < $10::int"
        "   RETURNING " CA_JSON_SQL ")"
        " SELECT (SELECT count(*) FROM t), (SELECT c FROM n), (SELECT * FROM ins)";
    json_t *body = cpreq_json_body(r, false);
    struct jv_err e;
    struct x509ca_err xe = {0};
    struct x509ca_info info;
    struct ca_op *op;
    X509 *ca;
    char code[X509CA_CODE_LEN + 1], max[12];
    const char *values[10];

    if (!body)
        return;
    if (!api_certificates_validate(API_CERTIFICATES_CREATE, body, &e)) {
        json_decref(body);
        cpreq_reply_jv(r, &e);
        return;
    }
    ca = x509ca_parse_one(json_string_value(json_object_get(body, "certificate")), &xe);
    if (ca && x509ca_check_ca(ca, &xe) && !x509ca_info(ca, &info)) {
        xe.status = 422;
        snprintf(xe.code, sizeof xe.code, "invalid_certificate");
        snprintf(xe.msg, sizeof xe.msg, "the certificate's subject or validity cannot be read");
    }
    if (xe.code[0]) {
        X509_free(ca);
        json_decref(body);
        cpreq_reply_error(r, xe.status, xe.code, "certificate", "%s", xe.msg);
        return;
    }
    X509_free(ca);
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->tenant, sizeof op->tenant, "%s", tenant);
    util_random_hex(op->id, 8);
    util_random_hex(code, X509CA_CODE_LEN / 2);
    for (char *p = code; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    snprintf(max, sizeof max, "%d", API_CERTIFICATES_MAX);
    values[0] = op->tenant;
    values[1] = op->id;
    values[2] = json_string_value(json_object_get(body, "name"));
    values[3] = json_string_value(json_object_get(body, "certificate"));
    values[4] = info.subject;
    values[5] = info.thumbprint;
    values[6] = info.not_before;
    values[7] = info.not_after;
    values[8] = code;
    values[9] = max;
    pgpool_query(r->cp->global, sql, 10, values, ca_on_created, op);
    json_decref(body);
}

/* ---- get, list ---- */

static void ca_on_row(const struct pgq_result *q, void *arg)
{
    struct ca_op *op = arg;
    json_t *j = ca_row_json(op, q, 0);
    if (j)
        cpreq_reply_json(op->r, 200, j);
    ca_op_free(op);
}

static void ca_get(struct ca_op *op)
{
    static const char sql[] = "SELECT " CA_JSON_SQL " FROM tenant_cas c WHERE c.tenant_id = $1 AND c.id = $2 AND "
                              CA_LIVE_TENANT_SQL;
    const char *values[2] = {op->tenant, op->id};
    pgpool_query(op->r->cp->global, sql, 2, values, ca_on_row, op);
}

static void ca_on_list(const struct pgq_result *q, void *arg)
{
    struct ca_op *op = arg;
    json_t *items;
    if (q->status != PGQ_OK) {
        ca_reply_sql_error(op, q);
    } else if (PQntuples(q->res) != 1 || strcmp(PQgetvalue(q->res, 0, 0), "0") == 0) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no such tenant");
    } else if (!(items = json_loads(PQgetvalue(q->res, 0, 1), 0, NULL))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "internal error (request %s)", op->r->id);
    } else {
        cpreq_reply_json(op->r, 200, json_pack("{s:o, s:n}", "items", items, "next"));
    }
    ca_op_free(op);
}

static void ca_list(struct ca_op *op)
{
    static const char sql[] =
        "SELECT (SELECT count(*) FROM tenants WHERE id = $1 AND deleted_at IS NULL),"
        " (SELECT coalesce(json_agg(" CA_JSON_SQL " ORDER BY c.created_at, c.id), '[]') FROM tenant_cas c"
        "  WHERE c.tenant_id = $1)";
    const char *values[1] = {op->tenant};
    pgpool_query(op->r->cp->global, sql, 1, values, ca_on_list, op);
}

/* ---- verify (proof of possession) ---- */

static void ca_on_verified(const struct pgq_result *q, void *arg)
{
    struct ca_op *op = arg;
    json_t *j = ca_row_json(op, q, 0);
    if (!j) {
        ca_op_free(op);
        return;
    }
    log_write(LOG_INFO, op->r->id, "event=tenant_ca_verified tenant=%s certificate=%s", op->tenant, op->id);
    ca_announce(op, 200, j);
}

static void ca_on_verify_row(const struct pgq_result *q, void *arg)
{
    static const char sql[] =
        "UPDATE tenant_cas c SET verified_at = coalesce(c.verified_at, now()), updated_at = now(),"
        " version = c.version + CASE WHEN c.verified_at IS NULL THEN 1 ELSE 0 END"
        " WHERE c.tenant_id = $1 AND c.id = $2 AND c.verification_code = $3 AND " CA_LIVE_TENANT_SQL
        " RETURNING " CA_JSON_SQL;
    struct ca_op *op = arg;
    struct x509ca_err xe;
    X509 *ca;
    const char *values[3];
    char code[X509CA_CODE_LEN + 8];

    if (q->status != PGQ_OK) {
        ca_reply_sql_error(op, q);
        ca_op_free(op);
        return;
    }
    if (PQntuples(q->res) == 0) {
        ca_not_found(op);
        ca_op_free(op);
        return;
    }
    snprintf(code, sizeof code, "%s", PQgetvalue(q->res, 0, 1));
    if (!(ca = x509ca_parse_one(PQgetvalue(q->res, 0, 0), &xe))) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "the stored certificate does not parse (request %s)",
                          op->r->id);
        ca_op_free(op);
        return;
    }
    if (!x509ca_check_proof(ca, op->proof, code, &xe)) {
        X509_free(ca);
        cpreq_reply_error(op->r, xe.status, xe.code, "certificate", "%s", xe.msg);
        ca_op_free(op);
        return;
    }
    X509_free(ca);
    values[0] = op->tenant;
    values[1] = op->id;
    values[2] = code;
    pgpool_query(op->r->cp->global, sql, 3, values, ca_on_verified, op);
}

static void ca_verify(struct ca_op *op)
{
    static const char sql[] = "SELECT c.certificate_pem, c.verification_code FROM tenant_cas c"
                              " WHERE c.tenant_id = $1 AND c.id = $2 AND " CA_LIVE_TENANT_SQL;
    json_t *body = cpreq_json_body(op->r, false);
    struct jv_err e;
    struct x509ca_err xe;
    const char *values[2] = {op->tenant, op->id};

    if (!body) {
        ca_op_free(op);
        return;
    }
    if (!api_certificates_validate(API_CERTIFICATES_VERIFY, body, &e)) {
        json_decref(body);
        cpreq_reply_jv(op->r, &e);
        ca_op_free(op);
        return;
    }
    op->proof = x509ca_parse_one(json_string_value(json_object_get(body, "certificate")), &xe);
    json_decref(body);
    if (!op->proof) {
        cpreq_reply_error(op->r, xe.status, xe.code, "certificate", "%s", xe.msg);
        ca_op_free(op);
        return;
    }
    pgpool_query(op->r->cp->global, sql, 2, values, ca_on_verify_row, op);
}

/* ---- enable, disable, PATCH, delete ---- */

static void ca_on_changed(const struct pgq_result *q, void *arg)
{
    struct ca_op *op = arg;
    json_t *j = ca_row_json(op, q, 0);
    if (!j) {
        ca_op_free(op);
        return;
    }
    log_write(LOG_INFO, op->r->id, "event=tenant_ca_changed tenant=%s certificate=%s enabled=%s", op->tenant, op->id,
              json_is_true(json_object_get(j, "enabled")) ? "true" : "false");
    ca_announce(op, 200, j);
}

/* enabled: "true"/"false" or NULL (unchanged); name NULL: unchanged. */
static void ca_update(struct ca_op *op, const char *enabled, const char *name)
{
    static const char sql[] =
        "UPDATE tenant_cas c SET enabled = coalesce($3::boolean, c.enabled), name = coalesce($4, c.name),"
        " updated_at = now(), version = c.version + 1"
        " WHERE c.tenant_id = $1 AND c.id = $2 AND " CA_LIVE_TENANT_SQL " RETURNING " CA_JSON_SQL;
    const char *values[4] = {op->tenant, op->id, enabled, name};
    pgpool_query(op->r->cp->global, sql, 4, values, ca_on_changed, op);
}

static void ca_patch(struct ca_op *op)
{
    json_t *body = cpreq_json_body(op->r, true);
    struct jv_err e;
    json_t *en;
    char name[132] = "";
    if (!body) {
        ca_op_free(op);
        return;
    }
    if (!api_certificates_validate(API_CERTIFICATES_PATCH, body, &e)) {
        json_decref(body);
        cpreq_reply_jv(op->r, &e);
        ca_op_free(op);
        return;
    }
    en = json_object_get(body, "enabled");
    if (json_string_value(json_object_get(body, "name")))
        snprintf(name, sizeof name, "%s", json_string_value(json_object_get(body, "name")));
    ca_update(op, en ? (json_is_true(en) ? "true" : "false") : NULL, name[0] ? name : NULL);
    json_decref(body);
}

static void ca_on_deleted(const struct pgq_result *q, void *arg)
{
    struct ca_op *op = arg;
    if (q->status != PGQ_OK) {
        ca_reply_sql_error(op, q);
        ca_op_free(op);
    } else if (PQntuples(q->res) == 0) {
        ca_not_found(op);
        ca_op_free(op);
    } else {
        log_write(LOG_INFO, op->r->id, "event=tenant_ca_deleted tenant=%s certificate=%s", op->tenant, op->id);
        ca_announce(op, 204, NULL);
    }
}

static void ca_delete(struct ca_op *op)
{
    static const char sql[] = "DELETE FROM tenant_cas c WHERE c.tenant_id = $1 AND c.id = $2 AND "
                              CA_LIVE_TENANT_SQL " RETURNING c.id";
    const char *values[2] = {op->tenant, op->id};
    pgpool_query(op->r->cp->global, sql, 2, values, ca_on_deleted, op);
}

/* enable/disable take no parameters: no body, or {}. Replies on false. */
static bool ca_no_body(struct ca_op *op)
{
    static const char *const none[] = {NULL};
    struct jv_err e;
    json_t *body;
    bool ok;
    if (op->r->body_len == 0)
        return true;
    if (!(body = cpreq_json_body(op->r, false)))
        return false;
    if (!(ok = jv_only_keys(body, "", none, &e)))
        cpreq_reply_jv(op->r, &e);
    json_decref(body);
    return ok;
}

/* ---- routing ---- */

static bool ca_valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n != 16)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

void api_certificates_handle(struct cp_req *r, const char *tenant, char **segs, int nsegs)
{
    struct ca_op *op;

    /* The route table (routes.c) admitted only its methods and shapes, and
     * the gate checked the tenant and the scopes; what is left is the id. */
    if (!jv_valid_id(tenant) || !principal_sees_tenant(&r->who, tenant)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no such tenant");
        return;
    }
    if (nsegs >= 1 && !ca_valid_id(segs[0])) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no such certificate");
        return;
    }
    if (!cpreq_check_query(r, NULL))
        return;
    if (nsegs == 0 && r->method == EVHTTP_REQ_POST) {
        ca_create(r, tenant);
        return;
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->tenant, sizeof op->tenant, "%s", tenant);
    if (nsegs >= 1)
        snprintf(op->id, sizeof op->id, "%s", segs[0]);
    if (nsegs == 0)
        ca_list(op);
    else if (nsegs == 1 && r->method == EVHTTP_REQ_GET)
        ca_get(op);
    else if (nsegs == 1 && r->method == EVHTTP_REQ_PATCH)
        ca_patch(op);
    else if (nsegs == 1)
        ca_delete(op);
    else if (segs[1][0] == 'v')
        ca_verify(op);
    else if (!ca_no_body(op))
        ca_op_free(op);   /* answered */
    else
        ca_update(op, segs[1][0] == 'e' ? "true" : "false", NULL);
}
