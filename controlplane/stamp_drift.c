/*
 * stamp_drift.c - the registration drift pass (stamp_drift.h).
 *
 * Pass: read the DPS instances with service credentials from the catalog ->
 * for each instance in parallel: CLAIM (geography database: lease, cursor)
 * -> SUMMARY (GET /registrationSummary) -> SAMPLE (GET /registrationIds, one
 * page after the cursor) -> RECORD (cp_stamp_drift_record: compare, keep the
 * orphans, repair those past the grace period, store the report, release the
 * lease) -> DONE. A stamp that does not answer is recorded as "unreachable"
 * (the orphans seen before are kept, nothing is repaired). A pass never
 * overlaps the next; a request for one during a pass schedules another.
 *
 * The comparison is SQL (schema/geo/011) so that it reads the devices rows
 * and writes the orphans in one short transaction.
 */
#include "stamp_drift.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp.h"
#include "device_store.h"
#include "http_call.h"
#include "log.h"
#include "sas.h"
#include "tls.h"
#include "svcapi.h"
#include "util.h"

#define SD_TIMEOUT_MS 10000
#define SD_API_VERSION "2021-10-01"

static const char sd_catalog_sql[] =
    "SELECT d.id, d.endpoint, coalesce(d.service_host_name, d.endpoint), d.service_key_name, d.service_key,"
    " s.id, r.geography_id"
    " FROM dps_instances d JOIN stamps s ON s.id = d.stamp_id JOIN regions r ON r.id = s.region_id"
    " WHERE d.service_key IS NOT NULL AND d.service_key_name IS NOT NULL ORDER BY d.id";

enum sd_state { SD_CLAIM, SD_SUMMARY, SD_SAMPLE, SD_RECORD, SD_DONE };

struct sd_dps {
    struct stamp_drift *sd;
    enum sd_state state;
    int g;                                   /* index of the instance's geography in cp->geo */
    char id[64], stamp[64], endpoint[300], host[300], key_name[80];
    unsigned char key[64];
    int keylen;
    bool has_after;
    char after[300];                         /* the cursor this pass samples after */
    char *summary, *items, *next;            /* stamp answers, serialised for the RECORD */
    char error[200];                         /* why the stamp could not be asked, or "" */
};

struct stamp_drift {
    struct cp *cp;
    SSL_CTX *tls;
    struct event *timer;
    bool running, again;
    char owner[40];                          /* this router's lease name */
    struct sd_dps *dps;
    int ndps, pending;
};

static void sd_start(struct stamp_drift *sd);

static void sd_arm(struct stamp_drift *sd, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(sd->timer, &tv);
}

static const char *sd_state_name(enum sd_state s)
{
    static const char *const names[] = {"claim", "summary", "sample", "record", "done"};
    return names[s];
}

/* The one place an instance's pass changes state: forward only. */
static void sd_set_state(struct sd_dps *d, enum sd_state s)
{
    if (s <= d->state) {
        log_error("event=stamp_drift_bad_transition dps=%s from=%s to=%s", d->id, sd_state_name(d->state),
                  sd_state_name(s));
        abort();
    }
    d->state = s;
}

static void sd_dps_clear(struct sd_dps *d)
{
    free(d->summary);
    free(d->items);
    free(d->next);
    OPENSSL_cleanse(d->key, sizeof d->key);
}

static void sd_finish_pass(struct stamp_drift *sd)
{
    for (int i = 0; i < sd->ndps; i++)
        sd_dps_clear(&sd->dps[i]);
    free(sd->dps);
    sd->dps = NULL;
    sd->ndps = 0;
    sd->running = false;
    if (sd->again) {
        sd->again = false;
        sd_start(sd);
    } else {
        sd_arm(sd, (int)sd->cp->cfg.stamp_drift_interval_ms);
    }
}

static void sd_dps_done(struct sd_dps *d)
{
    struct stamp_drift *sd = d->sd;
    sd_set_state(d, SD_DONE);
    if (--sd->pending == 0)
        sd_finish_pass(sd);
}

static void sd_on_record(const struct pgq_result *q, void *arg)
{
    struct sd_dps *d = arg;
    if (q->status != PGQ_OK || PQntuples(q->res) != 1)
        log_warn("event=stamp_drift_record_failed dps=%s error=\"%s\"", d->id, q->message ? q->message : "");
    else if (PQgetisnull(q->res, 0, 0))
        log_warn("event=stamp_drift_lease_lost dps=%s", d->id);   /* another router took the pass over */
    else if (d->error[0])
        log_warn("event=stamp_drift_unreachable dps=%s error=\"%s\"", d->id, d->error);
    else
        log_info("event=stamp_drift_pass dps=%s report=%s", d->id, PQgetvalue(q->res, 0, 0));
    sd_dps_done(d);
}

