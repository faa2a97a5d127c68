/*
 * stamp_ops.c - the stamp-operation outbox's delivery worker (stamp_ops.h).
 *
 * Per geography database, one round at a time: CLAIM (a lease, SKIP LOCKED,
 * only the oldest op of each device) -> per op, in parallel: CREDENTIALS
 * (the DPS instances' service keys from the global catalog) -> the steps of
 * its kind over HTTPS -> DONE (cp_stamp_op_done: the op leaves the outbox,
 * device_history gets the event) or RETRY (cp_stamp_op_retry: backoff,
 * attempts, last_error). The round ends when every op of it has settled.
 *
 * Idempotency: every step can be repeated - a registration or identity
 * already gone is 404 (told from "no such route" or "no such instance" by
 * the error code the stamp gives), an enrollment PUT replaces. Deleting a
 * registration carries the etag of the GET before it, so a device that
 * registered again meanwhile is not deleted unseen (412: tried again).
 */
#include "stamp_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "cp.h"
#include "http_call.h"
#include "log.h"
#include "sas.h"
#include "svcapi.h"
#include "tls.h"
#include "util.h"

#define SO_BATCH "20"              /* ops claimed per geography per round */
#define SO_LEASE "90 seconds"      /* > the steps of one op (up to 5 calls) at SO_CALL_MS each */
#define SO_CALL_MS 10000           /* one HTTP call's deadline */
#define SO_BASE_BACKOFF_MS 500     /* the first retry's delay; doubles per attempt */
#define SO_MAX_BODY (1024 * 1024)
#define SO_API "api-version=2021-10-01"
#define SO_DPS_NO_REG 404202       /* the stamp's errorCode: no such device registration */
#define SO_BASE_HOLD_MS 1000      /* the first hold of an instance that did not answer; doubles */
#define SO_MAX_HOLDS 64            /* DPS instances held back at once (more: the oldest hold goes) */

static const char so_claim_sql[] =
    "UPDATE stamp_ops o SET claimed_until = now() + interval '" SO_LEASE "', claim_token = $1"
    " FROM (SELECT s.id FROM stamp_ops s WHERE s.next_at <= now() AND s.claimed_until < now()"
    "   AND s.dps_id <> ALL($2::text[])"
    "   AND NOT EXISTS (SELECT 1 FROM stamp_ops e WHERE e.tenant_id = s.tenant_id"
    "                     AND e.registration_id = s.registration_id AND e.id < s.id)"
    "   ORDER BY s.next_at, s.id LIMIT " SO_BATCH " FOR UPDATE SKIP LOCKED) c"
    " WHERE o.id = c.id"
    " RETURNING o.id, o.tenant_id, o.registration_id, o.op, o.dps_id, coalesce(o.stamp_id, ''),"
    "  coalesce(o.new_dps_id, ''), o.attempts, extract(epoch FROM now() - o.created_at)::float8,"
    "  coalesce((SELECT d.status FROM devices d WHERE d.tenant_id = o.tenant_id"
    "            AND d.registration_id = o.registration_id), ''),"
    "  coalesce((SELECT d.dps_id FROM devices d WHERE d.tenant_id = o.tenant_id"
    "            AND d.registration_id = o.registration_id), ''),"
    "  EXISTS (SELECT 1 FROM devices x WHERE x.dps_id = o.dps_id AND x.registration_id = o.registration_id"
    "          AND x.status = 'assigned' AND x.tenant_id <> o.tenant_id)";
/* The device as it is now (the claim's columns 9-11): read again between the
 * GETs and the deletes, so that a device assigned there again after the claim
 * keeps what it registered (below, SO_RECHECK). */
static const char so_recheck_sql[] =
    "SELECT coalesce((SELECT d.status FROM devices d WHERE d.tenant_id = $1 AND d.registration_id = $2), ''),"
    " coalesce((SELECT d.dps_id FROM devices d WHERE d.tenant_id = $1 AND d.registration_id = $2), ''),"
    " EXISTS (SELECT 1 FROM devices x WHERE x.dps_id = $3 AND x.registration_id = $2"
    "         AND x.status = 'assigned' AND x.tenant_id <> $1)";
static const char so_done_sql[] = "SELECT cp_stamp_op_done($1::bigint, $2, $3, $4)";
static const char so_retry_sql[] = "SELECT cp_stamp_op_retry($1::bigint, $2, $3, $4::bigint, $5::boolean)";
static const char so_backlog_sql[] =
    "SELECT coalesce(json_object_agg(dps_id, json_build_object('undelivered', undelivered, 'failing', failing,"
    " 'oldestAgeSeconds', round(oldest_age_s::numeric, 3), 'lastError', last_error)), '{}')::text"
    " FROM cp_stamp_op_backlog()";
