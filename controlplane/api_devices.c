/*
 * api_devices.c - the router's device requests, one state machine per request:
 *
 *   AUTH --tenant loaded, credential verified--> CACHE (locate only)
 *   --miss--> LOOKUP (every geography the tenant's devices may live in, in
 *   parallel) --found--> reply | --new--> [an installer token's placement
 *   counted, installer_tokens.h] --> PLACE --> [COUNT (tenant with
 *   maxDevices: reserve, count its devices)] --> RATE (shared token
 *   buckets) --> ASSIGN (geography database, atomic) --> reply
 *
 * A device that got 200 is in its geography's database: the answer is sent
 * only after the assignment statement committed.
 *
 * Tenant rules (docs/api.md "Quotas", "Suspend and resume"): a suspended
 * tenant's devices are refused once their credential is verified; a first
 * placement of a tenant with maxDevices counts its assigned devices first
 * (COUNT, every lookup geography in parallel) and the RATE step reserves the
 * placement against the quota; maxProvisionsPerMinute is a bucket taken in
 * the RATE step with the DPS's. A device already placed costs none of this.
 */
#include "api_devices.h"

#include <openssl/crypto.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include "dps_client.h"
#include "http_server.h"
#include "installer_tokens.h"
#include "log.h"
#include "pgbatch.h"
#include "placement.h"
#include "pseudonym.h"
#include "ratelimit.h"
#include "sas.h"
#include "util.h"
#include "x509ca.h"

#define DEV_MAX_ATTEMPTS 4
#define DEV_MAX_EXCLUDE 16

enum dev_kind { DEV_LOCATE, DEV_PROVISION, DEV_REPROVISION, DEV_ADMIN_GET, DEV_DEPROVISION, DEV_RETIRE };
enum dev_state { DS_AUTH, DS_LOOKUP, DS_COUNT, DS_RATE, DS_ASSIGN, DS_DPS, DS_RECORD, DS_DONE };
static const char *const dev_state_names[] = {"auth", "lookup", "count", "rate", "assign", "dps", "record", "done"};
enum dev_auth { AUTH_NONE, AUTH_SAS, AUTH_OPERATOR, AUTH_INSTALLER, AUTH_X509 };

struct dev_row {
    bool found;
    int geo;                   /* index into cfg.geos */
    char status[16];
    char region[64], stamp[64], dps[64], scope[72], endpoint[260], assigned_at[40];
    char etag[24];
    char hub[256], device_id[132];   /* lookups: what proxy provisioning recorded ("" if none) */
    char *detail;              /* admin GET: the full JSON */
};

struct devreq {
    struct cp_req *r;
    enum dev_kind kind;
    enum dev_state state;
    enum dev_auth auth;
    char tenant_id[64];
    char regid[132];
    struct sas_token sas;
    char bearer_sha[INSTALLER_SHA_HEX];
    X509 *cert;                /* AUTH_X509: the client certificate (a reference of ours) */
    STACK_OF(X509) *chain;     /* ... and the intermediates it sent (ours), or NULL */
    /* installer token (AUTH_INSTALLER): its public id, and its placement
     * count (installer_tokens.h): taken before a first placement, kept once
     * the assignment committed or when its outcome is unknown, else given back */
    char inst_id[INSTALLER_ID_LEN + 1];
    bool inst_reserved;
    bool inst_committed;
    bool inst_in_doubt;        /* an assignment statement is out without a definite answer */
    struct pgpool *global;     /* for the give-back, which can outlive d->r */
    char reason[160];
    struct tenant *t;
    struct layout *l;
    int pending;
    bool lookup_failed;
    char geo_unknown[72];      /* a row came from a database of no configured geography: what it said */
    struct dev_row row;
    uint64_t epoch;
    struct placement_result pr;
    char exclude[DEV_MAX_EXCLUDE][64];
    const char *exclude_ptr[DEV_MAX_EXCLUDE];
    int nexclude;
    int attempts;
    const struct layout_dps *chosen;
    bool moving;               /* reprovision of an assigned device */
    bool placed_now;           /* a DPS token was taken for this request's placement */
    struct cp *cp;             /* outlives the request (dev_free settles the quota reservation) */
    bool quota_reserved;       /* a reservation against maxDevices is held under `reservation` */
    char reservation[33];
    int64_t devices_counted;   /* COUNT: the tenant's assigned devices */
    int64_t reserved_at;       /* Redis's time when the reservation was made */
    bool count_failed;
    char old_dps[64];          /* reprovision: the DPS the device is leaving */
    int regid_conflicts;       /* DPS instances ruled out because another tenant's device has this id */
    bool admin_route;          /* /v1/tenants/{t}/devices/...: acts on existing devices only */
    json_t *payload;           /* provision: the device's payload for the DPS */
    struct dps_outcome dps;    /* provision: what the DPS answered */
    json_t *dps_state;         /* provision: its registrationState (owned) */
    void (*then)(struct devreq *);   /* what follows a confirmed invalidation */
};

static void dev_lookup(struct devreq *d);
static void dev_place(struct devreq *d);
static void dev_on_rate(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg);
static void dev_proxy(struct devreq *d);

bool api_devices_valid_regid(const char *s)
{
    size_t n = strlen(s);
    char last;
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == ':'))
            return false;
    }
    last = s[n - 1];
    return (last >= 'a' && last <= 'z') || (last >= '0' && last <= '9') || last == '-';
}

static void dev_set_state(struct devreq *d, enum dev_state s)
{
    if (log_enabled(LOG_DEBUG))
        log_write(LOG_DEBUG, d->r->id, "event=device_state from=%s to=%s tenant=%s", dev_state_names[d->state],
                  dev_state_names[s], d->tenant_id);
    d->state = s;
}

static void dev_free(struct devreq *d)
{
    if (d->quota_reserved)   /* nothing was committed under it */
        ratelimit_quota_settle(d->cp->feed, d->tenant_id, d->reservation, false);
    if (d->inst_reserved && !d->inst_committed && !d->inst_in_doubt)
        installer_tokens_release(d->global, d->tenant_id, d->inst_id);
    if (d->t) tenant_unref(d->t);
    if (d->l) layout_unref(d->l);
    placement_result_clear(&d->pr);
    free(d->row.detail);
    json_decref(d->payload);
    json_decref(d->dps_state);
    X509_free(d->cert);
    if (d->chain)
        sk_X509_pop_free(d->chain, X509_free);
    free(d);
}

/* Every reply goes through these: they end the request. */
static void dev_error(struct devreq *d, int status, const char *code, const char *target, const char *msg)
{
    dev_set_state(d, DS_DONE);
    cpreq_reply_error(d->r, status, code, target, "%s", msg);
    dev_free(d);
}

static void dev_unavailable(struct devreq *d, const struct pgq_result *q)
{
    dev_set_state(d, DS_DONE);
    cpreq_reply_db_unavailable(d->r, q);
    dev_free(d);
}

static void dev_unauthorized(struct devreq *d, const char *code)
{
    cpreq_add_header(d->r, "WWW-Authenticate", "SharedAccessSignature");
    dev_error(d, 401, code, NULL, "the credential was not accepted");
}

static void dev_retry_after(struct devreq *d, int64_t seconds)
{
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)seconds);
    cpreq_add_header(d->r, "Retry-After", v);
}

static json_t *dev_answer(struct devreq *d)
{
    const struct dev_row *w = &d->row;
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "registrationId", d->regid, "tenantId",
                     d->tenant_id, "geography", d->r->cp->cfg.geos[w->geo].id, "region", w->region, "stamp",
                     w->stamp, "idScope", w->scope, "dpsEndpoint", w->endpoint, "assignedAt", w->assigned_at,
                     "etag", w->etag);
}

