/*
 * offboard.c - the steps of a tenant-offboard job (see offboard.h).
 *
 * Every slice starts by reading what it needs from the catalog (the tenant's
 * geographies, the managed DPS instances with their sealed service keys), so
 * a slice run after a crash or on another instance needs nothing from the
 * run before it. A slice that cannot reach a stamp or a database reports
 * JOB_RETRY: the runner backs off and tries again, and fails the job only
 * after JOBS_MAX_ATTEMPTS.
 */
#include "offboard.h"

#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp.h"
#include "http_call.h"
#include "log.h"
#include "tenant_change.h"
#include "sas.h"
#include "tls.h"
#include "svcapi.h"
#include "util.h"

#define OB_BATCH 25            /* devices released per slice */
#define OB_TIMEOUT_MS 5000     /* below the lease (JOBS_LEASE_S): a slice ends before its claim does */
#define OB_MAX_DPS 64
#define OB_MAX_GROUPS 17       /* the tenant's symmetric group and one X.509 group per CA it holds */
#define OB_MAX_WAITS 60        /* slices (about a second apart) waiting for the reconciler */
#define OB_STR2(x) #x
#define OB_STR(x) OB_STR2(x)
#define OB_API "api-version=2021-10-01"

const char *const offboard_steps[OFFBOARD_NSTEPS] = {"enrollments", "devices", "registrations", "keys"};

struct ob_dps {
    char id[64], endpoint[300], host[300], key_name[80];
    unsigned char key[64];
    int keylen;                /* -1: the sealed key does not open */
};

struct ob_item {
    struct ob_state *st;
    int geo;                   /* index into cp->geo; -1: a leftover registration (no device row) */
    char regid[256];
    char dps[64];
};

struct ob_state {
    struct job_run *run;
    SSL_CTX *tls;
    int waits;                 /* enrollments: slices spent waiting for the reconciler */
    /* one slice */
    struct ob_dps dps[OB_MAX_DPS];
    int ndps;
    int geos[CP_MAX_GEOGRAPHIES];
    int ngeos;
    int pending;
    int present;               /* enrollments: groups still there */
    int failures;
    char error[300];
    long long remaining;       /* devices: assigned devices left before this slice */
    long long released;
    struct ob_item items[CP_MAX_GEOGRAPHIES * OB_BATCH];
    /* registrations: the group ids whose registrations go (they are listed
     * per group, and outlive a deleted group, as in DPS) */
    char groups[OB_MAX_GROUPS][ENROLL_SYNC_GROUP_MAX];
    int ngroups;
    struct ob_probe {
        struct ob_state *st;
        struct ob_dps *d;
        const char *group;
    } probes[OB_MAX_DPS * OB_MAX_GROUPS];
    struct ob_sweep {          /* enrollments: one instance's listing of what else the tenant has there */
        struct ob_state *st;
        struct ob_dps *d;
        int kind;              /* 0 groups, 1 individual enrollments */
        char cont[512];
    } sweeps[OB_MAX_DPS];
    int swept;                 /* enrollments tagged with the tenant deleted by this slice's sweep */
    struct ob_geo_query {
        struct ob_state *st;
        int geo;
    } gqs[CP_MAX_GEOGRAPHIES];
    int nitems;
};

static void ob_state_free(void *p)
{
    struct ob_state *st = p;
    if (!st)
        return;
    SSL_CTX_free(st->tls);
    OPENSSL_cleanse(st->dps, sizeof st->dps);
    free(st);
}