static const char so_creds_sql[] =
    "SELECT id, endpoint, coalesce(service_host_name, endpoint), service_key_name, service_key"
    " FROM dps_instances WHERE id = ANY($1::text[])"
    " AND service_key IS NOT NULL AND service_key_name IS NOT NULL";

struct so_cred {
    bool have;
    char endpoint[300], svc_host[300], key_name[80], host[256];
    int port;
    unsigned char key[64];
    size_t keylen;
};

enum so_step { SO_NEWREG_GET, SO_REG_GET, SO_ENR_PUT, SO_HUB_GET, SO_HUB_PUT, SO_RECHECK, SO_HUB_DELETE, SO_REG_DELETE };

struct so_geo;

/* One claimed op, from its claim until it is settled in the database. */
struct so_op {
    struct so_geo *g;
    char id[24], tenant[80], reg[260], op[16], dps[80], stamp[80], new_dps[80];
    int attempts;
    double age_s;
    char dev_status[16], dev_dps[80];
    bool other_holder;           /* another tenant's device holds the id at this instance */
    struct so_cred cred, new_cred;
    enum so_step step;
    char hub[300], devid[260], reg_etag[40], hub_etag[40];
    char new_hub[300], new_devid[260];   /* the device's registration where it is now, if read */
    json_t *hub_doc;             /* the identity as GET returned it (retire) */
    struct http_call *call;      /* in flight, or NULL */
    bool settling;               /* the done/retry statement is in flight */
};

struct so_geo {
    struct stamp_ops *so;
    int gi;
    struct pgpool *pool;
    bool busy, backlog_busy;
    char token[33];
    struct so_op **ops;
    int nops, open;              /* claimed this round; not yet settled */
    json_t *backlog;             /* dps id -> backlog, from this geography's last read */
};

/* A DPS instance that did not answer (down, no credentials): its ops are not
 * claimed until `until_ms`, so that a stamp down for hours with a million
 * ops doesn't take every round from the healthy ones. The hold doubles per
 * failed period (from SO_BASE_HOLD_MS, capped at stampOps.maxBackoffMs)
 * and ends at the instance's first answer. */
struct so_hold {
    char dps[80];
    int64_t until_ms, step_ms;   /* util_mono_ms() clock */
};

struct stamp_ops {
    struct cp *cp;
    struct so_hold holds[SO_MAX_HOLDS];
    SSL_CTX *tls;
    struct event *timer;
    struct so_geo geo[CP_MAX_GEOGRAPHIES];
    int ngeo;
    int64_t max_backoff_ms, grace_s, poll_ms;
};

static void so_step_run(struct so_op *o);

/* ---- instances held back ---- */

static struct so_hold *so_hold_find(struct stamp_ops *so, const char *dps)
{
    for (int i = 0; i < SO_MAX_HOLDS; i++)
        if (so->holds[i].dps[0] && strcmp(so->holds[i].dps, dps) == 0)
            return &so->holds[i];
    return NULL;
}

/* The instance did not answer: hold its ops back. The ops of one round fail
 * together, so the hold grows once per period, not once per op. */
static void so_instance_failed(struct stamp_ops *so, const char *dps)
{
    struct so_hold *h = so_hold_find(so, dps);
    int64_t now = util_mono_ms();
    if (!h) {
        h = &so->holds[0];
        for (int i = 0; i < SO_MAX_HOLDS; i++) {
            if (!so->holds[i].dps[0]) {
                h = &so->holds[i];
                break;
            }
            if (so->holds[i].until_ms < h->until_ms)
                h = &so->holds[i];
        }
        *h = (struct so_hold){.until_ms = 0, .step_ms = 0};
        snprintf(h->dps, sizeof h->dps, "%s", dps);
    }
    if (h->until_ms > now)
        return;
    h->step_ms = h->step_ms ? h->step_ms * 2 : SO_BASE_HOLD_MS;
    if (h->step_ms > so->max_backoff_ms)
        h->step_ms = so->max_backoff_ms;
    h->until_ms = now + h->step_ms;
    log_warn("event=stamp_ops_instance_held dps=%s hold_ms=%lld", dps, (long long)h->step_ms);
}

static void so_instance_ok(struct stamp_ops *so, const char *dps)
{
    struct so_hold *h = so_hold_find(so, dps);
    if (h)
        *h = (struct so_hold){.until_ms = 0};
}

/* The instances held now, as a text[] literal (the claim skips their ops). */
static char *so_held_list(struct stamp_ops *so)
{
    json_t *ids = json_array();
    int64_t now = util_mono_ms();
    char *list, *p;
    for (int i = 0; i < SO_MAX_HOLDS; i++)
        if (so->holds[i].dps[0] && so->holds[i].until_ms > now)
            json_array_append_new(ids, json_string(so->holds[i].dps));
    list = json_dumps(ids, JSON_COMPACT);   /* JSON strings quote as array elements do */
    json_decref(ids);
    if (!list) {
        log_error("event=out_of_memory");
        abort();
    }
    list[0] = '{';
    if ((p = strrchr(list, ']')))
        *p = '}';
    return list;
}