static void dev_reply_assignment(struct devreq *d, bool cache, const char *moved_reason)
{
    json_t *a;
    char *text;
    if (d->kind == DEV_PROVISION && d->state != DS_RECORD) {
        dev_proxy(d);   /* the assignment stands; now register at its DPS */
        return;
    }
    a = dev_answer(d);
    if (d->kind == DEV_REPROVISION) {
        json_object_set_new(a, "moved", json_boolean(moved_reason != NULL));
        if (moved_reason)
            json_object_set_new(a, "reason", json_string(moved_reason));
    }
    if (d->kind == DEV_PROVISION) {
        json_object_set_new(a, "assignedHub", json_string(d->dps.assigned_hub));
        json_object_set_new(a, "deviceId", json_string(d->dps.device_id));
        json_object_set_new(a, "status", json_string("assigned"));
        json_object_set_new(a, "substatus", json_string(d->dps.substatus));
        if (json_object_get(d->dps_state, "payload"))
            json_object_set(a, "payload", json_object_get(d->dps_state, "payload"));
    }
    text = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    if (cache && d->kind == DEV_LOCATE)
        assign_cache_put(d->r->cp->cache, d->epoch, d->tenant_id, d->regid, text);
    dev_set_state(d, DS_DONE);
    cpreq_reply_text(d->r, 200, text, strlen(text));
    free(text);
    dev_free(d);
}

static void dev_on_published(bool delivered, void *arg)
{
    struct devreq *d = arg;
    (void)delivered;   /* not confirmed: the cache TTL and resubscribe flush are the backstop */
    assign_cache_forget(d->r->cp->cache, d->tenant_id, d->regid);
    d->then(d);
}

/* Our own changes count in this router's layout snapshot at once, not at the
 * next refresh: a released registration can be reused right away. */
static void dev_count(struct devreq *d, const char *dps_id, int delta)
{
    struct layout *l = layouts_current(d->r->cp->layouts);
    struct layout_dps *dp = l && dps_id[0] ? layout_find_dps(l, dps_id) : NULL;
    if (!dp)
        return;
    dp->registrations += delta;
    dp->stamp->devices += delta;
    if (dp->registrations < 0) dp->registrations = 0;
    if (dp->stamp->devices < 0) dp->stamp->devices = 0;
}

/* Announce a change to every router, then continue with then(d) once the
 * announcement is known to be waiting at all of them (redisfeed.h). */
static void dev_publish_change(struct devreq *d, void (*then)(struct devreq *))
{
    char ps[PSEUDONYM_LEN];
    /* Redis carries the device's pseudonym, never its registration id. */
    char *payload = xasprintf("device %s %s %s", d->tenant_id,
                              pseudonym_device(&d->r->cp->pseudo, d->tenant_id, d->regid, ps),
                              pseudonym_key_id(&d->r->cp->pseudo));
    assign_cache_forget(d->r->cp->cache, d->tenant_id, d->regid);
    d->then = then;
    redisfeed_invalidate_wait(d->r->cp->feed, payload, dev_on_published, d);
    free(payload);
}

/* ---- rows ----
 * Every lookup ends with the geography of the database that answered: the
 * one asked when the database's own geo_identity says so, else "?" and what
 * it says (never a configured id), so that a row whose geography can't be
 * told fails closed (dev_after_lookup) instead of being guessed. */

/* The lookup is batched (pgbatch.h): one device, or many through unnest.
 * Both start with the item's ordinal. */
static const char dev_lookup_sql[] =
    "SELECT 1, status, coalesce(region_id,''), coalesce(stamp_id,''), coalesce(dps_id,''), coalesce(id_scope,''),"
    " coalesce(dps_endpoint,''), coalesce(cp_ts(assigned_at),''), etag::text,"
    " coalesce(hub_host_name,''), coalesce(device_id,''),"
    " CASE WHEN (SELECT geography FROM geo_identity) = $3::text THEN $3::text"
    " ELSE '?' || coalesce((SELECT geography FROM geo_identity), '') END"
    " FROM devices WHERE tenant_id = $1 AND registration_id = $2";

/* One index probe per item (LATERAL ... OFFSET 0): a plain join could be
 * planned as a hash of the whole devices table. */
static const char dev_lookup_many_sql[] =
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
static const char dev_assign_sql[] =
    "SELECT 1, a.outcome, (a.dev).status, coalesce((a.dev).region_id,''), coalesce((a.dev).stamp_id,''),"
    " coalesce((a.dev).dps_id,''), coalesce((a.dev).id_scope,''), coalesce((a.dev).dps_endpoint,''),"
    " coalesce(cp_ts((a.dev).assigned_at),''), coalesce((a.dev).etag::text,'')"
    " FROM cp_assign_device($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10) a";

static const char dev_assign_many_sql[] =
    "SELECT a.ord, a.outcome, (a.dev).status, coalesce((a.dev).region_id,''), coalesce((a.dev).stamp_id,''),"
    " coalesce((a.dev).dps_id,''), coalesce((a.dev).id_scope,''), coalesce((a.dev).dps_endpoint,''),"
    " coalesce(cp_ts((a.dev).assigned_at),''), coalesce((a.dev).etag::text,'')"
    " FROM cp_assign_devices($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    " $8::text[], $9::text[], $10::text[]) a";

struct pgbatch *api_devices_lookup_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                           int max_inflight, int max_batch, int queue_timeout_ms)
{
    char name[96];
    struct pgbatch_opts o = {.name = name, .sql_one = dev_lookup_sql, .sql_many = dev_lookup_many_sql,
                             .ncols = 3, .max_inflight = max_inflight, .max_batch = max_batch,
                             .queue_timeout_ms = queue_timeout_ms};
    snprintf(name, sizeof name, "lookup:%s", geo);
    return pgbatch_new(base, pool, &o);
}

struct pgbatch *api_devices_assign_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                           int max_inflight, int max_batch, int queue_timeout_ms)
{
    char name[96];
    struct pgbatch_opts o = {.name = name, .sql_one = dev_assign_sql, .sql_many = dev_assign_many_sql,
                             .ncols = 10, .max_inflight = max_inflight, .max_batch = max_batch,
                             .queue_timeout_ms = queue_timeout_ms};
    snprintf(name, sizeof name, "assign:%s", geo);
    return pgbatch_new(base, pool, &o);
}

static const char dev_detail_sql[] =
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
static void dev_row_read(struct dev_row *w, const PGresult *res, int row, int off, int geo)
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

static int dev_geo_index(const struct cp *cp, const char *geo)
{
    for (int i = 0; i < cp->cfg.n_geos; i++)
        if (strcmp(cp->cfg.geos[i].id, geo) == 0)
            return i;
    return -1;
}

/* ---- release (deprovision / retire) ---- */

static void dev_reply_released(struct devreq *d)
{
    dev_set_state(d, DS_DONE);
    cpreq_reply_json(d->r, 200, json_pack("{s:s, s:s, s:s}", "registrationId", d->regid, "tenantId",
                                          d->tenant_id, "status", d->row.status));
    dev_free(d);
}

static void dev_on_release(const struct pgq_result *q, void *arg)
{
    struct devreq *d = arg;
    if (q->status == PGQ_UNAVAILABLE) {
        dev_unavailable(d, q);
        return;
    }
    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        dev_error(d, 500, "internal", NULL, "the device could not be released");
        return;
    }
    if (strcmp(d->row.status, "assigned") == 0)
        dev_count(d, d->row.dps, -1);
    snprintf(d->row.status, sizeof d->row.status, "%s", PQgetvalue(q->res, 0, 0));
    dev_publish_change(d, dev_reply_released);
}

