/*
 * enroll_sync.c - the enrollment-group reconciler.
 *
 * Pass: read DPS instances (with service credentials) and tenants from the
 * catalog -> for each instance in parallel: LIST (query, paged) -> APPLY
 * (one PUT or DELETE at a time) -> DONE, recording the outcome. A pass never
 * overlaps the next; changes during a pass schedule another.
 *
 * A suspended tenant's group stays, written with provisioningStatus
 * "disabled" (the stamp's DPS then refuses its devices); resuming writes it
 * "enabled" again.
 */
#include "enroll_sync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "cp.h"
#include "http_call.h"
#include "log.h"
#include "placement.h"
#include "sas.h"
#include "strmap.h"
#include "tls.h"
#include "svcapi.h"
#include "util.h"

#define ES_MANAGED_BY "stampcp"
#define ES_TIMEOUT_MS 10000

static const char es_catalog_sql[] =
    "SELECT json_build_object("
    " 'dps', (SELECT coalesce(json_agg(json_build_object('id', d.id, 'endpoint', d.endpoint,"
    "   'host', coalesce(d.service_host_name, d.endpoint), 'keyName', d.service_key_name, 'key', d.service_key,"
    "   'stamp', s.id, 'region', s.region_id, 'geography', r.geography_id, 'tenancy', s.tenancy) ORDER BY d.id), '[]')"
    "   FROM dps_instances d JOIN stamps s ON s.id = d.stamp_id JOIN regions r ON r.id = s.region_id"
    "   WHERE d.service_key IS NOT NULL AND d.service_key_name IS NOT NULL),"
    " 'tenants', (SELECT coalesce(json_agg(json_build_object("
    "   'public', json_build_object('id', t.id, 'residency', json_build_object('geographies', t.residency_geographies,"
    "     'regions', t.residency_regions), 'tenancy', t.tenancy, 'dedicatedStamps', t.dedicated_stamps,"
    "     'status', t.status),"
    "   'enrollmentKey', t.enrollment_key, 'enrollmentKeyPrevious', t.enrollment_key_previous,"
    "   'lookupGeographies', t.lookup_geographies, 'installerTokens', '[]',"
    "   'x509Cas', (SELECT coalesce(json_agg(json_build_object('id', c.id, 'pem', c.certificate_pem,"
    "     'thumbprint', c.thumbprint) ORDER BY c.created_at, c.id), '[]') FROM tenant_cas c"
    "     WHERE c.tenant_id = t.id AND c.enabled AND c.verified_at IS NOT NULL))"
    "   ORDER BY t.created_at, t.id), '[]') FROM tenants t WHERE t.deleted_at IS NULL AND t.offboarding_at IS NULL))";

enum es_op { ES_PUT, ES_DELETE };

/* Group ids: a tenant's symmetric-key group is its id; the X.509 group of
 * one of its CAs is "<tenant id>" ES_X509_INFIX "<CA id>" (a '.' never
 * appears in a tenant id, so the two kinds cannot collide). */
#define ES_X509_INFIX ENROLL_SYNC_X509_INFIX
#define ES_GROUP_MAX ENROLL_SYNC_GROUP_MAX

struct es_change {
    enum es_op op;
    char group[ES_GROUP_MAX];
    char etag[80];          /* If-Match, or "" */
    json_t *doc;            /* PUT body */
};

struct es_dps {
    struct enroll_sync *es;
    char id[64], endpoint[300], host[300], key_name[80];
    unsigned char key[64];
    int keylen;
    json_t *desired;        /* group id -> doc */
    json_t *actual;         /* group id -> doc as listed */
    struct es_change *changes;
    int nchanges, next;
    int applied, failed, over_quota;
    char error[200];
    bool unreachable;
    bool planned;           /* listed: the outcome says which groups can't be placed here */
    json_t *refused;        /* group id -> why it cannot exist here (over quota, refused) */
    json_t *thumbs;         /* X.509 group id -> the SHA-256 thumbprint of its CA (desired) */
};