/* Whether an answer shows the instance up: it answered, and not with "who
 * are you" (401/403), "slow down" (429), a server error or a 404 that names
 * nothing (no such route or instance). */
static bool so_answer_up(const struct http_result *res);

/* ---- settling ---- */

static void so_op_free(struct so_op *o)
{
    if (o->call)
        http_call_cancel(o->call);
    json_decref(o->hub_doc);
    OPENSSL_cleanse(o->cred.key, sizeof o->cred.key);
    OPENSSL_cleanse(o->new_cred.key, sizeof o->new_cred.key);
    free(o);
}

static void so_round_end(struct so_geo *g)
{
    for (int i = 0; i < g->nops; i++)
        so_op_free(g->ops[i]);
    free(g->ops);
    g->ops = NULL;
    g->nops = 0;
    g->busy = false;
}

static void so_on_settled(const struct pgq_result *q, void *arg)
{
    struct so_op *o = arg;
    struct so_geo *g = o->g;
    if (q->status != PGQ_OK)   /* the lease brings the op back */
        log_warn("event=stamp_op_settle_failed op_id=%s error=\"%s\"", o->id, q->message ? q->message : "");
    if (--g->open == 0)
        so_round_end(g);
}

/* Delivered (or obsolete): out of the outbox, into the device's history. */
static void so_done(struct so_op *o, const char *event, const char *detail)
{
    const char *v[4] = {o->id, o->g->token, event, detail};
    log_info("event=stamp_op_delivered op_id=%s op=%s dps=%s outcome=%s attempts=%d", o->id, o->op, o->dps, event,
             o->attempts + 1);
    o->settling = true;
    pgpool_query(o->g->pool, so_done_sql, 4, v, so_on_settled, o);
}

