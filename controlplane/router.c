/*
 * router.c - the router's device requests, one state machine per request:
 *
 *   AUTH --tenant loaded, credential verified--> CACHE (locate only)
 *   --miss--> LOOKUP (every geography the tenant's devices may live in, in
 *   parallel) --found--> reply | --new--> [an installer token's placement
 *   counted, installer_tokens.h] --> PLACE --> [COUNT (tenant with
 *   maxDevices: reserve, count its devices)] --> RATE (shared token
 *   buckets) --> [CLAIM (a tenant resident in several geographies: the
 *   device's one geography, in the tenant's arbiter geography)] --> ASSIGN
 *   (geography database, atomic) --> reply
 *
 * A device that got 200 is in its geography's database: the answer is sent
 * only after the assignment statement committed. A device is assigned in one
 * geography at most (schema/geo/007, docs/architecture.md "One geography per
 * device").
 *
 * Tenant rules (docs/api.md "Quotas", "Suspend and resume"): a suspended
 * tenant's devices are refused once their credential is verified; a first
 * placement of a tenant with maxDevices counts its assigned devices first
 * (COUNT, every lookup geography in parallel) and the RATE step reserves the
 * placement against the quota; maxProvisionsPerMinute is a bucket taken in
 * the RATE step with the DPS's. A device already placed costs none of this.
 *
 * Deadline (router_req.h): every request has http.requestDeadlineMs from
 * when it was read. Each stage starts with router_in_time; the statements it
 * queues carry the deadline (dropped unsent when it passes); when it passes
 * while the request waits, the client gets 503 deadline_exceeded at once and
 * the request winds down when its callback arrives (tokens given back for
 * what was not placed, docs/architecture.md "Deadline and tokens").
 *
 * This file owns the request (AUTH, CACHE, LOOKUP, release, replies); the
 * other rooms: placing a new or moved device (router_place.c: PLACE, COUNT,
 * RATE, CLAIM, ASSIGN), the credential (router_auth.c), the SQL
 * (device_store.c), registration at the DPS (router_proxy.c), telling the
 * other instances of a change (invalidate.c).
 */
#include "router.h"

#include <stdlib.h>
#include <string.h>

#include "installer_tokens.h"
#include "invalidate.h"
#include "log.h"
#include "pseudonym.h"
#include "router_req.h"
#include "util.h"

static const char *const router_state_names[] = {"auth",   "lookup", "count",  "rate", "claim",
                                                 "assign", "dps",    "record", "done"};

bool router_valid_regid(const char *s)
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

void router_set_state(struct router_req *d, enum dev_state s)
{
    if (log_enabled(LOG_DEBUG))
        log_write(LOG_DEBUG, d->id, "event=device_state from=%s to=%s tenant=%s", router_state_names[d->state],
                  router_state_names[s], d->tenant_id);
    d->state = s;
}

/* Give back the DPS (and tenant) token taken for a placement that did not
 * happen: the statement rolled back or placed nothing, the request ended
 * before it was sent. Call before d->chosen's layout may go (router_place). */
void router_refund(struct router_req *d)
{
    if (!d->token_held)
        return;
    d->token_held = false;
    ratelimit_refund(d->cp->redis, d->chosen, d->tenant_id, d->t ? d->t->max_per_minute : 0);
}

static void router_free(struct router_req *d)
{
    if (!d->r)
        d->cp->lingering--;   /* answered by its deadline, and now done */
    if (d->deadline_ev)
        event_free(d->deadline_ev);
    router_refund(d);   /* still held: nothing was placed with it */
    if (d->quota_reserved)   /* nothing was committed under it */
        ratelimit_quota_settle(d->cp->redis, d->tenant_id, d->reservation, false);
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

/* The deadline passed: answer the client now; d lives on until the callback
 * it waits for arrives (router_req.h). */
static void router_answer_deadline(struct router_req *d)
{
    if (log_enabled(LOG_DEBUG))
        log_write(LOG_DEBUG, d->id, "event=deadline_exceeded state=%s tenant=%s", router_state_names[d->state],
                  d->tenant_id);
    if (d->deadline_ev)
        event_del(d->deadline_ev);
    cpreq_retry_after(d->r, 1000);
    cpreq_reply_error(d->r, 503, "deadline_exceeded", NULL,
                      "the request could not be answered within its deadline; retry later");
    d->r = NULL;
    d->cp->lingering++;
}

static void router_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    router_answer_deadline(arg);
}

