/*
 * router_place.c - placing a device that has no assignment yet, or moving
 * one whose stamp no longer holds (reprovision): PLACE (placement.c, pure)
 * --> [COUNT: tenant with maxDevices] --> RATE (shared token buckets) -->
 * [CLAIM: tenant resident in several geographies, schema/geo/007] --> ASSIGN
 * (the geography database, atomic), and what each outcome of the assignment
 * means (another DPS, look again, refund the token, reply).
 */
#include "router_req.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "enroll_sync.h"
#include "log.h"
#include "util.h"

static void router_assign(struct router_req *d);
static void router_on_rate(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg);

/* ---- assign / move ---- */

static void router_exclude(struct router_req *d, const char *dps)
{
    if (d->nexclude < ROUTER_MAX_EXCLUDE) {
        snprintf(d->exclude[d->nexclude], sizeof d->exclude[0], "%s", dps);
        d->exclude_ptr[d->nexclude] = d->exclude[d->nexclude];
        d->nexclude++;
    }
}

static void router_reply_moved(struct router_req *d)
{
    router_reply_assignment(d, false, d->reason);
}

/* The answer of cp_assign_device (row `row` of q, its columns after `off`
 * leading ones: the outcome first) or of cp_move_device. */
static void router_on_assign_row(struct router_req *d, const struct pgq_result *q, int row, int off)
{
    const char *outcome;
    int geo = d->row.geo;

    if (q->status == PGQ_UNAVAILABLE) {
        if (pgq_in_doubt(q)) {
            /* committed or not: unknown, so a placement count and the token stay taken */
            d->token_held = false;
        } else {
            /* never sent (its deadline or the queue's passed, no connection), or the
             * server ended it without effect: nothing was placed with the token */
            d->inst_in_doubt = false;
            router_refund(d);
        }
        router_unavailable(d, q);
        return;
    }
    d->inst_in_doubt = false;   /* a definite answer (an error rolled the statement back) */
    if (q->status == PGQ_SQL_ERROR && ++d->attempts < ROUTER_MAX_ATTEMPTS &&
        ((strcmp(q->sqlstate, "23505") == 0 && q->constraint &&
          strcmp(q->constraint, "devices_dps_registration_uidx") == 0) ||
         strcmp(q->sqlstate, "40P01") == 0 || strcmp(q->sqlstate, "40001") == 0)) {
        /* Another tenant's device holds this registration id on that DPS
         * (the statement rolled back), or two moves crossed: place again. */
        if (q->sqlstate[0] == '2') {
            router_exclude(d, d->chosen->id);
            d->regid_conflicts++;
        }
        router_refund(d);   /* rolled back: the next placement takes its own */
        router_place(d);
        return;
    }
    if (q->status != PGQ_OK || row < 0) {
        router_refund(d);   /* an SQL error: rolled back */
        log_write(LOG_ERROR, d->id, "event=assign_failed sqlstate=%s error=\"%.200s\"",
                  q->sqlstate ? q->sqlstate : "", q->message ? q->message : "");
        router_error(d, 500, "internal", NULL, "the assignment could not be written");
        return;
    }
    outcome = PQgetvalue(q->res, row, off);
    if (strcmp(outcome, "assigned") == 0 || strcmp(outcome, "moved") == 0)
        d->token_held = false;   /* spent on a registration that happened */
    else if (strcmp(outcome, "busy") != 0) {   /* busy: the token is for the solo attempt that follows */
        router_refund(d);        /* existing, retired, unchanged, dps_full, regid_taken, claim_moved: nothing placed */
        d->placed_now = false;   /* a DPS registration that follows takes its own (router_proxy) */
    }
    if (d->quota_reserved && strcmp(outcome, "assigned") == 0) {
        /* a device was added under the reservation: it now counts, held a while longer */
        ratelimit_quota_settle(d->cp->redis, d->tenant_id, d->reservation, true);
        d->quota_reserved = false;
    }
    if (strcmp(outcome, "assigned") == 0 || strcmp(outcome, "existing") == 0 || strcmp(outcome, "moved") == 0) {
        device_store_row_read(&d->row, q->res, row, off + 1, geo);
        if (strcmp(outcome, "assigned") == 0)
            d->inst_committed = true;
        if (strcmp(outcome, "assigned") == 0 || strcmp(outcome, "moved") == 0)
            router_count(d, d->row.dps, +1);
        if (strcmp(outcome, "moved") == 0)
            router_count(d, d->old_dps, -1);
        if (strcmp(outcome, "moved") == 0) {
            router_publish_change(d, "device_move", router_reply_moved);
        } else {
            router_reply_assignment(d, true, d->kind == DEV_REPROVISION && d->moving ? d->reason : NULL);
        }
    } else if (strcmp(outcome, "retired") == 0) {
        router_error(d, 410, "device_retired", NULL, "this device is retired");
    } else if (strcmp(outcome, "unchanged") == 0 && ++d->attempts < ROUTER_MAX_ATTEMPTS) {
        router_lookup(d);   /* someone else changed it meanwhile: look again */
    } else if (strcmp(outcome, "dps_full") == 0 && ++d->attempts < ROUTER_MAX_ATTEMPTS) {
        router_exclude(d, d->chosen->id);
        router_place(d);
    } else if (strcmp(outcome, "busy") == 0 && ++d->attempts < ROUTER_MAX_ATTEMPTS) {
        /* its batch could not wait for a usage shard (schema/geo/006); alone, it may */
        d->assign_alone = true;
        router_assign(d);
    } else if (strcmp(outcome, "claim_moved") == 0 && ++d->attempts < ROUTER_MAX_ATTEMPTS) {
        /* another request fenced our claim here and moved it on: where is the device now? */
        d->claimed = false;
        d->claim_geo[0] = '\0';
        router_lookup(d);
    } else if (strcmp(outcome, "regid_taken") == 0 && ++d->attempts < ROUTER_MAX_ATTEMPTS) {
        /* the batch's check found what the unique index would refuse */
        router_exclude(d, d->chosen->id);
        d->regid_conflicts++;
        router_place(d);
    } else {
        router_retry_after(d, 60000);
        router_error(d, 503, "capacity_exhausted", NULL, "no DPS instance could take the device now");
    }
}