/* Not now: after the backoff (counted) or a wait (not counted). */
static void so_retry(struct so_op *o, bool count, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void so_retry(struct so_op *o, bool count, const char *fmt, ...)
{
    struct stamp_ops *so = o->g->so;
    char err[400], delay[24];
    int64_t ms = SO_BASE_BACKOFF_MS;
    va_list ap;
    const char *v[5];
    va_start(ap, fmt);
    vsnprintf(err, sizeof err, fmt, ap);
    va_end(ap);
    for (int i = 0; i < o->attempts && ms < so->max_backoff_ms; i++)
        ms *= 2;
    if (ms > so->max_backoff_ms)
        ms = so->max_backoff_ms;
    snprintf(delay, sizeof delay, "%lld", (long long)ms);
    v[0] = o->id; v[1] = o->g->token; v[2] = err; v[3] = delay; v[4] = count ? "true" : "false";
    if (count)
        log_warn("event=stamp_op_failed op_id=%s op=%s dps=%s attempts=%d retry_ms=%lld error=\"%s\"", o->id, o->op,
                 o->dps, o->attempts + 1, (long long)ms, err);
    o->settling = true;
    pgpool_query(o->g->pool, so_retry_sql, 5, v, so_on_settled, o);
}

/* ---- HTTP ---- */

/* The errorCode of a stamp's DPS error body, or 0. */
static long so_dps_code(const json_t *body)
{
    return (long)json_integer_value(json_object_get(body, "errorCode"));
}

/* A hub registry 404 that says the identity is not there (IoT Hub's
 * "DeviceNotFound"), not a route the stamp does not have. */
static bool so_hub_not_found(const struct http_result *res)
{
    char *s;
    bool found;
    if (res->status != 404 || !res->body)
        return false;
    s = json_dumps(res->body, JSON_COMPACT);
    found = s && strstr(s, "DeviceNotFound") != NULL;
    free(s);
    return found;
}

static void so_on_http(const struct http_result *res, void *arg);

/* An If-Match value for an etag as a body carried it ("\"3\"" or "3"). */
static void so_if_match(const json_t *etag, char *out, size_t outlen)
{
    const char *s = json_string_value(etag);
    if (json_is_integer(etag))
        snprintf(out, outlen, "\"%lld\"", (long long)json_integer_value(etag));
    else if (!s || !*s)
        snprintf(out, outlen, "*");
    else if (s[0] == '"')
        snprintf(out, outlen, "%s", s);
    else
        snprintf(out, outlen, "\"%s\"", s);
}

/* A call to the service API of an instance (to_hub NULL), or to the
 * registry of hub to_hub through that instance's endpoint (contract R). */
static void so_call(struct so_op *o, const struct so_cred *c, const char *to_hub, enum evhttp_cmd_type method,
                    const char *path, const char *if_match, const json_t *doc)
{
    char sas[700], target[700];
    const char *h[16];
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    /* the registry of a hub is signed for the hub (contract R) */
    svcapi_headers(h, sas, sizeof sas, to_hub ? to_hub : c->svc_host, c->key, c->keylen, c->key_name, if_match);
    if (to_hub)
        snprintf(target, sizeof target, "%s?" SO_API, path);
    else
        snprintf(target, sizeof target, "%s?" SO_API "&dpsInstance=%s", path, c == &o->new_cred ? o->new_dps : o->dps);
    o->call = http_call_start(o->g->so->cp->base, o->g->so->tls, c->host, c->port, to_hub ? to_hub : c->endpoint,
                              method, target, h, body, SO_CALL_MS, SO_MAX_BODY, so_on_http, o);
    OPENSSL_cleanse(sas, sizeof sas);
    free(body);
}

/* The disabled individual enrollment that revokes the id (the DPS revocation
 * model): its keys are random and never told, so only the group-derived key
 * could have matched - and the individual enrollment wins over the group. */
static json_t *so_retire_doc(const struct so_op *o)
{
    unsigned char raw[32];
    char k1[64], k2[64];
    json_t *doc;
    if (RAND_bytes(raw, sizeof raw) != 1)
        return NULL;
    sas_b64_encode(raw, sizeof raw, k1, sizeof k1);
    if (RAND_bytes(raw, sizeof raw) != 1)
        return NULL;
    sas_b64_encode(raw, sizeof raw, k2, sizeof k2);
    OPENSSL_cleanse(raw, sizeof raw);
    doc = json_pack("{s:s, s:{s:s, s:{s:s, s:s}}, s:s, s:{s:{s:s, s:s, s:s}, s:{s:{}}}}", "registrationId", o->reg,
                    "attestation", "type", "symmetricKey", "symmetricKey", "primaryKey", k1, "secondaryKey", k2,
                    "provisioningStatus", "disabled", "initialTwin", "tags", "managedBy", "stampcp", "tenantId",
                    o->tenant, "retired", "true", "properties", "desired");
    OPENSSL_cleanse(k1, sizeof k1);
    OPENSSL_cleanse(k2, sizeof k2);
    return doc;
}

static const char *so_step_name(enum so_step s)
{
    static const char *const names[] = {"GET registration at the new instance", "GET registration",
                                        "PUT disabled enrollment", "GET hub identity", "PUT hub identity",
                                        "device re-check", "DELETE hub identity", "DELETE registration"};
    return names[s];
}

/* A remove_moved op of a device still at its new instance waits there for
 * the device (or the grace period); every other op may act at once. */
static bool so_may_act(const struct so_op *o)
{
    return !(strcmp(o->op, "remove_moved") == 0 && strcmp(o->dev_status, "assigned") == 0 &&
             strcmp(o->dev_dps, o->new_dps) == 0 && o->age_s < (double)o->g->so->grace_s);
}

/* The old registration's hub identity is the one the device's registration
 * where it is now uses (both instances on one stamp, the same hub and device
 * id: the stamp moved the identity over to the new registration). */
static bool so_identity_moved_on(const struct so_op *o)
{
    return o->hub[0] && o->devid[0] && strcasecmp(o->hub, o->new_hub) == 0 && strcmp(o->devid, o->new_devid) == 0;
}

/* Whether a remove_moved op may act now: the device is registered at its new
 * instance, or the grace period is over. */
static void so_after_newreg(struct so_op *o, const struct http_result *res)
{
    const char *st = json_string_value(json_object_get(res->body, "status"));
    const char *hub = json_string_value(json_object_get(res->body, "assignedHub"));
    const char *dev = json_string_value(json_object_get(res->body, "deviceId"));
    if (res->status == 200 && st && strcmp(st, "assigned") == 0) {
        /* Two instances of one stamp share its hubs: the new registration may
         * have taken over the very identity the old one made (so_after_reg_get). */
        snprintf(o->new_hub, sizeof o->new_hub, "%s", hub ? hub : "");
        snprintf(o->new_devid, sizeof o->new_devid, "%s", dev ? dev : "");
        o->step = SO_REG_GET;
        so_step_run(o);
    } else if ((res->status == 200 || (res->status == 404 && so_dps_code(res->body) == SO_DPS_NO_REG)) &&
               !so_may_act(o)) {
        so_retry(o, false, "waiting until the device is registered at %s (grace %llds)", o->new_dps,
                 (long long)o->g->so->grace_s);
    } else if (res->status == 200 || (res->status == 404 && so_dps_code(res->body) == SO_DPS_NO_REG)) {
        o->step = SO_REG_GET;   /* not registered there: no identity of its to keep */
        so_step_run(o);
    } else {
        so_retry(o, true, "%s at %s: %s (HTTP %d)", so_step_name(o->step), o->new_dps,
                 res->error ? res->error : "refused", res->status);
    }
}

static void so_after_reg_get(struct so_op *o, const struct http_result *res)
{
    const char *hub = json_string_value(json_object_get(res->body, "assignedHub"));
    const char *dev = json_string_value(json_object_get(res->body, "deviceId"));
    bool retire = strcmp(o->op, "retire") == 0;
    if (res->status == 404 && so_dps_code(res->body) == SO_DPS_NO_REG) {
        if (!retire) {   /* gone already: its identity went before it (the order below) */
            so_done(o, "stamp_removed", "no registration");
            return;
        }
        o->step = SO_ENR_PUT;   /* nothing registered: the enrollment still blocks the id */
        so_step_run(o);
        return;
    }
    if (res->status != 200) {
        so_retry(o, true, "%s at %s: %s (HTTP %d)", so_step_name(o->step), o->dps,
                 res->error ? res->error : "refused", res->status);
        return;
    }
    snprintf(o->hub, sizeof o->hub, "%s", hub ? hub : "");
    snprintf(o->devid, sizeof o->devid, "%s", dev ? dev : "");
    so_if_match(json_object_get(res->body, "etag"), o->reg_etag, sizeof o->reg_etag);
    if (retire)
        o->step = SO_ENR_PUT;
    else if (so_identity_moved_on(o))
        o->step = SO_RECHECK;   /* the identity is the device's registration's where it is now: keep it */
    else   /* the identity's etag first: a device registering again changes it */
        o->step = o->hub[0] && o->devid[0] ? SO_HUB_GET : SO_RECHECK;
    so_step_run(o);
}

static bool so_answer_up(const struct http_result *res)
{
    if (res->status == 0 || res->status >= 500 || res->status == 401 || res->status == 403 || res->status == 429)
        return false;
    return res->status != 404 || so_dps_code(res->body) == SO_DPS_NO_REG || so_hub_not_found(res);
}

static void so_on_http(const struct http_result *res, void *arg)
{
    struct so_op *o = arg;
    bool ok2xx = res->status >= 200 && res->status < 300;
    o->call = NULL;
    if (o->step != SO_NEWREG_GET) {   /* a call to the instance acted on: is it up? */
        if (so_answer_up(res))
            so_instance_ok(o->g->so, o->dps);
        else
            so_instance_failed(o->g->so, o->dps);
    }
    switch (o->step) {
    case SO_NEWREG_GET:
        so_after_newreg(o, res);
        return;
    case SO_REG_GET:
        so_after_reg_get(o, res);
        return;
    case SO_ENR_PUT:
        if (!ok2xx)
            break;
        if (!o->hub[0] || !o->devid[0]) {
            so_done(o, "stamp_disabled", "enrollment disabled; no hub identity");
            return;
        }
        o->step = SO_HUB_GET;
        so_step_run(o);
        return;
    case SO_HUB_GET:
        if (so_hub_not_found(res)) {
            if (strcmp(o->op, "retire") == 0) {
                so_done(o, "stamp_disabled", "enrollment disabled; no hub identity");
                return;
            }
            o->hub[0] = '\0';   /* no identity to delete */
            o->step = SO_RECHECK;
            so_step_run(o);
            return;
        }
        if (res->status != 200 || !json_is_object(res->body))
            break;
        if (strcmp(o->op, "retire") != 0) {
            so_if_match(json_object_get(res->body, "etag"), o->hub_etag, sizeof o->hub_etag);
            o->step = SO_RECHECK;
            so_step_run(o);
            return;
        }
        json_decref(o->hub_doc);
        o->hub_doc = json_deep_copy(res->body);
        o->step = SO_HUB_PUT;
        so_step_run(o);
        return;
    case SO_HUB_PUT:
        if (so_hub_not_found(res) || ok2xx) {
            so_done(o, "stamp_disabled", ok2xx ? "enrollment and hub identity disabled"
                                               : "enrollment disabled; no hub identity");
            return;
        }
        break;
    case SO_RECHECK:   /* a query, not a call */
        break;
    case SO_HUB_DELETE:
        if (!ok2xx && !so_hub_not_found(res))
            break;
        o->step = SO_REG_DELETE;
        so_step_run(o);
        return;
    case SO_REG_DELETE:
        if (ok2xx || (res->status == 404 && so_dps_code(res->body) == SO_DPS_NO_REG)) {
            so_done(o, "stamp_removed", so_identity_moved_on(o) ? "registration deleted; its hub identity kept (the "
                                                                  "device's registration where it is now uses it)"
                                        : o->hub[0] ? "registration and hub identity deleted" : "registration deleted");
            return;
        }
        break;
    }
    so_retry(o, true, "%s at %s: %s (HTTP %d)", so_step_name(o->step), o->dps,
             res->error ? res->error : (res->status == 404 ? "not found (no such route?)" : "refused"), res->status);
}

static bool so_obsolete(const struct so_op *o);
static void so_skip(struct so_op *o);

/*
 * Before deleting: is the device still not assigned at the instance? The
 * claim said so, but it may have been assigned there again since, and have
 * registered again. This reads the database AFTER the registration's and
 * the identity's etags were read, and the deletes carry those etags: a
 * registration made after a new assignment (which the device can only learn
 * of after this read said "not assigned") changes both etags, so the
 * deletes fail (412, tried again, then skipped) instead of removing it.
 */
static void so_on_recheck(const struct pgq_result *q, void *arg)
{
    struct so_op *o = arg;
    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        so_retry(o, true, "device re-check: %s", q->message ? q->message : "no answer");
        return;
    }
    snprintf(o->dev_status, sizeof o->dev_status, "%s", PQgetvalue(q->res, 0, 0));
    snprintf(o->dev_dps, sizeof o->dev_dps, "%s", PQgetvalue(q->res, 0, 1));
    o->other_holder = PQgetvalue(q->res, 0, 2)[0] == 't';
    if (so_obsolete(o)) {
        so_skip(o);
        return;
    }
    o->step = o->hub[0] && o->devid[0] && !so_identity_moved_on(o) ? SO_HUB_DELETE : SO_REG_DELETE;
    so_step_run(o);
}