struct enroll_sync {
    struct cp *cp;
    int interval_ms;
    SSL_CTX *tls;
    struct event *timer;
    bool running, again;
    int64_t catalog_wall_ms;     /* when this pass read the catalog (its view of the tenants) */
    struct es_dps *dps;
    int ndps, pending;
    json_t *status;         /* dps id -> status object */
    json_t *refused;        /* dps id -> {group id -> reason}, from the last pass that listed it */
};

static void es_start(struct enroll_sync *es);

json_t *enroll_sync_group_doc(const char *tenant_id, const char *enrollment_key, const char *previous_key,
                              bool enabled)
{
    /* tags.tenantId makes the tenant the owner of the registrations the
     * group creates at the stamp (docs/stamp-dps.md "Registration ownership") */
    return json_pack("{s:s, s:{s:s, s:{s:s, s:s}}, s:s, s:s, s:{s:b, s:b}, s:{s:{s:s, s:s}, s:{s:{}}}}",
                     "enrollmentGroupId", tenant_id,
                     "attestation", "type", "symmetricKey", "symmetricKey", "primaryKey", enrollment_key,
                     "secondaryKey", previous_key ? previous_key : enrollment_key,
                     "provisioningStatus", enabled ? "enabled" : "disabled", "allocationPolicy", "hashed",
                     "reprovisionPolicy", "updateHubAssignment", 1, "migrateDeviceData", 1,
                     "initialTwin", "tags", "managedBy", ES_MANAGED_BY, "tenantId", tenant_id,
                     "properties", "desired");
}

json_t *enroll_sync_x509_group_doc(const char *tenant_id, const char *ca_id, const char *ca_pem, bool enabled)
{
    char gid[ES_GROUP_MAX];
    snprintf(gid, sizeof gid, "%s" ES_X509_INFIX "%s", tenant_id, ca_id);
    /* tags as the symmetric group's (the tenant owns its registrations), plus
     * x509CaId: with the id, what marks the group as this reconciler's */
    return json_pack("{s:s, s:{s:s, s:{s:{s:{s:s}}}}, s:s, s:s, s:{s:b, s:b}, s:{s:{s:s, s:s, s:s}, s:{s:{}}}}",
                     "enrollmentGroupId", gid,
                     "attestation", "type", "x509", "x509", "signingCertificates", "primary", "certificate", ca_pem,
                     "provisioningStatus", enabled ? "enabled" : "disabled", "allocationPolicy", "hashed",
                     "reprovisionPolicy", "updateHubAssignment", 1, "migrateDeviceData", 1,
                     "initialTwin", "tags", "managedBy", ES_MANAGED_BY, "tenantId", tenant_id, "x509CaId", ca_id,
                     "properties", "desired");
}

static void es_arm(struct enroll_sync *es, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(es->timer, &tv);
}

static void es_headers(struct es_dps *d, const char **h, char *sas, size_t saslen, const char *if_match)
{
    svcapi_headers(h, sas, saslen, d->host, d->key, d->keylen > 0 ? (size_t)d->keylen : 0, d->key_name, if_match);
}

static void es_dps_clear(struct es_dps *d)
{
    json_decref(d->desired);
    json_decref(d->actual);
    json_decref(d->refused);
    json_decref(d->thumbs);
    for (int i = 0; i < d->nchanges; i++)
        json_decref(d->changes[i].doc);
    free(d->changes);
    OPENSSL_cleanse(d->key, sizeof d->key);
}

static void es_finish_pass(struct enroll_sync *es)
{
    for (int i = 0; i < es->ndps; i++)
        es_dps_clear(&es->dps[i]);
    free(es->dps);
    es->dps = NULL;
    es->ndps = 0;
    es->running = false;
    if (es->again) {
        es->again = false;
        es_start(es);
    } else {
        es_arm(es, es->interval_ms);
    }
}

