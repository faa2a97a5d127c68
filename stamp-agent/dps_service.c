/*
 * dps_service.c - the DPS service API of the stamp: individual enrollments,
 * enrollment groups and device registration states, as the
 * azure-iot-provisioning-service SDK calls them (../shared/specs/dps-wire.md §8).
 * Documents are validated and normalised by dps_svc_doc.c; this file does
 * authentication, routing and the database.
 *
 *   PUT|GET|DELETE  /enrollments/{registrationId}
 *   PUT|GET|DELETE  /enrollmentGroups/{enrollmentGroupId}
 *   POST            /enrollments/query, /enrollmentGroups/query, /registrations/{groupId}/query
 *   POST            /enrollments/{id}/attestationmechanism, /enrollmentGroups/{id}/attestationmechanism
 *   POST            /enrollments/        bulk operation
 *   GET|DELETE      /registrations/{registrationId}
 *   GET             /enrollmentGroups/{id}/registrationCounts          (extension)
 *
 * Extensions of ours (not in Azure DPS):
 *   ?dpsInstance=<id>  on any route: the DPS instance (provisioning.instances[].id)
 *                      the call manages; without it, the first configured
 *                      instance. An unknown id answers 404.
 *   GET /enrollmentGroups/{id}/registrationCounts
 *                      {"enrollmentGroupId","assigned","assigning","failed","disabled"}:
 *                      the group's device registrations by status.
 *   GET /registrationSummary, GET /registrationIds   the drift routes (dps_drift.h)
 *
 * Authentication: "SharedAccessSignature sr=<serviceHostName>&sig=&skn=<policy>&se="
 * signed with one of provisioning.servicePolicies; anything else (AAD Bearer
 * tokens included) is 401.
 *
 * Etags are counters ("\"<n>\"" on the wire). PUT without a condition creates
 * or replaces; with If-Match (or a body etag) it only updates a resource whose
 * etag matches, so a missing resource or another etag is 412, as in DPS.
 * Every handler replies exactly once (dps_reply_*), including when the
 * database is unavailable (503).
 */
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dps_drift.h"
#include "dps_secrets.h"
#include "dps_server.h"
#include "dps_svc_doc.h"
#include "jsonv.h"
#include "log.h"
#include "sas.h"

struct dps_service {
    struct dps_server *srv;
};

enum svc_bulk_mode { BULK_CREATE, BULK_UPDATE, BULK_UPDATE_IF_MATCH, BULK_DELETE };

/* One service call waiting on the database. */
struct svc_op {
    struct dps_req *r;
    const char *dps_id;
    enum dsv_kind kind;
    const char *id;            /* the path id (owned by r) */
    json_t *doc;               /* PUT / bulk item: the normalised document */
    bool conditional;          /* PUT: an If-Match update, not an upsert */
    int page;                  /* queries: page size */
    const char *item_type;     /* queries: x-ms-item-type */
    /* bulk */
    json_t *body;
    json_t *items;             /* borrowed from body */
    size_t next;
    json_t *errors;
    enum svc_bulk_mode mode;
    char *cur_id;
};

struct dps_service *dps_service_new(struct dps_server *s)
{
    struct dps_service *sv = xcalloc(1, sizeof *sv);
    sv->srv = s;
    return sv;
}

void dps_service_free(struct dps_service *sv)
{
    free(sv);
}

/* ---- SQL ---- */

/* DeviceRegistrationState columns (svc_reg_json reads them in this order). */
#define SVC_REG_COLS "r.registration_id, " DPS_SQL_TS("r.created_at") ", r.assigned_hub, r.device_id, r.status, " \
                     "r.substatus, " DPS_SQL_TS("r.updated_at") ", r.error_code, r.error_message, r.etag"
#define SVC_ENR_COLS "e.enrollment_id, e.doc::text, e.etag, " DPS_SQL_TS("e.created_at") ", " DPS_SQL_TS("e.updated_at")
/* Individual enrollments carry their device's registration state. */
#define SVC_ENR_FROM_IND "SELECT " SVC_ENR_COLS ", " SVC_REG_COLS " FROM dps_enrollments e " \
    "LEFT JOIN dps_registrations r ON r.dps_id = e.dps_id AND r.registration_id = e.enrollment_id " \
    "AND r.enrollment_kind = 'individual' "