static void dev_release(struct devreq *d)
{
    static const char sql[] = "SELECT status FROM cp_release_device($1, $2, $3::boolean, $4)";
    const char *values[4] = {d->tenant_id, d->regid, d->kind == DEV_RETIRE ? "true" : "false",
                             d->reason[0] ? d->reason
                                          : d->r->who.kind == PRINCIPAL_KEY
                                              ? (d->kind == DEV_RETIRE ? "retired by API key" : "deprovisioned by API key")
                                              : (d->kind == DEV_RETIRE ? "retired by operator" : "deprovisioned by operator")};
    if (!redisfeed_cmd(d->r->cp->feed)) {
        /* Other routers' caches must hear of the change: refuse rather than leave them stale. */
        dev_retry_after(d, 1);
        dev_error(d, 503, "redis_unavailable", NULL, "cannot announce the change; retry later");
        return;
    }
    json_decref(d->r->audit_before);   /* the device as it was, for the audit entry */
    d->r->audit_before = json_pack("{s:s, s:s, s:s, s:s, s:s}", "registrationId", d->regid, "status", d->row.status,
                                   "region", d->row.region, "stamp", d->row.stamp, "dpsInstance", d->row.dps);
    pgpool_query(d->r->cp->geo[d->row.geo], sql, 4, values, dev_on_release, d);
}

/* ---- assign / move ---- */

static void dev_exclude(struct devreq *d, const char *dps)
{
    if (d->nexclude < DEV_MAX_EXCLUDE) {
        snprintf(d->exclude[d->nexclude], sizeof d->exclude[0], "%s", dps);
        d->exclude_ptr[d->nexclude] = d->exclude[d->nexclude];
        d->nexclude++;
    }
}

static void dev_reply_moved(struct devreq *d)
{
    dev_reply_assignment(d, false, d->reason);
}

/* The answer of cp_assign_device (row `row` of q, its columns after `off`
 * leading ones: the outcome first) or of cp_move_device. */
static void dev_on_assign_row(struct devreq *d, const struct pgq_result *q, int row, int off)
{
    const char *outcome;
    int geo = d->row.geo;

    if (q->status == PGQ_UNAVAILABLE) {
        dev_unavailable(d, q);   /* committed or not: unknown, so a placement count stays taken */
        return;
    }
    d->inst_in_doubt = false;   /* a definite answer (an error rolled the statement back) */
    if (q->status == PGQ_SQL_ERROR && ++d->attempts < DEV_MAX_ATTEMPTS &&
        ((strcmp(q->sqlstate, "23505") == 0 && q->constraint &&
          strcmp(q->constraint, "devices_dps_registration_uidx") == 0) ||
         strcmp(q->sqlstate, "40P01") == 0 || strcmp(q->sqlstate, "40001") == 0)) {
        /* Another tenant's device holds this registration id on that DPS
         * (the statement rolled back), or two moves crossed: place again. */
        if (q->sqlstate[0] == '2') {
            dev_exclude(d, d->chosen->id);
            d->regid_conflicts++;
        }
        dev_place(d);
        return;
    }
    if (q->status != PGQ_OK || row < 0) {
        log_write(LOG_ERROR, d->r->id, "event=assign_failed sqlstate=%s error=\"%.200s\"",
                  q->sqlstate ? q->sqlstate : "", q->message ? q->message : "");
        dev_error(d, 500, "internal", NULL, "the assignment could not be written");
        return;
    }
    outcome = PQgetvalue(q->res, row, off);
    if (d->quota_reserved && strcmp(outcome, "assigned") == 0) {
        /* a device was added under the reservation: it now counts, held a while longer */
        ratelimit_quota_settle(d->cp->feed, d->tenant_id, d->reservation, true);
        d->quota_reserved = false;
    }
    if (strcmp(outcome, "assigned") == 0 || strcmp(outcome, "existing") == 0 || strcmp(outcome, "moved") == 0) {
        dev_row_read(&d->row, q->res, row, off + 1, geo);
        if (strcmp(outcome, "assigned") == 0)
            d->inst_committed = true;
        if (strcmp(outcome, "assigned") == 0 || strcmp(outcome, "moved") == 0)
            dev_count(d, d->row.dps, +1);
        if (strcmp(outcome, "moved") == 0)
            dev_count(d, d->old_dps, -1);
        if (strcmp(outcome, "moved") == 0) {
            dev_publish_change(d, dev_reply_moved);
        } else {
            dev_reply_assignment(d, true, d->kind == DEV_REPROVISION && d->moving ? d->reason : NULL);
        }
    } else if (strcmp(outcome, "retired") == 0) {
        dev_error(d, 410, "device_retired", NULL, "this device is retired");
    } else if (strcmp(outcome, "unchanged") == 0 && ++d->attempts < DEV_MAX_ATTEMPTS) {
        dev_lookup(d);   /* someone else changed it meanwhile: look again */
    } else if (strcmp(outcome, "dps_full") == 0 && ++d->attempts < DEV_MAX_ATTEMPTS) {
        dev_exclude(d, d->chosen->id);
        dev_place(d);
    } else if (strcmp(outcome, "regid_taken") == 0 && ++d->attempts < DEV_MAX_ATTEMPTS) {
        /* the batch's check found what the unique index would refuse */
        dev_exclude(d, d->chosen->id);
        d->regid_conflicts++;
        dev_place(d);
    } else {
        dev_retry_after(d, 60);
        dev_error(d, 503, "capacity_exhausted", NULL, "no DPS instance could take the device now");
    }
}

static void dev_on_move(const struct pgq_result *q, void *arg)
{
    dev_on_assign_row(arg, q, q->status == PGQ_OK && PQntuples(q->res) == 1 ? 0 : -1, 0);
}

static void dev_on_assign(const struct pgq_result *q, int row, void *arg)
{
    dev_on_assign_row(arg, q, row, 1);
}

static char *dev_decision_text(struct devreq *d)
{
    json_t *dec = json_deep_copy(d->pr.decision);
    char at[40], *text;
    util_format_time(util_wall_ms(), at, sizeof at);
    json_object_set_new(dec, "at", json_string(at));
    json_object_set_new(dec, "reason", json_string(d->reason));
    json_object_set_new(dec, "chosen", json_pack("{s:s, s:s}", "stamp", d->chosen->stamp->id, "dps", d->chosen->id));
    if (d->auth == AUTH_INSTALLER)   /* also copied into the history row (schema/geo/005) */
        json_object_set_new(dec, "installerToken", json_string(d->inst_id));
    text = json_dumps(dec, JSON_COMPACT);
    json_decref(dec);
    return text;
}

