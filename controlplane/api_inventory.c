/*
 * api_inventory.c - device lists and counts, fanned out to every geography
 * database in parallel and merged here (no global index of devices exists,
 * by design).
 */
#include "api_inventory.h"

#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "listpage.h"
#include "log.h"
#include "util.h"


struct inv_op {
    struct cp_req *r;
    int pending;
    bool failed;
    int limit;
    json_t *rows;       /* list: [json, ...]; counts: per-geo results */
    json_t *counts;
    char *tenant;       /* counts: ?tenant=, or NULL */
    bool tenant_key;    /* counts: the caller is a tenant key (hubs hold other tenants' devices: not shown) */
};

static int inv_cmp_regid(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    return strcmp(json_string_value(json_object_get(x, "registrationId")),
                  json_string_value(json_object_get(y, "registrationId")));
}

static void inv_list_finish(struct inv_op *op)
{
    size_t n = json_array_size(op->rows);
    json_t **v, *items = json_array(), *body;
    if (op->failed) {
        cpreq_reply_db_unavailable(op->r, NULL);
        goto out;
    }
    v = xcalloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = json_array_get(op->rows, i);
    qsort(v, n, sizeof *v, inv_cmp_regid);
    for (size_t i = 0; i < n && (int)i < op->limit; i++)
        json_array_append(items, v[i]);
    body = list_page_body(items, "d1", (int)n > op->limit ?
                          json_string_value(json_object_get(v[op->limit - 1], "registrationId")) : NULL);
    free(v);
    cpreq_reply_json(op->r, 200, body);
    items = NULL;
out:
    json_decref(items);
    json_decref(op->rows);
    free(op);
}

static void inv_on_rows(const struct pgq_result *q, void *arg)
{
    struct inv_op *op = arg;
    if (q->status != PGQ_OK) {
        op->failed = true;
    } else {
        for (int i = 0; i < PQntuples(q->res); i++) {
            json_t *row = json_loads(PQgetvalue(q->res, i, 0), 0, NULL);
            if (row) json_array_append_new(op->rows, row);
        }
    }
    if (--op->pending == 0)
        inv_list_finish(op);
}

void api_inventory_devices(struct cp_req *r, const char *tenant)
{
    static const char *const allowed[] = {"limit", "cursor", "stamp", "status", NULL};
    static const char sql[] =
        "SELECT json_build_object('registrationId', registration_id, 'status', status, 'geography', $6::text,"
        " 'region', region_id, 'stamp', stamp_id, 'dps', dps_id, 'assignedAt', cp_ts(assigned_at),"
        " 'etag', etag::text) FROM devices WHERE tenant_id = $1"
        " AND ($2::text IS NULL OR registration_id > $2) AND ($3::text IS NULL OR stamp_id = $3)"
        " AND ($4::text IS NULL OR status = $4) ORDER BY registration_id LIMIT $5";
    const char *values[6] = {tenant, NULL, NULL, NULL, NULL, NULL};
    struct list_page pg;
    const char *s;
    struct inv_op *op;

    if (r->method != EVHTTP_REQ_GET) {
        cpreq_add_header(r, "Allow", "GET");
        cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET to list devices");
        return;
    }
    if (!jv_valid_id(tenant)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no such tenant");
        return;
    }
    if (!cpreq_check_query(r, allowed) || !list_page_parse(r, "d1", router_valid_regid, &pg))
        return;
    values[1] = list_page_after(&pg);
    if ((s = cpreq_query(r, "stamp"))) {
        if (!jv_valid_id(s)) {
            cpreq_reply_error(r, 400, "invalid_query", "stamp", "'stamp' must be an id");
            return;
        }
        values[2] = s;
    }
    if ((s = cpreq_query(r, "status"))) {
        if (strcmp(s, "assigned") != 0 && strcmp(s, "deprovisioned") != 0 && strcmp(s, "retired") != 0) {
            cpreq_reply_error(r, 400, "invalid_query", "status", "'status' must be assigned, deprovisioned or retired");
            return;
        }
        values[3] = s;
    }
    values[4] = pg.fetch;
    op = xcalloc(1, sizeof *op);
    op->r = r;
    op->limit = pg.limit;
    op->rows = json_array();
    op->pending = 1;
    /* Every configured geography: a tenant's devices are only where its
     * residency allowed, and the others answer with nothing, cheaply. */
    for (int i = 0; i < r->cp->cfg.n_geos; i++) {
        values[5] = r->cp->cfg.geos[i].id;
        op->pending++;
        pgpool_query(r->cp->geo[i], sql, 6, values, inv_on_rows, op);
    }
    if (--op->pending == 0)
        inv_list_finish(op);
}

/* ---- counts ---- */

static void inv_sum_into(json_t *acc, json_t *rows, const char *key, const char *count)
{
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        const char *k = json_string_value(json_object_get(row, key));
        json_t *cur;
        if (!k) continue;
        cur = json_object_get(acc, k);
        json_object_set_new(acc, k, json_integer((cur ? json_integer_value(cur) : 0) +
                                                 json_integer_value(json_object_get(row, count))));
    }
}

static json_t *inv_as_list(json_t *acc, const char *key, const char *count)
{
    json_t *list = json_array(), *v;
    const char *k;
    json_object_foreach(acc, k, v)
        json_array_append_new(list, json_pack("{s:s, s:O}", key, k, count, v));
    return list;
}