#define SVC_ENR_FROM_GRP "SELECT " SVC_ENR_COLS " FROM dps_enrollments e "

static const char sql_upsert[] =
    "INSERT INTO dps_enrollments AS e (dps_id, kind, enrollment_id, attestation, doc) "
    "SELECT $1, $2, $3, $4, $5::jsonb WHERE $2 <> 'group' OR (SELECT count(*) FROM dps_enrollments "
    "WHERE dps_id = $1 AND kind = 'group' AND attestation = $4 AND enrollment_id <> $3) < $6::int "
    "ON CONFLICT (dps_id, kind, enrollment_id) DO UPDATE SET attestation = EXCLUDED.attestation, "
    "doc = EXCLUDED.doc, etag = e.etag + 1, updated_at = now() "
    "RETURNING e.etag, " DPS_SQL_TS("e.created_at") ", " DPS_SQL_TS("e.updated_at");
static const char sql_create[] =   /* bulk create: never replaces */
    "INSERT INTO dps_enrollments AS e (dps_id, kind, enrollment_id, attestation, doc) "
    "SELECT $1, $2, $3, $4, $5::jsonb WHERE $2 <> 'group' OR (SELECT count(*) FROM dps_enrollments "
    "WHERE dps_id = $1 AND kind = 'group' AND attestation = $4) < $6::int "
    "ON CONFLICT (dps_id, kind, enrollment_id) DO NOTHING "
    "RETURNING e.etag, " DPS_SQL_TS("e.created_at") ", " DPS_SQL_TS("e.updated_at");
static const char sql_update[] =
    "UPDATE dps_enrollments AS e SET attestation = $4, doc = $5::jsonb, etag = e.etag + 1, updated_at = now() "
    "WHERE e.dps_id = $1 AND e.kind = $2 AND e.enrollment_id = $3 AND ($6::bigint IS NULL OR e.etag = $6::bigint) "
    "RETURNING e.etag, " DPS_SQL_TS("e.created_at") ", " DPS_SQL_TS("e.updated_at");
static const char sql_delete[] =
    "WITH cur AS (SELECT 1 FROM dps_enrollments WHERE dps_id = $1 AND kind = $2 AND enrollment_id = $3), "
    "del AS (DELETE FROM dps_enrollments WHERE dps_id = $1 AND kind = $2 AND enrollment_id = $3 "
    "AND ($4::bigint IS NULL OR etag = $4::bigint) RETURNING 1) "
    "SELECT (SELECT count(*) FROM cur), (SELECT count(*) FROM del)";
static const char sql_get_ind[] = SVC_ENR_FROM_IND "WHERE e.dps_id = $1 AND e.kind = $2 AND e.enrollment_id = $3";
static const char sql_get_grp[] = SVC_ENR_FROM_GRP "WHERE e.dps_id = $1 AND e.kind = $2 AND e.enrollment_id = $3";
static const char sql_page_ind[] = SVC_ENR_FROM_IND "WHERE e.dps_id = $1 AND e.kind = $2 AND e.enrollment_id > $3 "
                                   "ORDER BY e.enrollment_id LIMIT $4::int";
static const char sql_page_grp[] = SVC_ENR_FROM_GRP "WHERE e.dps_id = $1 AND e.kind = $2 AND e.enrollment_id > $3 "
                                   "ORDER BY e.enrollment_id LIMIT $4::int";
static const char sql_attestation[] =
    "SELECT doc->'attestation' FROM dps_enrollments WHERE dps_id = $1 AND kind = $2 AND enrollment_id = $3";
static const char sql_reg_get[] =
    "SELECT " SVC_REG_COLS " FROM dps_registrations r WHERE r.dps_id = $1 AND r.registration_id = $2";
static const char sql_reg_page[] =
    "SELECT " SVC_REG_COLS " FROM dps_registrations r WHERE r.dps_id = $1 AND r.enrollment_kind = 'group' "
    "AND r.enrollment_id = $2 AND r.registration_id > $3 ORDER BY r.registration_id LIMIT $4::int";
static const char sql_reg_delete[] =
    "WITH cur AS (SELECT 1 FROM dps_registrations WHERE dps_id = $1 AND registration_id = $2), "
    "del AS (DELETE FROM dps_registrations WHERE dps_id = $1 AND registration_id = $2 "
    "AND ($3::bigint IS NULL OR etag = $3::bigint) RETURNING 1) "
    "SELECT (SELECT count(*) FROM cur), (SELECT count(*) FROM del)";