static void so_step_run(struct so_op *o)
{
    char path[700];
    char *ereg = evhttp_encode_uri(o->reg), *edev = evhttp_encode_uri(o->devid);
    switch (o->step) {
    case SO_NEWREG_GET:
        snprintf(path, sizeof path, "/registrations/%s", ereg);
        so_call(o, &o->new_cred, NULL, EVHTTP_REQ_GET, path, NULL, NULL);
        break;
    case SO_RECHECK: {
        const char *v[3] = {o->tenant, o->reg, o->dps};
        pgpool_query(o->g->pool, so_recheck_sql, 3, v, so_on_recheck, o);
        break;
    }
    case SO_REG_GET:
        snprintf(path, sizeof path, "/registrations/%s", ereg);
        so_call(o, &o->cred, NULL, EVHTTP_REQ_GET, path, NULL, NULL);
        break;
    case SO_ENR_PUT: {
        json_t *doc = so_retire_doc(o);
        snprintf(path, sizeof path, "/enrollments/%s", ereg);
        if (doc)
            so_call(o, &o->cred, NULL, EVHTTP_REQ_PUT, path, NULL, doc);
        else
            o->call = http_call_failed(o->g->so->cp->base, "no random bytes for the enrollment keys", so_on_http, o);
        json_decref(doc);
        break;
    }
    case SO_HUB_GET:
        snprintf(path, sizeof path, "/devices/%s", edev);
        so_call(o, &o->cred, o->hub, EVHTTP_REQ_GET, path, NULL, NULL);
        break;
    case SO_HUB_PUT: {
        char im[80];
        so_if_match(json_object_get(o->hub_doc, "etag"), im, sizeof im);
        json_object_set_new(o->hub_doc, "status", json_string("disabled"));
        json_object_set_new(o->hub_doc, "statusReason", json_string("retired by stampcp"));
        snprintf(path, sizeof path, "/devices/%s", edev);
        so_call(o, &o->cred, o->hub, EVHTTP_REQ_PUT, path, im, o->hub_doc);
        break;
    }
    case SO_HUB_DELETE:
        snprintf(path, sizeof path, "/devices/%s", edev);
        so_call(o, &o->cred, o->hub, EVHTTP_REQ_DELETE, path, o->hub_etag[0] ? o->hub_etag : "*", NULL);
        break;
    case SO_REG_DELETE:
        snprintf(path, sizeof path, "/registrations/%s", ereg);
        so_call(o, &o->cred, NULL, EVHTTP_REQ_DELETE, path, o->reg_etag[0] ? o->reg_etag : "*", NULL);
        break;
    }
    free(ereg);
    free(edev);
}

