/*
 * api_catalog.c - create/get/list/update/delete for the layout resources,
 * driven by the descriptors in catalog.c; statements go to the global catalog.
 */
#include "api_catalog.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "listpage.h"
#include "log.h"
#include "sas.h"
#include "stampcheck.h"
#include "util.h"


enum cat_kind { CAT_CREATE, CAT_GET, CAT_UPDATE, CAT_DELETE, CAT_LIST };

struct cat_op {
    struct cp_req *r;
    const struct catalog_resource *res;
    enum cat_kind kind;
    int limit;
    char id[64];
};

static struct cat_op *cat_op_new(struct cp_req *r, const struct catalog_resource *res, enum cat_kind k)
{
    struct cat_op *op = xcalloc(1, sizeof *op);
    op->r = r;
    op->res = res;
    op->kind = k;
    return op;
}

/* Add the live fields of a stamp (health, lastReportAt, load) from the load table. */
static void cat_decorate(struct cp *cp, json_t *item)
{
    const char *id = json_string_value(json_object_get(item, "id"));
    const struct load_entry *e = id ? loadtable_get(cp->lt, id) : NULL;
    enum stamp_health h = id ? loadtable_health(cp->lt, id, util_mono_ms()) : STAMP_DOWN;
    char ts[40];

    struct layout *l = layouts_current(cp->layouts);
    char detail[200];

    if (id && l && stampcheck_conflict(layout_find_stamp(l, id), e, detail, sizeof detail)) {
        /* Flagged: its reports disagree with the catalog; placement ignores it. */
        json_object_set_new(item, "health", json_string("misreported"));
        json_object_set_new(item, "identityMismatch", json_string(detail));
    } else {
        json_object_set_new(item, "health", json_string(loadtable_health_word(h)));
    }
    if (e) {
        util_format_time(e->report_wall_ms, ts, sizeof ts);
        json_object_set_new(item, "lastReportAt", json_string(ts));
        json_object_set(item, "load", e->load ? e->load : json_null());
    } else {
        json_object_set_new(item, "lastReportAt", json_null());
        json_object_set_new(item, "load", json_null());
    }
}

/*
 * A tenant key reads only the layout inside its residency: the item's
 * geography (its own id, its "geography", or its stamp's) must be one of
 * the tenant's. Stamps' load (counts across every tenant) is not shown.
 */
static bool cat_visible(struct cp_req *r, const struct catalog_resource *res, json_t *item)
{
    const struct principal *p = &r->who;
    const char *geo = NULL, *stamp;
    if (principal_is_platform(p))
        return true;
    if (strcmp(res->collection, "geographies") == 0) {
        geo = json_string_value(json_object_get(item, "id"));
    } else if (json_is_string(json_object_get(item, "geography"))) {
        geo = json_string_value(json_object_get(item, "geography"));
    } else if ((stamp = json_string_value(json_object_get(item, "stamp")))) {
        struct layout *l = layouts_current(r->cp->layouts);
        const struct layout_stamp *st = l ? layout_find_stamp(l, stamp) : NULL;
        geo = st ? st->geo : NULL;
    }
    for (int i = 0; geo && i < p->nresidency; i++)
        if (strcmp(p->residency[i], geo) == 0) {
            /* what only operators need: other tenants' load, the service API's identity, diagnostics */
            if (res->live_health)
                json_object_set_new(item, "load", json_null());
            json_object_del(item, "identityMismatch");
            json_object_del(item, "serviceHostName");
            json_object_del(item, "serviceKeyName");
            json_object_del(item, "serviceKeyConfigured");
            return true;
        }
    return false;
}

/* Reply with one resource row (JSON text built by PostgreSQL). */
static void cat_reply_row(struct cat_op *op, int status, const char *text)
{
    json_t *item;
    if (!op->res->live_health && principal_is_platform(&op->r->who)) {
        cpreq_reply_text(op->r, status, text, strlen(text));
        return;
    }
    item = json_loads(text, 0, NULL);
    if (!item) {
        cpreq_reply_error(op->r, 500, "internal", NULL, "the database returned a malformed row");
        return;
    }
    if (op->res->live_health)
        cat_decorate(op->r->cp, item);
    if (!cat_visible(op->r, op->res, item)) {
        json_decref(item);
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no %s '%s'", op->res->noun, op->id);
        return;
    }
    cpreq_reply_json(op->r, status, item);
}