bool router_in_time(struct router_req *d)
{
    if (d->r && util_mono_ms() < d->deadline_ms)
        return true;
    if (d->r)
        router_answer_deadline(d);
    router_set_state(d, DS_DONE);
    router_free(d);
    return false;
}

/* The client was answered by the deadline: a reply only ends d. */
static bool router_answered(struct router_req *d)
{
    if (d->r)
        return false;
    router_set_state(d, DS_DONE);
    router_free(d);
    return true;
}

/* Every reply goes through these: they end the request. */
void router_error(struct router_req *d, int status, const char *code, const char *target, const char *msg)
{
    if (router_answered(d))
        return;
    router_set_state(d, DS_DONE);
    cpreq_reply_error(d->r, status, code, target, "%s", msg);
    router_free(d);
}

/* q (may be NULL) dropped unsent because our deadline passed: that is the answer. */
void router_unavailable(struct router_req *d, const struct pgq_result *q)
{
    if (q && q->expired && d->r)
        router_answer_deadline(d);
    if (router_answered(d))
        return;
    router_set_state(d, DS_DONE);
    cpreq_reply_db_unavailable(d->r, q);
    router_free(d);
}

void router_unauthorized(struct router_req *d, const char *code)
{
    if (d->r)
        cpreq_add_header(d->r, "WWW-Authenticate", "SharedAccessSignature");
    router_error(d, 401, code, NULL, "the credential was not accepted");
}

void router_retry_after(struct router_req *d, int64_t wait_ms)
{
    if (d->r)
        cpreq_retry_after(d->r, wait_ms);
}

/* A device's DPS address is the catalog's as it is now, not the copies its
 * row took at assignment: an instance's moved endpoint (or new idScope)
 * reaches every device on its next answer. The copies serve only while the
 * layout does not hold the instance (not loaded yet, or removed). */
void router_row_address(struct router_req *d)
{
    struct device_row *w = &d->row;
    struct layout *l = layouts_current(d->cp->layouts);
    const struct layout_dps *dp = l && w->dps[0] ? layout_find_dps(l, w->dps) : NULL;
    if (!dp)
        return;
    snprintf(w->scope, sizeof w->scope, "%s", dp->id_scope);
    snprintf(w->endpoint, sizeof w->endpoint, "%s", dp->endpoint);
}

static json_t *router_answer(struct router_req *d)
{
    const struct device_row *w = &d->row;
    router_row_address(d);
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "registrationId", d->regid, "tenantId",
                     d->tenant_id, "geography", d->cp->cfg.geos[w->geo].id, "region", w->region, "stamp",
                     w->stamp, "idScope", w->scope, "dpsEndpoint", w->endpoint, "assignedAt", w->assigned_at,
                     "etag", w->etag);
}

void router_reply_assignment(struct router_req *d, bool cache, const char *moved_reason)
{
    json_t *a;
    char *text;
    if (d->kind == DEV_PROVISION && d->state != DS_RECORD) {
        router_proxy(d);   /* the assignment stands; now register at its DPS */
        return;
    }
    a = router_answer(d);
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
    if (cache && d->kind == DEV_LOCATE && invalidate_cache_trusted(d->cp->inval))
        assign_cache_put(d->cp->cache, d->epoch, d->tenant_id, d->regid, text);
    if (!router_answered(d)) {
        router_set_state(d, DS_DONE);
        cpreq_reply_text(d->r, 200, text, strlen(text));
        router_free(d);
    }
    free(text);
}

static void router_on_published(bool delivered, void *arg)
{
    struct router_req *d = arg;
    (void)delivered;   /* not confirmed: the cache TTL and resubscribe flush are the backstop */
    assign_cache_forget(d->cp->cache, d->tenant_id, d->regid);
    d->then(d);
}

/* Our own changes count in this router's placements at once, not at the
 * next refresh: a released registration can be reused right away. */
void router_count(struct router_req *d, const char *dps_id, int delta)
{
    if (dps_id[0])
        layouts_count(d->cp->layouts, dps_id, delta);
}

/* Announce a change to every router, then continue with then(d) once the
 * announcement is known to be waiting at all of them (invalidate.h). */
void router_publish_change(struct router_req *d, const char *fault_point,
                                  void (*then)(struct router_req *))
{
    invalidate_fault(d->cp->inval, fault_point);   /* test-only: a crash between commit and publish */
    d->then = then;
    invalidate_device(d->cp->inval, d->tenant_id, d->regid, router_on_published, d);
}

/* ---- release (deprovision / retire) ---- */