static void router_on_move(const struct pgq_result *q, void *arg)
{
    router_on_assign_row(arg, q, q->status == PGQ_OK && PQntuples(q->res) == 1 ? 0 : -1, 0);
}

static void router_on_assign(const struct pgq_result *q, int row, void *arg)
{
    router_on_assign_row(arg, q, row, 1);
}

static void router_on_assign_one(const struct pgq_result *q, void *arg)
{
    router_on_assign_row(arg, q, q->status == PGQ_OK && PQntuples(q->res) == 1 ? 0 : -1, 1);
}

/* ---- one geography per device (schema/geo/007) ----
 * A device of a tenant resident in several geographies gets its first
 * assignment only under a claim in the tenant's arbiter geography, which
 * names the one geography the device may be assigned in. */

/* The tenant's arbiter geography: the first of its residency geographies in
 * sort order (one it is resident in). Its index; -1 when the tenant has one
 * residency geography (no claim needed), -2 when it has no database here. */
static int router_arbiter(const struct router_req *d)
{
    const char *a = NULL;
    int g;
    if (d->t->ngeos < 2)
        return -1;
    for (int i = 0; i < d->t->ngeos; i++)
        if (!a || strcmp(d->t->geos[i], a) < 0)
            a = d->t->geos[i];
    g = device_store_geo_index(d->cp, a);
    return g < 0 ? -2 : g;
}

static void router_on_claim(const struct pgq_result *q, void *arg)
{
    struct router_req *d = arg;
    if (q->status == PGQ_UNAVAILABLE) {
        router_unavailable(d, q);
        return;
    }
    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        log_write(LOG_ERROR, d->id, "event=claim_failed sqlstate=%s error=\"%.200s\"",
                  q->sqlstate ? q->sqlstate : "", q->message ? q->message : "");
        router_error(d, 500, "internal", NULL, "the device's geography could not be claimed");
        return;
    }
    snprintf(d->claim_geo, sizeof d->claim_geo, "%s", PQgetvalue(q->res, 0, 1));
    snprintf(d->claim_token, sizeof d->claim_token, "%s", PQgetvalue(q->res, 0, 2));
    d->fenced_token[0] = '\0';
    d->claimed = strcmp(PQgetvalue(q->res, 0, 0), "claimed") == 0;
    if (d->claimed) {
        router_assign(d);
    } else if (++d->attempts < ROUTER_MAX_ATTEMPTS) {
        router_refund(d);   /* taken for a DPS of another geography: the next placement takes its own */
        router_place(d);    /* 'elsewhere': place it in the claimed geography */
    } else {
        router_unavailable(d, NULL);
    }
}

