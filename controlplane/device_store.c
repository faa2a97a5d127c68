/*
 * device_store.c - the router's SQL on the geography databases and the
 * batchers in front of them (device_store.h).
 */
#include "device_store.h"

#include <stdio.h>
#include <string.h>

#include "cp.h"

/*
 * Every lookup ends with the geography of the database that answered: the
 * one asked when the database's own geo_identity says so, else "?" and what
 * it says (never a configured id), so that a row whose geography can't be
 * told fails closed (router.c, router_after_lookup) instead of being guessed. */

/* The lookup is batched (pgbatch.h): one device, or many through unnest.
 * Both start with the item's ordinal. */
static const char store_lookup_sql[] =
    "SELECT 1, status, coalesce(region_id,''), coalesce(stamp_id,''), coalesce(dps_id,''), coalesce(id_scope,''),"
    " coalesce(dps_endpoint,''), coalesce(cp_ts(assigned_at),''), etag::text,"
    " coalesce(hub_host_name,''), coalesce(device_id,''),"
    " CASE WHEN (SELECT geography FROM geo_identity) = $3::text THEN $3::text"
    " ELSE '?' || coalesce((SELECT geography FROM geo_identity), '') END"
    " FROM devices WHERE tenant_id = $1 AND registration_id = $2";

/* One index probe per item (LATERAL ... OFFSET 0): a plain join could be
 * planned as a hash of the whole devices table. */
static const char store_lookup_many_sql[] =
    "SELECT k.ord, d.status, coalesce(d.region_id,''), coalesce(d.stamp_id,''), coalesce(d.dps_id,''),"
    " coalesce(d.id_scope,''), coalesce(d.dps_endpoint,''), coalesce(cp_ts(d.assigned_at),''), d.etag::text,"
    " coalesce(d.hub_host_name,''), coalesce(d.device_id,''),"
    " CASE WHEN gi.g = k.geo THEN k.geo ELSE '?' || coalesce(gi.g, '') END"
    " FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(tenant_id, registration_id, geo, ord)"
    " CROSS JOIN (SELECT (SELECT geography FROM geo_identity) AS g) gi"
    " CROSS JOIN LATERAL (SELECT t.status, t.region_id, t.stamp_id, t.dps_id, t.id_scope, t.dps_endpoint,"
    " t.assigned_at, t.etag, t.hub_host_name, t.device_id FROM devices t"
    " WHERE t.tenant_id = k.tenant_id AND t.registration_id = k.registration_id OFFSET 0) d";

/* First assignments, batched the same way (cp_assign_devices: schema/geo/003). */
static const char store_assign_sql[] =
    "SELECT 1, a.outcome, (a.dev).status, coalesce((a.dev).region_id,''), coalesce((a.dev).stamp_id,''),"
    " coalesce((a.dev).dps_id,''), coalesce((a.dev).id_scope,''), coalesce((a.dev).dps_endpoint,''),"
    " coalesce(cp_ts((a.dev).assigned_at),''), coalesce((a.dev).etag::text,'')"
    " FROM cp_assign_device($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10) a";

static const char store_assign_many_sql[] =
    "SELECT a.ord, a.outcome, (a.dev).status, coalesce((a.dev).region_id,''), coalesce((a.dev).stamp_id,''),"
    " coalesce((a.dev).dps_id,''), coalesce((a.dev).id_scope,''), coalesce((a.dev).dps_endpoint,''),"
    " coalesce(cp_ts((a.dev).assigned_at),''), coalesce((a.dev).etag::text,'')"
    " FROM cp_assign_devices($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    " $8::text[], $9::text[], $10::text[]) a";

struct pgbatch *device_store_lookup_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                           int max_inflight, int max_batch, int queue_timeout_ms)
{
    char name[96];
    struct pgbatch_opts o = {.name = name, .sql_one = store_lookup_sql, .sql_many = store_lookup_many_sql,
                             .ncols = 3, .max_inflight = max_inflight, .max_batch = max_batch,
                             .queue_timeout_ms = queue_timeout_ms};
    snprintf(name, sizeof name, "lookup:%s", geo);
    return pgbatch_new(base, pool, &o);
}