static void router_reply_released(struct router_req *d)
{
    if (router_answered(d))
        return;
    router_set_state(d, DS_DONE);
    cpreq_reply_json(d->r, 200, json_pack("{s:s, s:s, s:s}", "registrationId", d->regid, "tenantId",
                                          d->tenant_id, "status", d->row.status));
    router_free(d);
}

static void router_on_release(const struct pgq_result *q, void *arg)
{
    struct router_req *d = arg;
    if (q->status == PGQ_UNAVAILABLE) {
        router_unavailable(d, q);
        return;
    }
    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        router_error(d, 500, "internal", NULL, "the device could not be released");
        return;
    }
    if (strcmp(d->row.status, "assigned") == 0)
        router_count(d, d->row.dps, -1);
    snprintf(d->row.status, sizeof d->row.status, "%s", PQgetvalue(q->res, 0, 0));
    router_publish_change(d, "device_release", router_reply_released);
}

static void router_release(struct router_req *d)
{
    const char *reason = d->reason[0] ? d->reason
                         : d->r->who.kind == PRINCIPAL_KEY
                             ? (d->kind == DEV_RETIRE ? "retired by API key" : "deprovisioned by API key")
                             : (d->kind == DEV_RETIRE ? "retired by operator" : "deprovisioned by operator");
    if (!router_in_time(d))
        return;
    if (!invalidate_can_announce(d->cp->inval)) {
        /* Other routers' caches must hear of the change: refuse rather than leave them stale. */
        router_retry_after(d, 1000);
        router_error(d, 503, "redis_unavailable", NULL, "cannot announce the change; retry later");
        return;
    }
    json_decref(d->r->audit_before);   /* the device as it was, for the audit entry */
    d->r->audit_before = json_pack("{s:s, s:s, s:s, s:s, s:s}", "registrationId", d->regid, "status", d->row.status,
                                   "region", d->row.region, "stamp", d->row.stamp, "dpsInstance", d->row.dps);
    device_store_release(d->cp, d->row.geo, d->deadline_ms, d->tenant_id, d->regid, d->kind == DEV_RETIRE, reason,
                         router_on_release, d);
}


/* ---- lookup ---- */

/* Reprovision: does the current assignment still hold? */
static const char *router_invalid_reason(struct router_req *d)
{
    struct layout *l = layouts_current(d->cp->layouts);
    const struct layout_stamp *st = l ? layout_find_stamp(l, d->row.stamp) : NULL;
    const char *rule = NULL;
    if (!l)
        return NULL;   /* can't judge: keep it */
    if (!st || !layout_find_dps(l, d->row.dps))
        return "stamp or DPS instance removed from the layout";
    if (!placement_stamp_valid(d->t, st, d->cp->lt, util_mono_ms(), &rule)) {
        if (strcmp(rule, "health") == 0)
            return loadtable_health(d->cp->lt, st->id, util_mono_ms()) == STAMP_DOWN ? "stamp down" : "stamp stale";
        if (strcmp(rule, "status") == 0) return "stamp draining";
        if (strcmp(rule, "identity") == 0) return "stamp misreports its region or geography";
        if (strcmp(rule, "residency") == 0) return "residency changed";
        return "tenancy changed";
    }
    return NULL;
}

static void router_on_installer_reserved(enum installer_reserve st, void *arg)
{
    struct router_req *d = arg;
    switch (st) {
    case INSTALLER_RESERVED:
        d->inst_reserved = true;
        router_place(d);
        return;
    case INSTALLER_QUOTA_EXCEEDED:
        router_error(d, 403, "installer_quota_exceeded", NULL,
                  "this installer token has made all the placements it may make (maxPlacements)");
        return;
    case INSTALLER_NOT_VALID:
        router_unauthorized(d, "unauthorized");   /* revoked or expired since the tenant was read */
        return;
    case INSTALLER_UNAVAILABLE:
        router_unavailable(d, NULL);
        return;
    }
}