/* ---- starting an op ---- */

/* Nothing to do at the stamp any more: the device is (again) assigned at
 * that instance, or another tenant's device holds the id there now. */
static bool so_obsolete(const struct so_op *o)
{
    if (strcmp(o->op, "retire") == 0)
        return false;
    return (strcmp(o->dev_status, "assigned") == 0 && strcmp(o->dev_dps, o->dps) == 0) || o->other_holder;
}

static void so_skip(struct so_op *o)
{
    so_done(o, "stamp_op_skipped", o->other_holder ? "another tenant's device holds the id there"
                                                   : "the device is assigned there again");
}

static void so_begin(struct so_op *o)
{
    if (so_obsolete(o)) {
        so_skip(o);
        return;
    }
    if (!o->cred.have) {
        so_instance_failed(o->g->so, o->dps);
        so_retry(o, true, "DPS instance %s has no usable service credentials (serviceKeyName, serviceKey)", o->dps);
        return;
    }
    o->step = SO_REG_GET;
    if (strcmp(o->op, "retire") != 0 && o->new_dps[0]) {
        /* Read the device's registration where it is now first: a moved
         * remove waits for it, and no op deletes an identity it took over. */
        if (o->new_cred.have)
            o->step = SO_NEWREG_GET;
        else if (!so_may_act(o)) {
            so_retry(o, false, "waiting for the grace period: %s has no service credentials to check the device",
                     o->new_dps);
            return;
        }
    }
    so_step_run(o);
}

