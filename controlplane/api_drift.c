/*
 * api_drift.c - GET /v1/dps-instances/{id}/registration-drift (api_drift.h).
 *
 * The catalog says whether the instance exists, has service credentials and
 * which geography holds its devices; that geography's database holds the
 * last pass's report (schema/geo/011), whichever router ran it. Without a
 * report the answer says why: "no_service_credentials" (no pass can ask the
 * stamp) or "not_checked" (no pass yet, or no router serves its geography).
 */
#include "api_drift.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp.h"
#include "device_store.h"
#include "http_req.h"
#include "log.h"
#include "util.h"

struct drift_op {
    struct cp_req *r;
    char id[128];
};

static void drift_reply_status(struct drift_op *op, const char *status)
{
    cpreq_reply_json(op->r, 200, json_pack("{s:s, s:n, s:s}", "dpsInstanceId", op->id, "checkedAt", "status", status));
    free(op);
}

static void drift_on_report(const struct pgq_result *q, void *arg)
{
    struct drift_op *op = arg;
    json_t *report;
    if (q->status != PGQ_OK) {
        cpreq_reply_db_unavailable(op->r, q);
        free(op);
        return;
    }
    if (PQntuples(q->res) != 1 || PQgetisnull(q->res, 0, 0) ||
        !(report = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL))) {
        drift_reply_status(op, "not_checked");
        return;
    }
    /* live: what the outbox still has to deliver at this instance (NULL: no outbox) */
    json_object_set_new(report, "pendingStampOps", PQgetisnull(q->res, 0, 1) ? json_null()
                        : json_integer(strtoll(PQgetvalue(q->res, 0, 1), NULL, 10)));
    cpreq_reply_json(op->r, 200, report);
    free(op);
}

static void drift_on_catalog(const struct pgq_result *q, void *arg)
{
    static const char sql[] =
        "SELECT (SELECT report FROM stamp_drift_state WHERE dps_id = $1), cp_stamp_drift_pending($1)";
    struct drift_op *op = arg;
    const char *v[1] = {op->id};
    int g;
    if (q->status != PGQ_OK) {
        cpreq_reply_db_unavailable(op->r, q);
        free(op);
        return;
    }
    if (PQntuples(q->res) != 1) {
        cpreq_reply_error(op->r, 404, "not_found", NULL, "no DPS instance '%.64s'", op->id);
        free(op);
        return;
    }
    if (strcmp(PQgetvalue(q->res, 0, 0), "t") != 0) {
        drift_reply_status(op, "no_service_credentials");
        return;
    }
    if ((g = device_store_geo_index(op->r->cp, PQgetvalue(q->res, 0, 1))) < 0) {
        drift_reply_status(op, "not_checked");
        return;
    }
    pgpool_query(op->r->cp->geo[g], sql, 1, v, drift_on_report, op);
}

void api_drift_report(struct cp_req *r, const char *dps_id)
{
    static const char sql[] =
        "SELECT d.service_key IS NOT NULL AND d.service_key_name IS NOT NULL, r.geography_id"
        " FROM dps_instances d JOIN stamps s ON s.id = d.stamp_id JOIN regions r ON r.id = s.region_id"
        " WHERE d.id = $1";
    struct drift_op *op;
    const char *v[1] = {dps_id};
    if (strlen(dps_id) >= sizeof op->id) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no DPS instance '%.64s'", dps_id);
        return;
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    snprintf(op->id, sizeof op->id, "%s", dps_id);
    pgpool_query(r->cp->global, sql, 1, v, drift_on_catalog, op);
}