static void cat_reply_sql_error(struct cat_op *op, const struct pgq_result *q)
{
    const char *field = catalog_field_for_constraint(op->res, q->constraint, q->column);
    struct cp_req *r = op->r;

    if (strcmp(q->sqlstate, "23505") == 0) {
        cpreq_reply_error(r, 409, "already_exists", field ? field : "id",
                          "a %s with this %s already exists", op->res->noun, field ? field : "id");
    } else if (strcmp(q->sqlstate, "SC409") == 0 && q->message && strstr(q->message, "stamp_in_use:")) {
        /* schema/global/011_jobs.sql: a dedicated tenant relies on the stamp */
        const char *t = strstr(q->message, "stamp_in_use:") + strlen("stamp_in_use:");
        cpreq_reply_error(r, 409, "stamp_in_use", "tenancy",
                          "stamp '%s' is a dedicated stamp of tenant '%.64s': it cannot become pooled while that"
                          " tenant lists it", op->id, t);
    } else if (strcmp(q->sqlstate, "23503") == 0 && op->kind == CAT_DELETE) {
        const char *by = "other resources";
        for (int i = 0; i < catalog_nresources; i++) {
            const char *t = catalog_resources[i].table;
            size_t n = strlen(t);
            if (q->constraint && strncmp(q->constraint, t, n) == 0 && q->constraint[n] == '_')
                by = catalog_resources[i].collection;
        }
        cpreq_reply_error(r, 409, "has_dependents", NULL, "%s '%s' is still referenced by %s",
                          op->res->noun, op->id, by);
    } else if (strcmp(q->sqlstate, "23503") == 0) {
        cpreq_reply_error(r, 422, "invalid_reference", field,
                          "'%s' does not name an existing resource it may refer to",
                          field ? field : "a reference");
    } else if (strncmp(q->sqlstate, "23", 2) == 0 || strncmp(q->sqlstate, "22", 2) == 0) {
        cpreq_reply_error(r, 400, "invalid_value", field, "a value breaks a rule of the %s",
                          op->res->noun);
    } else {
        log_write(LOG_ERROR, r->id, "event=sql_error sqlstate=%s error=\"%.300s\"", q->sqlstate,
                  q->message ? q->message : "");
        cpreq_reply_error(r, 500, "internal", NULL, "internal error (request %s)", r->id);
    }
}

/* The row as it was (column 1 of an update or delete), for the audit entry (audit.h). */
static void cat_audit_before(struct cp_req *r, const struct pgq_result *q)
{
    if (PQnfields(q->res) > 1 && !PQgetisnull(q->res, 0, 1)) {
        json_decref(r->audit_before);
        r->audit_before = json_loads(PQgetvalue(q->res, 0, 1), 0, NULL);
    }
}

static void cat_on_row(const struct pgq_result *q, void *arg)
{
    struct cat_op *op = arg;
    struct cp_req *r = op->r;

    if (q->status == PGQ_UNAVAILABLE) {
        cpreq_reply_db_unavailable(r, q);
    } else if (q->status == PGQ_SQL_ERROR) {
        cat_reply_sql_error(op, q);
    } else if (PQntuples(q->res) == 0) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no %s '%s'", op->res->noun, op->id);
    } else if (op->kind == CAT_DELETE) {
        cat_audit_before(r, q);
        layouts_refresh_soon(r->cp->layouts);
        enroll_sync_soon(r->cp->sync);
        cpreq_reply_empty(r, 204);
    } else if (op->kind == CAT_CREATE) {
        char *loc = xasprintf("/v1/%s/%s", op->res->collection, op->id);
        cpreq_add_header(r, "Location", loc);
        free(loc);
        layouts_refresh_soon(r->cp->layouts);
        enroll_sync_soon(r->cp->sync);
        cat_reply_row(op, 201, PQgetvalue(q->res, 0, 0));
    } else {
        if (op->kind == CAT_UPDATE) {
            cat_audit_before(r, q);
            layouts_refresh_soon(r->cp->layouts);
            enroll_sync_soon(r->cp->sync);
        }
        cat_reply_row(op, 200, PQgetvalue(q->res, 0, 0));
    }
    free(op);
}

static void cat_on_list(const struct pgq_result *q, void *arg)
{
    struct cat_op *op = arg;
    struct cp_req *r = op->r;
    json_t *items, *body;
    int n;

    if (q->status != PGQ_OK) {
        if (q->status == PGQ_UNAVAILABLE)
            cpreq_reply_db_unavailable(r, q);
        else
            cat_reply_sql_error(op, q);
        free(op);
        return;
    }
    n = PQntuples(q->res);
    items = json_array();
    for (int i = 0; i < n && i < op->limit; i++) {
        json_t *item = json_loads(PQgetvalue(q->res, i, 0), 0, NULL);
        if (!item) continue;
        if (op->res->live_health)
            cat_decorate(r->cp, item);
        if (!cat_visible(r, op->res, item)) {   /* filtered in SQL already (a layout refresh may lag) */
            json_decref(item);
            continue;
        }
        json_array_append_new(items, item);
    }
    body = list_page_body(items, "c1", n > op->limit ? PQgetvalue(q->res, op->limit - 1, 1) : NULL);
    cpreq_reply_json(r, 200, body);
    free(op);
}