static void ob_fail(struct ob_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ob_fail(struct ob_state *st, const char *fmt, ...)
{
    va_list ap;
    st->failures++;
    if (st->error[0])
        return;   /* the first error names the cause; the count says how many */
    va_start(ap, fmt);
    vsnprintf(st->error, sizeof st->error, fmt, ap);
    va_end(ap);
}

static void ob_pg_fail(struct ob_state *st, const char *what, const struct pgq_result *q)
{
    if (q->status == PGQ_SQL_ERROR)
        log_error("event=job_sql_error job=%s sqlstate=%s error=\"%.200s\"", st->run->id, q->sqlstate,
                  q->message ? q->message : "");
    ob_fail(st, "%s: %s", what, q->status == PGQ_UNAVAILABLE ? "database unavailable" : "SQL error");
}

static int ob_headers(struct ob_dps *d, const char **h, char *sas, size_t saslen)
{
    /* room for the caller's extra pairs after these (h holds at least 14) */
    return svcapi_headers(h, sas, saslen, d->host, d->key, d->keylen > 0 ? (size_t)d->keylen : 0, d->key_name, NULL);
}

static struct ob_dps *ob_find_dps(struct ob_state *st, const char *id)
{
    for (int i = 0; i < st->ndps; i++)
        if (strcmp(st->dps[i].id, id) == 0)
            return &st->dps[i];
    return NULL;
}

/*
 * The slice's catalog read: the tenant's lookup geographies and the managed
 * DPS instances. Fills st->geos (indexes of cp->geo) and st->dps; false
 * (with the error set) if the tenant row is gone or a geography of the
 * tenant has no database here.
 */
static const char ob_catalog_sql[] =
    "SELECT (SELECT to_json(t.lookup_geographies) FROM tenants t WHERE t.id = $1),"
    " (SELECT coalesce(json_agg(c.id ORDER BY c.id), '[]') FROM tenant_cas c WHERE c.tenant_id = $1),"
    " (SELECT coalesce(json_agg(json_build_object('id', d.id, 'endpoint', d.endpoint,"
    "   'host', coalesce(d.service_host_name, d.endpoint), 'keyName', d.service_key_name, 'key', d.service_key)"
    "   ORDER BY d.id), '[]') FROM dps_instances d"
    "   WHERE d.service_key IS NOT NULL AND d.service_key_name IS NOT NULL)";

static bool ob_read_catalog(struct ob_state *st, const struct pgq_result *q)
{
    struct cp *cp = st->run->cp;
    json_t *geos = NULL, *dpsl = NULL, *cas = NULL, *v;
    size_t i;
    bool ok = false;

    st->ngeos = st->ndps = st->ngroups = 0;
    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        ob_pg_fail(st, "catalog", q);
        return false;
    }
    if (PQgetisnull(q->res, 0, 0) || !(geos = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL)) ||
        !(cas = json_loads(PQgetvalue(q->res, 0, 1), 0, NULL)) ||
        !(dpsl = json_loads(PQgetvalue(q->res, 0, 2), 0, NULL))) {
        ob_fail(st, "the tenant's row is missing or malformed");
        goto out;
    }
    json_array_foreach(geos, i, v) {
        const char *g = json_string_value(v);
        int k;
        for (k = 0; g && k < cp->cfg.n_geos; k++)
            if (strcmp(cp->cfg.geos[k].id, g) == 0)
                break;
        if (!g || k == cp->cfg.n_geos) {
            ob_fail(st, "geography '%s' may hold the tenant's devices and has no database here", g ? g : "?");
            goto out;
        }
        st->geos[st->ngeos++] = k;
    }
    json_array_foreach(dpsl, i, v) {
        struct ob_dps *d;
        const char *key = json_string_value(json_object_get(v, "key"));
        if (st->ndps == OB_MAX_DPS)
            break;
        d = &st->dps[st->ndps++];
        snprintf(d->id, sizeof d->id, "%s", json_string_value(json_object_get(v, "id")));
        snprintf(d->endpoint, sizeof d->endpoint, "%s", json_string_value(json_object_get(v, "endpoint")));
        snprintf(d->host, sizeof d->host, "%s", json_string_value(json_object_get(v, "host")));
        snprintf(d->key_name, sizeof d->key_name, "%s", json_string_value(json_object_get(v, "keyName")));
        d->keylen = svcapi_key_open(cp->env, d->id, key, d->key, sizeof d->key);
    }
    snprintf(st->groups[st->ngroups++], sizeof st->groups[0], "%s", st->run->tenant);
    json_array_foreach(cas, i, v) {
        if (st->ngroups == OB_MAX_GROUPS || !json_is_string(v))
            break;
        snprintf(st->groups[st->ngroups++], sizeof st->groups[0], "%s" ENROLL_SYNC_X509_INFIX "%s",
                 st->run->tenant, json_string_value(v));
    }
    ok = true;