static void router_after_lookup(struct router_req *d)
{
    struct device_row *w = &d->row;
    const char *why;

    if (router_answered(d))   /* the deadline answered meanwhile */
        return;
    if (d->geo_unknown[0]) {
        /* Fail closed: answering, placing or releasing it would act on a guess. */
        char ps[PSEUDONYM_LEN], q[80];
        log_write(LOG_ERROR, d->id, "event=device_geography_unknown tenant=%s device=%s answered=%s",
                  d->tenant_id, pseudonym_device(&d->cp->pseudo, d->tenant_id, d->regid, ps),
                  log_quote(d->geo_unknown, q, sizeof q));
        router_error(d, 503, "geography_unknown", NULL,
                  "the device's geography cannot be told (its database does not identify as a configured "
                  "geography); nothing was changed");
        return;
    }
    if (!w->found && d->lookup_failed) {
        /* It may exist where we couldn't look: placing it again could duplicate it.
         * (A lookup dropped for the deadline: that is the answer.) */
        if (router_in_time(d))
            router_unavailable(d, NULL);
        return;
    }
    if (w->found && (d->admin_route || d->auth == AUTH_OPERATOR))
        d->r->audit_geo = w->geo;   /* its audit entry stays in its geography (audit.h) */
    if (d->kind == DEV_ADMIN_GET) {
        json_t *detail;
        char ps[PSEUDONYM_LEN];
        if (!w->found || !(detail = json_loads(w->detail, 0, NULL))) {
            router_error(d, 404, "not_found", NULL, "no such device");
            return;
        }
        json_object_set_new(detail, "geography", json_string(d->cp->cfg.geos[w->geo].id));
        if (strcmp(w->status, "assigned") == 0)
            router_row_address(d);
        if (json_is_string(json_object_get(detail, "idScope")))
            json_object_set_new(detail, "idScope", json_string(w->scope));
        if (json_is_string(json_object_get(detail, "dpsEndpoint")))
            json_object_set_new(detail, "dpsEndpoint", json_string(w->endpoint));
        json_object_set_new(detail, "pseudonym",
                            json_string(pseudonym_device(&d->cp->pseudo, d->tenant_id, d->regid, ps)));
        router_set_state(d, DS_DONE);
        cpreq_reply_json(d->r, 200, detail);
        router_free(d);
        return;
    }
    if (d->kind == DEV_DEPROVISION || d->kind == DEV_RETIRE) {
        if (!w->found)
            router_error(d, 404, "not_found", NULL, "no such device");
        else
            router_release(d);
        return;
    }
    if (w->found && strcmp(w->status, "retired") == 0) {
        router_error(d, 410, "device_retired", NULL, "this device is retired");
        return;
    }
    if (w->found && strcmp(w->status, "assigned") == 0) {
        if (d->kind == DEV_PROVISION && w->hub[0] && w->device_id[0]) {
            /* Registered at its DPS already (the hub is recorded): answer
             * from the record, no DPS token, no DPS call. */
            snprintf(d->dps.assigned_hub, sizeof d->dps.assigned_hub, "%s", w->hub);
            snprintf(d->dps.device_id, sizeof d->dps.device_id, "%s", w->device_id);
            snprintf(d->dps.substatus, sizeof d->dps.substatus, "%s", "initialAssignment");
            router_set_state(d, DS_RECORD);
            router_reply_assignment(d, false, NULL);
            return;
        }
        if (d->kind == DEV_LOCATE || d->kind == DEV_PROVISION) {
            router_reply_assignment(d, true, NULL);
            return;
        }
        if (!(why = router_invalid_reason(d))) {
            router_reply_assignment(d, false, NULL);
            return;
        }
        snprintf(d->reason, sizeof d->reason, "%s", why);
        d->moving = true;
        router_place(d);
        return;
    }
    if (d->admin_route) {
        /* An operator's reprovision names a device that exists: a typo must not create one. */
        router_error(d, 404, "not_found", NULL, "no assigned device with this registration id");
        return;
    }
    snprintf(d->reason, sizeof d->reason, "%s", w->found ? "provisioned again after deprovisioning"
                                                          : "first provisioning");
    d->moving = false;
    if (d->auth == AUTH_INSTALLER && !d->inst_reserved) {
        /* count the token's placement first: maxPlacements holds across control planes */
        if (!router_in_time(d))
            return;
        installer_tokens_reserve(d->global, d->tenant_id, d->inst_id, router_on_installer_reserved, d);
        return;
    }
    router_place(d);
}

/* One geography's answer: row `row` of q (-1: not there), its columns after
 * `off` leading ones (the batch's ordinal). */