static void dev_assign(struct devreq *d)
{
    static const char move_sql[] =
        "SELECT a.outcome, coalesce((a.dev).status,''), coalesce((a.dev).region_id,''), coalesce((a.dev).stamp_id,''),"
        " coalesce((a.dev).dps_id,''), coalesce((a.dev).id_scope,''), coalesce((a.dev).dps_endpoint,''),"
        " coalesce(cp_ts((a.dev).assigned_at),''), coalesce((a.dev).etag::text,'')"
        " FROM cp_move_device($1, $2, $3::bigint, $4, $5, $6, $7, $8, $9, $10::jsonb, $11) a";
    const struct layout_dps *c = d->chosen;
    char max[24], *decision = dev_decision_text(d);
    int geo = dev_geo_index(d->r->cp, c->stamp->geo);

    dev_set_state(d, DS_ASSIGN);
    snprintf(max, sizeof max, "%lld", (long long)c->max_registrations);
    if (geo < 0) {
        free(decision);
        dev_error(d, 500, "internal", NULL, "the chosen stamp's geography has no database here");
        return;
    }
    if (d->admin_route || d->auth == AUTH_OPERATOR)
        d->r->audit_geo = geo;   /* where the device lands: its audit entry goes there (audit.h) */
    d->inst_in_doubt = true;
    if (d->moving) {
        const char *v[11] = {d->tenant_id, d->regid, d->row.etag, c->stamp->region, c->stamp->id, c->id,
                             c->id_scope, c->endpoint, max, decision, d->reason};
        snprintf(d->old_dps, sizeof d->old_dps, "%s", d->row.dps);
        d->row.geo = geo;
        pgpool_query(d->r->cp->geo[geo], move_sql, 11, v, dev_on_move, d);
    } else {
        const char *v[10] = {d->tenant_id, d->regid, c->stamp->region, c->stamp->id, c->id,
                             c->id_scope, c->endpoint, max, decision, d->reason};
        d->row.geo = geo;
        pgbatch_submit(d->r->cp->geo_assign[geo], v, dev_on_assign, d);
    }
    free(decision);
}

/* ---- proxy provisioning (approach 2) ---- */

static void dev_on_recorded(const struct pgq_result *q, void *arg)
{
    struct devreq *d = arg;
    if (q->status == PGQ_UNAVAILABLE) {
        dev_unavailable(d, q);
        return;
    }
    if (q->status != PGQ_OK) {
        dev_error(d, 500, "internal", NULL, "the hub assignment could not be recorded");
        return;
    }
    if (strcmp(PQcmdTuples((PGresult *)q->res), "1") != 0) {
        /* moved or released while the DPS worked: the device must ask again */
        dev_retry_after(d, 1);
        dev_error(d, 409, "assignment_changed", NULL, "the device's assignment changed meanwhile; retry");
        return;
    }
    dev_reply_assignment(d, false, NULL);
}

static void dev_on_dps(const struct dps_outcome *o, void *arg)
{
    struct devreq *d = arg;
    static const char sql[] =
        "UPDATE devices SET hub_host_name = $4, device_id = $5, updated_at = now()"
        " WHERE tenant_id = $1 AND registration_id = $2 AND etag = $3::bigint AND status = 'assigned'";
    const char *v[5];

    d->dps = *o;
    d->dps.registration_state = NULL;
    json_decref(d->dps_state);
    d->dps_state = o->registration_state ? json_incref(o->registration_state) : NULL;
    switch (o->status) {
    case DPS_ASSIGNED:
        break;
    case DPS_THROTTLED:
        dev_retry_after(d, ratelimit_retry_after_s((int64_t)o->retry_after_s * 1000));
        dev_error(d, 429, "throttled", NULL, "the stamp's DPS is throttling registrations; retry later");
        return;
    case DPS_DISABLED:
        dev_error(d, 403, "device_disabled", NULL, o->error);
        return;
    case DPS_FAILED:
        dev_error(d, 502, "dps_assignment_failed", NULL, o->error);
        return;
    case DPS_REJECTED:
        log_write(LOG_WARN, d->r->id, "event=dps_rejected tenant=%s dps=%s http=%d", d->tenant_id, d->row.dps,
                  o->http_status);
        dev_error(d, 502, "dps_rejected", NULL, "the stamp's DPS does not accept this device (its enrollment is missing)");
        return;
    case DPS_UNREACHABLE:
        log_write(LOG_WARN, d->r->id, "event=dps_unreachable dps=%s error=\"%.200s\"", d->row.dps, o->error);
        dev_retry_after(d, 5);
        dev_error(d, 503, "dps_unavailable", NULL, "the stamp's DPS did not answer; retry later");
        return;
    }
    dev_set_state(d, DS_RECORD);
    v[0] = d->tenant_id;
    v[1] = d->regid;
    v[2] = d->row.etag;
    v[3] = o->assigned_hub;
    v[4] = o->device_id;
    pgpool_query(d->r->cp->geo[d->row.geo], sql, 5, v, dev_on_recorded, d);
}

static void dev_proxy_register(struct devreq *d)
{
    unsigned char dk[SAS_KEY_LEN];
    char sr[300], sas[700];
    snprintf(sr, sizeof sr, "%s/registrations/%s", d->row.scope, d->regid);
    sas_derive_key(d->t->key, (size_t)d->t->keylen, d->regid, dk);
    sas_build(sr, dk, sizeof dk, util_wall_ms() / 1000 + 3600, "registration", sas, sizeof sas);
    OPENSSL_cleanse(dk, sizeof dk);
    dev_set_state(d, DS_DPS);
    dps_register(d->r->cp->dps, d->row.endpoint, d->row.scope, d->regid, sas, d->payload, dev_on_dps, d);
}

/* The tenant's own limits said no (RL_TENANT_THROTTLED, RL_QUOTA_PENDING):
 * replies and returns true. */
static bool dev_tenant_refused(struct devreq *d, enum ratelimit_status st, int64_t wait_ms)
{
    if (st == RL_TENANT_THROTTLED) {
        dev_retry_after(d, ratelimit_retry_after_s(wait_ms));
        dev_error(d, 429, "tenant_throttled", NULL,
                  "the tenant is at its quotas.maxProvisionsPerMinute; retry later");
        return true;
    }
    if (st == RL_QUOTA_PENDING) {
        dev_retry_after(d, ratelimit_retry_after_s(wait_ms));
        dev_error(d, 429, "quota_pending", NULL,
                  "the tenant's placements in flight would reach quotas.maxDevices; retry later");
        return true;
    }
    return false;
}

static void dev_on_proxy_rate(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg)
{
    struct devreq *d = arg;
    (void)admitted;
    if (st == RL_UNAVAILABLE) {
        dev_retry_after(d, 1);
        dev_error(d, 503, "redis_unavailable", NULL, "rate limits cannot be checked; retry later");
    } else if (dev_tenant_refused(d, st, wait_ms)) {
        return;
    } else if (st == RL_THROTTLED) {
        dev_retry_after(d, ratelimit_retry_after_s(wait_ms));
        dev_error(d, 429, "throttled", NULL, "the device's DPS instance is at its registration rate; retry later");
    } else {
        dev_proxy_register(d);
    }
}

/* The device has an assignment: register it at that DPS. A registration the
 * placement didn't already pay for takes a token from that DPS's bucket. */
static void dev_proxy(struct devreq *d)
{
    struct layout *l = layouts_current(d->r->cp->layouts);
    const struct layout_dps *dp = l ? layout_find_dps(l, d->row.dps) : NULL;
    if (!d->r->cp->dps) {
        dev_error(d, 503, "dps_unavailable", NULL, "proxy provisioning is not configured (dps.caFile)");
        return;
    }
    if (d->placed_now) {
        dev_proxy_register(d);
        return;
    }
    if (!dp) {
        dev_retry_after(d, 1);
        dev_error(d, 503, "no_eligible_stamp", NULL, "the device's DPS instance is not in the layout; reprovision");
        return;
    }
    if (d->l != l) {
        if (d->l) layout_unref(d->l);
        layout_ref(l);
        d->l = l;
    }
    dev_set_state(d, DS_RATE);
    {
        struct ratelimit_tenant rt = {.id = d->tenant_id, .per_minute = d->t->max_per_minute, .max_devices = -1};
        ratelimit_take(d->r->cp->feed, &dp, 1, &rt, dev_on_proxy_rate, d);
    }
}

/* ---- rate ---- */