out:
    json_decref(geos);
    json_decref(cas);
    json_decref(dpsl);
    return ok;
}

static void ob_report(struct ob_state *st, enum job_outcome o)
{
    char err[400];
    if (st->failures > 0) {
        snprintf(err, sizeof err, "%s%s", st->error, st->failures > 1 ? " (and more)" : "");
        job_slice_done(st->run, JOB_RETRY, err);
    } else {
        job_slice_done(st->run, o, NULL);
    }
}

/* ---- step 0: enrollment groups gone everywhere ---- */

static void ob_sweep_start(struct ob_state *st);

static void ob_enroll_settle(struct ob_state *st)
{
    if (--st->pending > 0)
        return;
    if (st->failures == 0 && st->present == 0) {
        /* the reconciler's group is gone everywhere: now the rest tagged with the tenant */
        ob_sweep_start(st);
        return;
    }
    if (st->failures == 0 && st->present > 0) {
        /* The reconciler skips offboarding tenants: wake it, and look again. */
        enroll_sync_soon(st->run->cp->sync);
        if (++st->waits > OB_MAX_WAITS) {
            st->waits = 0;
            ob_fail(st, "%d enrollment group(s) of the tenant are still present (the reconciler has not removed them)",
                    st->present);
        } else {
            job_slice_done(st->run, JOB_WAIT, NULL);
            return;
        }
    }
    ob_report(st, JOB_DONE);
}

static void ob_on_group(const struct http_result *res, void *arg)
{
    struct ob_probe *p = arg;
    struct ob_state *st = p->st;
    if (res->status == 404) {
        /* gone */
    } else if (res->status == 200) {
        json_t *tags = json_object_get(json_object_get(res->body, "initialTwin"), "tags");
        const char *by = json_string_value(json_object_get(tags, "managedBy"));
        if (by && strcmp(by, "stampcp") == 0)
            st->present++;
        else   /* made by someone else: not ours to remove (docs/api.md) */
            log_warn("event=offboard_foreign_group job=%s dps=%s", st->run->id, p->d->id);
    } else {
        ob_fail(st, "DPS instance %s: reading the enrollment group: %s (HTTP %d)", p->d->id,
                res->error ? res->error : "refused", res->status);
    }
    ob_enroll_settle(st);
}

static void ob_enroll_on_catalog(const struct pgq_result *q, void *arg)
{
    struct ob_state *st = arg;
    char path[200];

    st->pending = 1;
    if (ob_read_catalog(st, q)) {
        snprintf(path, sizeof path, "/enrollmentGroups/%s?" OB_API, st->run->tenant);
        for (int i = 0; i < st->ndps; i++) {
            struct ob_dps *d = &st->dps[i];
            struct ob_probe *p;
            const char *h[12];
            char sas[700];
            if (d->keylen <= 0) {
                ob_fail(st, "DPS instance %s: its serviceKey does not open", d->id);
                continue;
            }
            p = &st->probes[i];
            p->st = st;
            p->d = d;
            ob_headers(d, h, sas, sizeof sas);
            st->pending++;
            https_call(st->run->cp->base, st->tls, d->endpoint, EVHTTP_REQ_GET, path, h, NULL, OB_TIMEOUT_MS,
                       ob_on_group, p);
            OPENSSL_cleanse(sas, sizeof sas);
        }
    }
    ob_enroll_settle(st);
}

/*
 * The sweep: every enrollment group and individual enrollment tagged as the
 * control plane's for this tenant (initialTwin.tags managedBy "stampcp",
 * tenantId = the tenant: its X.509 groups, individual enrollments made
 * through the control plane) is deleted at every instance. The reconciler
 * keeps only the group named after the tenant, so nobody else removes these.
 * Any deletion makes the step run again, to check that nothing is left.
 */
static void ob_sweep_page(struct ob_sweep *sw);