static const char sql_reg_counts[] =
    "SELECT (SELECT count(*) FROM dps_enrollments WHERE dps_id = $1 AND kind = 'group' AND enrollment_id = $2), "
    "count(*) FILTER (WHERE status = 'assigned'), count(*) FILTER (WHERE status = 'assigning'), "
    "count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'disabled') "
    "FROM dps_registrations WHERE dps_id = $1 AND enrollment_kind = 'group' AND enrollment_id = $2";

/* ---- helpers ---- */

static struct svc_op *svc_op_new(struct dps_req *r, const char *dps_id)
{
    struct svc_op *op = xcalloc(1, sizeof *op);
    op->r = r;
    op->dps_id = dps_id;
    return op;
}

static void svc_op_free(struct svc_op *op)
{
    json_decref(op->doc);
    json_decref(op->body);
    json_decref(op->errors);
    free(op->cur_id);
    free(op);
}

static void svc_fail(struct svc_op *op, const struct dsv_err *e)
{
    dps_reply_error(op->r, e->status, e->code, "%s", e->msg);
    svc_op_free(op);
}

static void svc_query(struct svc_op *op, const char *sql, int n, const char *const *v, pgpool_cb cb)
{
    pgpool_query(op->r->srv->pool, sql, n, v, cb, op);
}

static void svc_log_db_error(const struct svc_op *op, const struct pgq_result *res)
{
    log_write(LOG_WARN, op->r->id, "event=dps_service_db_error status=%d sqlstate=%s message=\"%s\"",
              (int)res->status, res->sqlstate ? res->sqlstate : "-", res->message ? res->message : "");
}

/* False (after replying and freeing op) unless the statement ran. */
static bool svc_db_ok(struct svc_op *op, const struct pgq_result *res)
{
    if (res->status == PGQ_OK)
        return true;
    svc_log_db_error(op, res);
    if (res->status == PGQ_UNAVAILABLE)
        dps_reply_error(op->r, 503, DSV_E_UNAVAILABLE, "the provisioning database is unavailable; retry later");
    else
        dps_reply_error(op->r, 500, DSV_E_INTERNAL, "internal error");
    svc_op_free(op);
    return false;
}

/* The request body as a JSON object; NULL after replying 400 and freeing op. */
static json_t *svc_body(struct svc_op *op)
{
    struct jv_err je;
    struct dsv_err e;
    json_t *body = jv_parse_object(op->r->body ? op->r->body : "", op->r->body_len, &je);
    if (!body) {
        dsv_set_err(&e, 400, DSV_E_INVALID, "%s", je.message);
        svc_fail(op, &e);
    }
    return body;
}

/* The If-Match header as the "etag = $n" parameter of a delete (NULL: none). */
static const char *svc_if_match_header(struct svc_op *op, char *buf, size_t buflen)
{
    int64_t etag;
    enum dsv_match m = dsv_if_match(dps_req_header(op->r, "If-Match"), NULL, &etag);
    return dsv_match_param(m, etag, buf, buflen);
}

static json_t *svc_text_or_null(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : json_string(PQgetvalue(res, row, col));
}

static void svc_set_etag(json_t *o, const char *num)
{
    char etag[DSV_ETAG_MAX];
    int64_t n = 0;
    if (!util_parse_int64(num, 0, INT64_MAX, &n))
        n = 0;
    dsv_etag_format(n, etag, sizeof etag);
    json_object_set_new(o, "etag", json_string(etag));
}

/* DeviceRegistrationState from the SVC_REG_COLS starting at col; null members left out. */
static json_t *svc_reg_json(const PGresult *res, int row, int c)
{
    static const char *const names[] = {"registrationId", "createdDateTimeUtc", "assignedHub", "deviceId",
                                        "status", "substatus", "lastUpdatedDateTimeUtc"};
    json_t *o = json_object();
    for (int i = 0; i < (int)ARRAY_LEN(names); i++) {
        json_t *v = svc_text_or_null(res, row, c + i);
        if (v)
            json_object_set_new(o, names[i], v);
    }
    if (!PQgetisnull(res, row, c + 7))
        json_object_set_new(o, "errorCode", json_integer(strtoll(PQgetvalue(res, row, c + 7), NULL, 10)));
    if (!PQgetisnull(res, row, c + 8))
        json_object_set_new(o, "errorMessage", json_string(PQgetvalue(res, row, c + 8)));
    svc_set_etag(o, PQgetvalue(res, row, c + 9));
    return o;
}