/* CLAIM: before the first assignment, in the arbiter geography. */
static void router_claim(struct router_req *d)
{
    int a = router_arbiter(d);
    if (!router_in_time(d))
        return;
    router_set_state(d, DS_CLAIM);
    if (a < 0) {
        router_unavailable(d, NULL);   /* the arbiter has no database here: no safe placement */
        return;
    }
    device_store_claim(d->cp, a, d->deadline_ms, d->tenant_id, d->regid, d->chosen->stamp->geo,
                       d->fenced_token[0] ? d->fenced_token : NULL, router_on_claim, d);
}

static void router_on_fence(const struct pgq_result *q, void *arg)
{
    struct router_req *d = arg;
    if (q->status == PGQ_UNAVAILABLE) {
        router_unavailable(d, q);
        return;
    }
    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        router_error(d, 500, "internal", NULL, "the device's claim could not be fenced");
        return;
    }
    if (strcmp(PQgetvalue(q->res, 0, 0), "active") == 0) {
        /* assigned there meanwhile: answer that */
        if (++d->attempts < ROUTER_MAX_ATTEMPTS)
            router_lookup(d);
        else
            router_unavailable(d, NULL);
        return;
    }
    snprintf(d->fenced_token, sizeof d->fenced_token, "%s", d->claim_token);
    d->claim_geo[0] = '\0';
    d->claimed = false;
    router_refund(d);   /* before router_place may let go of d->chosen's layout */
    router_place(d);
}

/* The claimed geography can't take the device now: fence the claim there
 * (no assignment under it commits there any more), then place it anywhere;
 * the claim moves on from the fenced token. */
static void router_fence(struct router_req *d)
{
    int g = device_store_geo_index(d->cp, d->claim_geo);
    if (!router_in_time(d))
        return;
    router_set_state(d, DS_CLAIM);
    placement_result_clear(&d->pr);
    if (g < 0) {
        router_unavailable(d, NULL);
        return;
    }
    device_store_fence(d->cp, g, d->deadline_ms, d->tenant_id, d->regid, d->claim_token, router_on_fence, d);
}

static char *router_decision_text(struct router_req *d)
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

static void router_assign(struct router_req *d)
{
    const struct layout_dps *c = d->chosen;
    char max[24], *decision;
    int geo = device_store_geo_index(d->cp, c->stamp->geo);

    if (!router_in_time(d))   /* before the statement is queued: the token goes back */
        return;
    if (!d->moving && router_arbiter(d) != -1 && !(d->claimed && strcmp(d->claim_geo, c->stamp->geo) == 0)) {
        router_claim(d);
        return;
    }
    decision = router_decision_text(d);
    router_set_state(d, DS_ASSIGN);
    snprintf(max, sizeof max, "%lld", (long long)c->max_registrations);
    if (geo < 0) {
        free(decision);
        router_error(d, 500, "internal", NULL, "the chosen stamp's geography has no database here");
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
        device_store_move(d->cp, geo, d->deadline_ms, v, router_on_move, d);
    } else {
        const char *v[10] = {d->tenant_id, d->regid, c->stamp->region, c->stamp->id, c->id,
                             c->id_scope, c->endpoint, max, decision, d->reason};
        d->row.geo = geo;
        if (d->claimed || d->assign_alone)
            device_store_assign_one(d->cp, geo, d->deadline_ms, v, d->claimed ? d->claim_token : NULL, router_on_assign_one, d);
        else
            device_store_assign(d->cp, geo, d->deadline_ms, v, router_on_assign, d);
    }
    free(decision);
}