/* RATE: the DPS candidates' buckets, the tenant's bucket and (first
 * placements of a tenant with maxDevices) the quota reservation, in one step. */
static void dev_take_tokens(struct devreq *d)
{
    bool quota = !d->moving && d->t->max_devices >= 0;
    struct ratelimit_tenant rt = {.id = d->tenant_id, .per_minute = d->t->max_per_minute,
                                  .max_devices = quota ? d->t->max_devices : -1, .devices = d->devices_counted,
                                  .reservation = quota ? d->reservation : NULL, .reserved_at = d->reserved_at};
    dev_set_state(d, DS_RATE);
    ratelimit_take(d->cp->feed, d->pr.cand, d->pr.ncand < RATELIMIT_MAX ? d->pr.ncand : RATELIMIT_MAX, &rt,
                   dev_on_rate, d);
}

/* One COUNT answered, or (q NULL) every COUNT is sent. */
static void dev_on_count(const struct pgq_result *q, void *arg)
{
    struct devreq *d = arg;
    if (q && (q->status != PGQ_OK || PQntuples(q->res) != 1))
        d->count_failed = true;
    else if (q)
        d->devices_counted += strtoll(PQgetvalue(q->res, 0, 0), NULL, 10);
    if (--d->pending > 0)
        return;
    if (d->count_failed) {
        /* a geography we can't count may hold devices: don't guess under the quota */
        dev_unavailable(d, NULL);
    } else if (d->devices_counted >= d->t->max_devices) {
        log_write(LOG_INFO, d->r->id, "event=quota_exceeded tenant=%s devices=%lld max=%lld", d->tenant_id,
                  (long long)d->devices_counted, (long long)d->t->max_devices);
        dev_error(d, 403, "quota_exceeded", NULL, "the tenant has quotas.maxDevices assigned devices");
    } else {
        dev_take_tokens(d);
    }
}

/* The reservation is in (t0: Redis's time then): count the tenant's
 * assigned devices in every geography its devices may be in. */
static void dev_on_reserved(int64_t t0, void *arg)
{
    static const char sql[] = "SELECT count(*) FROM devices WHERE tenant_id = $1 AND status = 'assigned'";
    struct devreq *d = arg;
    struct cp *cp = d->cp;
    const char *values[1] = {d->tenant_id};

    if (t0 < 0) {
        dev_retry_after(d, 1);
        dev_error(d, 503, "redis_unavailable", NULL, "the device quota cannot be checked; retry later");
        return;
    }
    d->quota_reserved = true;
    d->reserved_at = t0;
    d->devices_counted = 0;
    d->count_failed = false;
    d->pending = 1;
    for (int i = 0; i < d->t->nlookup; i++) {
        int g = dev_geo_index(cp, d->t->lookup_geos[i]);
        if (g < 0) {
            d->count_failed = true;
            continue;
        }
        d->pending++;
        if (!pgpool_query(cp->geo[g], sql, 1, values, dev_on_count, d)) {
            d->count_failed = true;
            d->pending--;
        }
    }
    dev_on_count(NULL, d);
}

/* COUNT (first placements of a tenant with maxDevices only): reserve, then
 * count (ratelimit.h: the count must start after the reservation). */
static void dev_count_devices(struct devreq *d)
{
    dev_set_state(d, DS_COUNT);
    if (!d->reservation[0])
        util_random_hex(d->reservation, 16);
    ratelimit_quota_reserve(d->cp->feed, d->tenant_id, d->reservation, dev_on_reserved, d);
}

static void dev_on_rate(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg)
{
    struct devreq *d = arg;
    if (st != RL_ADMITTED && st != RL_UNAVAILABLE)
        d->quota_reserved = false;   /* the script dropped the reservation */
    if (st == RL_QUOTA_STALE) {
        /* the count took too long to rule out a placement committed meanwhile */
        dev_retry_after(d, 1);
        dev_error(d, 503, "database_unavailable", NULL, "the device quota could not be checked in time; retry");
    } else if (st == RL_UNAVAILABLE) {
        dev_retry_after(d, 1);
        dev_error(d, 503, "redis_unavailable", NULL, "rate limits cannot be checked; retry later");
    } else if (dev_tenant_refused(d, st, wait_ms)) {
        return;
    } else if (st == RL_THROTTLED) {
        dev_retry_after(d, ratelimit_retry_after_s(wait_ms));
        dev_error(d, 429, "throttled", NULL, "every eligible DPS instance is at its registration rate; retry later");
    } else {
        d->chosen = d->pr.cand[admitted];
        d->placed_now = true;
        dev_assign(d);
    }
}

/* placement's enrollment rule: what this control plane's reconciler found. */
static const char *dev_group_refused(void *arg, const char *dps_id, const char *tenant_id)
{
    return enroll_sync_refused(arg, dps_id, tenant_id);
}

static void dev_place(struct devreq *d)
{
    struct cp *cp = d->r->cp;
    struct layout *l = layouts_current(cp->layouts);
    struct placement_input in = {0};

    if (!l) {
        dev_retry_after(d, 1);
        dev_error(d, 503, "database_unavailable", NULL, "the layout is not loaded yet; retry later");
        return;
    }
    if (!redisfeed_cmd(cp->feed)) {
        dev_retry_after(d, 1);
        dev_error(d, 503, "redis_unavailable", NULL, "rate limits cannot be checked; retry later");
        return;
    }
    if (d->l != l) {
        if (d->l) layout_unref(d->l);
        layout_ref(l);
        d->l = l;
    }
    placement_result_clear(&d->pr);
    in.tenant = d->t;
    in.layout = l;
    in.loads = cp->lt;
    in.now_mono_ms = util_mono_ms();
    in.registration_id = d->regid;
    in.exclude_dps = d->exclude_ptr;
    in.nexclude = d->nexclude;
    in.group_refused = dev_group_refused;
    in.group_refused_arg = cp->sync;
    if (d->moving) {
        in.avoid_stamp = d->row.stamp;
        in.only_geo = cp->cfg.geos[d->row.geo].id;
    }
    placement_run(&in, &d->pr);
    if (d->pr.outcome == PLACE_CAPACITY_EXHAUSTED && d->regid_conflicts > 0) {
        /* Not a full stamp: DPS instances hold each registration id once,
         * and another tenant's device has this one where there was room. */
        dev_retry_after(d, 60);
        dev_error(d, 503, "capacity_exhausted", "registrationId",
                  "no eligible DPS instance can take this registration id: where there is room, another "
                  "device already uses it (a DPS holds each registration id once); use another id");
        return;
    }
    if (d->pr.outcome == PLACE_CAPACITY_EXHAUSTED && d->pr.enrollment_only) {
        dev_retry_after(d, 60);
        log_write(LOG_WARN, d->r->id, "event=placement_failed tenant=%s outcome=no_enrollment_group", d->tenant_id);
        dev_error(d, 503, "capacity_exhausted", "enrollmentGroup",
                  "the tenant's enrollment group cannot be created in any eligible DPS instance (their group "
                  "quota is used by earlier tenants, or the instance refused it); see enrollment-sync");
        return;
    }
    if (d->pr.outcome != PLACE_OK) {
        const char *code = placement_outcome_code(d->pr.outcome);
        if (d->pr.outcome != PLACE_NO_ELIGIBLE)
            dev_retry_after(d, d->pr.outcome == PLACE_NO_HEALTHY ? 5 : 60);
        if (d->pr.outcome == PLACE_CAPACITY_EXHAUSTED)
            layouts_refresh_soon(cp->layouts);   /* other routers may have released some */
        log_write(LOG_INFO, d->r->id, "event=placement_failed tenant=%s outcome=%s", d->tenant_id, code);
        dev_error(d, 503, code, NULL,
                  d->pr.outcome == PLACE_NO_ELIGIBLE ? "no stamp satisfies the tenant's residency and tenancy"
                  : d->pr.outcome == PLACE_NO_HEALTHY ? "no eligible stamp is healthy right now"
                                                      : "every eligible stamp is full");
        return;
    }
    if (!d->moving && d->t->max_devices >= 0) {
        dev_count_devices(d);
        return;
    }
    dev_take_tokens(d);
}