/* Enrollment from SVC_ENR_COLS (+ SVC_REG_COLS for individual enrollments). */
static json_t *svc_enr_json(const struct svc_op *op, const PGresult *res, int row)
{
    json_t *doc = json_loads(PQgetvalue(res, row, 1), 0, NULL);
    /* the keys are stored sealed: the SDK gets them back in clear, as DPS answers */
    if (!json_is_object(doc) || !dps_secrets_open(op->r->srv->env, op->dps_id, dsv_kind_word(op->kind),
                                                  PQgetvalue(res, row, 0), doc)) {
        json_decref(doc);
        return NULL;
    }
    svc_set_etag(doc, PQgetvalue(res, row, 2));
    json_object_set_new(doc, "createdDateTimeUtc", json_string(PQgetvalue(res, row, 3)));
    json_object_set_new(doc, "lastUpdatedDateTimeUtc", json_string(PQgetvalue(res, row, 4)));
    if (PQnfields(res) > 5 && !PQgetisnull(res, row, 5))
        json_object_set_new(doc, "registrationState", svc_reg_json(res, row, 5));
    return doc;
}

/* ---- authentication ---- */

static bool svc_authorized(struct dps_req *r)
{
    const struct agent_provisioning_config *pc = &r->srv->cfg->prov;
    const char *h = dps_req_header(r, "Authorization");
    struct sas_token t;
    const struct agent_service_policy *pol = NULL;
    int64_t now_s = util_wall_ms() / 1000;

    if (!h || sas_parse(h, &t) != SAS_OK)
        return false;
    for (size_t i = 0; i < pc->n_policies; i++)
        if (strcmp(pc->policies[i].name, t.skn) == 0)
            pol = &pc->policies[i];
    if (!pol || !sas_verify(&t, pol->key, (size_t)pol->keylen))
        return false;
    return t.expiry > now_s && strcasecmp(t.sr_decoded, pc->service_host_name) == 0;
}

/* ---- single enrollments ---- */

static void svc_on_get(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    json_t *doc;
    if (!svc_db_ok(op, res))
        return;
    if (PQntuples(res->res) == 0) {
        dps_reply_error(op->r, 404, DSV_E_NOT_FOUND, "%s '%s' not found",
                        op->kind == DSV_GROUP ? "enrollment group" : "enrollment", op->id);
    } else if (!(doc = svc_enr_json(op, res->res, 0))) {
        dps_reply_error(op->r, 500, DSV_E_INTERNAL, "internal error");
    } else
        dps_reply_json(op->r, 200, doc);
    svc_op_free(op);
}

static void svc_get(struct svc_op *op)
{
    const char *v[] = {op->dps_id, dsv_kind_word(op->kind), op->id};
    svc_query(op, op->kind == DSV_GROUP ? sql_get_grp : sql_get_ind, 3, v, svc_on_get);
}

static void svc_on_put(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    json_t *doc;
    struct dsv_err e;
    if (!svc_db_ok(op, res))
        return;
    if (PQntuples(res->res) == 0) {
        if (op->conditional)
            dsv_set_err(&e, 412, DSV_E_ETAG, "the etag does not match the current %s '%s' (or it does not exist)",
                        op->kind == DSV_GROUP ? "enrollment group" : "enrollment", op->id);
        else
            dsv_set_err(&e, 400, DSV_E_GROUP_CAP, "this DPS instance already has %d enrollment groups of this "
                        "attestation type", DSV_GROUP_CAP);
        svc_fail(op, &e);
        return;
    }
    doc = op->doc;
    op->doc = NULL;
    svc_set_etag(doc, PQgetvalue(res->res, 0, 0));
    json_object_set_new(doc, "createdDateTimeUtc", json_string(PQgetvalue(res->res, 0, 1)));
    json_object_set_new(doc, "lastUpdatedDateTimeUtc", json_string(PQgetvalue(res->res, 0, 2)));
    dps_reply_json(op->r, 200, doc);
    svc_op_free(op);
}