static void ob_sweep_settle(struct ob_state *st)
{
    if (--st->pending > 0)
        return;
    if (st->swept > 0)
        log_info("event=offboard_enrollments_deleted job=%s count=%d", st->run->id, st->swept);
    ob_report(st, st->swept > 0 ? JOB_MORE : JOB_DONE);
}

static void ob_on_enrollment_deleted(const struct http_result *res, void *arg)
{
    struct ob_sweep *sw = arg;
    if (res->status != 204 && res->status != 200 && res->status != 404)
        ob_fail(sw->st, "DPS instance %s: deleting an enrollment of the tenant: %s (HTTP %d)", sw->d->id,
                res->error ? res->error : "refused", res->status);
    ob_sweep_settle(sw->st);
}

static void ob_on_sweep_page(const struct http_result *res, void *arg)
{
    struct ob_sweep *sw = arg;
    struct ob_state *st = sw->st;
    json_t *doc;
    size_t i;

    if (res->status != 200 || !json_is_array(res->body)) {
        ob_fail(st, "DPS instance %s: listing %s: %s (HTTP %d)", sw->d->id,
                sw->kind ? "individual enrollments" : "enrollment groups", res->error ? res->error : "refused",
                res->status);
        ob_sweep_settle(st);
        return;
    }
    json_array_foreach(res->body, i, doc) {
        json_t *tags = json_object_get(json_object_get(doc, "initialTwin"), "tags");
        const char *by = json_string_value(json_object_get(tags, "managedBy"));
        const char *tenant = json_string_value(json_object_get(tags, "tenantId"));
        const char *eid = json_string_value(json_object_get(doc, sw->kind ? "registrationId" : "enrollmentGroupId"));
        const char *h[16];
        char sas[700], *path, *enc;
        if (!by || strcmp(by, "stampcp") != 0 || !tenant || strcmp(tenant, st->run->tenant) != 0 || !eid)
            continue;
        st->swept++;
        st->pending++;
        enc = evhttp_encode_uri(eid);
        path = xasprintf("/%s/%s?" OB_API, sw->kind ? "enrollments" : "enrollmentGroups", enc ? enc : "");
        free(enc);
        ob_headers(sw->d, h, sas, sizeof sas);
        https_call(st->run->cp->base, st->tls, sw->d->endpoint, EVHTTP_REQ_DELETE, path, h, NULL, OB_TIMEOUT_MS,
                   ob_on_enrollment_deleted, sw);
        OPENSSL_cleanse(sas, sizeof sas);
        free(path);
    }
    if (res->continuation && *res->continuation) {
        snprintf(sw->cont, sizeof sw->cont, "%s", res->continuation);
        ob_sweep_page(sw);   /* the page's own pending count carries over */
        return;
    }
    if (sw->kind == 0) {
        sw->kind = 1;
        sw->cont[0] = '\0';
        ob_sweep_page(sw);
        return;
    }
    ob_sweep_settle(st);
}

static void ob_sweep_page(struct ob_sweep *sw)
{
    const char *h[20];
    char sas[700];
    int n;
    n = ob_headers(sw->d, h, sas, sizeof sas);
    h[n++] = "x-ms-max-item-count"; h[n++] = "100";
    if (sw->cont[0]) { h[n++] = "x-ms-continuation"; h[n++] = sw->cont; }
    h[n] = NULL;
    https_call(sw->st->run->cp->base, sw->st->tls, sw->d->endpoint, EVHTTP_REQ_POST,
               sw->kind ? "/enrollments/query?" OB_API : "/enrollmentGroups/query?" OB_API, h,
               sw->kind ? "{\"query\":\"SELECT * FROM enrollments\"}" : "{\"query\":\"SELECT * FROM enrollmentGroups\"}",
               OB_TIMEOUT_MS, ob_on_sweep_page, sw);
    OPENSSL_cleanse(sas, sizeof sas);
}