static void router_on_lookup_row(struct router_req *d, const struct pgq_result *q, int row, int off)
{
    int geo = -1;
    /* the last column names the geography whose database answered */
    if (q->status != PGQ_OK) {
        d->lookup_failed = true;
    } else if (row >= 0 &&
               (geo = device_store_geo_index(d->cp, PQgetvalue(q->res, row, PQnfields(q->res) - 1))) < 0) {
        /* Found, in a database whose geography we can't tell: never guess one. */
        snprintf(d->geo_unknown, sizeof d->geo_unknown, "%s", PQgetvalue(q->res, row, PQnfields(q->res) - 1));
        if (!d->geo_unknown[0])
            snprintf(d->geo_unknown, sizeof d->geo_unknown, "?");
    } else if (row >= 0) {
        if (!d->row.found || strcmp(PQgetvalue(q->res, row, off), "assigned") == 0) {
            free(d->row.detail);
            d->row.detail = NULL;
            device_store_row_read(&d->row, q->res, row, off, geo);
            if (d->kind == DEV_ADMIN_GET) {
                d->row.detail = xstrdup(PQgetvalue(q->res, row, off + 8));
            } else {
                snprintf(d->row.hub, sizeof d->row.hub, "%s", PQgetvalue(q->res, row, off + 8));
                snprintf(d->row.device_id, sizeof d->row.device_id, "%s", PQgetvalue(q->res, row, off + 9));
            }
        }
    }
    if (--d->pending == 0)
        router_after_lookup(d);
}

static void router_on_lookup(const struct pgq_result *q, int row, void *arg)
{
    router_on_lookup_row(arg, q, row, 1);
}

static void router_on_detail(const struct pgq_result *q, void *arg)
{
    router_on_lookup_row(arg, q, q->status == PGQ_OK && PQntuples(q->res) == 1 ? 0 : -1, 0);
}

void router_lookup(struct router_req *d)
{
    struct cp *cp = d->cp;

    if (!router_in_time(d))
        return;
    router_set_state(d, DS_LOOKUP);
    memset(&d->row, 0, sizeof d->row);
    d->lookup_failed = false;
    d->geo_unknown[0] = '\0';
    d->epoch = assign_cache_epoch(cp->cache);
    d->pending = 1;
    for (int i = 0; i < d->t->nlookup; i++) {
        int g = device_store_geo_index(cp, d->t->lookup_geos[i]);
        if (g < 0) {
            d->lookup_failed = true;   /* a geography we can't reach from here */
            continue;
        }
        d->pending++;
        if (d->kind == DEV_ADMIN_GET)
            device_store_detail(cp, g, d->deadline_ms, d->tenant_id, d->regid, router_on_detail, d);
        else
            device_store_lookup(cp, g, d->deadline_ms, d->tenant_id, d->regid, router_on_lookup, d);
    }
    if (--d->pending == 0)
        router_after_lookup(d);
}


static void router_on_tenant(struct tenant *t, enum tenant_status st, void *arg)
{
    struct router_req *d = arg;
    const char *hit;

    if (!router_in_time(d))
        return;
    if (st == TENANT_UNAVAILABLE) {
        router_unavailable(d, NULL);
        return;
    }
    if (st == TENANT_NOT_FOUND || st == TENANT_REFUSED) {
        /* REFUSED: an unknown id beyond the fetch budget, answered like a bad credential. */
        if (d->auth == AUTH_OPERATOR)
            router_error(d, 404, "not_found", NULL, "no such tenant");
        else
            router_unauthorized(d, d->auth == AUTH_SAS    ? "invalid_signature"
                                : d->auth == AUTH_X509 ? "invalid_certificate"
                                                       : "unauthorized");
        return;
    }
    if (!router_auth_verify(d, t))
        return;
    if (t->suspended && (d->kind == DEV_LOCATE || d->kind == DEV_PROVISION || d->kind == DEV_REPROVISION)) {
        /* after the credential check: a stranger learns nothing of the tenant */
        router_error(d, 403, "tenant_suspended", NULL, "the tenant is suspended; its devices are refused");
        return;
    }
    tenant_ref(t);
    d->t = t;
    if (d->kind == DEV_LOCATE)
        invalidate_drain(d->cp->inval);
    if (d->kind == DEV_LOCATE && invalidate_cache_trusted(d->cp->inval) &&
        (hit = assign_cache_get(d->cp->cache, d->tenant_id, d->regid))) {
        if (log_enabled(LOG_DEBUG)) {
            char ps[PSEUDONYM_LEN];
            log_write(LOG_DEBUG, d->id, "event=cache_hit tenant=%s device=%s", d->tenant_id,
                      pseudonym_device(&d->cp->pseudo, d->tenant_id, d->regid, ps));
        }
        router_set_state(d, DS_DONE);
        cpreq_reply_text(d->r, 200, hit, strlen(hit));
        router_free(d);
        return;
    }
    router_lookup(d);
}