static void cat_run(struct cat_op *op, const char *sql, int n, const char *const *values,
                    pgpool_cb cb)
{
    pgpool_query(op->r->cp->global, sql, n, values, cb, op);
}

static bool cat_check_rules(struct cp_req *r, const struct catalog_resource *res,
                            const struct catalog_values *v, const char *id, bool create)
{
    bool present;
    const char *pair = catalog_value(res, v, "pairedRegion", &present);
    if (create && res->needs_geo_config && !cp_config_geo_conninfo(&r->cp->cfg, id)) {
        cpreq_reply_error(r, 422, "geography_not_configured", "id",
                          "geography '%s' has no database in the control plane's configuration", id);
        return false;
    }
    if (present && pair && strcmp(pair, id) == 0) {
        cpreq_reply_error(r, 422, "invalid_reference", "pairedRegion", "a region cannot pair with itself");
        return false;
    }
    if (!create && strcmp(res->collection, "stamps") == 0) {
        /* Dedicated tenancy (docs/api.md): a pooled stamp that hosts devices
         * (of pooled tenants: a pooled stamp has no others) cannot become
         * dedicated; drain it first. The count is the layout's (refreshed
         * every layoutRefreshMs). dedicated -> pooled is checked by the
         * catalog's trigger (schema/global/011_jobs.sql). */
        const char *tenancy = catalog_value(res, v, "tenancy", &present);
        struct layout *l = present && tenancy && strcmp(tenancy, "dedicated") == 0 ? layouts_current(r->cp->layouts)
                                                                                     : NULL;
        const struct layout_stamp *st = l ? layout_find_stamp(l, id) : NULL;
        if (st && !st->dedicated && st->devices > 0) {
            cpreq_reply_error(r, 409, "stamp_in_use", "tenancy",
                              "stamp '%s' hosts %lld device(s) of pooled tenants: it cannot become dedicated until"
                              " they are moved or deprovisioned", id, (long long)st->devices);
            return false;
        }
    }
    return true;
}

/* A DPS instance's serviceKey is stored sealed (envelope.h, AAD
 * "dps-instance:<id>:service-key"); false after replying 400/500. */
static bool cat_seal_secrets(struct cp_req *r, const struct catalog_resource *res, struct catalog_values *v,
                             const char *id)
{
    char aad[ENVELOPE_AAD_MAX];
    unsigned char raw[128];
    for (int i = 0; i < v->n; i++) {
        char *sealed;
        int n;
        if (strcmp(res->fields[v->field[i]].json, "serviceKey") != 0 || !v->value[i])
            continue;
        n = sas_b64_decode(v->value[i], raw, sizeof raw);
        OPENSSL_cleanse(raw, sizeof raw);
        if (n < 16 || n > 64) {
            cpreq_reply_error(r, 400, "invalid_value", "serviceKey", "'serviceKey' must be base64 of 16 to 64 bytes");
            return false;
        }
        envelope_aad_service_key(aad, sizeof aad, id);
        if (!(sealed = envelope_seal_text(r->cp->env, v->value[i], aad))) {
            cpreq_reply_error(r, 500, "internal", NULL, "the service key could not be sealed");
            return false;
        }
        OPENSSL_cleanse(v->value[i], strlen(v->value[i]));
        free(v->value[i]);
        v->value[i] = sealed;
    }
    return true;
}

static void cat_create(struct cp_req *r, const struct catalog_resource *res)
{
    struct catalog_values v;
    struct jv_err e;
    json_t *body = cpreq_json_body(r, false);
    struct cat_op *op;
    char *sql;

    if (!body)
        return;
    if (!catalog_validate(res, body, true, &v, &e)) {
        json_decref(body);
        cpreq_reply_jv(r, &e);
        return;
    }
    json_decref(body);
    if (!cat_check_rules(r, res, &v, v.value[0], true) || !cat_seal_secrets(r, res, &v, v.value[0])) {
        catalog_values_free(&v);
        return;
    }
    op = cat_op_new(r, res, CAT_CREATE);
    snprintf(op->id, sizeof op->id, "%s", v.value[0]);
    sql = catalog_sql_insert(res, &v);
    cat_run(op, sql, v.n, (const char *const *)v.value, cat_on_row);
    free(sql);
    catalog_values_free(&v);
}

static void cat_get(struct cp_req *r, const struct catalog_resource *res, const char *id)
{
    struct cat_op *op = cat_op_new(r, res, CAT_GET);
    char *sql = catalog_sql_get(res);
    const char *values[1] = {id};
    snprintf(op->id, sizeof op->id, "%s", id);
    cat_run(op, sql, 1, values, cat_on_row);
    free(sql);
}