/* Record one instance's outcome; the pass ends when the last one reports. */
static void es_dps_done(struct es_dps *d)
{
    struct enroll_sync *es = d->es;
    char at[40];
    json_t *missing = json_array(), *st;
    const char *gid;
    json_t *doc;
    const char *state;

    util_format_time(util_wall_ms(), at, sizeof at);
    json_object_foreach(d->desired, gid, doc)
        if (!json_object_get(d->actual, gid))
            json_array_append_new(missing, json_string(gid));
    if (d->unreachable) state = "unreachable";
    else if (d->failed || d->over_quota) state = "drift";
    else state = "in_sync";
    st = json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:o}", "dpsInstance", d->id, "state", state, "lastRunAt", at,
                   "desiredGroups", (int)json_object_size(d->desired), "changesApplied", d->applied,
                   "changesFailed", d->failed, "overQuota", d->over_quota, "notPresent", missing);
    if (d->error[0])
        json_object_set_new(st, "error", json_string(d->error));
    if (d->planned) {
        /* What placement must avoid: desired groups still absent for a reason a retry won't fix. */
        json_t *refused = json_object(), *list = json_array(), *why;
        json_object_foreach(d->refused, gid, why)
            if (!json_object_get(d->actual, gid)) {
                json_object_set(refused, gid, why);
                json_array_append_new(list, json_pack("{s:s, s:O}", "group", gid, "reason", why));
            }
        json_object_set_new(es->refused, d->id, refused);
        json_object_set_new(st, "placementExcluded", list);
    }
    if (strcmp(state, "in_sync") != 0)
        log_warn("event=enrollment_drift dps=%s state=%s failed=%d over_quota=%d error=\"%s\"", d->id, state,
                 d->failed, d->over_quota, d->error);
    json_object_set_new(es->status, d->id, st);
    if (--es->pending == 0)
        es_finish_pass(es);
}

static void es_apply_next(struct es_dps *d);

static void es_on_change(const struct http_result *res, void *arg)
{
    struct es_dps *d = arg;
    struct es_change *c = &d->changes[d->next - 1];
    bool ok = c->op == ES_PUT ? res->status == 200 || res->status == 201 : res->status == 204 || res->status == 200 || res->status == 404;
    if (ok) {
        d->applied++;
        if (c->op == ES_PUT) json_object_set(d->actual, c->group, c->doc);
        else json_object_del(d->actual, c->group);
    } else {
        d->failed++;
        /* A 4xx other than a lost etag race or a throttle will be answered again: permanent. */
        if (c->op == ES_PUT && res->status >= 400 && res->status < 500 && res->status != 408 &&
            res->status != 412 && res->status != 429)
            json_object_set_new(d->refused, c->group, json_sprintf("refused (HTTP %d)", res->status));
        snprintf(d->error, sizeof d->error, "%s of group %s: %s (HTTP %d)", c->op == ES_PUT ? "PUT" : "DELETE",
                 c->group, res->error ? res->error : "refused", res->status);
        if (res->status == 0) {
            d->unreachable = true;
            es_dps_done(d);
            return;
        }
    }
    es_apply_next(d);
}

static void es_apply_next(struct es_dps *d)
{
    struct enroll_sync *es = d->es;
    const char *h[16];
    char sas[700], path[400], *body = NULL;
    struct es_change *c;

    if (d->next >= d->nchanges) {
        es_dps_done(d);
        return;
    }
    c = &d->changes[d->next++];
    /* dpsInstance: a stamp serving several instances on one listener manages
     * the first unless told (docs/stamp-dps.md, extensions) */
    snprintf(path, sizeof path, "/enrollmentGroups/%s?api-version=2021-10-01&dpsInstance=%s", c->group, d->id);
    es_headers(d, h, sas, sizeof sas, c->etag);
    if (c->op == ES_PUT)
        body = json_dumps(c->doc, JSON_COMPACT);
    https_call(es->cp->base, es->tls, d->endpoint, c->op == ES_PUT ? EVHTTP_REQ_PUT : EVHTTP_REQ_DELETE, path, h,
               body, ES_TIMEOUT_MS, es_on_change, d);
    free(body);
}