static void so_cred_read(struct stamp_ops *so, const PGresult *res, int row, struct so_cred *c)
{
    int keylen = svcapi_key_open(so->cp->env, PQgetvalue(res, row, 0), PQgetvalue(res, row, 4), c->key, sizeof c->key);
    snprintf(c->endpoint, sizeof c->endpoint, "%s", PQgetvalue(res, row, 1));
    snprintf(c->svc_host, sizeof c->svc_host, "%s", PQgetvalue(res, row, 2));
    snprintf(c->key_name, sizeof c->key_name, "%s", PQgetvalue(res, row, 3));
    c->keylen = keylen > 0 ? (size_t)keylen : 0;
    c->have = keylen > 0 && util_parse_hostport(c->endpoint, c->host, sizeof c->host, &c->port);
}

static void so_on_creds(const struct pgq_result *q, void *arg)
{
    struct so_geo *g = arg;
    int n = q->status == PGQ_OK ? PQntuples(q->res) : 0;
    if (q->status != PGQ_OK) {   /* the catalog is away: the lease brings the ops back */
        log_warn("event=stamp_ops_catalog_failed error=\"%s\"", q->message ? q->message : "");
        so_round_end(g);
        return;
    }
    for (int i = 0; i < g->nops; i++) {
        struct so_op *o = g->ops[i];
        for (int r = 0; r < n; r++) {
            if (strcmp(PQgetvalue(q->res, r, 0), o->dps) == 0)
                so_cred_read(g->so, q->res, r, &o->cred);
            if (o->new_dps[0] && strcmp(PQgetvalue(q->res, r, 0), o->new_dps) == 0)
                so_cred_read(g->so, q->res, r, &o->new_cred);
        }
    }
    for (int i = 0; i < g->nops; i++)
        so_begin(g->ops[i]);
}

static void so_on_claimed(const struct pgq_result *q, void *arg)
{
    struct so_geo *g = arg;
    int n = q->status == PGQ_OK ? PQntuples(q->res) : 0;
    json_t *ids = json_array();
    char *list = NULL, *p;
    const char *v[1];
    if (n == 0) {
        json_decref(ids);
        g->busy = false;
        return;
    }
    g->ops = xcalloc((size_t)n, sizeof *g->ops);
    for (int i = 0; i < n; i++) {
        struct so_op *o = xcalloc(1, sizeof *o);
        const PGresult *r = q->res;
        o->g = g;
        snprintf(o->id, sizeof o->id, "%s", PQgetvalue(r, i, 0));
        snprintf(o->tenant, sizeof o->tenant, "%s", PQgetvalue(r, i, 1));
        snprintf(o->reg, sizeof o->reg, "%s", PQgetvalue(r, i, 2));
        snprintf(o->op, sizeof o->op, "%s", PQgetvalue(r, i, 3));
        snprintf(o->dps, sizeof o->dps, "%s", PQgetvalue(r, i, 4));
        snprintf(o->stamp, sizeof o->stamp, "%s", PQgetvalue(r, i, 5));
        snprintf(o->new_dps, sizeof o->new_dps, "%s", PQgetvalue(r, i, 6));
        o->attempts = atoi(PQgetvalue(r, i, 7));
        o->age_s = atof(PQgetvalue(r, i, 8));
        snprintf(o->dev_status, sizeof o->dev_status, "%s", PQgetvalue(r, i, 9));
        snprintf(o->dev_dps, sizeof o->dev_dps, "%s", PQgetvalue(r, i, 10));
        o->other_holder = PQgetvalue(r, i, 11)[0] == 't';
        /* A device assigned elsewhere now (moved on, or placed again after a
         * deprovision): its registration there is what a delete must spare. */
        if (strcmp(o->op, "retire") != 0 && strcmp(o->dev_status, "assigned") == 0 && strcmp(o->dev_dps, o->dps) != 0)
            snprintf(o->new_dps, sizeof o->new_dps, "%s", o->dev_dps);
        g->ops[g->nops++] = o;
        json_array_append_new(ids, json_string(o->dps));
        if (o->new_dps[0])
            json_array_append_new(ids, json_string(o->new_dps));
    }
    g->open = n;
    /* a text[] literal: the ids as JSON strings, brackets made braces */
    list = json_dumps(ids, JSON_COMPACT);
    json_decref(ids);
    if (!list) {
        log_error("event=out_of_memory");
        abort();
    }
    list[0] = '{';
    p = strrchr(list, ']');
    if (p)
        *p = '}';
    v[0] = list;
    pgpool_query(g->so->cp->global, so_creds_sql, 1, v, so_on_creds, g);
    free(list);
}