static void cat_update(struct cp_req *r, const struct catalog_resource *res, const char *id)
{
    struct catalog_values v;
    struct jv_err e;
    json_t *body = cpreq_json_body(r, true);
    struct cat_op *op;
    const char *values[17];
    char *sql;

    if (!body)
        return;
    if (!catalog_validate(res, body, false, &v, &e)) {
        json_decref(body);
        cpreq_reply_jv(r, &e);
        return;
    }
    json_decref(body);
    if (v.n == 0) {   /* an empty merge patch changes nothing */
        cat_get(r, res, id);
        return;
    }
    if (!cat_check_rules(r, res, &v, id, false) || !cat_seal_secrets(r, res, &v, id)) {
        catalog_values_free(&v);
        return;
    }
    op = cat_op_new(r, res, CAT_UPDATE);
    snprintf(op->id, sizeof op->id, "%s", id);
    values[0] = id;
    for (int i = 0; i < v.n; i++)
        values[i + 1] = v.value[i];
    sql = catalog_sql_update(res, &v);
    cat_run(op, sql, v.n + 1, values, cat_on_row);
    free(sql);
    catalog_values_free(&v);
}

static void cat_delete(struct cp_req *r, const struct catalog_resource *res, const char *id)
{
    struct cat_op *op = cat_op_new(r, res, CAT_DELETE);
    char *sql = catalog_sql_delete(res);
    const char *values[1] = {id};
    snprintf(op->id, sizeof op->id, "%s", id);
    cat_run(op, sql, 1, values, cat_on_row);
    free(sql);
}

static void cat_list(struct cp_req *r, const struct catalog_resource *res)
{
    const char *allowed[8] = {"limit", "cursor"};
    const char *values[8] = {NULL};
    char residency[PRINCIPAL_MAX_GEOS * 68 + 4];
    int fidx[4], nf = 0;
    struct list_page pg;
    const char *s;
    struct cat_op *op;
    char *sql;

    for (int i = 0; i < res->nfilters; i++)
        allowed[2 + i] = res->filters[i].param;
    if (!cpreq_check_query(r, allowed) || !list_page_parse(r, "c1", jv_valid_id, &pg))
        return;
    values[0] = list_page_after(&pg);
    values[1] = pg.fetch;
    for (int i = 0; i < res->nfilters; i++) {
        if (!(s = cpreq_query(r, res->filters[i].param)))
            continue;
        if (!jv_valid_id(s)) {
            cpreq_reply_error(r, 400, "invalid_query", res->filters[i].param,
                              "'%s' must be an id", res->filters[i].param);
            return;
        }
        fidx[nf] = i;
        values[2 + nf] = s;
        nf++;
    }
    if (!principal_is_platform(&r->who)) {
        /* in SQL, so that neither the page nor its cursor holds an item outside the residency */
        size_t o = 0;
        o += (size_t)snprintf(residency + o, sizeof residency - o, "{");
        for (int i = 0; i < r->who.nresidency; i++)
            o += (size_t)snprintf(residency + o, sizeof residency - o, "%s\"%s\"", i ? "," : "", r->who.residency[i]);
        snprintf(residency + o, sizeof residency - o, "}");
        values[2 + nf] = residency;
    }
    op = cat_op_new(r, res, CAT_LIST);
    op->limit = pg.limit;
    sql = catalog_sql_list(res, fidx, nf, !principal_is_platform(&r->who));
    cat_run(op, sql, 2 + nf + (principal_is_platform(&r->who) ? 0 : 1), values, cat_on_list);
    free(sql);
}

void api_catalog_handle(struct cp_req *r, const struct catalog_resource *res, const char *id)
{
    if (!id) {
        if (r->method == EVHTTP_REQ_GET) {
            cat_list(r, res);
        } else if (r->method == EVHTTP_REQ_POST) {
            if (cpreq_check_query(r, NULL))
                cat_create(r, res);
        } else {
            cpreq_add_header(r, "Allow", "GET, POST");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET or POST on /v1/%s",
                              res->collection);
        }
        return;
    }
    if (r->method != EVHTTP_REQ_GET && r->method != EVHTTP_REQ_PATCH && r->method != EVHTTP_REQ_DELETE) {
        cpreq_add_header(r, "Allow", "GET, PATCH, DELETE");
        cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET, PATCH or DELETE on a %s",
                          res->noun);
        return;
    }
    if (!cpreq_check_query(r, NULL))
        return;
    if (!jv_valid_id(id)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no %s with that id", res->noun);
        return;
    }
    if (r->method == EVHTTP_REQ_GET)
        cat_get(r, res, id);
    else if (r->method == EVHTTP_REQ_PATCH)
        cat_update(r, res, id);
    else
        cat_delete(r, res, id);
}