static bool es_is_managed(json_t *doc)
{
    const char *by = json_string_value(json_object_get(json_object_get(json_object_get(doc, "initialTwin"), "tags"),
                                                       "managedBy"));
    return by && strcmp(by, ES_MANAGED_BY) == 0;
}

/* The tenant a group is tagged with (the owner of its registrations). */
static const char *es_tenant_of(json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(json_object_get(doc, "initialTwin"), "tags"),
                                             "tenantId"));
}

static const char *es_tag(json_t *doc, const char *tag)
{
    return json_string_value(json_object_get(json_object_get(json_object_get(doc, "initialTwin"), "tags"), tag));
}

/* One of this reconciler's X.509 groups: managed, tagged with a tenant and
 * a CA id, and its id is exactly the one made from the two. A hand-made
 * group (another id, or no x509CaId tag) never is. */
static bool es_is_x509_group(const char *gid, json_t *doc)
{
    const char *tenant = es_tenant_of(doc), *ca = es_tag(doc, "x509CaId");
    char want[ES_GROUP_MAX];
    if (!es_is_managed(doc) || !tenant || !ca || !*tenant || !*ca)
        return false;
    snprintf(want, sizeof want, "%s" ES_X509_INFIX "%s", tenant, ca);
    return strcmp(want, gid) == 0;
}

/* The SHA-256 thumbprint of an X.509 group's primary signing certificate, as listed. */
static const char *es_thumb_of(json_t *doc)
{
    json_t *p = json_object_get(json_object_get(json_object_get(json_object_get(doc, "attestation"), "x509"),
                                                "signingCertificates"), "primary");
    return json_string_value(json_object_get(json_object_get(p, "info"), "sha256Thumbprint"));
}

static const char *es_key_of(json_t *doc, const char *which)
{
    return json_string_value(json_object_get(json_object_get(json_object_get(doc, "attestation"), "symmetricKey"),
                                             which));
}