/* ---- the poll ---- */

static void so_on_backlog(const struct pgq_result *q, void *arg)
{
    struct so_geo *g = arg;
    json_t *b;
    g->backlog_busy = false;
    if (q->status != PGQ_OK || PQntuples(q->res) != 1 || !(b = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL)))
        return;
    json_decref(g->backlog);
    g->backlog = b;
}

static void so_tick(evutil_socket_t fd, short what, void *arg)
{
    struct stamp_ops *so = arg;
    struct timeval tv = {(time_t)(so->poll_ms / 1000), (suseconds_t)((so->poll_ms % 1000) * 1000)};
    (void)fd; (void)what;
    for (int i = 0; i < so->ngeo; i++) {
        struct so_geo *g = &so->geo[i];
        const char *v[2];
        char *held;
        if (!pgpool_is_ready(g->pool))
            continue;
        if (!g->backlog_busy) {
            g->backlog_busy = true;
            pgpool_query(g->pool, so_backlog_sql, 0, NULL, so_on_backlog, g);
        }
        if (g->busy || !pgpool_is_ready(so->cp->global))
            continue;
        g->busy = true;
        util_random_hex(g->token, 16);
        held = so_held_list(so);
        v[0] = g->token;
        v[1] = held;
        pgpool_query(g->pool, so_claim_sql, 2, v, so_on_claimed, g);
        free(held);
    }
    event_add(so->timer, &tv);
}

struct stamp_ops *stamp_ops_new(struct cp *cp)
{
    struct stamp_ops *so;
    struct timeval now = {0, 0};   /* the first round at start-up: what a crash left behind */
    char err[300];
    SSL_CTX *ctx;
    if (!cp->cfg.stamp_ops_enabled) {
        log_warn("event=stamp_ops_disabled reason=\"stampOps.enabled is false\"");
        return NULL;
    }
    if (!(ctx = tls_client_ctx_new(cp->cfg.dps_ca_file, err, sizeof err))) {
        log_warn("event=stamp_ops_disabled reason=\"%s\"", err);
        return NULL;
    }
    so = xcalloc(1, sizeof *so);
    so->cp = cp;
    so->tls = ctx;
    so->poll_ms = cp->cfg.stamp_ops_poll_ms;
    so->max_backoff_ms = cp->cfg.stamp_ops_max_backoff_ms;
    so->grace_s = cp->cfg.stamp_ops_move_grace_s;
    for (int i = 0; i < cp->cfg.n_geos; i++)
        so->geo[so->ngeo++] = (struct so_geo){.so = so, .gi = i, .pool = cp->geo[i]};
    so->timer = evtimer_new(cp->base, so_tick, so);
    if (!so->timer) {
        log_error("event=event_new_failed");
        abort();
    }
    event_add(so->timer, &now);
    return so;
}

void stamp_ops_free(struct stamp_ops *so)
{
    if (!so)
        return;
    /* With the loop stopped: calls are cancelled here, and the pools, freed
     * later, drop the queries in flight without their callbacks. */
    event_free(so->timer);
    for (int i = 0; i < so->ngeo; i++) {
        so_round_end(&so->geo[i]);
        json_decref(so->geo[i].backlog);
    }
    SSL_CTX_free(so->tls);
    free(so);
}

json_t *stamp_ops_backlog(struct stamp_ops *so, const char *dps_id)
{
    long long undelivered = 0, failing = 0;
    double oldest = 0;
    const char *last = NULL;
    bool read = false;
    if (!so)
        return NULL;
    for (int i = 0; i < so->ngeo; i++) {
        json_t *b = so->geo[i].backlog ? json_object_get(so->geo[i].backlog, dps_id) : NULL;
        double age;
        if (so->geo[i].backlog)
            read = true;
        if (!b)
            continue;
        undelivered += json_integer_value(json_object_get(b, "undelivered"));
        failing += json_integer_value(json_object_get(b, "failing"));
        age = json_number_value(json_object_get(b, "oldestAgeSeconds"));
        if (age > oldest)
            oldest = age;
        if (json_string_value(json_object_get(b, "lastError")))
            last = json_string_value(json_object_get(b, "lastError"));
    }
    if (!read)
        return NULL;
    return json_pack("{s:I, s:I, s:f, s:s?}", "undelivered", (json_int_t)undelivered, "failing", (json_int_t)failing,
                     "oldestAgeSeconds", oldest, "lastError", last);
}