/* RECORD: one call compares, repairs, stores the report and frees the lease. */
static void sd_record(struct sd_dps *d)
{
    static const char sql[] =
        "SELECT cp_stamp_drift_record($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8::int, $9::int, $10)";
    struct cp *cp = d->sd->cp;
    char grace[24], cap[24];
    const char *v[10];
    sd_set_state(d, SD_RECORD);
    snprintf(grace, sizeof grace, "%lld", (long long)cp->cfg.stamp_drift_grace_s);
    snprintf(cap, sizeof cap, "%d", STAMP_DRIFT_REPORT_ORPHANS);
    v[0] = d->id; v[1] = d->stamp; v[2] = d->sd->owner;
    v[3] = d->error[0] ? NULL : d->summary;
    v[4] = d->error[0] ? NULL : d->items;
    v[5] = d->has_after ? d->after : NULL;
    v[6] = d->error[0] ? NULL : d->next;
    v[7] = grace; v[8] = cap;
    v[9] = d->error[0] ? d->error : NULL;
    pgpool_query(cp->geo[d->g], sql, 10, v, sd_on_record, d);
}

static void sd_headers(struct sd_dps *d, const char **h, char *sas, size_t saslen)
{
    svcapi_headers(h, sas, saslen, d->host, d->key, d->keylen > 0 ? (size_t)d->keylen : 0, d->key_name, NULL);
}

/* A stamp answer that is not what contract R promises: the stamp could not be asked. */
static bool sd_failed(struct sd_dps *d, const struct http_result *res, const char *what, bool ok)
{
    if (ok)
        return false;
    snprintf(d->error, sizeof d->error, "%s: %s (HTTP %d)", what,
             res->error ? res->error : res->status == 200 ? "not the expected JSON" : "refused", res->status);
    sd_record(d);
    return true;
}

static void sd_on_sample(const struct http_result *res, void *arg)
{
    struct sd_dps *d = arg;
    json_t *items = json_object_get(res->body, "items"), *next = json_object_get(res->body, "next");
    if (sd_failed(d, res, "GET /registrationIds", res->status == 200 && json_is_array(items) &&
                                                       (json_is_string(next) || json_is_null(next) || !next)))
        return;
    d->items = json_dumps(items, JSON_COMPACT);
    d->next = json_is_string(next) ? xstrdup(json_string_value(next)) : NULL;
    sd_record(d);
}

static void sd_sample(struct sd_dps *d)
{
    struct stamp_drift *sd = d->sd;
    const char *h[12];
    char sas[700], path[1200], *after = NULL;
    sd_set_state(d, SD_SAMPLE);
    sd_headers(d, h, sas, sizeof sas);
    if (d->has_after)
        after = evhttp_encode_uri(d->after);
    snprintf(path, sizeof path, "/registrationIds?dpsInstance=%s&limit=%lld&api-version=" SD_API_VERSION "%s%s", d->id,
             (long long)sd->cp->cfg.stamp_drift_sample_page, after ? "&after=" : "", after ? after : "");
    free(after);
    https_call(sd->cp->base, sd->tls, d->endpoint, EVHTTP_REQ_GET, path, h, NULL, SD_TIMEOUT_MS, sd_on_sample, d);
}

static void sd_on_summary(const struct http_result *res, void *arg)
{
    struct sd_dps *d = arg;
    if (sd_failed(d, res, "GET /registrationSummary",
                  res->status == 200 && json_is_array(json_object_get(res->body, "owners"))))
        return;
    d->summary = json_dumps(res->body, JSON_COMPACT);
    sd_sample(d);
}

static void sd_summary(struct sd_dps *d)
{
    const char *h[12];
    char sas[700], path[200];
    sd_set_state(d, SD_SUMMARY);
    sd_headers(d, h, sas, sizeof sas);
    snprintf(path, sizeof path, "/registrationSummary?dpsInstance=%s&api-version=" SD_API_VERSION, d->id);
    https_call(d->sd->cp->base, d->sd->tls, d->endpoint, EVHTTP_REQ_GET, path, h, NULL, SD_TIMEOUT_MS, sd_on_summary, d);
}

static void sd_on_claim(const struct pgq_result *q, void *arg)
{
    struct sd_dps *d = arg;
    if (q->status != PGQ_OK) {
        log_warn("event=stamp_drift_claim_failed dps=%s error=\"%s\"", d->id, q->message ? q->message : "");
        sd_dps_done(d);
        return;
    }
    if (PQntuples(q->res) != 1) {   /* another router holds it, or ran it within the interval */
        sd_dps_done(d);
        return;
    }
    d->has_after = !PQgetisnull(q->res, 0, 1);
    if (d->has_after)
        snprintf(d->after, sizeof d->after, "%s", PQgetvalue(q->res, 0, 1));
    if (d->keylen <= 0) {
        snprintf(d->error, sizeof d->error, "the instance's serviceKey does not open (its KEK is not in the KEK file)");
        sd_record(d);
        return;
    }
    sd_summary(d);
}