bool router_rate_refused(struct router_req *d, enum ratelimit_status st, int64_t wait_ms, const char *throttled)
{
    if (st == RL_UNAVAILABLE) {
        router_retry_after(d, 1000);
        router_error(d, 503, "redis_unavailable", NULL, "rate limits cannot be checked; retry later");
        return true;
    }
    if (st == RL_THROTTLED) {
        router_retry_after(d, wait_ms);
        router_error(d, 429, "throttled", NULL, throttled);
        return true;
    }
    if (st == RL_TENANT_THROTTLED) {
        router_retry_after(d, wait_ms);
        router_error(d, 429, "tenant_throttled", NULL,
                  "the tenant is at its quotas.maxProvisionsPerMinute; retry later");
        return true;
    }
    if (st == RL_QUOTA_PENDING) {
        router_retry_after(d, wait_ms);
        router_error(d, 429, "quota_pending", NULL,
                  "the tenant's placements in flight would reach quotas.maxDevices; retry later");
        return true;
    }
    return false;
}

/* ---- rate ---- */

/* RATE: the DPS candidates' buckets, the tenant's bucket and (first
 * placements of a tenant with maxDevices) the quota reservation, in one step. */
static void router_take_tokens(struct router_req *d)
{
    bool quota = !d->moving && d->t->max_devices >= 0;
    struct ratelimit_tenant rt = {.id = d->tenant_id, .per_minute = d->t->max_per_minute,
                                  .max_devices = quota ? d->t->max_devices : -1, .devices = d->devices_counted,
                                  .reservation = quota ? d->reservation : NULL, .reserved_at = d->reserved_at};
    if (!router_in_time(d))   /* no token for a request whose time is up */
        return;
    router_set_state(d, DS_RATE);
    ratelimit_take(d->cp->redis, d->pr.cand, d->pr.ncand < RATELIMIT_MAX ? d->pr.ncand : RATELIMIT_MAX, &rt,
                   router_on_rate, d);
}

/* One COUNT answered, or (q NULL) every COUNT is sent. */
static void router_on_count(const struct pgq_result *q, void *arg)
{
    struct router_req *d = arg;
    if (q && (q->status != PGQ_OK || PQntuples(q->res) != 1))
        d->count_failed = true;
    else if (q)
        d->devices_counted += strtoll(PQgetvalue(q->res, 0, 0), NULL, 10);
    if (--d->pending > 0)
        return;
    if (d->count_failed) {
        /* a geography we can't count may hold devices: don't guess under the quota
         * (a count dropped for the deadline: that is the answer) */
        if (router_in_time(d))
            router_unavailable(d, NULL);
    } else if (d->devices_counted >= d->t->max_devices) {
        log_write(LOG_INFO, d->id, "event=quota_exceeded tenant=%s devices=%lld max=%lld", d->tenant_id,
                  (long long)d->devices_counted, (long long)d->t->max_devices);
        router_error(d, 403, "quota_exceeded", NULL, "the tenant has quotas.maxDevices assigned devices");
    } else {
        router_take_tokens(d);
    }
}

/* The reservation is in (t0: Redis's time then): count the tenant's
 * assigned devices in every geography its devices may be in. */
static void router_on_reserved(int64_t t0, void *arg)
{
    struct router_req *d = arg;
    struct cp *cp = d->cp;

    if (t0 >= 0)
        d->quota_reserved = true;   /* router_free settles it if nothing is placed */
    if (!router_in_time(d))
        return;
    if (t0 < 0) {
        router_retry_after(d, 1000);
        router_error(d, 503, "redis_unavailable", NULL, "the device quota cannot be checked; retry later");
        return;
    }
    d->reserved_at = t0;
    d->devices_counted = 0;
    d->count_failed = false;
    d->pending = 1;
    for (int i = 0; i < d->t->nlookup; i++) {
        int g = device_store_geo_index(cp, d->t->lookup_geos[i]);
        if (g < 0) {
            d->count_failed = true;
            continue;
        }
        d->pending++;
        device_store_count(cp, g, d->deadline_ms, d->tenant_id, router_on_count, d);
    }
    router_on_count(NULL, d);
}

/* COUNT (first placements of a tenant with maxDevices only): reserve, then
 * count (ratelimit.h: the count must start after the reservation). */
static void router_count_devices(struct router_req *d)
{
    if (!router_in_time(d))
        return;
    router_set_state(d, DS_COUNT);
    if (!d->reservation[0])
        util_random_hex(d->reservation, 16);
    ratelimit_quota_reserve(d->cp->redis, d->tenant_id, d->reservation, router_on_reserved, d);
}