struct pgbatch *device_store_assign_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                           int max_inflight, int max_batch, int queue_timeout_ms)
{
    char name[96];
    struct pgbatch_opts o = {.name = name, .sql_one = store_assign_sql, .sql_many = store_assign_many_sql,
                             .ncols = 10, .max_inflight = max_inflight, .max_batch = max_batch,
                             .queue_timeout_ms = queue_timeout_ms};
    snprintf(name, sizeof name, "assign:%s", geo);
    return pgbatch_new(base, pool, &o);
}

static const char store_detail_sql[] =
    "SELECT d.status, coalesce(d.region_id,''), coalesce(d.stamp_id,''), coalesce(d.dps_id,''),"
    " coalesce(d.id_scope,''), coalesce(d.dps_endpoint,''), coalesce(cp_ts(d.assigned_at),''), d.etag::text,"
    " json_build_object('registrationId', d.registration_id, 'tenantId', d.tenant_id, 'status', d.status,"
    "  'region', d.region_id, 'stamp', d.stamp_id, 'dps', d.dps_id, 'idScope', d.id_scope,"
    "  'dpsEndpoint', d.dps_endpoint, 'assignedAt', cp_ts(d.assigned_at), 'etag', d.etag::text,"
    "  'assignedHub', d.hub_host_name, 'deviceId', d.device_id, 'updatedAt', cp_ts(d.updated_at),"
    "  'decision', d.decision, 'history', (SELECT coalesce(json_agg(json_build_object('at', cp_ts(h.at),"
    "  'event', h.event, 'fromStamp', h.from_stamp, 'toStamp', h.to_stamp, 'reason', h.reason,"
    "  'installerToken', h.installer_token) ORDER BY h.id),"
    "  '[]') FROM device_history h WHERE h.tenant_id = d.tenant_id AND h.registration_id = d.registration_id)),"
    " CASE WHEN (SELECT geography FROM geo_identity) = $3::text THEN $3::text"
    " ELSE '?' || coalesce((SELECT geography FROM geo_identity), '') END"
    " FROM devices d WHERE d.tenant_id = $1 AND d.registration_id = $2";

/* Columns 0..7 of row `row` (after leading columns, `off` of them: an
 * ordinal, an outcome) into a row. */
void device_store_row_read(struct device_row *w, const PGresult *res, int row, int off, int geo)
{
    w->found = true;
    w->geo = geo;
    snprintf(w->status, sizeof w->status, "%s", PQgetvalue(res, row, off + 0));
    snprintf(w->region, sizeof w->region, "%s", PQgetvalue(res, row, off + 1));
    snprintf(w->stamp, sizeof w->stamp, "%s", PQgetvalue(res, row, off + 2));
    snprintf(w->dps, sizeof w->dps, "%s", PQgetvalue(res, row, off + 3));
    snprintf(w->scope, sizeof w->scope, "%s", PQgetvalue(res, row, off + 4));
    snprintf(w->endpoint, sizeof w->endpoint, "%s", PQgetvalue(res, row, off + 5));
    snprintf(w->assigned_at, sizeof w->assigned_at, "%s", PQgetvalue(res, row, off + 6));
    snprintf(w->etag, sizeof w->etag, "%s", PQgetvalue(res, row, off + 7));
}

int device_store_geo_index(const struct cp *cp, const char *geo)
{
    for (int i = 0; i < cp->cfg.n_geos; i++)
        if (strcmp(cp->cfg.geos[i].id, geo) == 0)
            return i;
    return -1;
}

void device_store_lookup(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, pgbatch_cb cb, void *arg)
{
    const char *values[3] = {tenant, regid, cp->cfg.geos[g].id};
    pgbatch_submit_until(cp->geo_lookup[g], deadline_ms, values, cb, arg);
}

void device_store_detail(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, pgpool_cb cb, void *arg)
{
    const char *values[3] = {tenant, regid, cp->cfg.geos[g].id};
    pgpool_query_until(cp->geo[g], deadline_ms, store_detail_sql, 3, values, cb, arg);
}

void device_store_assign(struct cp *cp, int g, int64_t deadline_ms, const char *const v[10], pgbatch_cb cb, void *arg)
{
    pgbatch_submit_until(cp->geo_assign[g], deadline_ms, v, cb, arg);
}