static bool es_same(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

static void es_add_change(struct es_dps *d, enum es_op op, const char *group, json_t *actual, json_t *doc)
{
    struct es_change *c;
    const char *etag = json_string_value(json_object_get(actual, "etag"));
    d->changes = xrealloc(d->changes, sizeof *d->changes * (size_t)(d->nchanges + 1));
    c = &d->changes[d->nchanges++];
    memset(c, 0, sizeof *c);
    c->op = op;
    snprintf(c->group, sizeof c->group, "%s", group);
    if (etag) snprintf(c->etag, sizeof c->etag, "%s", etag);
    c->doc = doc ? json_incref(doc) : NULL;
}

/* Compare desired and actual; queue the changes. */
/* Another instance's reconciler may have written a group for a tenant that
 * this pass's catalog read came too early to see: a group written less than
 * ES_CATALOG_MARGIN_MS (clock skew between the hosts) before that read is not
 * this pass's to delete. */
#define ES_CATALOG_MARGIN_MS 5000
static bool es_newer_than_catalog(const struct enroll_sync *es, const json_t *doc)
{
    const char *at = json_string_value(json_object_get(doc, "lastUpdatedDateTimeUtc"));
    long long us;
    if (!at || !audit_parse_time(at, &us))
        return false;   /* no time to judge by: as before */
    return us / 1000 >= es->catalog_wall_ms - ES_CATALOG_MARGIN_MS;
}

static void es_plan(struct es_dps *d)
{
    const char *gid;
    json_t *doc;
    int unmanaged = 0, room;
    json_object_foreach(d->actual, gid, doc)
        if (!es_is_managed(doc)) unmanaged++;
    d->planned = true;
    room = (int)d->es->cp->cfg.max_enrollment_groups - unmanaged;
    /* Two passes: every tenant's symmetric group first, then the X.509
     * groups, so that one tenant's CAs never take the room of another
     * tenant's only group. */
    for (int pass = 0; pass < 2; pass++) {
        json_object_foreach(d->desired, gid, doc) {
            json_t *have = json_object_get(d->actual, gid);
            const char *status = json_string_value(json_object_get(have, "provisioningStatus"));
            const char *want = json_string_value(json_object_get(doc, "provisioningStatus"));
            if ((json_object_get(d->thumbs, gid) != NULL) != (pass == 1))
                continue;
            if (room <= 0) {
                if (!have) {
                    d->over_quota++;
                    json_object_set_new(d->refused, gid, json_string("over quota"));
                }
                continue;
            }
            room--;
            if (json_object_get(d->thumbs, gid)) {   /* an X.509 group: its CA, its tags */
                if (!have || !es_same(json_string_value(json_object_get(d->thumbs, gid)), es_thumb_of(have)) ||
                    !es_is_x509_group(gid, have) || !es_same(es_tenant_of(doc), es_tenant_of(have)) ||
                    !es_same(status, want))
                    es_add_change(d, ES_PUT, gid, have, doc);
                continue;
            }
            if (!have || !es_same(es_key_of(doc, "primaryKey"), es_key_of(have, "primaryKey")) ||
                !es_same(es_key_of(doc, "secondaryKey"), es_key_of(have, "secondaryKey")) || !es_is_managed(have) ||
                !es_same(gid, es_tenant_of(have)) ||
                !es_same(status, want))
                es_add_change(d, ES_PUT, gid, have, doc);
        }
    }
    /* Only groups this reconciler made are deleted: a symmetric group (id =
     * its tenant tag, or no tag from before tags) or an X.509 group of a
     * tenant CA (es_is_x509_group: id = "<tenant>.x509.<CA id>" with both
     * tags). A tenant's hand-made X.509 group is tagged with the tenant too,
     * so its devices share the tenant's ownership, and is never touched. */
    json_object_foreach(d->actual, gid, doc) {
        const char *tenant = es_tenant_of(doc);
        if (es_is_managed(doc) && !json_object_get(d->desired, gid) &&
            (!tenant || strcmp(tenant, gid) == 0 || es_is_x509_group(gid, doc))) {
            if (es_newer_than_catalog(d->es, doc))
                continue;   /* judged by a later pass, whose catalog is newer */
            es_add_change(d, ES_DELETE, gid, doc, NULL);
        }
    }
}

static void es_list(struct es_dps *d, const char *continuation);

static void es_on_list(const struct http_result *res, void *arg)
{
    struct es_dps *d = arg;
    size_t i;
    json_t *g;
    if (res->status != 200 || !json_is_array(res->body)) {
        d->unreachable = res->status == 0;
        snprintf(d->error, sizeof d->error, "listing groups: %s (HTTP %d)", res->error ? res->error : "refused",
                 res->status);
        if (res->status != 0) d->failed++;
        es_dps_done(d);
        return;
    }
    json_array_foreach(res->body, i, g) {
        const char *gid = json_string_value(json_object_get(g, "enrollmentGroupId"));
        if (gid) json_object_set(d->actual, gid, g);
    }
    if (res->continuation) {
        es_list(d, res->continuation);
        return;
    }
    es_plan(d);
    es_apply_next(d);
}

static void es_list(struct es_dps *d, const char *continuation)
{
    const char *h[20];
    char sas[700];
    int n;
    es_headers(d, h, sas, sizeof sas, NULL);
    for (n = 0; h[n]; n++) {}
    h[n++] = "x-ms-max-item-count"; h[n++] = "100";
    if (continuation) { h[n++] = "x-ms-continuation"; h[n++] = continuation; }
    h[n] = NULL;
    char path[200];
    snprintf(path, sizeof path, "/enrollmentGroups/query?api-version=2021-10-01&dpsInstance=%s", d->id);
    https_call(d->es->cp->base, d->es->tls, d->endpoint, EVHTTP_REQ_POST, path,
               h, "{\"query\":\"SELECT * FROM enrollmentGroups\"}", ES_TIMEOUT_MS, es_on_list, d);
}

/* The tenant's verified, enabled CAs ([{id, pem, thumbprint}]): one X.509 group each. */
/* The tenant's X.509 groups, one per verified, enabled CA; disabled (not
 * deleted) while the tenant is suspended, like its symmetric group. */
static void es_want_x509(struct es_dps *d, const char *tenant_id, json_t *cas, bool enabled)
{
    size_t i;
    json_t *ca;
    json_array_foreach(cas, i, ca) {
        const char *id = json_string_value(json_object_get(ca, "id"));
        const char *pem = json_string_value(json_object_get(ca, "pem"));
        const char *thumb = json_string_value(json_object_get(ca, "thumbprint"));
        json_t *doc;
        if (!id || !pem || !thumb)
            continue;
        doc = enroll_sync_x509_group_doc(tenant_id, id, pem, enabled);
        json_object_set_new(d->thumbs, json_string_value(json_object_get(doc, "enrollmentGroupId")),
                            json_string(thumb));
        json_object_set_new(d->desired, json_string_value(json_object_get(doc, "enrollmentGroupId")), doc);
    }
}

static void es_on_catalog(const struct pgq_result *q, void *arg)
{
    struct enroll_sync *es = arg;
    json_t *root = NULL, *dpsl, *tenants, *row;
    struct tenant **tv = NULL;
    json_t **trow = NULL;   /* tv[k]'s catalog row (borrowed from root) */
    size_t i, ntenants = 0;

    if (q->status != PGQ_OK || PQntuples(q->res) != 1 || !(root = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL))) {
        es->running = false;
        es_arm(es, es->interval_ms);
        return;
    }
    dpsl = json_object_get(root, "dps");
    tenants = json_object_get(root, "tenants");
    tv = xcalloc(json_array_size(tenants) + 1, sizeof *tv);
    trow = xcalloc(json_array_size(tenants) + 1, sizeof *trow);
    json_array_foreach(tenants, i, row)
        if ((tv[ntenants] = tenant_from_row_env(row, es->cp->env)) != NULL) trow[ntenants++] = row;
    {
        /* Instances no longer managed (removed, credentials dropped): no state, no exclusions. */
        const char *id;
        void *tmp;
        json_t *v, *keep = json_object();
        json_array_foreach(dpsl, i, row)
            if (json_string_value(json_object_get(row, "id")))
                json_object_set_new(keep, json_string_value(json_object_get(row, "id")), json_true());
        json_object_foreach_safe(es->status, tmp, id, v)
            if (!json_object_get(keep, id)) json_object_del(es->status, id);
        json_object_foreach_safe(es->refused, tmp, id, v)
            if (!json_object_get(keep, id)) json_object_del(es->refused, id);
        json_decref(keep);
    }
    es->ndps = (int)json_array_size(dpsl);
    es->dps = xcalloc((size_t)es->ndps + 1, sizeof *es->dps);
    es->pending = 1;
    json_array_foreach(dpsl, i, row) {
        struct es_dps *d = &es->dps[i];
        struct layout_stamp st = {0};
        const char *key = json_string_value(json_object_get(row, "key"));
        d->es = es;
        snprintf(d->id, sizeof d->id, "%s", json_string_value(json_object_get(row, "id")));
        snprintf(d->endpoint, sizeof d->endpoint, "%s", json_string_value(json_object_get(row, "endpoint")));
        snprintf(d->host, sizeof d->host, "%s", json_string_value(json_object_get(row, "host")));
        snprintf(d->key_name, sizeof d->key_name, "%s", json_string_value(json_object_get(row, "keyName")));
        d->keylen = svcapi_key_open(es->cp->env, d->id, key, d->key, sizeof d->key);
        d->desired = json_object();
        d->actual = json_object();
        d->refused = json_object();
        d->thumbs = json_object();
        st.id = (char *)json_string_value(json_object_get(row, "stamp"));
        st.region = (char *)json_string_value(json_object_get(row, "region"));
        st.geo = (char *)json_string_value(json_object_get(row, "geography"));
        st.dedicated = strcmp(json_string_value(json_object_get(row, "tenancy")), "dedicated") == 0;
        for (size_t k = 0; k < ntenants; k++)
            if (placement_policy_admits(tv[k], &st)) {
                char b64[100], prev[100];
                sas_b64_encode(tv[k]->key, (size_t)tv[k]->keylen, b64, sizeof b64);
                if (tv[k]->prev_keylen > 0)
                    sas_b64_encode(tv[k]->prev_key, (size_t)tv[k]->prev_keylen, prev, sizeof prev);
                json_object_set_new(d->desired, tv[k]->id,
                                    enroll_sync_group_doc(tv[k]->id, b64, tv[k]->prev_keylen > 0 ? prev : NULL,
                                                          !tv[k]->suspended));
                OPENSSL_cleanse(prev, sizeof prev);
                OPENSSL_cleanse(b64, sizeof b64);
                es_want_x509(d, tv[k]->id, json_object_get(trow[k], "x509Cas"), !tv[k]->suspended);
            }
        es->pending++;
        if (d->keylen <= 0) {
            snprintf(d->error, sizeof d->error,
                     "the instance's serviceKey does not open (its KEK is not in the KEK file, or it is not base64)");
            d->failed++;
            es_dps_done(d);
            continue;
        }
        es_list(d, NULL);
    }
    for (size_t k = 0; k < ntenants; k++)
        tenant_unref(tv[k]);
    free(tv);
    free(trow);
    json_decref(root);
    if (--es->pending == 0)
        es_finish_pass(es);
}