static void sd_claim(struct sd_dps *d)
{
    static const char sql[] = "SELECT o_claimed, o_cursor FROM cp_stamp_drift_claim($1, $2, $3::int, $4::int)";
    struct cp *cp = d->sd->cp;
    char lease[24], gap[24];
    const char *v[4] = {d->id, d->sd->owner, lease, gap};
    snprintf(lease, sizeof lease, "%d", STAMP_DRIFT_LEASE_MS);
    /* three quarters of the interval: timers of several routers drift apart a little */
    snprintf(gap, sizeof gap, "%lld", (long long)(cp->cfg.stamp_drift_interval_ms * 3 / 4));
    pgpool_query(cp->geo[d->g], sql, 4, v, sd_on_claim, d);
}

static void sd_dps_init(struct stamp_drift *sd, struct sd_dps *d, const PGresult *res, int row)
{
    d->sd = sd;
    d->state = SD_CLAIM;
    snprintf(d->id, sizeof d->id, "%s", PQgetvalue(res, row, 0));
    snprintf(d->endpoint, sizeof d->endpoint, "%s", PQgetvalue(res, row, 1));
    snprintf(d->host, sizeof d->host, "%s", PQgetvalue(res, row, 2));
    snprintf(d->key_name, sizeof d->key_name, "%s", PQgetvalue(res, row, 3));
    snprintf(d->stamp, sizeof d->stamp, "%s", PQgetvalue(res, row, 5));
    d->g = device_store_geo_index(sd->cp, PQgetvalue(res, row, 6));
    d->keylen = svcapi_key_open(sd->cp->env, d->id, PQgetvalue(res, row, 4), d->key, sizeof d->key);
}

static void sd_on_catalog(const struct pgq_result *q, void *arg)
{
    struct stamp_drift *sd = arg;
    int n;
    if (q->status != PGQ_OK) {
        log_warn("event=stamp_drift_catalog_failed error=\"%s\"", q->message ? q->message : "");
        sd->running = false;
        sd_arm(sd, (int)sd->cp->cfg.stamp_drift_interval_ms);
        return;
    }
    n = PQntuples(q->res);
    sd->dps = xcalloc((size_t)n + 1, sizeof *sd->dps);
    sd->ndps = n;
    sd->pending = 1;
    for (int i = 0; i < n; i++) {
        struct sd_dps *d = &sd->dps[i];
        sd_dps_init(sd, d, q->res, i);
        if (d->g < 0)
            continue;   /* its geography is not one this router serves: checked by those that do */
        sd->pending++;
        sd_claim(d);
    }
    if (--sd->pending == 0)
        sd_finish_pass(sd);
}

static void sd_start(struct stamp_drift *sd)
{
    if (sd->running)
        return;
    sd->running = true;
    event_del(sd->timer);
    pgpool_query(sd->cp->global, sd_catalog_sql, 0, NULL, sd_on_catalog, sd);
}

static void sd_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    sd_start(arg);
}

struct stamp_drift *stamp_drift_new(struct cp *cp)
{
    struct stamp_drift *sd;
    char err[300], hex[17];
    SSL_CTX *ctx;
    if (!cp->cfg.stamp_drift_enabled) {
        log_info("event=stamp_drift_disabled reason=\"stampDrift.enabled is false\"");
        return NULL;
    }
    if (!(ctx = tls_client_ctx_new(cp->cfg.dps_ca_file, err, sizeof err))) {
        log_warn("event=stamp_drift_disabled reason=\"%s\"", err);
        return NULL;
    }
    sd = xcalloc(1, sizeof *sd);
    sd->cp = cp;
    sd->tls = ctx;
    util_random_hex(hex, 8);
    snprintf(sd->owner, sizeof sd->owner, "cp-%s", hex);
    sd->timer = event_new(cp->base, -1, 0, sd_on_timer, sd);
    if (!sd->timer) {
        log_error("event=event_new_failed");
        abort();
    }
    sd_arm(sd, 1000);
    return sd;
}

void stamp_drift_free(struct stamp_drift *sd)
{
    if (!sd) return;
    /* In-flight calls hold pointers into sd->dps; they are only freed with
     * the loop stopped, and their callbacks never run after this. */
    event_free(sd->timer);
    for (int i = 0; i < sd->ndps; i++)
        sd_dps_clear(&sd->dps[i]);
    free(sd->dps);
    SSL_CTX_free(sd->tls);
    free(sd);
}

void stamp_drift_soon(struct stamp_drift *sd)
{
    if (!sd) return;
    if (sd->running)
        sd->again = true;
    else
        sd_arm(sd, 200);
}