/* Store op->doc: upsert, or (conditional) update where the etag matches. */
static void svc_store(struct svc_op *op, const char *attestation, enum dsv_match m, int64_t etag, pgpool_cb cb,
                      bool create_only)
{
    json_t *sealed = json_deep_copy(op->doc);   /* op->doc stays clear: it is the answer */
    char *text;
    char cap[16], ebuf[24];
    const char *sql;
    const char *v[6] = {op->dps_id, dsv_kind_word(op->kind), op->id, attestation, NULL, cap};
    if (!dps_secrets_seal(op->r->srv->env, op->dps_id, dsv_kind_word(op->kind), op->id, sealed)) {
        json_decref(sealed);
        dps_reply_error(op->r, 500, DSV_E_INTERNAL, "internal error");
        svc_op_free(op);
        return;
    }
    text = json_dumps(sealed, JSON_COMPACT);
    json_decref(sealed);
    v[4] = text;
    snprintf(cap, sizeof cap, "%d", DSV_GROUP_CAP);
    op->conditional = !create_only && m != DSV_MATCH_NONE;
    if (create_only) {
        sql = sql_create;
    } else if (op->conditional) {
        v[5] = dsv_match_param(m, etag, ebuf, sizeof ebuf);
        sql = sql_update;
    } else {
        sql = sql_upsert;
    }
    svc_query(op, sql, 6, v, cb);
    free(text);
}

static void svc_put(struct svc_op *op)
{
    struct dps_req *r = op->r;
    struct dsv_err e;
    json_t *body;
    const char *attestation = NULL;
    enum dsv_match m;
    int64_t etag;

    if (!(body = svc_body(op)))
        return;
    op->doc = dsv_normalize(body, op->kind, op->id, &r->srv->cfg->prov, &attestation, &e);
    m = dsv_if_match(dps_req_header(r, "If-Match"), body, &etag);
    json_decref(body);
    if (!op->doc) {
        svc_fail(op, &e);
        return;
    }
    svc_store(op, attestation, m, etag, svc_on_put, false);
}

static void svc_on_delete(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    if (!svc_db_ok(op, res))
        return;
    if (strcmp(PQgetvalue(res->res, 0, 0), "0") == 0)
        dps_reply_error(op->r, 404, op->item_type ? DSV_E_NO_REG : DSV_E_NOT_FOUND,
                        "'%s' not found", op->id);
    else if (strcmp(PQgetvalue(res->res, 0, 1), "0") == 0)
        dps_reply_error(op->r, 412, DSV_E_ETAG, "the etag does not match the current one of '%s'", op->id);
    else
        dps_reply_empty(op->r, 204);
    svc_op_free(op);
}

static void svc_delete(struct svc_op *op)
{
    char ebuf[24];
    const char *v[] = {op->dps_id, dsv_kind_word(op->kind), op->id, svc_if_match_header(op, ebuf, sizeof ebuf)};
    svc_query(op, sql_delete, 4, v, svc_on_delete);
}

static void svc_on_attestation(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    json_t *att;
    if (!svc_db_ok(op, res))
        return;
    if (PQntuples(res->res) == 0)
        dps_reply_error(op->r, 404, DSV_E_NOT_FOUND, "'%s' not found", op->id);
    else if (!(att = json_loads(PQgetvalue(res->res, 0, 0), 0, NULL)) ||
             !dps_secrets_open(op->r->srv->env, op->dps_id, dsv_kind_word(op->kind), op->id, att)) {
        json_decref(att);
        dps_reply_error(op->r, 500, DSV_E_INTERNAL, "internal error");
    } else {
        dps_reply_json(op->r, 200, att);
    }
    svc_op_free(op);
}

static void svc_attestation(struct svc_op *op)
{
    const char *v[] = {op->dps_id, dsv_kind_word(op->kind), op->id};
    svc_query(op, sql_attestation, 3, v, svc_on_attestation);
}

/* ---- queries ---- */