static void es_start(struct enroll_sync *es)
{
    if (es->running)
        return;
    es->running = true;
    event_del(es->timer);
    es->catalog_wall_ms = util_wall_ms();
    pgpool_query(es->cp->global, es_catalog_sql, 0, NULL, es_on_catalog, es);
}

static void es_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    es_start(arg);
}

struct enroll_sync *enroll_sync_new(struct cp *cp, int interval_ms)
{
    struct enroll_sync *es;
    char err[300];
    SSL_CTX *ctx = tls_client_ctx_new(cp->cfg.dps_ca_file, err, sizeof err);
    if (!ctx) {
        log_warn("event=enrollment_sync_disabled reason=\"%s\"", err);
        return NULL;
    }
    es = xcalloc(1, sizeof *es);
    es->cp = cp;
    es->interval_ms = interval_ms;
    es->tls = ctx;
    es->status = json_object();
    es->refused = json_object();
    es->timer = event_new(cp->base, -1, 0, es_on_timer, es);
    if (!es->timer) {
        log_error("event=event_new_failed");
        abort();
    }
    es_arm(es, 500);
    return es;
}

void enroll_sync_free(struct enroll_sync *es)
{
    if (!es) return;
    /* In-flight calls hold pointers into es->dps; they are only freed with
     * the loop stopped, and their callbacks never run after this. */
    event_free(es->timer);
    for (int i = 0; i < es->ndps; i++)
        es_dps_clear(&es->dps[i]);
    free(es->dps);
    json_decref(es->status);
    json_decref(es->refused);
    SSL_CTX_free(es->tls);
    free(es);
}

void enroll_sync_soon(struct enroll_sync *es)
{
    if (!es) return;
    if (es->running)
        es->again = true;
    else
        es_arm(es, 200);
}

json_t *enroll_sync_status(struct enroll_sync *es, const char *dps_id)
{
    json_t *st = es ? json_object_get(es->status, dps_id) : NULL;
    return st ? json_incref(st) : NULL;
}

const char *enroll_sync_refused(struct enroll_sync *es, const char *dps_id, const char *tenant_id)
{
    json_t *per_dps = es ? json_object_get(es->refused, dps_id) : NULL;
    return per_dps ? json_string_value(json_object_get(per_dps, tenant_id)) : NULL;
}