/* ---- lookup ---- */

/* Reprovision: does the current assignment still hold? */
static const char *dev_invalid_reason(struct devreq *d)
{
    struct layout *l = layouts_current(d->r->cp->layouts);
    const struct layout_stamp *st = l ? layout_find_stamp(l, d->row.stamp) : NULL;
    const char *rule = NULL;
    if (!l)
        return NULL;   /* can't judge: keep it */
    if (!st || !layout_find_dps(l, d->row.dps))
        return "stamp or DPS instance removed from the layout";
    if (!placement_stamp_valid(d->t, st, d->r->cp->lt, util_mono_ms(), &rule)) {
        if (strcmp(rule, "health") == 0)
            return loadtable_health(d->r->cp->lt, st->id, util_mono_ms()) == STAMP_DOWN ? "stamp down" : "stamp stale";
        if (strcmp(rule, "status") == 0) return "stamp draining";
        if (strcmp(rule, "identity") == 0) return "stamp misreports its region or geography";
        if (strcmp(rule, "residency") == 0) return "residency changed";
        return "tenancy changed";
    }
    return NULL;
}

static void dev_on_installer_reserved(enum installer_reserve st, void *arg)
{
    struct devreq *d = arg;
    switch (st) {
    case INSTALLER_RESERVED:
        d->inst_reserved = true;
        dev_place(d);
        return;
    case INSTALLER_QUOTA_EXCEEDED:
        dev_error(d, 403, "installer_quota_exceeded", NULL,
                  "this installer token has made all the placements it may make (maxPlacements)");
        return;
    case INSTALLER_NOT_VALID:
        dev_unauthorized(d, "unauthorized");   /* revoked or expired since the tenant was read */
        return;
    case INSTALLER_UNAVAILABLE:
        dev_unavailable(d, NULL);
        return;
    }
}

static void dev_after_lookup(struct devreq *d)
{
    struct dev_row *w = &d->row;
    const char *why;

    if (d->geo_unknown[0]) {
        /* Fail closed: answering, placing or releasing it would act on a guess. */
        char ps[PSEUDONYM_LEN], q[80];
        log_write(LOG_ERROR, d->r->id, "event=device_geography_unknown tenant=%s device=%s answered=%s",
                  d->tenant_id, pseudonym_device(&d->r->cp->pseudo, d->tenant_id, d->regid, ps),
                  log_quote(d->geo_unknown, q, sizeof q));
        dev_error(d, 503, "geography_unknown", NULL,
                  "the device's geography cannot be told (its database does not identify as a configured "
                  "geography); nothing was changed");
        return;
    }
    if (!w->found && d->lookup_failed) {
        /* It may exist where we couldn't look: placing it again could duplicate it. */
        dev_unavailable(d, NULL);
        return;
    }
    if (w->found && (d->admin_route || d->auth == AUTH_OPERATOR))
        d->r->audit_geo = w->geo;   /* its audit entry stays in its geography (audit.h) */
    if (d->kind == DEV_ADMIN_GET) {
        json_t *detail;
        char ps[PSEUDONYM_LEN];
        if (!w->found || !(detail = json_loads(w->detail, 0, NULL))) {
            dev_error(d, 404, "not_found", NULL, "no such device");
            return;
        }
        json_object_set_new(detail, "geography", json_string(d->r->cp->cfg.geos[w->geo].id));
        json_object_set_new(detail, "pseudonym",
                            json_string(pseudonym_device(&d->r->cp->pseudo, d->tenant_id, d->regid, ps)));
        dev_set_state(d, DS_DONE);
        cpreq_reply_json(d->r, 200, detail);
        dev_free(d);
        return;
    }
    if (d->kind == DEV_DEPROVISION || d->kind == DEV_RETIRE) {
        if (!w->found)
            dev_error(d, 404, "not_found", NULL, "no such device");
        else
            dev_release(d);
        return;
    }
    if (w->found && strcmp(w->status, "retired") == 0) {
        dev_error(d, 410, "device_retired", NULL, "this device is retired");
        return;
    }
    if (w->found && strcmp(w->status, "assigned") == 0) {
        if (d->kind == DEV_PROVISION && w->hub[0] && w->device_id[0]) {
            /* Registered at its DPS already (the hub is recorded): answer
             * from the record, no DPS token, no DPS call. */
            snprintf(d->dps.assigned_hub, sizeof d->dps.assigned_hub, "%s", w->hub);
            snprintf(d->dps.device_id, sizeof d->dps.device_id, "%s", w->device_id);
            snprintf(d->dps.substatus, sizeof d->dps.substatus, "%s", "initialAssignment");
            dev_set_state(d, DS_RECORD);
            dev_reply_assignment(d, false, NULL);
            return;
        }
        if (d->kind == DEV_LOCATE || d->kind == DEV_PROVISION) {
            dev_reply_assignment(d, true, NULL);
            return;
        }
        if (!(why = dev_invalid_reason(d))) {
            dev_reply_assignment(d, false, NULL);
            return;
        }
        snprintf(d->reason, sizeof d->reason, "%s", why);
        d->moving = true;
        dev_place(d);
        return;
    }
    if (d->admin_route) {
        /* An operator's reprovision names a device that exists: a typo must not create one. */
        dev_error(d, 404, "not_found", NULL, "no assigned device with this registration id");
        return;
    }
    snprintf(d->reason, sizeof d->reason, "%s", w->found ? "provisioned again after deprovisioning"
                                                          : "first provisioning");
    d->moving = false;
    if (d->auth == AUTH_INSTALLER && !d->inst_reserved) {
        /* count the token's placement first: maxPlacements holds across control planes */
        installer_tokens_reserve(d->global, d->tenant_id, d->inst_id, dev_on_installer_reserved, d);
        return;
    }
    dev_place(d);
}

/* One geography's answer: row `row` of q (-1: not there), its columns after
 * `off` leading ones (the batch's ordinal). */
static void dev_on_lookup_row(struct devreq *d, const struct pgq_result *q, int row, int off)
{
    int geo = -1;
    /* the last column names the geography whose database answered */
    if (q->status != PGQ_OK) {
        d->lookup_failed = true;
    } else if (row >= 0 &&
               (geo = dev_geo_index(d->r->cp, PQgetvalue(q->res, row, PQnfields(q->res) - 1))) < 0) {
        /* Found, in a database whose geography we can't tell: never guess one. */
        snprintf(d->geo_unknown, sizeof d->geo_unknown, "%s", PQgetvalue(q->res, row, PQnfields(q->res) - 1));
        if (!d->geo_unknown[0])
            snprintf(d->geo_unknown, sizeof d->geo_unknown, "?");
    } else if (row >= 0) {
        if (!d->row.found || strcmp(PQgetvalue(q->res, row, off), "assigned") == 0) {
            free(d->row.detail);
            d->row.detail = NULL;
            dev_row_read(&d->row, q->res, row, off, geo);
            if (d->kind == DEV_ADMIN_GET) {
                d->row.detail = xstrdup(PQgetvalue(q->res, row, off + 8));
            } else {
                snprintf(d->row.hub, sizeof d->row.hub, "%s", PQgetvalue(q->res, row, off + 8));
                snprintf(d->row.device_id, sizeof d->row.device_id, "%s", PQgetvalue(q->res, row, off + 9));
            }
        }
    }
    if (--d->pending == 0)
        dev_after_lookup(d);
}