void device_store_assign_one(struct cp *cp, int g, int64_t deadline_ms, const char *const v[10], const char *claim_token, pgpool_cb cb,
                             void *arg)
{
    static const char claimed_sql[] =
        "SELECT 1, a.outcome, (a.dev).status, coalesce((a.dev).region_id,''), coalesce((a.dev).stamp_id,''),"
        " coalesce((a.dev).dps_id,''), coalesce((a.dev).id_scope,''), coalesce((a.dev).dps_endpoint,''),"
        " coalesce(cp_ts((a.dev).assigned_at),''), coalesce((a.dev).etag::text,'')"
        " FROM cp_assign_claimed_device($11::bigint, $1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10) a";
    const char *values[11];
    if (!claim_token) {
        pgpool_query_until(cp->geo[g], deadline_ms, store_assign_sql, 10, v, cb, arg);
        return;
    }
    memcpy(values, v, 10 * sizeof *values);
    values[10] = claim_token;
    pgpool_query_until(cp->geo[g], deadline_ms, claimed_sql, 11, values, cb, arg);
}

void device_store_claim(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, const char *geo,
                        const char *from_token, pgpool_cb cb, void *arg)
{
    static const char sql[] = "SELECT outcome, geography, token::text FROM cp_claim_device($1, $2, $3, $4::bigint)";
    const char *values[4] = {tenant, regid, geo, from_token};
    pgpool_query_until(cp->geo[g], deadline_ms, sql, 4, values, cb, arg);
}

void device_store_fence(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, const char *token,
                        pgpool_cb cb, void *arg)
{
    static const char sql[] = "SELECT cp_fence_claim($1, $2, $3::bigint)";
    const char *values[3] = {tenant, regid, token};
    pgpool_query_until(cp->geo[g], deadline_ms, sql, 3, values, cb, arg);
}

void device_store_move(struct cp *cp, int g, int64_t deadline_ms, const char *const v[11], pgpool_cb cb, void *arg)
{
    static const char sql[] =
        "SELECT a.outcome, coalesce((a.dev).status,''), coalesce((a.dev).region_id,''), coalesce((a.dev).stamp_id,''),"
        " coalesce((a.dev).dps_id,''), coalesce((a.dev).id_scope,''), coalesce((a.dev).dps_endpoint,''),"
        " coalesce(cp_ts((a.dev).assigned_at),''), coalesce((a.dev).etag::text,'')"
        " FROM cp_move_device($1, $2, $3::bigint, $4, $5, $6, $7, $8, $9, $10::jsonb, $11) a";
    pgpool_query_until(cp->geo[g], deadline_ms, sql, 11, v, cb, arg);
}

void device_store_release(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, bool retire,
                          const char *reason, pgpool_cb cb, void *arg)
{
    static const char sql[] = "SELECT status FROM cp_release_device($1, $2, $3::boolean, $4)";
    const char *values[4] = {tenant, regid, retire ? "true" : "false", reason};
    pgpool_query_until(cp->geo[g], deadline_ms, sql, 4, values, cb, arg);
}

void device_store_record_hub(struct cp *cp, int g, const char *tenant, const char *regid, const char *etag,
                             const char *hub, const char *device_id, pgpool_cb cb, void *arg)
{
    /* acknowledged like an assignment: durable by itself (schema/geo/006) */
    static const char sql[] =
        "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true))"
        " UPDATE devices SET hub_host_name = $4, device_id = $5, updated_at = now() FROM durable"
        " WHERE tenant_id = $1 AND registration_id = $2 AND etag = $3::bigint AND status = 'assigned'";
    const char *values[5] = {tenant, regid, etag, hub, device_id};
    pgpool_query(cp->geo[g], sql, 5, values, cb, arg);
}

void device_store_count(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, pgpool_cb cb, void *arg)
{
    static const char sql[] = "SELECT count(*) FROM devices WHERE tenant_id = $1 AND status = 'assigned'";
    const char *values[1] = {tenant};
    pgpool_query_until(cp->geo[g], deadline_ms, sql, 1, values, cb, arg);
}