static void ob_sweep_start(struct ob_state *st)
{
    st->swept = 0;
    st->pending = 1;
    for (int i = 0; i < st->ndps; i++) {
        struct ob_sweep *sw = &st->sweeps[i];
        if (st->dps[i].keylen <= 0)
            continue;   /* reported by the group check already */
        memset(sw, 0, sizeof *sw);
        sw->st = st;
        sw->d = &st->dps[i];
        st->pending++;
        ob_sweep_page(sw);
    }
    ob_sweep_settle(st);
}

/* ---- step 1: devices ---- */

static void ob_devices_settle(struct ob_state *st)
{
    struct job_run *run = st->run;
    if (--st->pending > 0)
        return;
    /* total: the most ever seen; done: what is no longer assigned */
    if (run->total < run->done + st->remaining)
        run->total = run->done + st->remaining;
    run->done = run->total - st->remaining + st->released;
    if (run->done > run->total)
        run->done = run->total;
    ob_report(st, st->remaining == 0 ? JOB_DONE : JOB_MORE);
}

static void ob_on_released(const struct pgq_result *q, void *arg)
{
    struct ob_item *it = arg;
    struct ob_state *st = it->st;
    if (q->status != PGQ_OK)
        ob_pg_fail(st, "releasing a device", q);
    else
        st->released++;
    ob_devices_settle(st);
}

static void ob_release(struct ob_item *it)
{
    static const char sql[] = "SELECT status FROM cp_release_device($1, $2, false, 'tenant offboarded')";
    struct ob_state *st = it->st;
    const char *values[2] = {st->run->tenant, it->regid};
    pgpool_query(st->run->cp->geo[it->geo], sql, 2, values, ob_on_released, it);
}

static void ob_regs_settle(struct ob_state *st);

static void ob_on_registration_deleted(const struct http_result *res, void *arg)
{
    struct ob_item *it = arg;
    struct ob_state *st = it->st;
    if (it->geo < 0) {   /* step registrations */
        if (res->status != 204 && res->status != 200 && res->status != 404)
            ob_fail(st, "DPS instance %s: deleting a registration: %s (HTTP %d)", it->dps,
                    res->error ? res->error : "refused", res->status);
        ob_regs_settle(st);
        return;
    }
    if (res->status == 204 || res->status == 200 || res->status == 404) {
        ob_release(it);   /* the stamp holds no registration for it any more */
        return;
    }
    ob_fail(st, "DPS instance %s: deleting a registration: %s (HTTP %d)", it->dps,
            res->error ? res->error : "refused", res->status);
    ob_devices_settle(st);
}

static void ob_delete_registration(struct ob_item *it)
{
    struct ob_state *st = it->st;
    struct ob_dps *d = ob_find_dps(st, it->dps);
    const char *h[12];
    char sas[700], *path, *enc;

    if (!d || d->keylen <= 0) {
        ob_fail(st, "DPS instance %s: no usable service credentials to delete the registrations there",
                it->dps[0] ? it->dps : "?");
        ob_devices_settle(st);
        return;
    }
    enc = evhttp_encode_uri(it->regid);
    path = xasprintf("/registrations/%s?" OB_API, enc ? enc : "");
    free(enc);
    ob_headers(d, h, sas, sizeof sas);
    https_call(st->run->cp->base, st->tls, d->endpoint, EVHTTP_REQ_DELETE, path, h, NULL, OB_TIMEOUT_MS,
               ob_on_registration_deleted, it);
    OPENSSL_cleanse(sas, sizeof sas);
    free(path);
}

/* One geography's batch came back; when all have, work on the devices. */
static void ob_on_batch(const struct pgq_result *q, void *arg);

static void ob_devices_start(struct ob_state *st)
{
    int n = st->nitems;
    /* held until every item is started */
    st->pending = 1 + n;
    for (int i = 0; i < n; i++)
        ob_delete_registration(&st->items[i]);
    ob_devices_settle(st);
}