static void inv_counts_finish(struct inv_op *op)
{
    json_t *tenants = json_object(), *stamps = json_object(), *dps = json_object(), *row, *hubs = json_array();
    json_t *groups = json_array();
    size_t i;
    struct layout *l = layouts_current(op->r->cp->layouts);
    if (op->failed) {
        cpreq_reply_db_unavailable(op->r, NULL);
        json_decref(tenants); json_decref(stamps); json_decref(dps); json_decref(hubs);
        json_decref(groups);
        json_decref(op->rows);
        free(op->tenant);
        free(op);
        return;
    }
    json_array_foreach(op->rows, i, row) {
        inv_sum_into(tenants, json_object_get(row, "tenants"), "tenant", "devices");
        inv_sum_into(stamps, json_object_get(row, "stamps"), "stamp", "devices");
        inv_sum_into(dps, json_object_get(row, "dps"), "dps", "registrations");
    }
    /* Devices per hub are what each stamp's hub registry reports. */
    for (int s = 0; l && s < l->nstamps; s++) {
        const struct load_entry *e = loadtable_get(op->r->cp->lt, l->stamps[s].id);
        json_t *h;
        size_t k;
        if (!e || !e->load) continue;
        json_array_foreach(op->tenant_key ? NULL : json_object_get(e->load, "hubs"), k, h)
            json_array_append_new(hubs, json_pack("{s:s, s:O, s:O}", "stamp", l->stamps[s].id, "hub",
                                                  json_object_get(h, "id"), "devices", json_object_get(h, "devices")));
        /* Devices per enrollment group: each tenant's group carries the tenant's id. */
        json_array_foreach(json_object_get(e->load, "groups"), k, h) {
            const char *g = json_string_value(json_object_get(h, "group"));
            json_t *dv = json_object_get(h, "devices");
            if (!g || !json_is_string(json_object_get(h, "dps")) || !json_is_integer(dv))
                continue;
            if (op->tenant && strcmp(g, op->tenant) != 0)
                continue;
            json_array_append_new(groups, json_pack("{s:s, s:O, s:s, s:O}", "stamp", l->stamps[s].id, "dps",
                                                    json_object_get(h, "dps"), "group", g, "devices", dv));
        }
    }
    cpreq_reply_json(op->r, 200, json_pack("{s:o, s:o, s:o, s:o, s:o}", "tenants", inv_as_list(tenants, "tenant", "devices"),
                                           "stamps", inv_as_list(stamps, "stamp", "devices"),
                                           "dps", inv_as_list(dps, "dps", "registrations"), "hubs", hubs,
                                           "groups", groups));
    json_decref(tenants);
    json_decref(stamps);
    json_decref(dps);
    json_decref(op->rows);
    free(op->tenant);
    free(op);
}

static void inv_on_counts(const struct pgq_result *q, void *arg)
{
    struct inv_op *op = arg;
    json_t *row;
    if (q->status != PGQ_OK || PQntuples(q->res) != 1 || !(row = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL)))
        op->failed = true;
    else
        json_array_append_new(op->rows, row);
    if (--op->pending == 0)
        inv_counts_finish(op);
}

void api_inventory_counts(struct cp_req *r)
{
    static const char *const allowed[] = {"tenant", NULL};
    static const char sql[] =
        "SELECT json_build_object("
        " 'tenants', (SELECT coalesce(json_agg(json_build_object('tenant', tenant_id, 'devices', n)), '[]')"
        "   FROM (SELECT tenant_id, count(*) AS n FROM devices WHERE status = 'assigned'"
        "         AND ($1::text IS NULL OR tenant_id = $1) GROUP BY tenant_id) a),"
        " 'stamps', (SELECT coalesce(json_agg(json_build_object('stamp', stamp_id, 'devices', n)), '[]')"
        "   FROM (SELECT stamp_id, count(*) AS n FROM devices WHERE status = 'assigned'"
        "         AND ($1::text IS NULL OR tenant_id = $1) GROUP BY stamp_id) b),"
        " 'dps', (SELECT coalesce(json_agg(json_build_object('dps', dps_id, 'registrations', n)), '[]')"
        "   FROM (SELECT dps_id, count(*) AS n FROM devices WHERE status = 'assigned'"
        "         AND ($1::text IS NULL OR tenant_id = $1) GROUP BY dps_id) c))";
    const char *values[1] = {NULL};
    const char *s;
    struct inv_op *op;

    if (r->method != EVHTTP_REQ_GET) {
        cpreq_add_header(r, "Allow", "GET");
        cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET");
        return;
    }
    if (!cpreq_check_query(r, allowed))
        return;
    if ((s = cpreq_query(r, "tenant"))) {
        if (!jv_valid_id(s)) {
            cpreq_reply_error(r, 400, "invalid_query", "tenant", "'tenant' must be an id");
            return;
        }
        if (!principal_sees_tenant(&r->who, s)) {
            cpreq_reply_error(r, 404, "not_found", "tenant", "no such tenant");
            return;
        }
        values[0] = s;
    } else if (r->who.tenant[0]) {
        values[0] = r->who.tenant;   /* a tenant key counts its own tenant only */
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    op->tenant = values[0] ? xstrdup(values[0]) : NULL;
    op->tenant_key = r->who.tenant[0] != '\0';
    op->rows = json_array();
    op->pending = 1;
    for (int i = 0; i < r->cp->cfg.n_geos; i++) {
        op->pending++;
        pgpool_query(r->cp->geo[i], sql, 1, values, inv_on_counts, op);
    }
    if (--op->pending == 0)
        inv_counts_finish(op);
}