static void dev_on_lookup(const struct pgq_result *q, int row, void *arg)
{
    dev_on_lookup_row(arg, q, row, 1);
}

static void dev_on_detail(const struct pgq_result *q, void *arg)
{
    dev_on_lookup_row(arg, q, q->status == PGQ_OK && PQntuples(q->res) == 1 ? 0 : -1, 0);
}

static void dev_lookup(struct devreq *d)
{
    struct cp *cp = d->r->cp;
    const char *values[3] = {d->tenant_id, d->regid, NULL};

    dev_set_state(d, DS_LOOKUP);
    memset(&d->row, 0, sizeof d->row);
    d->lookup_failed = false;
    d->geo_unknown[0] = '\0';
    d->epoch = assign_cache_epoch(cp->cache);
    d->pending = 1;
    for (int i = 0; i < d->t->nlookup; i++) {
        int g = dev_geo_index(cp, d->t->lookup_geos[i]);
        if (g < 0) {
            d->lookup_failed = true;   /* a geography we can't reach from here */
            continue;
        }
        values[2] = cp->cfg.geos[g].id;
        d->pending++;
        if (d->kind == DEV_ADMIN_GET)
            pgpool_query(cp->geo[g], dev_detail_sql, 3, values, dev_on_detail, d);
        else
            pgbatch_submit(cp->geo_lookup[g], values, dev_on_lookup, d);
    }
    if (--d->pending == 0)
        dev_after_lookup(d);
}

/* ---- auth ---- */

/* An X.509 device: the subject's single CN is the registration id of the
 * path, and the chain it sent verifies against one of the tenant's
 * verified, enabled CAs (with the stamp's leaf rules: validity, clientAuth
 * when it has an extended key usage). Logs why not (debug level). */
static bool dev_x509_accepted(struct devreq *d, const struct tenant *t)
{
    char *cn = x509ca_cn(d->cert);
    char err[160], ps[PSEUDONYM_LEN];
    bool ok;
    if (!cn || strcmp(cn, d->regid) != 0) {
        snprintf(err, sizeof err, "%s", cn ? "the certificate's CN is not the registration id of the path"
                                           : "the certificate's subject has no single CN");
        ok = false;
    } else {
        ok = x509ca_verify_device(t->cas, t->ncas, d->cert, d->chain, err, sizeof err);
    }
    free(cn);
    if (!ok && log_enabled(LOG_DEBUG))   /* debug only: a flood of bad certificates must not flood the log */
        log_write(LOG_DEBUG, d->r->id, "event=device_certificate_refused tenant=%s device=%s reason=\"%s\"",
                  d->tenant_id, pseudonym_device(&d->r->cp->pseudo, d->tenant_id, d->regid, ps), err);
    return ok;
}

static void dev_on_tenant(struct tenant *t, enum tenant_status st, void *arg)
{
    struct devreq *d = arg;
    const char *hit;

    if (st == TENANT_UNAVAILABLE) {
        dev_unavailable(d, NULL);
        return;
    }
    if (st == TENANT_NOT_FOUND || st == TENANT_REFUSED) {
        /* REFUSED: an unknown id beyond the fetch budget, answered like a bad credential. */
        if (d->auth == AUTH_OPERATOR)
            dev_error(d, 404, "not_found", NULL, "no such tenant");
        else
            dev_unauthorized(d, d->auth == AUTH_SAS    ? "invalid_signature"
                                : d->auth == AUTH_X509 ? "invalid_certificate"
                                                       : "unauthorized");
        return;
    }
    if (d->auth == AUTH_SAS) {
        if (!tenant_verify_device_sas(t, d->regid, &d->sas)) {
            dev_unauthorized(d, "invalid_signature");
            return;
        }
    } else if (d->auth == AUTH_INSTALLER) {
        const struct tenant_installer *ti = tenant_find_installer(t, d->bearer_sha);
        char msg[200];
        if (!ti || ti->expires_wall_ms <= util_wall_ms()) {   /* unknown, revoked or expired */
            dev_unauthorized(d, "unauthorized");
            return;
        }
        if (ti->prefix && strncmp(d->regid, ti->prefix, strlen(ti->prefix)) != 0) {
            snprintf(msg, sizeof msg, "this installer token acts only for registration ids starting with '%s'",
                     ti->prefix);
            dev_error(d, 403, "installer_scope", "registrationId", msg);
            return;
        }
        snprintf(d->inst_id, sizeof d->inst_id, "%s", ti->id);
    } else if (d->auth == AUTH_X509 && !dev_x509_accepted(d, t)) {
        dev_unauthorized(d, "invalid_certificate");
        return;
    }
    if (t->suspended && (d->kind == DEV_LOCATE || d->kind == DEV_PROVISION || d->kind == DEV_REPROVISION)) {
        /* after the credential check: a stranger learns nothing of the tenant */
        dev_error(d, 403, "tenant_suspended", NULL, "the tenant is suspended; its devices are refused");
        return;
    }
    tenant_ref(t);
    d->t = t;
    if (d->kind == DEV_LOCATE)
        redisfeed_drain(d->r->cp->feed);
    if (d->kind == DEV_LOCATE && (hit = assign_cache_get(d->r->cp->cache, d->tenant_id, d->regid))) {
        if (log_enabled(LOG_DEBUG)) {
            char ps[PSEUDONYM_LEN];
            log_write(LOG_DEBUG, d->r->id, "event=cache_hit tenant=%s device=%s", d->tenant_id,
                      pseudonym_device(&d->r->cp->pseudo, d->tenant_id, d->regid, ps));
        }
        dev_set_state(d, DS_DONE);
        cpreq_reply_text(d->r, 200, hit, strlen(hit));
        dev_free(d);
        return;
    }
    dev_lookup(d);
}

/* Read the credential; false (after replying) if it is unusable as sent. */
static bool dev_read_credential(struct devreq *d, bool operator_only)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(d->r->ev), "Authorization");
    enum sas_error se;
    X509 *cert;

    if (h && strncmp(h, "SharedAccessSignature ", 22) == 0 && !operator_only) {
        d->auth = AUTH_SAS;
        if ((se = sas_parse(h, &d->sas)) != SAS_OK ||
            (se = sas_check_claims(&d->sas, d->tenant_id, d->regid, util_wall_ms() / 1000)) != SAS_OK) {
            dev_unauthorized(d, sas_error_code(se));
            return false;
        }
        return true;
    }
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        const char *tok = h + 7;
        if (d->r->who.kind == PRINCIPAL_KEY) {
            d->auth = AUTH_OPERATOR;   /* an API key the gate verified, for this tenant, with provision:on-behalf */
            return true;
        }
        if (cpreq_is_operator(d->r)) {
            d->auth = AUTH_OPERATOR;
            if (d->r->who.kind == PRINCIPAL_NONE) {
                /* the break-glass credential on a device route: its use is audited (audit.h) */
                d->r->who.kind = PRINCIPAL_OPERATOR;
                d->r->who.scopes = SCOPE_ALL;
                snprintf(d->r->who.name, sizeof d->r->who.name, "operator token");
            }
            return true;
        }
        if (!operator_only) {
            installer_tokens_hash(tok, d->bearer_sha);
            d->auth = AUTH_INSTALLER;
            return true;
        }
    }
    if (!h && !operator_only && (cert = http_server_peer_cert(d->r->ev)) != NULL) {
        /* No Authorization header, a client certificate: an X.509 device (verified in dev_on_tenant). */
        STACK_OF(X509) *chain = http_server_peer_chain(d->r->ev);
        d->auth = AUTH_X509;
        X509_up_ref(cert);
        d->cert = cert;
        d->chain = chain ? X509_chain_up_ref(chain) : NULL;
        return true;
    }
    cpreq_add_header(d->r, "WWW-Authenticate", "Bearer");
    dev_error(d, 401, "unauthorized", NULL,
              "a device SAS token, a bearer token or a client certificate is required");
    return false;
}