static void svc_on_page(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    int n;
    json_t *arr;
    if (!svc_db_ok(op, res))
        return;
    n = PQntuples(res->res);
    arr = json_array();
    for (int i = 0; i < n && i < op->page; i++) {
        json_t *o = strcmp(op->item_type, "deviceRegistration") == 0 ? svc_reg_json(res->res, i, 0)
                                                                     : svc_enr_json(op, res->res, i);
        if (!o) {   /* a document that does not parse, or keys that do not open */
            json_decref(arr);
            dps_reply_error(op->r, 500, DSV_E_INTERNAL, "internal error");
            svc_op_free(op);
            return;
        }
        json_array_append_new(arr, o);
    }
    if (n > op->page) {
        char tok[DSV_TOKEN_MAX];
        dsv_token_encode(PQgetvalue(res->res, op->page - 1, 0), tok, sizeof tok);
        dps_add_header(op->r, "x-ms-continuation", tok);
    }
    dps_add_header(op->r, "x-ms-item-type", op->item_type);
    dps_reply_json(op->r, 200, arr);
    svc_op_free(op);
}

/* POST …/query: the query text is accepted as is; every item is returned, a page at a time. */
static void svc_page(struct svc_op *op, const char *group_id)
{
    const char *tok = dps_req_header(op->r, "x-ms-continuation");
    char after[DSV_ID_MAX + 1] = "", limit[16];
    struct dsv_err e;

    if (!dsv_page_size(dps_req_header(op->r, "x-ms-max-item-count"), &op->page)) {
        dsv_set_err(&e, 400, DSV_E_INVALID, "x-ms-max-item-count must be a positive integer");
        svc_fail(op, &e);
        return;
    }
    if (tok && *tok && !dsv_token_decode(tok, after, sizeof after)) {
        dsv_set_err(&e, 400, DSV_E_INVALID, "x-ms-continuation is not a token this service issued");
        svc_fail(op, &e);
        return;
    }
    snprintf(limit, sizeof limit, "%d", op->page + 1);
    if (group_id) {
        const char *v[] = {op->dps_id, group_id, after, limit};
        op->item_type = "deviceRegistration";
        svc_query(op, sql_reg_page, 4, v, svc_on_page);
    } else {
        const char *v[] = {op->dps_id, dsv_kind_word(op->kind), after, limit};
        op->item_type = op->kind == DSV_GROUP ? "enrollmentGroup" : "enrollment";
        svc_query(op, op->kind == DSV_GROUP ? sql_page_grp : sql_page_ind, 4, v, svc_on_page);
    }
}

/* ---- registration states ---- */

static void svc_on_reg_get(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    if (!svc_db_ok(op, res))
        return;
    if (PQntuples(res->res) == 0)
        dps_reply_error(op->r, 404, DSV_E_NO_REG, "registration '%s' not found", op->id);
    else
        dps_reply_json(op->r, 200, svc_reg_json(res->res, 0, 0));
    svc_op_free(op);
}

static void svc_reg_delete(struct svc_op *op)
{
    char ebuf[24];
    const char *v[] = {op->dps_id, op->id, svc_if_match_header(op, ebuf, sizeof ebuf)};
    op->item_type = "deviceRegistration";   /* 404 says registration */
    svc_query(op, sql_reg_delete, 3, v, svc_on_delete);
}

static void svc_on_counts(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    const PGresult *p;
    if (!svc_db_ok(op, res))
        return;
    p = res->res;
    if (strcmp(PQgetvalue(p, 0, 0), "0") == 0)
        dps_reply_error(op->r, 404, DSV_E_NOT_FOUND, "enrollment group '%s' not found", op->id);
    else
        dps_reply_json(op->r, 200, json_pack("{s:s, s:I, s:I, s:I, s:I}", "enrollmentGroupId", op->id,
                                             "assigned", (json_int_t)strtoll(PQgetvalue(p, 0, 1), NULL, 10),
                                             "assigning", (json_int_t)strtoll(PQgetvalue(p, 0, 2), NULL, 10),
                                             "failed", (json_int_t)strtoll(PQgetvalue(p, 0, 3), NULL, 10),
                                             "disabled", (json_int_t)strtoll(PQgetvalue(p, 0, 4), NULL, 10)));
    svc_op_free(op);
}

/* ---- bulk ---- */

static void svc_bulk_next(struct svc_op *op);

static void svc_bulk_error(struct svc_op *op, const char *id, int code, const char *status)
{
    json_array_append_new(op->errors, json_pack("{s:s, s:i, s:s}", "registrationId", id ? id : "",
                                                 "errorCode", code, "errorStatus", status));
}

