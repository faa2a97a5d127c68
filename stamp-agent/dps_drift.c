/*
 * dps_drift.c - GET /registrationSummary and GET /registrationIds
 * (dps_drift.h): registration counts per owner and the registrations in id
 * order, a page at a time, for the control plane's drift report.
 */
#include "dps_drift.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dps_svc_doc.h"
#include "log.h"
#include "util.h"

#define DRIFT_LIMIT_MAX   1000
#define DRIFT_ID_MAX      128

struct drift_op {
    struct dps_req *r;
    const char *dps_id;
    int limit;
};

static const char sql_summary[] =
    "SELECT owner, count(*) FILTER (WHERE status = 'assigned'), count(*) FILTER (WHERE status = 'assigning'),"
    " count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'disabled')"
    " FROM dps_registrations WHERE dps_id = $1 GROUP BY owner ORDER BY owner";
/* one more row than the page: whether there is a next page. The primary
 * key's order (the database's collation) so that the index walks the page. */
static const char sql_ids[] =
    "SELECT registration_id, owner, status, assigned_hub, device_id, " DPS_SQL_TS("updated_at")
    " FROM dps_registrations WHERE dps_id = $1 AND registration_id > $2"
    " ORDER BY registration_id LIMIT $3::int + 1";

bool dps_drift_is_route(const char *seg)
{
    return strcasecmp(seg, "registrationSummary") == 0 || strcasecmp(seg, "registrationIds") == 0;
}

static bool drift_db_ok(struct drift_op *op, const struct pgq_result *q)
{
    if (q->status == PGQ_OK)
        return true;
    log_write(LOG_WARN, op->r->id, "event=dps_drift_db_error message=\"%s\"", q->message ? q->message : "");
    if (q->status == PGQ_UNAVAILABLE)
        dps_reply_error(op->r, 503, DSV_E_UNAVAILABLE, "the provisioning database is unavailable; retry later");
    else
        dps_reply_error(op->r, 500, DSV_E_INTERNAL, "internal error");
    free(op);
    return false;
}

static json_t *drift_int(const PGresult *res, int row, int col)
{
    return json_integer(strtoll(PQgetvalue(res, row, col), NULL, 10));
}

static void drift_on_summary(const struct pgq_result *q, void *arg)
{
    struct drift_op *op = arg;
    json_t *owners;
    if (!drift_db_ok(op, q))
        return;
    owners = json_array();
    for (int i = 0; i < PQntuples(q->res); i++)
        json_array_append_new(owners, json_pack("{s:s, s:o, s:o, s:o, s:o}", "owner", PQgetvalue(q->res, i, 0),
                                                "assigned", drift_int(q->res, i, 1), "assigning",
                                                drift_int(q->res, i, 2), "failed", drift_int(q->res, i, 3),
                                                "disabled", drift_int(q->res, i, 4)));
    dps_reply_json(op->r, 200, json_pack("{s:s, s:o}", "dpsInstance", op->dps_id, "owners", owners));
    free(op);
}

static json_t *drift_text_or_null(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_string(PQgetvalue(res, row, col));
}

static void drift_on_ids(const struct pgq_result *q, void *arg)
{
    struct drift_op *op = arg;
    json_t *items, *next = json_null();
    int n;
    if (!drift_db_ok(op, q))
        return;
    items = json_array();
    n = PQntuples(q->res);
    for (int i = 0; i < n && i < op->limit; i++)
        json_array_append_new(items, json_pack("{s:s, s:s, s:s, s:o, s:o, s:s}", "registrationId",
                                               PQgetvalue(q->res, i, 0), "owner", PQgetvalue(q->res, i, 1),
                                               "status", PQgetvalue(q->res, i, 2), "assignedHub",
                                               drift_text_or_null(q->res, i, 3), "deviceId",
                                               drift_text_or_null(q->res, i, 4), "lastUpdatedDateTimeUtc",
                                               PQgetvalue(q->res, i, 5)));
    if (n > op->limit) {
        json_decref(next);
        next = json_string(PQgetvalue(q->res, op->limit - 1, 0));
    }
    dps_reply_json(op->r, 200, json_pack("{s:o, s:o}", "items", items, "next", next));
    free(op);
}

/* ?after= and ?limit=; false after replying 400. */
static bool drift_page_args(struct dps_req *r, const char **after, int *limit)
{
    const char *a = dps_req_query(r, "after"), *l = dps_req_query(r, "limit");
    int64_t v = DRIFT_LIMIT_MAX;
    if (l && !util_parse_int64(l, 1, DRIFT_LIMIT_MAX, &v)) {
        dps_reply_error(r, 400, DSV_E_INVALID, "limit must be an integer from 1 to %d", DRIFT_LIMIT_MAX);
        return false;
    }
    /* the database refuses a parameter that is not UTF-8 (500): a 400 here */
    if (a && (!*a || strlen(a) > DRIFT_ID_MAX || !util_utf8_valid(a, strlen(a)))) {
        dps_reply_error(r, 400, DSV_E_INVALID, "after must be a registration id of 1 to %d characters (UTF-8)",
                        DRIFT_ID_MAX);
        return false;
    }
    *after = a ? a : "";
    *limit = (int)v;
    return true;
}

void dps_drift_handle(struct dps_req *r, const char *dps_id)
{
    struct drift_op *op;
    bool summary = strcasecmp(r->segs[0], "registrationSummary") == 0;
    if (r->nsegs != 1) {
        dps_reply_error(r, 404, 404000, "no such route");
        return;
    }
    if (r->method != EVHTTP_REQ_GET) {
        dps_add_header(r, "Allow", "GET");
        dps_reply_error(r, 405, DSV_E_METHOD, "method not allowed here (allowed: GET)");
        return;
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    op->dps_id = dps_id;
    if (summary) {
        const char *v[] = {dps_id};
        pgpool_query(r->srv->pool, sql_summary, 1, v, drift_on_summary, op);
    } else {
        const char *after;
        char lim[16];
        if (!drift_page_args(r, &after, &op->limit)) {
            free(op);
            return;
        }
        snprintf(lim, sizeof lim, "%d", op->limit);
        {
            const char *v[] = {dps_id, after, lim};
            pgpool_query(r->srv->pool, sql_ids, 3, v, drift_on_ids, op);
        }
    }
}