/* An optional body: nothing, or a JSON object with at most a "reason"
 * (reprovision) or a "payload" for the DPS (provision). */
bool api_devices_check_body(json_t *body, bool reason_allowed, bool payload_allowed, const char **reason,
                            struct jv_err *e)
{
    static const char *const with_reason[] = {"reason", NULL};
    static const char *const with_payload[] = {"payload", NULL};
    static const char *const none[] = {NULL};
    return jv_only_keys(body, "", reason_allowed ? with_reason : payload_allowed ? with_payload : none, e) &&
           jv_string(body, "", "reason", false, 1, 128, reason, e);
}

static bool dev_read_body(struct devreq *d, bool reason_allowed)
{
    struct jv_err e;
    const char *reason = NULL;
    json_t *body;
    if (d->r->body_len == 0)
        return true;
    if (!(body = cpreq_json_body(d->r, false))) {
        dev_free(d);
        return false;
    }
    if (!api_devices_check_body(body, reason_allowed, d->kind == DEV_PROVISION, &reason, &e)) {
        json_decref(body);
        cpreq_reply_jv(d->r, &e);
        dev_free(d);
        return false;
    }
    if (reason)
        snprintf(d->reason, sizeof d->reason, "%s", reason);
    if (json_object_get(body, "payload") && !json_is_null(json_object_get(body, "payload")))
        d->payload = json_incref(json_object_get(body, "payload"));
    json_decref(body);
    return true;
}

static struct devreq *dev_new(struct cp_req *r, enum dev_kind kind, const char *tenant, const char *regid)
{
    struct devreq *d;
    if (!jv_valid_id(tenant)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no such tenant");
        return NULL;
    }
    if (!api_devices_valid_regid(regid)) {
        cpreq_reply_error(r, 400, "invalid_value", "registrationId",
                          "a registration id is 1-128 of [a-z0-9-._:], ending in a letter, digit or '-'");
        return NULL;
    }
    if (!cpreq_check_query(r, NULL))
        return NULL;
    d = xcalloc(1, sizeof *d);
    d->r = r;
    d->cp = r->cp;
    d->global = r->cp->global;
    d->kind = kind;
    snprintf(d->tenant_id, sizeof d->tenant_id, "%s", tenant);
    snprintf(d->regid, sizeof d->regid, "%s", regid);
    return d;
}

void api_devices_registration(struct cp_req *r, const char *tenant, char **segs, int nsegs)
{
    struct devreq *d;
    enum dev_kind kind;

    /* segs: registrations/{regid}/{verb} */
    if (nsegs != 3) {
        cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
        return;
    }
    if (strcmp(segs[2], "locate") == 0) {
        kind = DEV_LOCATE;
    } else if (strcmp(segs[2], "reprovision") == 0) {
        kind = DEV_REPROVISION;
    } else if (strcmp(segs[2], "provision") == 0) {
        kind = DEV_PROVISION;
    } else {
        cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
        return;
    }
    if (r->method != EVHTTP_REQ_POST) {
        cpreq_add_header(r, "Allow", "POST");
        cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use POST");
        return;
    }
    if (!(d = dev_new(r, kind, tenant, segs[1])))
        return;
    if (!dev_read_credential(d, false) || !dev_read_body(d, kind == DEV_REPROVISION))
        return;
    if (kind == DEV_REPROVISION && !d->reason[0])
        snprintf(d->reason, sizeof d->reason, "%s", "reprovision requested");
    if (d->auth == AUTH_INSTALLER)   /* a revocation waiting on the subscription applies first */
        redisfeed_drain(r->cp->feed);
    tenants_get(r->cp->tenants, d->tenant_id, d->auth == AUTH_OPERATOR, dev_on_tenant, d);
}

void api_devices_admin(struct cp_req *r, const char *tenant, char **segs, int nsegs)
{
    struct devreq *d;
    enum dev_kind kind;

    /* segs: devices/{regid}[/{verb}] */
    if (nsegs == 2) {
        if (r->method != EVHTTP_REQ_GET) {
            cpreq_add_header(r, "Allow", "GET");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET on a device");
            return;
        }
        kind = DEV_ADMIN_GET;
    } else if (nsegs == 3 && (strcmp(segs[2], "deprovision") == 0 || strcmp(segs[2], "retire") == 0 ||
                              strcmp(segs[2], "reprovision") == 0)) {
        if (r->method != EVHTTP_REQ_POST) {
            cpreq_add_header(r, "Allow", "POST");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use POST");
            return;
        }
        kind = segs[2][0] == 'd' ? DEV_DEPROVISION : segs[2][2] == 't' ? DEV_RETIRE : DEV_REPROVISION;
    } else {
        cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
        return;
    }
    if (!(d = dev_new(r, kind, tenant, segs[1])))
        return;
    d->auth = AUTH_OPERATOR;   /* the /v1 gate checked the operator token */
    d->admin_route = true;
    if (kind != DEV_ADMIN_GET && !dev_read_body(d, true))
        return;
    if (kind == DEV_REPROVISION && !d->reason[0])
        snprintf(d->reason, sizeof d->reason, "reprovision requested by %s",
                 r->who.kind == PRINCIPAL_KEY ? "API key" : "operator");
    tenants_get(r->cp->tenants, d->tenant_id, d->auth == AUTH_OPERATOR, dev_on_tenant, d);
}

/* "device <tenant> <pseudonym> <key id>" (or, from a control plane older
 * than pseudonyms, "device <tenant> <registrationId>"), then " #<nonce>". */
void api_devices_on_invalidate(struct cp *cp, const char *payload)
{
    static int64_t mismatches;
    char kind[16], a[64], b[132], k[16] = "";
    if (sscanf(payload, "%15s %63s %131s %15s", kind, a, b, k) >= 3 && strcmp(kind, "device") == 0) {
        if (!pseudonym_valid(b)) {
            assign_cache_forget(cp->cache, a, b);
        } else if (strcmp(k, pseudonym_key_id(&cp->pseudo)) == 0) {
            assign_cache_forget_pseudo(cp->cache, a, b);
        } else {
            /* Another pseudonym key: we can't tell which device it is, so
             * nothing cached may be trusted (pseudonymKey must match). */
            char q[40];
            assign_cache_clear(cp->cache);
            if (mismatches++ % 1000 == 0)
                log_warn("event=pseudonym_key_mismatch theirs=%s ours=%s count=%lld action=cache_cleared "
                         "note=\"give every control plane the same pseudonymKey\"",
                         log_quote(k[0] == '#' ? "" : k, q, sizeof q), pseudonym_key_id(&cp->pseudo),
                         (long long)mismatches);
        }
    }
    else if (sscanf(payload, "%15s %63s", kind, a) == 2 && strcmp(kind, "tenant") == 0)
        tenants_forget(cp->tenants, a);
    else if (sscanf(payload, "%15s %63s", kind, a) == 2 && strcmp(kind, "apikey") == 0)
        apikeys_forget(cp->keys, a);
}