static void svc_on_bulk_item(const struct pgq_result *res, void *arg)
{
    struct svc_op *op = arg;
    const char *id = op->cur_id;
    if (res->status != PGQ_OK) {
        svc_log_db_error(op, res);
        svc_bulk_error(op, id, res->status == PGQ_UNAVAILABLE ? DSV_E_UNAVAILABLE : DSV_E_INTERNAL,
                       "the provisioning database is unavailable");
    } else if (op->mode == BULK_DELETE) {
        if (strcmp(PQgetvalue(res->res, 0, 0), "0") == 0)
            svc_bulk_error(op, id, DSV_E_NOT_FOUND, "enrollment not found");
        else if (strcmp(PQgetvalue(res->res, 0, 1), "0") == 0)
            svc_bulk_error(op, id, DSV_E_ETAG, "the etag does not match");
    } else if (PQntuples(res->res) == 0) {
        if (op->mode == BULK_CREATE)
            svc_bulk_error(op, id, DSV_E_CONFLICT, "the enrollment already exists");
        else
            svc_bulk_error(op, id, DSV_E_ETAG, "the etag does not match (or the enrollment does not exist)");
    }
    json_decref(op->doc);
    op->doc = NULL;
    svc_bulk_next(op);
}

/* One item after the other; replies once all are done. */
static void svc_bulk_next(struct svc_op *op)
{
    while (op->next < json_array_size(op->items)) {
        json_t *item = json_array_get(op->items, op->next++);
        json_t *jid = json_is_object(item) ? json_object_get(item, "registrationId") : NULL;
        const char *id = json_is_string(jid) ? json_string_value(jid) : NULL;
        const char *attestation = NULL;
        struct dsv_err e;
        enum dsv_match m;
        int64_t etag;

        free(op->cur_id);
        op->cur_id = xstrdup(id ? id : "");
        op->id = op->cur_id;
        if (!id || !dsv_valid_id(DSV_INDIVIDUAL, id)) {
            svc_bulk_error(op, id, DSV_E_INVALID, "registrationId is missing or invalid");
            continue;
        }
        m = dsv_if_match(NULL, item, &etag);
        if (op->mode == BULK_DELETE) {
            char ebuf[24];
            const char *v[] = {op->dps_id, "individual", id, dsv_match_param(m, etag, ebuf, sizeof ebuf)};
            svc_query(op, sql_delete, 4, v, svc_on_bulk_item);
            return;
        }
        if (!(op->doc = dsv_normalize(item, DSV_INDIVIDUAL, id, &op->r->srv->cfg->prov, &attestation, &e))) {
            svc_bulk_error(op, id, e.code, e.msg);
            continue;
        }
        if (op->mode != BULK_UPDATE_IF_MATCH)
            m = DSV_MATCH_NONE;
        svc_store(op, attestation, m, etag, svc_on_bulk_item, op->mode == BULK_CREATE);
        return;
    }
    dps_reply_json(op->r, 200, json_pack("{s:b, s:O}", "isSuccessful", json_array_size(op->errors) == 0,
                                         "errors", op->errors));
    svc_op_free(op);
}

static void svc_bulk(struct svc_op *op)
{
    static const char *const modes[] = {"create", "update", "updateIfMatchEtag", "delete"};
    struct dsv_err e;
    json_t *body, *mode;
    bool found = false;

    op->kind = DSV_INDIVIDUAL;
    if (!(body = svc_body(op)))     /* op is gone then: don't store into it */
        return;
    op->body = body;
    mode = json_object_get(op->body, "mode");
    for (size_t i = 0; json_is_string(mode) && i < ARRAY_LEN(modes); i++)
        if (strcasecmp(json_string_value(mode), modes[i]) == 0) {
            op->mode = (enum svc_bulk_mode)i;
            found = true;
        }
    op->items = json_object_get(op->body, "enrollments");
    if (!found) {
        dsv_set_err(&e, 400, DSV_E_INVALID, "mode must be create, update, updateIfMatchEtag or delete");
        svc_fail(op, &e);
        return;
    }
    if (!json_is_array(op->items) || json_array_size(op->items) == 0 ||
        json_array_size(op->items) > DSV_BULK_MAX) {
        dsv_set_err(&e, 400, DSV_E_INVALID, "enrollments must be an array of 1 to %d individual enrollments",
                    DSV_BULK_MAX);
        svc_fail(op, &e);
        return;
    }
    op->errors = json_array();
    svc_bulk_next(op);
}

/* ---- routing ---- */