static void router_on_rate(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg)
{
    struct router_req *d = arg;
    if (st != RL_ADMITTED && st != RL_UNAVAILABLE)
        d->quota_reserved = false;   /* the script dropped the reservation */
    if (st == RL_QUOTA_STALE) {
        /* the count took too long to rule out a placement committed meanwhile */
        router_retry_after(d, 1000);
        router_error(d, 503, "database_unavailable", NULL, "the device quota could not be checked in time; retry");
    } else if (router_rate_refused(d, st, wait_ms,
                                   "every eligible DPS instance is at its registration rate; retry later")) {
        return;
    } else {
        d->chosen = d->pr.cand[admitted];
        d->placed_now = true;
        d->token_held = true;
        router_assign(d);
    }
}

/* placement's enrollment rule: what this control plane's reconciler found. */
static const char *router_group_refused(void *arg, const char *dps_id, const char *tenant_id)
{
    return enroll_sync_refused(arg, dps_id, tenant_id);
}

void router_place(struct router_req *d)
{
    struct cp *cp = d->cp;
    struct layout *l = layouts_current(cp->layouts);
    struct placement_input in = {0};

    if (!router_in_time(d))
        return;
    if (!l) {
        router_retry_after(d, 1000);
        router_error(d, 503, "database_unavailable", NULL, "the layout is not loaded yet; retry later");
        return;
    }
    if (!redisbus_cmd(cp->redis)) {
        router_retry_after(d, 1000);
        router_error(d, 503, "redis_unavailable", NULL, "rate limits cannot be checked; retry later");
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
    in.group_refused = router_group_refused;
    in.group_refused_arg = cp->sync;
    in.local = cp->layouts;
    if (d->moving) {
        in.avoid_stamp = d->row.stamp;
        in.only_geo = cp->cfg.geos[d->row.geo].id;
    } else if (d->claim_geo[0]) {
        in.only_geo = d->claim_geo;   /* the device's claimed geography (schema/geo/007) */
    }
    placement_run(&in, &d->pr);
    if (d->pr.outcome != PLACE_OK && !d->moving && d->claim_geo[0]) {
        router_fence(d);
        return;
    }
    if (d->pr.outcome == PLACE_CAPACITY_EXHAUSTED && d->regid_conflicts > 0) {
        /* Not a full stamp: DPS instances hold each registration id once,
         * and another tenant's device has this one where there was room. */
        router_retry_after(d, 60000);
        router_error(d, 503, "capacity_exhausted", "registrationId",
                  "no eligible DPS instance can take this registration id: where there is room, another "
                  "device already uses it (a DPS holds each registration id once); use another id");
        return;
    }
    if (d->pr.outcome == PLACE_CAPACITY_EXHAUSTED && d->pr.enrollment_only) {
        router_retry_after(d, 60000);
        log_write(LOG_WARN, d->id, "event=placement_failed tenant=%s outcome=no_enrollment_group", d->tenant_id);
        router_error(d, 503, "capacity_exhausted", "enrollmentGroup",
                  "the tenant's enrollment group cannot be created in any eligible DPS instance (their group "
                  "quota is used by earlier tenants, or the instance refused it); see enrollment-sync");
        return;
    }
    if (d->pr.outcome != PLACE_OK) {
        const char *code = placement_outcome_code(d->pr.outcome);
        if (d->pr.outcome != PLACE_NO_ELIGIBLE)
            router_retry_after(d, d->pr.outcome == PLACE_NO_HEALTHY ? 5000 : 60000);
        if (d->pr.outcome == PLACE_CAPACITY_EXHAUSTED)
            layouts_refresh_soon(cp->layouts);   /* other routers may have released some */
        log_write(LOG_INFO, d->id, "event=placement_failed tenant=%s outcome=%s", d->tenant_id, code);
        router_error(d, 503, code, NULL,
                  d->pr.outcome == PLACE_NO_ELIGIBLE ? "no stamp satisfies the tenant's residency and tenancy"
                  : d->pr.outcome == PLACE_NO_HEALTHY ? "no eligible stamp is healthy right now"
                                                      : "every eligible stamp is full");
        return;
    }
    if (!d->moving && d->t->max_devices >= 0) {
        router_count_devices(d);
        return;
    }
    router_take_tokens(d);
}