static void ob_on_batch(const struct pgq_result *q, void *arg)
{
    struct ob_geo_query *gq = arg;
    struct ob_state *st = gq->st;
    if (q->status != PGQ_OK) {
        ob_pg_fail(st, st->run->cp->cfg.geos[gq->geo].id, q);
    } else {
        int n = PQntuples(q->res);
        if (n > 0)
            st->remaining += strtoll(PQgetvalue(q->res, 0, 2), NULL, 10);
        for (int i = 0; i < n && st->nitems < (int)(sizeof st->items / sizeof st->items[0]); i++) {
            struct ob_item *it = &st->items[st->nitems++];
            it->st = st;
            it->geo = gq->geo;
            snprintf(it->regid, sizeof it->regid, "%s", PQgetvalue(q->res, i, 0));
            snprintf(it->dps, sizeof it->dps, "%s", PQgetvalue(q->res, i, 1));
        }
    }
    if (--st->pending > 0)
        return;
    if (st->failures > 0) {
        ob_report(st, JOB_RETRY);
        return;
    }
    ob_devices_start(st);
}

static void ob_devices_on_catalog(const struct pgq_result *q, void *arg)
{
    static const char sql[] =
        "SELECT registration_id, coalesce(dps_id, ''), count(*) OVER () FROM devices"
        " WHERE tenant_id = $1 AND status = 'assigned' ORDER BY registration_id LIMIT " OB_STR(OB_BATCH);
    struct ob_state *st = arg;
    const char *values[1] = {st->run->tenant};

    st->remaining = st->released = 0;
    st->nitems = 0;
    if (!ob_read_catalog(st, q)) {
        ob_report(st, JOB_RETRY);
        return;
    }
    st->pending = 1;
    for (int i = 0; i < st->ngeos; i++) {
        struct ob_geo_query *gq = &st->gqs[i];
        gq->st = st;
        gq->geo = st->geos[i];
        st->pending++;
        pgpool_query(st->run->cp->geo[gq->geo], sql, 1, values, ob_on_batch, gq);
    }
    if (--st->pending == 0) {
        if (st->failures > 0)
            ob_report(st, JOB_RETRY);
        else
            ob_devices_start(st);
    }
}

/* ---- step 2: registrations the control plane never knew of ----
 * A device holding a key derived from the tenant's could register at a stamp
 * without asking the control plane first: its registration is under the
 * tenant's group (enrollment id = tenant id) but has no device row. Each
 * slice lists the first page of each instance's registrations of that group
 * (the stamp answers the listing with the group gone too) and deletes them;
 * the step is done when every listing is empty. */

static void ob_regs_settle(struct ob_state *st)
{
    if (--st->pending > 0)
        return;
    if (st->present > 0)
        log_info("event=offboard_leftover_registrations job=%s deleted=%d", st->run->id, st->present);
    ob_report(st, st->present > 0 ? JOB_MORE : JOB_DONE);
}

static void ob_on_reg_page(const struct http_result *res, void *arg)
{
    struct ob_probe *p = arg;
    struct ob_state *st = p->st;
    json_t *v;
    size_t i;

    if (res->status != 200 || !json_is_array(res->body)) {
        ob_fail(st, "DPS instance %s: listing the registrations of group %s: %s (HTTP %d)", p->d->id, p->group,
                res->error ? res->error : "refused", res->status);
        ob_regs_settle(st);
        return;
    }
    json_array_foreach(res->body, i, v) {
        const char *regid = json_string_value(json_object_get(v, "registrationId"));
        struct ob_item *it;
        const char *h[16];
        char sas[700], *path, *enc;
        if (!regid || st->nitems >= (int)(sizeof st->items / sizeof st->items[0]))
            continue;
        it = &st->items[st->nitems++];
        it->st = st;
        it->geo = -1;
        snprintf(it->regid, sizeof it->regid, "%s", regid);
        snprintf(it->dps, sizeof it->dps, "%s", p->d->id);
        st->present++;
        st->pending++;
        enc = evhttp_encode_uri(regid);
        path = xasprintf("/registrations/%s?" OB_API, enc ? enc : "");
        free(enc);
        ob_headers(p->d, h, sas, sizeof sas);
        https_call(st->run->cp->base, st->tls, p->d->endpoint, EVHTTP_REQ_DELETE, path, h, NULL, OB_TIMEOUT_MS,
                   ob_on_registration_deleted, it);
        OPENSSL_cleanse(sas, sizeof sas);
        free(path);
    }
    ob_regs_settle(st);
}