static void svc_method_not_allowed(struct svc_op *op, const char *allow)
{
    dps_add_header(op->r, "Allow", allow);
    dps_reply_error(op->r, 405, DSV_E_METHOD, "method not allowed here (allowed: %s)", allow);
    svc_op_free(op);
}

static void svc_not_found(struct svc_op *op)
{
    dps_reply_error(op->r, 404, 404000, "no such route");
    svc_op_free(op);
}

/* /enrollments/… and /enrollmentGroups/… */
static void svc_route_enrollments(struct svc_op *op)
{
    struct dps_req *r = op->r;
    enum evhttp_cmd_type m = r->method;

    if (r->nsegs == 1) {
        if (op->kind == DSV_GROUP)
            svc_not_found(op);
        else if (m == EVHTTP_REQ_POST)
            svc_bulk(op);
        else
            svc_method_not_allowed(op, "POST");
        return;
    }
    op->id = r->segs[1];
    if (r->nsegs == 2) {
        if (m == EVHTTP_REQ_POST && strcasecmp(op->id, "query") == 0)
            svc_page(op, NULL);
        else if (m == EVHTTP_REQ_PUT)
            svc_put(op);
        else if (m == EVHTTP_REQ_GET)
            svc_get(op);
        else if (m == EVHTTP_REQ_DELETE)
            svc_delete(op);
        else
            svc_method_not_allowed(op, "GET, PUT, DELETE");
        return;
    }
    if (r->nsegs == 3 && strcasecmp(r->segs[2], "attestationmechanism") == 0) {
        if (m == EVHTTP_REQ_POST)
            svc_attestation(op);
        else
            svc_method_not_allowed(op, "POST");
        return;
    }
    if (r->nsegs == 3 && op->kind == DSV_GROUP && strcasecmp(r->segs[2], "registrationCounts") == 0) {
        if (m == EVHTTP_REQ_GET) {
            const char *v[] = {op->dps_id, op->id};
            svc_query(op, sql_reg_counts, 2, v, svc_on_counts);
        } else
            svc_method_not_allowed(op, "GET");
        return;
    }
    svc_not_found(op);
}

/* /registrations/… */
static void svc_route_registrations(struct svc_op *op)
{
    struct dps_req *r = op->r;
    if (r->nsegs < 2 || r->nsegs > 3) {
        svc_not_found(op);
        return;
    }
    op->id = r->segs[1];
    if (r->nsegs == 3) {
        if (strcasecmp(r->segs[2], "query") != 0)
            svc_not_found(op);
        else if (r->method != EVHTTP_REQ_POST)
            svc_method_not_allowed(op, "POST");
        else
            svc_page(op, op->id);
        return;
    }
    if (r->method == EVHTTP_REQ_GET) {
        const char *v[] = {op->dps_id, op->id};
        svc_query(op, sql_reg_get, 2, v, svc_on_reg_get);
    } else if (r->method == EVHTTP_REQ_DELETE)
        svc_reg_delete(op);
    else
        svc_method_not_allowed(op, "GET, DELETE");
}

void dps_service_handle(struct dps_req *r)
{
    const struct agent_provisioning_config *pc = &r->srv->cfg->prov;
    const char *want = dps_req_query(r, "dpsInstance");
    const struct agent_dps_config *dps = NULL;
    struct svc_op *op;

    if (!svc_authorized(r)) {
        dps_reply_error(r, 401, DSV_E_UNAUTHORIZED, "authorization failed: a SharedAccessSignature of a "
                        "service policy for this host is required");
        return;
    }
    if (!want && pc->n_dps > 0)
        dps = &pc->dps[0];
    for (size_t i = 0; want && i < pc->n_dps; i++)
        if (strcmp(pc->dps[i].id, want) == 0)
            dps = &pc->dps[i];
    if (!dps) {
        dps_reply_error(r, 404, DSV_E_NO_INSTANCE, "unknown DPS instance");
        return;
    }
    if (dps_drift_is_route(r->segs[0])) {
        dps_drift_handle(r, dps->id);
        return;
    }
    op = svc_op_new(r, dps->id);
    if (strcasecmp(r->segs[0], "registrations") == 0) {
        svc_route_registrations(op);
        return;
    }
    op->kind = strcasecmp(r->segs[0], "enrollmentGroups") == 0 ? DSV_GROUP : DSV_INDIVIDUAL;
    svc_route_enrollments(op);
}