/* An optional body: nothing, or a JSON object with at most a "reason"
 * (reprovision) or a "payload" for the DPS (provision). */
bool router_check_body(json_t *body, bool reason_allowed, bool payload_allowed, const char **reason,
                            struct jv_err *e)
{
    static const char *const with_reason[] = {"reason", NULL};
    static const char *const with_payload[] = {"payload", NULL};
    static const char *const none[] = {NULL};
    return jv_only_keys(body, "", reason_allowed ? with_reason : payload_allowed ? with_payload : none, e) &&
           jv_string(body, "", "reason", false, 1, 128, reason, e);
}

static bool router_read_body(struct router_req *d, bool reason_allowed)
{
    struct jv_err e;
    const char *reason = NULL;
    json_t *body;
    if (d->r->body_len == 0)
        return true;
    if (!(body = cpreq_json_body(d->r, false))) {
        router_free(d);
        return false;
    }
    if (!router_check_body(body, reason_allowed, d->kind == DEV_PROVISION, &reason, &e)) {
        json_decref(body);
        cpreq_reply_jv(d->r, &e);
        router_free(d);
        return false;
    }
    if (reason)
        snprintf(d->reason, sizeof d->reason, "%s", reason);
    if (json_object_get(body, "payload") && !json_is_null(json_object_get(body, "payload")))
        d->payload = json_incref(json_object_get(body, "payload"));
    json_decref(body);
    return true;
}

/* The request's deadline, counted from when it was read (cp_req start_ms).
 * A change made through the admin routes (deprovision, retire, reprovision)
 * is not answered by the timer: a statement already sent may still commit,
 * and the answer (and the audit record, written for what the answer says)
 * must tell what happened. The stage checks and the queues still keep it
 * from starting late. */
static void router_arm_deadline(struct router_req *d, int64_t deadline_ms)
{
    int64_t ms = deadline_ms - util_mono_ms();
    struct timeval tv;
    d->deadline_ms = deadline_ms;
    if (d->kind == DEV_DEPROVISION || d->kind == DEV_RETIRE || d->kind == DEV_REPROVISION)
        return;
    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    if (!(d->deadline_ev = evtimer_new(d->cp->base, router_on_deadline, d)) || evtimer_add(d->deadline_ev, &tv) != 0) {
        log_error("event=event_new_failed");
        abort();
    }
}

static struct router_req *router_new(struct cp_req *r, enum dev_kind kind, const char *tenant, const char *regid)
{
    struct router_req *d;
    if (!jv_valid_id(tenant)) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no such tenant");
        return NULL;
    }
    if (!router_valid_regid(regid)) {
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
    snprintf(d->id, sizeof d->id, "%s", r->id);
    router_arm_deadline(d, r->start_ms + r->cp->cfg.http_request_deadline_ms);
    snprintf(d->tenant_id, sizeof d->tenant_id, "%s", tenant);
    snprintf(d->regid, sizeof d->regid, "%s", regid);
    return d;
}

void router_registration(struct cp_req *r, const char *tenant, char **segs, int nsegs)
{
    struct router_req *d;
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
    if (!(d = router_new(r, kind, tenant, segs[1])))
        return;
    if (!router_auth_read(d, false) || !router_read_body(d, kind == DEV_REPROVISION))
        return;
    if (kind == DEV_REPROVISION && !d->reason[0])
        snprintf(d->reason, sizeof d->reason, "%s", "reprovision requested");
    if (d->auth == AUTH_INSTALLER)   /* a revocation waiting on the subscription applies first */
        invalidate_drain(r->cp->inval);
    tenants_get(r->cp->tenants, d->tenant_id, d->auth == AUTH_OPERATOR, router_on_tenant, d);
}

void router_device_admin(struct cp_req *r, const char *tenant, char **segs, int nsegs)
{
    struct router_req *d;
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
    if (!(d = router_new(r, kind, tenant, segs[1])))
        return;
    d->auth = AUTH_OPERATOR;   /* the /v1 gate checked the operator token */
    d->admin_route = true;
    if (kind != DEV_ADMIN_GET && !router_read_body(d, true))
        return;
    if (kind == DEV_REPROVISION && !d->reason[0])
        snprintf(d->reason, sizeof d->reason, "reprovision requested by %s",
                 r->who.kind == PRINCIPAL_KEY ? "API key" : "operator");
    tenants_get(r->cp->tenants, d->tenant_id, d->auth == AUTH_OPERATOR, router_on_tenant, d);
}