static void ob_regs_on_catalog(const struct pgq_result *q, void *arg)
{
    struct ob_state *st = arg;
    char path[320];

    st->pending = 1;
    st->nitems = 0;
    if (ob_read_catalog(st, q)) {
        for (int i = 0; i < st->ndps * st->ngroups; i++) {
            struct ob_dps *d = &st->dps[i / st->ngroups];
            struct ob_probe *p = &st->probes[i];
            const char *h[16];
            char sas[700];
            int n;
            if (d->keylen <= 0) {
                if (i % st->ngroups == 0)
                    ob_fail(st, "DPS instance %s: its serviceKey does not open", d->id);
                continue;
            }
            p->st = st;
            p->d = d;
            p->group = st->groups[i % st->ngroups];
            snprintf(path, sizeof path, "/registrations/%s/query?" OB_API, p->group);
            n = ob_headers(d, h, sas, sizeof sas);
            h[n++] = "x-ms-max-item-count"; h[n++] = OB_STR(OB_BATCH);
            h[n] = NULL;
            st->pending++;
            https_call(st->run->cp->base, st->tls, d->endpoint, EVHTTP_REQ_POST, path, h, "{\"query\":\"*\"}",
                       OB_TIMEOUT_MS, ob_on_reg_page, p);
            OPENSSL_cleanse(sas, sizeof sas);
        }
    }
    ob_regs_settle(st);
}

/* ---- step 3: keys, tokens, tombstone ---- */

static void ob_keys_announced(void *arg)
{
    struct ob_state *st = arg;
    job_slice_done(st->run, JOB_DONE, NULL);
}

static void ob_on_keys(const struct pgq_result *q, void *arg)
{
    struct ob_state *st = arg;
    if (q->status != PGQ_OK) {
        ob_pg_fail(st, "erasing the tenant's keys", q);
        ob_report(st, JOB_RETRY);
        return;
    }
    log_info("event=tenant_offboarded tenant=%s job=%s", st->run->tenant, st->run->id);
    tenant_change_announce(st->run->cp, st->run->tenant, ob_keys_announced, st);
}

static void ob_keys(struct ob_state *st)
{
    /* Crypto-erase: the sealed enrollment keys are the only copies of the
     * tenant's data keys (the DPS groups holding them are gone by now). */
    static const char sql[] =
        "WITH t AS (UPDATE tenants t SET enrollment_key = NULL, enrollment_key_previous = NULL,"
        "   deleted_at = coalesce(t.deleted_at, now()), version = t.version + 1, updated_at = now()"
        "   WHERE t.id = $1 RETURNING t.id),"
        " k AS (UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL RETURNING id),"
        " i AS (DELETE FROM installer_tokens WHERE tenant_id = $1 RETURNING 1)"
        " SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM k), (SELECT count(*) FROM i)";
    const char *values[1] = {st->run->tenant};
    pgpool_query(st->run->cp->global, sql, 1, values, ob_on_keys, st);
}

void offboard_slice(struct job_run *run)
{
    struct ob_state *st = run->state;
    const char *values[1] = {run->tenant};
    pgpool_cb cb = NULL;

    if (!st) {
        char err[300];
        st = xcalloc(1, sizeof *st);
        st->run = run;
        run->state = st;
        run->free_state = ob_state_free;
        if (!(st->tls = tls_client_ctx_new(run->cp->cfg.dps_ca_file, err, sizeof err))) {
            job_slice_done(run, JOB_RETRY, "no TLS client context for the stamps");
            return;
        }
    }
    st->failures = 0;
    st->error[0] = '\0';
    st->present = 0;
    switch (run->step) {
    case 0: cb = ob_enroll_on_catalog; break;
    case 1: cb = ob_devices_on_catalog; break;
    case 2: cb = ob_regs_on_catalog; break;
    case 3: ob_keys(st); return;
    default:
        job_slice_done(run, JOB_DONE, NULL);
        return;
    }
    pgpool_query(run->cp->global, ob_catalog_sql, 1, values, cb, st);
}
