/*
 * dps_device.c - the Azure DPS device API of the stamp (docs:
 * ../shared/specs/dps-wire.md §2-5, §9; docs/provisioning-device.md).
 *
 *   PUT  /{scope}/registrations/{id}/register          register (202 assigning)
 *   GET  /{scope}/registrations/{id}/operations/{op}   operation status
 *   POST /{scope}/registrations/{id}                   registration status lookup
 *
 * Every request is authenticated first (SAS for symmetric keys, the TLS
 * client certificate for X.509) and only then charged to the rate limits, so
 * junk costs no tenant any budget; failed attempts are charged to their own
 * per-source-address limit instead (authFailuresPer10s), checked before any
 * database or HMAC work.
 *
 * Ownership (docs/stamp-dps.md "Registration ownership"): a registration row
 * belongs to the owner of the enrollment that created it (the tenant, for
 * enrollments the control plane manages; else that enrollment alone). A
 * credential is checked only against the enrollments that could own the row:
 * the individual enrollment of the id if there is one (it wins over groups,
 * and a disabled one blocks group-derived keys), else the row owner's groups
 * (or, for a first registration, every group). A credential of another owner
 * gets the same 401 as a wrong key, and register never rewrites the owner.
 *
 *   register: one upsert commits the registration row in 'assigning' with a
 *   fresh operation id BEFORE the 202 answer; the allocation (a "job") then
 *   runs on the loop and settles the row to 'assigned' / 'failed' in one
 *   UPDATE ... WHERE status = 'assigning' AND operation_id = $op, so a job is
 *   applied at most once and a superseded one (the device registered again)
 *   changes nothing. Jobs in flight are kept in memory by
 *   instance/registration/operation; a poll that finds its row 'assigning'
 *   with no job (the agent restarted, or a gentle-throttle deferral) starts
 *   one.
 *
 * Limits (per instance, in memory): registrationsPerMinute as a token bucket
 * (429 + Retry-After, or with "throttle":"gentle" 202 assigning + a longer
 * Retry-After with the allocation deferred to the poll that has a token),
 * pollsPer10s per device (GCRA; 429 + Retry-After), lookupsPerMinute (token
 * bucket, 429), maxRegistrations (an unassigned device is failed with
 * errorCode 403002 when the instance holds that many).
 */
#include <event2/event.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <event2/http.h>

#include "dps_alloc.h"
#include "dps_limits.h"
#include "dps_server.h"
#include "dps_webhook.h"
#include "dps_x509.h"
#include "hub_registry.h"
#include "envelope.h"
#include "log.h"
#include "sas.h"
#include "strmap.h"
#include "util.h"

#define DPS_TICK_MS          1000
#define DPS_REFRESH_TICKS    5       /* counts from the database every 5 s */
#define DPS_GROUP_ROWS_MAX   10000   /* per-group counts kept: far above n_dps * groups cap */
#define DPS_RETRY_AFTER_S    1       /* while an allocation runs */
#define DPS_REGID_MAX        128
#define DPS_AUTH_FAIL_KEYS   65536   /* source addresses tracked for failed authentications */

/* Device API error codes (errorCode in bodies; HTTP status * 1000 + n). */
#define ERR_BAD_REQUEST        400001  /* path, id or body malformed */
#define ERR_BAD_BODY           400002  /* body not JSON / registrationId missing or different */
#define ERR_ALLOC_CONFIG       400207  /* enrollment's allocation settings unusable */
#define ERR_WEBHOOK_ANSWER     400208  /* webhook answered without a linked iotHubHostName */
#define ERR_NO_CREDENTIAL      401001  /* neither SAS nor client certificate */
#define ERR_UNAUTHORIZED       401002  /* the credential matches no enrollment */
#define ERR_CERT_CN            401003  /* certificate CN is not the registration id */
#define ERR_CERT_USAGE         401004  /* certificate expired, not yet valid, or not for clientAuth */
#define ERR_QUOTA              403002  /* maxRegistrations reached */
#define ERR_UNKNOWN_OPERATION  404003
#define ERR_ENROLLMENT_GONE    404201  /* enrollment deleted while assigning */
#define ERR_METHOD             405001
#define ERR_AUTH_THROTTLED     429004  /* too many failed authentications from this address */
#define ERR_THROTTLED          429001
#define ERR_POLL_THROTTLED     429002
#define ERR_LOOKUP_THROTTLED   429003
#define ERR_INTERNAL           500001
#define ERR_WEBHOOK_FAILED     500201  /* webhook unreachable, timed out or non-2xx */
#define ERR_UNAVAILABLE        503001  /* database unavailable */
#define ERR_NO_HUB             503201  /* no linked hub can take the device */

enum dps_route { ROUTE_REGISTER, ROUTE_OPERATION, ROUTE_LOOKUP };

struct dps_inst {
    struct dps_bucket regs;          /* registrationsPerMinute */
    struct dps_bucket lookups;       /* lookupsPerMinute */
    struct dps_minute regs_minute;   /* registrations accepted */
    struct dps_minute throttled_minute; /* 429s and gentle deferrals */
    int64_t held;                    /* rows 'assigned' (refreshed + live) */
    int64_t pending;                 /* first allocations running: counted against maxRegistrations */
};

struct dps_job;

struct dps_device {
    struct dps_server *srv;
    struct dps_inst *inst;           /* one per cfg->prov.dps */
    struct dps_keyed_gcra *polls;    /* "index/registrationId" */
    struct dps_keyed_gcra *auth_fail; /* source address (IPv6: its /64) -> failed authentications */
    struct strmap *jobs;             /* "index/registrationId/operationId" -> job */
    TAILQ_HEAD(, dps_job) job_list;
    TAILQ_HEAD(, dps_job) waiting;   /* first allocations held until the counts are loaded */
    struct dps_webhook *webhook;
    struct event *tick;
    unsigned ticks;
    bool refresh_held, refresh_hubs, refresh_groups; /* a refresh query is in flight */
    /* held was read from the database since the agent started: until then
     * first allocations wait (waiting), so a restart can't overshoot
     * maxRegistrations */
    bool counts_loaded;
    char *dps_ids, *hub_hosts;       /* the refresh queries' text[] parameters (fixed by the config) */
};

/* One authenticated device request. */
struct dps_ctx {
    struct dps_req *r;
    struct dps_device *d;
    enum dps_route route;
    const char *regid, *op;          /* borrowed from r->segs */
    char src[64];                    /* the client's address, key of the failed-authentication limit */
    json_t *device_payload;          /* register: what the device sent, or NULL */
    bool x509;
    struct sas_token sas;            /* !x509: the parsed Authorization header */
    /* the matched enrollment */
    char *enr_kind, *enr_id;
    char *owner;                     /* its owner: "tenant:<id>" or "enrollment:<kind>:<id>" */
    bool disabled;                   /* its provisioningStatus is "disabled" */
    json_t *att_info;                /* x509: {certificateInfo, enrollmentGroupId?, signingCertificateInfo?} */
    bool deferred;                   /* gentle throttle: no token, allocation waits for a poll */
    int retry_after;
    char new_op[80];
};

/* One allocation in flight. */
struct dps_job {
    TAILQ_ENTRY(dps_job) link;
    TAILQ_ENTRY(dps_job) wait_link;  /* in waiting while the counts are not loaded */
    bool waiting;
    struct dps_device *d;
    int idx;
    char *key, *regid, *op;
    struct dps_webhook_call *wh;
    /* loaded from the row */
    json_t *doc;
    char *kind, *enr_id, *prev_hub, *prev_device, *prev_substatus;
    json_t *dev_payload, *att_info;
    const char *linked[AGENT_MAX_HUBS];
    size_t n_linked;
    bool counted;                    /* counted in its instance's pending */
    bool reprovision;
    const char *reprov_substatus;
    /* outcome */
    const char *status;
    char *substatus, *hub, *device_id;
    json_t *payload;
    int err_code;
    char err_msg[300];
};

static void dps_job_start(struct dps_device *d, int idx, const char *regid, const char *op);
static void dps_refresh_counts(struct dps_device *d);

/* ---- small helpers ---- */

static const char *dps_json_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool dps_json_bool(json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static const char *dps_pg_val(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static char *dps_dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static bool dps_valid_regid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DPS_REGID_MAX)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.' || *p == '_' || *p == ':'))
            return false;
    return true;
}

static void dps_new_operation_id(char *out, size_t outlen)
{
    char a[17], b[33];
    util_random_hex(a, 8);
    util_random_hex(b, 16);
    a[16] = '\0';
    b[32] = '\0';
    snprintf(out, outlen, "4.%s.%.8s-%.4s-%.4s-%.4s-%.12s", a, b, b + 8, b + 12, b + 16, b + 20);
}

/* Jittered (util_retry_after_s) so that refused devices don't return in step. */
static void dps_set_retry_after(struct dps_req *r, int seconds)
{
    char ra[24];
    util_retry_after_text(ra, sizeof ra, (int64_t)seconds * 1000);
    dps_add_header(r, "Retry-After", ra);
}

static void dps_throttled(struct dps_device *d, int idx)
{
    dps_minute_add(&d->inst[idx].throttled_minute, util_mono_ms());
}

static int dps_hub_index(const struct agent_provisioning_config *pc, const char *host)
{
    for (size_t i = 0; host && i < pc->n_hubs; i++)
        if (strcasecmp(pc->hubs[i].host_name, host) == 0)
            return (int)i;
    return -1;
}

static struct agent_hub_load *dps_hub_load(struct dps_device *d, const char *host)
{
    int i = dps_hub_index(&d->srv->cfg->prov, host);
    return i < 0 ? NULL : agent_load_hub(d->srv->load, d->srv->cfg->prov.hubs[i].id);
}

static void dps_ctx_free(struct dps_ctx *c)
{
    json_decref(c->device_payload);
    json_decref(c->att_info);
    free(c->enr_kind);
    free(c->enr_id);
    free(c->owner);
    free(c);
}

/* The one answer when the store can't be reached (503), then c is freed. */
static void dps_ctx_unavailable(struct dps_ctx *c)
{
    dps_reply_error(c->r, 503, ERR_UNAVAILABLE, "the provisioning store is unavailable, retry later");
    dps_ctx_free(c);
}

/* False (after logging, replying and freeing c) unless the statement ran. */
static bool dps_ctx_db_ok(struct dps_ctx *c, const struct pgq_result *q, const char *what)
{
    if (q->status == PGQ_OK)
        return true;
    log_warn("event=dps_db_error what=%s error=\"%s\"", what, q->message ? q->message : "");
    dps_ctx_unavailable(c);
    return false;
}

/* Run a query for c; cb replies. If the pool refuses it (shutting down), cb
 * would never run: reply 503 here so the request is still answered once. */
static void dps_ctx_query(struct dps_ctx *c, const char *sql, int n, const char *const *v, pgpool_cb cb)
{
    pgpool_query(c->r->srv->pool, sql, n, v, cb, c);
}

/* ---- registration state ---- */

/* Columns of DPS_ROW_SQL, in order. */
enum { RC_STATUS, RC_SUBSTATUS, RC_HUB, RC_DEVICE, RC_ERR_CODE, RC_ERR_MSG, RC_PAYLOAD, RC_ATT, RC_ETAG,
       RC_KIND, RC_ENR_ID, RC_OP, RC_CREATED, RC_UPDATED };

static const char DPS_ROW_SQL[] =
    "SELECT status, substatus, assigned_hub, device_id, error_code, error_message, payload::text,"
    " attestation_info::text, etag, enrollment_kind, enrollment_id, operation_id, "
    DPS_SQL_TS("created_at") ", " DPS_SQL_TS("updated_at")
    " FROM dps_registrations WHERE dps_id = $1 AND registration_id = $2 AND owner = $3";

/* The DeviceRegistrationResult of a row (spec §2.4): a new reference. */
static json_t *dps_state_json(const PGresult *res, const char *regid)
{
    const char *status = dps_pg_val(res, 0, RC_STATUS);
    const char *att = dps_pg_val(res, 0, RC_ATT);
    const char *kind = dps_pg_val(res, 0, RC_KIND);
    const char *etag = dps_pg_val(res, 0, RC_ETAG);
    json_t *s = json_pack("{s:s, s:s, s:s, s:s, s:s}", "registrationId", regid,
                          "createdDateTimeUtc", dps_pg_val(res, 0, RC_CREATED), "status", status,
                          "lastUpdatedDateTimeUtc", dps_pg_val(res, 0, RC_UPDATED), "etag", etag ? etag : "1");
    json_t *group = strcmp(kind, "group") == 0 ? json_string(dps_pg_val(res, 0, RC_ENR_ID)) : NULL;
    if (!s) {
        json_decref(group);
        return NULL;
    }
    if (strcmp(status, "assigned") == 0) {
        const char *p = dps_pg_val(res, 0, RC_PAYLOAD);
        json_object_set_new(s, "assignedHub", json_string(dps_pg_val(res, 0, RC_HUB)));
        json_object_set_new(s, "deviceId", json_string(dps_pg_val(res, 0, RC_DEVICE)));
        json_object_set_new(s, "substatus", json_string(dps_pg_val(res, 0, RC_SUBSTATUS)));
        if (p)
            json_object_set_new(s, "payload", json_loads(p, JSON_DECODE_ANY, NULL));
    } else if (strcmp(status, "failed") == 0) {
        const char *code = dps_pg_val(res, 0, RC_ERR_CODE);
        json_object_set_new(s, "errorCode", json_integer(code ? strtoll(code, NULL, 10) : ERR_INTERNAL));
        json_object_set_new(s, "errorMessage", json_string(dps_pg_val(res, 0, RC_ERR_MSG)));
    }
    if (att) {
        json_t *x = json_loads(att, 0, NULL);
        if (!json_is_object(x)) {
            json_decref(x);
            x = json_object();
        }
        if (group)
            json_object_set(x, "enrollmentGroupId", group);
        json_object_set_new(s, "x509", x);
    } else {
        json_t *k = json_object();
        if (group)
            json_object_set(k, "enrollmentGroupId", group);
        json_object_set_new(s, "symmetricKey", k);
    }
    json_decref(group);
    return s;
}

/* {"operationId","status":"disabled","registrationState":{…}} without a row. */
static void dps_reply_disabled(struct dps_ctx *c, const char *op)
{
    char ts[40];
    json_t *st;
    util_format_time(util_wall_ms(), ts, sizeof ts);
    st = json_pack("{s:s, s:s, s:s}", "registrationId", c->regid, "status", "disabled",
                   "lastUpdatedDateTimeUtc", ts);
    if (c->route == ROUTE_LOOKUP)
        dps_reply_json(c->r, 200, st);
    else
        dps_reply_json(c->r, 200, json_pack("{s:s, s:s, s:o}", "operationId", op, "status", "disabled",
                                            "registrationState", st));
    dps_ctx_free(c);
}

/* ---- authentication ---- */

/* A stored key (sealed, docs/security.md "Secrets at rest"; or plain base64
 * in a row written before encryption) opened with its enrollment's AAD. */
static bool dps_try_key(struct envelope *env, const struct sas_token *t, const char *stored, const char *aad,
                        const char *derive_for)
{
    unsigned char key[64], dk[SAS_KEY_LEN];
    size_t n = 0;
    bool ok;
    if (!stored || !envelope_open_b64key(env, stored, aad, key, sizeof key, &n) || n == 0)
        return false;
    if (!derive_for) {
        ok = sas_verify(t, key, n);
    } else {
        sas_derive_key(key, n, derive_for, dk);
        ok = sas_verify(t, dk, sizeof dk);
        OPENSSL_cleanse(dk, sizeof dk);
    }
    OPENSSL_cleanse(key, sizeof key);
    return ok;
}

/* Whether the SAS verifies with the enrollment's primary or secondary key
 * (group keys derived for the registration id first). */
static bool dps_sas_matches(struct dps_ctx *c, const char *const keys[2], const char *kind, const char *enr_id)
{
    bool group = strcmp(kind, "group") == 0;
    char aad[512];
    envelope_aad_stamp_key(aad, sizeof aad, c->r->dps->id, kind, enr_id);
    return dps_try_key(c->r->srv->env, &c->sas, keys[0], aad, group ? c->regid : NULL) ||
           dps_try_key(c->r->srv->env, &c->sas, keys[1], aad, group ? c->regid : NULL);
}

/* Individual: the presented leaf is the enrollment's primary or secondary
 * client certificate. Group: the chain verifies with the primary or
 * secondary signing certificate as the only trust anchor. *signer gets the
 * group's certificate that verified (caller frees). */
static bool dps_x509_matches(struct dps_req *r, const char *const pems[2], bool group, X509 **signer)
{
    X509 *leaf = dps_req_peer_cert(r);
    for (int i = 0; i < 2; i++) {
        X509 *c = dps_x509_parse(pems[i]);
        char err[160];
        bool ok;
        if (!c)
            continue;
        ok = group ? dps_x509_verify(c, leaf, dps_req_peer_chain(r), err, sizeof err) : dps_x509_same(c, leaf);
        if (ok && group) {
            *signer = c;
            return true;
        }
        X509_free(c);
        if (ok)
            return true;
        if (group)
            log_debug("event=dps_x509_group_mismatch reason=\"%s\"", err);
    }
    return false;
}

static void dps_after_auth(struct dps_ctx *c);

/* Failed authentications per source address: an IPv4 address (also when a
 * dual-stack listener shows it as ::ffff:a.b.c.d), or the /64 of an IPv6 one
 * (a host usually holds a whole /64). */
static void dps_source_key(struct dps_req *r, char *out, size_t outlen)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(r->ev);
    const char *addr = NULL;
    ev_uint16_t port = 0;
    unsigned char a6[16];
    if (conn)
        evhttp_connection_get_peer(conn, (char **)&addr, &port);
    if (!addr) {
        snprintf(out, outlen, "?");
        return;
    }
    if (strchr(addr, ':') && inet_pton(AF_INET6, addr, a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED((struct in6_addr *)a6)) {
            /* an IPv4 client of a dual-stack listener: its own address */
            if (inet_ntop(AF_INET, a6 + 12, out, (socklen_t)outlen))
                return;
        }
        memset(a6 + 8, 0, 8);
        if (inet_ntop(AF_INET6, a6, out, (socklen_t)outlen))
            return;
    }
    snprintf(out, outlen, "%s", addr);
}

/* The one answer to a credential that does not authenticate: 401002 whether
 * the key is wrong, belongs to another owner or the id does not exist, so the
 * answer reveals nothing. The source address is charged; c is freed. */
static void dps_auth_failed(struct dps_ctx *c, int code, const char *why, const char *msg)
{
    struct dps_device *d = c->d;
    int64_t ignored;
    /* the verdict is not needed here: the next request from c->src peeks */
    if (!dps_keyed_gcra_admit(d->auth_fail, c->src, c->r->srv->cfg->prov.auth_failures_per_10s, 10000,
                              util_mono_ms(), &ignored))
        log_debug("event=dps_auth_fail_limit source=%s", c->src);
    dps_keyed_gcra_trim(d->auth_fail, DPS_AUTH_FAIL_KEYS);
    log_debug("event=dps_auth_failed dps=%s source=%s reason=\"%s\"", c->r->dps->id, c->src, why);
    dps_reply_error(c->r, 401, code, "%s", msg ? msg : "unauthorized");
    dps_ctx_free(c);
}

/* Columns of DPS_ENR_SQL. */
enum { EC_KIND, EC_ID, EC_STATUS, EC_PRIMARY, EC_SECONDARY, EC_OWNER, EC_ROW_OWNER };

/* The primary or secondary credential of an enrollment of attestation $2:
 * its key (symmetricKey), or its certificate (x509: a group's signing
 * certificate, an individual enrollment's client certificate). NULL when
 * the enrollment is of the other attestation type. */
#define DPS_ENR_CRED(slot) \
    "CASE WHEN e.attestation <> $2 THEN NULL" \
    " WHEN $2 = 'symmetricKey' THEN e.doc #>> '{attestation,symmetricKey," slot "Key}'" \
    " WHEN e.kind = 'group' THEN e.doc #>> '{attestation,x509,signingCertificates," slot ",certificate}'" \
    " ELSE e.doc #>> '{attestation,x509,clientCertificates," slot ",certificate}' END"

/* The enrollments a credential may be checked against (see the file
 * comment), with the registration row's owner if there is a row:
 *   - the individual enrollment of the id (any attestation), which then
 *     excludes every group;
 *   - else, when a row exists, the groups of the row's owner, its own
 *     enrollment first: a handful, whatever the number of groups;
 *   - else, on register only ($4), every group of the attestation type.
 * A poll or lookup of an id without a row therefore costs no HMAC at all.
 * Only what authentication reads is selected, so no enrollment document is
 * parsed per row on the request path. */
static const char DPS_ENR_SQL[] =
    "WITH reg AS (SELECT owner, enrollment_kind, enrollment_id FROM dps_registrations"
    "  WHERE dps_id = $1 AND registration_id = $3),"
    " ind AS (SELECT 1 FROM dps_enrollments WHERE dps_id = $1 AND kind = 'individual' AND enrollment_id = $3)"
    " SELECT e.kind, e.enrollment_id, e.doc->>'provisioningStatus', " DPS_ENR_CRED("primary") ", "
    DPS_ENR_CRED("secondary") ", e.owner, (SELECT owner FROM reg)"
    " FROM dps_enrollments e WHERE e.dps_id = $1 AND ("
    "  (e.kind = 'individual' AND e.enrollment_id = $3)"
    "  OR (e.kind = 'group' AND e.attestation = $2 AND NOT EXISTS (SELECT 1 FROM ind)"
    "      AND (e.owner = (SELECT owner FROM reg) OR ($4 AND NOT EXISTS (SELECT 1 FROM reg)))))"
    " ORDER BY e.kind DESC, (e.kind, e.enrollment_id) = (SELECT enrollment_kind, enrollment_id FROM reg)"
    " DESC NULLS LAST, e.enrollment_id"
    " LIMIT 512";

/* Record the enrollment that authenticated c (row i of res). */
static void dps_ctx_matched(struct dps_ctx *c, const PGresult *res, int i, X509 *signer)
{
    const char *status = dps_pg_val(res, i, EC_STATUS);
    c->enr_kind = xstrdup(PQgetvalue(res, i, EC_KIND));
    c->enr_id = xstrdup(PQgetvalue(res, i, EC_ID));
    c->owner = xstrdup(PQgetvalue(res, i, EC_OWNER));
    c->disabled = status && strcmp(status, "disabled") == 0;
    if (c->x509) {
        json_t *info = dps_x509_info(dps_req_peer_cert(c->r));
        c->att_info = json_object();
        if (info)
            json_object_set_new(c->att_info, "certificateInfo", info);
        if (signer && (info = dps_x509_info(signer)) != NULL)
            json_object_set_new(c->att_info, "signingCertificateInfo", info);
    }
}

/* Whether a group of another owner than row `first - 1`'s, among rows
 * [first, n), also accepts the device's certificate chain. */
static bool dps_x509_other_owner(struct dps_ctx *c, const PGresult *res, int first, int n)
{
    const char *owner = PQgetvalue(res, first - 1, EC_OWNER);
    for (int i = first; i < n; i++) {
        const char *cred[2] = {dps_pg_val(res, i, EC_PRIMARY), dps_pg_val(res, i, EC_SECONDARY)};
        X509 *signer = NULL;
        bool ok;
        if (strcmp(PQgetvalue(res, i, EC_KIND), "group") != 0 || strcmp(PQgetvalue(res, i, EC_OWNER), owner) == 0)
            continue;
        ok = dps_x509_matches(c->r, cred, true, &signer);
        X509_free(signer);
        if (ok)
            return true;
    }
    return false;
}

static void dps_on_enrollments(const struct pgq_result *q, void *arg)
{
    struct dps_ctx *c = arg;
    struct dps_req *r = c->r;
    int n;
    if (!dps_ctx_db_ok(c, q, "enrollments"))
        return;
    n = PQntuples(q->res);
    for (int i = 0; i < n; i++) {
        bool group = strcmp(PQgetvalue(q->res, i, EC_KIND), "group") == 0;
        const char *cred[2] = {dps_pg_val(q->res, i, EC_PRIMARY), dps_pg_val(q->res, i, EC_SECONDARY)};
        const char *row_owner = dps_pg_val(q->res, i, EC_ROW_OWNER);
        X509 *signer = NULL;
        bool ok = c->x509 ? dps_x509_matches(r, cred, group, &signer)
                          : dps_sas_matches(c, cred, PQgetvalue(q->res, i, EC_KIND), PQgetvalue(q->res, i, EC_ID));
        if (!ok)
            continue;
        if (row_owner && strcmp(row_owner, PQgetvalue(q->res, i, EC_OWNER)) != 0) {
            /* only an individual enrollment of another owner gets here */
            X509_free(signer);
            dps_auth_failed(c, ERR_UNAUTHORIZED, "owner", NULL);
            return;
        }
        if (!row_owner && c->x509 && group && dps_x509_other_owner(c, q->res, i + 1, n)) {
            /* two owners' groups trust the same CA: which tenant a new device
             * belongs to would be an accident of ordering, so neither */
            log_warn("event=dps_x509_ambiguous_owner dps=%s group=%s", r->dps->id, PQgetvalue(q->res, i, EC_ID));
            X509_free(signer);
            dps_auth_failed(c, ERR_UNAUTHORIZED, "ambiguous_owner", NULL);
            return;
        }
        dps_ctx_matched(c, q->res, i, signer);
        X509_free(signer);
        dps_after_auth(c);
        return;
    }
    /* As DPS: a credential no enrollment accepts is 401, whether or not the
     * instance has enrollments of its kind (that is not revealed). */
    dps_auth_failed(c, ERR_UNAUTHORIZED, n ? "credential" : "no_candidate", NULL);
}

/* Check the credential's shape (cheap, no database), then load the
 * enrollments it may be checked against (DPS_ENR_SQL). */
static void dps_authenticate(struct dps_ctx *c)
{
    struct dps_req *r = c->r;
    const char *auth = dps_req_header(r, "Authorization");
    const char *params[4];
    if (auth) {
        enum sas_error e = sas_parse(auth, &c->sas);
        if (e == SAS_OK)
            e = sas_check_claims(&c->sas, r->dps->id_scope, c->regid, util_wall_ms() / 1000);
        if (e != SAS_OK) {
            dps_auth_failed(c, ERR_UNAUTHORIZED, sas_error_code(e), NULL);
            return;
        }
    } else if (dps_req_peer_cert(r)) {
        X509 *leaf = dps_req_peer_cert(r);
        char *cn = dps_x509_cn(leaf);
        char why[160];
        bool same = cn && strcmp(cn, c->regid) == 0;
        free(cn);
        if (!same) {
            dps_auth_failed(c, ERR_CERT_CN, "certificate_cn", "the client certificate's CN must be the registration id");
            return;
        }
        if (!dps_x509_leaf_usable(leaf, why, sizeof why)) {
            dps_auth_failed(c, ERR_CERT_USAGE, why,
                            "the client certificate is expired, not yet valid or not for client authentication");
            return;
        }
        c->x509 = true;
    } else {
        dps_auth_failed(c, ERR_NO_CREDENTIAL, "no_credential",
                        "a SharedAccessSignature or a client certificate is required");
        return;
    }
    params[0] = r->dps->id;
    params[1] = c->x509 ? "x509" : "symmetricKey";
    params[2] = c->regid;
    params[3] = c->route == ROUTE_REGISTER ? "true" : "false";
    dps_ctx_query(c, DPS_ENR_SQL, 4, params, dps_on_enrollments);
}

/* ---- register ---- */

static void dps_on_registered(const struct pgq_result *q, void *arg)
{
    struct dps_ctx *c = arg;
    struct dps_req *r = c->r;
    struct dps_device *d = c->d;
    if (!dps_ctx_db_ok(c, q, "register"))
        return;
    if (PQntuples(q->res) == 0) {
        /* the row was created meanwhile by another owner's credential */
        dps_auth_failed(c, ERR_UNAUTHORIZED, "owner_race", NULL);
        return;
    }
    dps_minute_add(&d->inst[r->dps_index].regs_minute, util_mono_ms());
    if (!c->deferred)
        dps_job_start(d, r->dps_index, c->regid, c->new_op);
    log_info("event=dps_registering dps=%s registration=%s operation=%s enrollment=%s/%s%s", r->dps->id, c->regid,
             c->new_op, c->enr_kind, c->enr_id, c->deferred ? " deferred=throttle" : "");
    dps_set_retry_after(r, c->deferred ? c->retry_after : DPS_RETRY_AFTER_S);
    dps_reply_json(r, 202, json_pack("{s:s, s:s}", "operationId", c->new_op, "status", "assigning"));
    dps_ctx_free(c);
}

static void dps_register(struct dps_ctx *c)
{
    struct dps_req *r = c->r;
    struct dps_device *d = c->d;
    char *payload = NULL, *att = NULL;
    const char *params[8];
    dps_new_operation_id(c->new_op, sizeof c->new_op);
    if (c->disabled) {
        dps_reply_disabled(c, c->new_op);
        return;
    }
    if (r->dps->gentle_throttle) {
        int64_t now = util_mono_ms();
        if (!dps_bucket_take(&d->inst[r->dps_index].regs, now)) {
            c->deferred = true;
            c->retry_after = dps_retry_after_s(dps_bucket_wait_ms(&d->inst[r->dps_index].regs, now)) + 1;
            dps_throttled(d, r->dps_index);
        }
    }
    if (c->device_payload)
        payload = json_dumps(c->device_payload, JSON_COMPACT | JSON_ENCODE_ANY);
    if (c->att_info)
        att = json_dumps(c->att_info, JSON_COMPACT);
    params[0] = r->dps->id;
    params[1] = c->regid;
    params[2] = c->enr_kind;
    params[3] = c->enr_id;
    params[4] = c->new_op;
    params[5] = payload;
    params[6] = att;
    params[7] = c->owner;
    /* assigned_hub/device_id/substatus keep the previous assignment while
     * assigning: the job reads them as the device's current hub. The owner
     * is never rewritten: a row of another owner is left alone (no row
     * returned), which closes the race with a registration of the same id
     * under another owner's credential. */
    dps_ctx_query(c,
                  "INSERT INTO dps_registrations AS x (dps_id, registration_id, enrollment_kind, enrollment_id,"
                  " operation_id, status, device_payload, attestation_info, owner)"
                  " VALUES ($1, $2, $3, $4, $5, 'assigning', $6::jsonb, $7::jsonb, $8)"
                  " ON CONFLICT (dps_id, registration_id) DO UPDATE SET"
                  " enrollment_kind = EXCLUDED.enrollment_kind, enrollment_id = EXCLUDED.enrollment_id,"
                  " operation_id = EXCLUDED.operation_id, status = 'assigning',"
                  " device_payload = EXCLUDED.device_payload, attestation_info = EXCLUDED.attestation_info,"
                  " error_code = NULL, error_message = NULL, etag = x.etag + 1, updated_at = now()"
                  " WHERE x.owner = EXCLUDED.owner RETURNING 1",
                  8, params, dps_on_registered);
    free(payload);
    free(att);
}

/* ---- operation status and lookup ---- */

static void dps_on_row(const struct pgq_result *q, void *arg)
{
    struct dps_ctx *c = arg;
    struct dps_req *r = c->r;
    struct dps_device *d = c->d;
    const char *status;
    json_t *state;
    if (!dps_ctx_db_ok(c, q, "status"))
        return;
    if (PQntuples(q->res) == 0) {
        /* never registered (an individual enrollment authenticates without a
         * row), deleted, or another owner's: the answer of a wrong key */
        dps_auth_failed(c, ERR_UNAUTHORIZED, "no_row", NULL);
        return;
    }
    if (c->route == ROUTE_OPERATION && strcmp(PQgetvalue(q->res, 0, RC_OP), c->op) != 0) {
        dps_reply_error(r, 404, ERR_UNKNOWN_OPERATION, "operation '%s' is unknown", c->op);
        dps_ctx_free(c);
        return;
    }
    status = PQgetvalue(q->res, 0, RC_STATUS);
    if (c->route == ROUTE_OPERATION && strcmp(status, "assigning") == 0) {
        char key[DPS_REGID_MAX + 120];
        int ra = DPS_RETRY_AFTER_S;
        snprintf(key, sizeof key, "%d/%s/%s", r->dps_index, c->regid, c->op);
        if (!strmap_get(d->jobs, key)) {
            /* no job: a gentle-throttle deferral, or the agent restarted */
            int64_t now = util_mono_ms();
            if (r->dps->gentle_throttle && !dps_bucket_take(&d->inst[r->dps_index].regs, now)) {
                ra = dps_retry_after_s(dps_bucket_wait_ms(&d->inst[r->dps_index].regs, now)) + 1;
                dps_throttled(d, r->dps_index);
            } else {
                dps_job_start(d, r->dps_index, c->regid, c->op);
            }
        }
        dps_set_retry_after(r, ra);
        dps_reply_json(r, 202, json_pack("{s:s, s:s}", "operationId", c->op, "status", "assigning"));
        dps_ctx_free(c);
        return;
    }
    state = dps_state_json(q->res, c->regid);
    if (c->route == ROUTE_LOOKUP)
        dps_reply_json(r, 200, state);
    else
        dps_reply_json(r, 200, json_pack("{s:s, s:s, s:o}", "operationId", c->op, "status", status,
                                         "registrationState", state));
    dps_ctx_free(c);
}

/* The instance's and the device's budgets, charged only once the request has
 * authenticated. False (after replying 429 and freeing c) when over one. */
static bool dps_charge_limits(struct dps_ctx *c)
{
    struct dps_req *r = c->r;
    struct dps_device *d = c->d;
    int64_t now = util_mono_ms(), wait = 0;
    if (c->route == ROUTE_REGISTER) {
        /* gentle throttling defers the allocation instead (dps_register) */
        if (r->dps->gentle_throttle || dps_bucket_take(&d->inst[r->dps_index].regs, now))
            return true;
        wait = dps_bucket_wait_ms(&d->inst[r->dps_index].regs, now);
        dps_throttled(d, r->dps_index);
        dps_set_retry_after(r, dps_retry_after_s(wait));
        dps_reply_error(r, 429, ERR_THROTTLED, "registrations are throttled (%lld per minute)",
                        (long long)r->dps->registrations_per_minute);
    } else if (c->route == ROUTE_OPERATION) {
        char key[DPS_REGID_MAX + 16];
        snprintf(key, sizeof key, "%d/%s", r->dps_index, c->regid);
        if (dps_keyed_gcra_admit(d->polls, key, r->dps->polls_per_10s, 10000, now, &wait))
            return true;
        dps_throttled(d, r->dps_index);
        dps_set_retry_after(r, dps_retry_after_s(wait));
        dps_reply_error(r, 429, ERR_POLL_THROTTLED, "operation polls are limited to %lld per 10 s per device",
                        (long long)r->dps->polls_per_10s);
    } else {
        if (dps_bucket_take(&d->inst[r->dps_index].lookups, now))
            return true;
        wait = dps_bucket_wait_ms(&d->inst[r->dps_index].lookups, now);
        dps_throttled(d, r->dps_index);
        dps_set_retry_after(r, dps_retry_after_s(wait));
        dps_reply_error(r, 429, ERR_LOOKUP_THROTTLED, "status lookups are throttled (%lld per minute)",
                        (long long)r->dps->lookups_per_minute);
    }
    dps_ctx_free(c);
    return false;
}

static void dps_after_auth(struct dps_ctx *c)
{
    const char *params[3];
    if (!dps_charge_limits(c))
        return;
    if (c->route == ROUTE_REGISTER) {
        dps_register(c);
        return;
    }
    if (c->disabled) {
        dps_reply_disabled(c, c->op ? c->op : "");
        return;
    }
    params[0] = c->r->dps->id;
    params[1] = c->regid;
    params[2] = c->owner;
    dps_ctx_query(c, DPS_ROW_SQL, 3, params, dps_on_row);
}

/* ---- allocation jobs ---- */

/* A first allocation stops counting as pending (settled, or gone). */
static void dps_job_uncount(struct dps_job *j)
{
    if (j->counted && j->d->inst[j->idx].pending > 0)
        j->d->inst[j->idx].pending--;
    j->counted = false;
}

static void dps_job_free(struct dps_job *j)
{
    struct dps_device *d = j->d;
    dps_job_uncount(j);
    if (j->waiting)
        TAILQ_REMOVE(&d->waiting, j, wait_link);
    TAILQ_REMOVE(&d->job_list, j, link);
    strmap_del(d->jobs, j->key);
    dps_webhook_cancel(j->wh);
    json_decref(j->doc);
    json_decref(j->dev_payload);
    json_decref(j->att_info);
    json_decref(j->payload);
    free(j->key);
    free(j->regid);
    free(j->op);
    free(j->kind);
    free(j->enr_id);
    free(j->prev_hub);
    free(j->prev_device);
    free(j->prev_substatus);
    free(j->substatus);
    free(j->hub);
    free(j->device_id);
    free(j);
}

/* Adjust the in-memory counts for a settled job (the periodic refresh
 * corrects any drift, e.g. from other stamps sharing the database). */
static void dps_job_count(struct dps_job *j)
{
    struct dps_device *d = j->d;
    struct agent_dps_load *dl = agent_load_dps(d->srv->load, d->srv->cfg->prov.dps[j->idx].id);
    struct agent_hub_load *prev = dps_hub_load(d, j->prev_hub);
    bool assigned = strcmp(j->status, "assigned") == 0;
    dps_job_uncount(j);
    if (assigned && !j->prev_hub)
        d->inst[j->idx].held++;
    if (!assigned && j->prev_hub && d->inst[j->idx].held > 0)
        d->inst[j->idx].held--;
    if (prev && prev->devices > 0 && (!assigned || strcasecmp(j->prev_hub, j->hub) != 0))
        prev->devices--;
    if (assigned && (!j->prev_hub || strcasecmp(j->prev_hub, j->hub) != 0)) {
        struct agent_hub_load *now = dps_hub_load(d, j->hub);
        if (now)
            now->devices++;
    }
    if (dl)
        dl->registrations = (uint64_t)d->inst[j->idx].held;
}

static void dps_job_on_update(const struct pgq_result *q, void *arg)
{
    struct dps_job *j = arg;
    if (q->status != PGQ_OK) {
        /* the row stays 'assigning': the next poll starts a new job */
        log_warn("event=dps_db_error what=settle registration=%s error=\"%s\"", j->regid,
                 q->message ? q->message : "");
    } else if (PQntuples(q->res) == 1) {
        dps_job_count(j);
        if (strcmp(j->status, "assigned") == 0)
            log_info("event=dps_assigned dps=%s registration=%s operation=%s hub=%s device=%s substatus=%s",
                     j->d->srv->cfg->prov.dps[j->idx].id, j->regid, j->op, j->hub, j->device_id, j->substatus);
        else
            log_info("event=dps_%s dps=%s registration=%s operation=%s error_code=%d error=\"%s\"", j->status,
                     j->d->srv->cfg->prov.dps[j->idx].id, j->regid, j->op, j->err_code, j->err_msg);
    } else {
        log_info("event=dps_job_superseded registration=%s operation=%s", j->regid, j->op);
    }
    dps_job_free(j);
}

/*
 * Write the outcome in one UPDATE ... WHERE status = 'assigning' AND
 * operation_id = $op. An assignment creates the device's identity on its hub
 * in the same statement (hub_registry.h): upserted enabled, and the identity
 * this registration had on another hub (or under another deviceId) deleted.
 */
static const char DPS_SETTLE_SQL[] =
    "WITH s AS (UPDATE dps_registrations SET status = $4, substatus = $5, assigned_hub = $6, device_id = $7,"
    " payload = $8::jsonb, error_code = $9::integer, error_message = $10,"
    " etag = etag + 1, updated_at = now()"
    " WHERE dps_id = $1 AND registration_id = $2 AND operation_id = $3 AND status = 'assigning'"
    " RETURNING dps_id, registration_id, owner, status, assigned_hub, device_id),"
    " gone AS (DELETE FROM hub_devices h USING s WHERE s.status = 'assigned'"
    " AND h.dps_id = s.dps_id AND h.registration_id = s.registration_id"
    " AND (h.hub_host <> lower(s.assigned_hub) OR h.device_id <> s.device_id) RETURNING 1),"
    " ins AS (INSERT INTO hub_devices AS h (hub_host, device_id, dps_id, registration_id, owner, status, auth_type,"
    " primary_key, secondary_key, primary_thumbprint, generation_id)"
    " SELECT lower(s.assigned_hub), s.device_id, s.dps_id, s.registration_id, s.owner, 'enabled', $11, $12, $13, $14,"
    " (floor(random() * 9e17) + 1e17)::bigint::text FROM s WHERE s.status = 'assigned'"
    " ON CONFLICT (hub_host, device_id) DO UPDATE SET dps_id = EXCLUDED.dps_id,"
    " registration_id = EXCLUDED.registration_id, owner = EXCLUDED.owner,"
    " status_updated_at = CASE WHEN h.status <> 'enabled' THEN now() ELSE h.status_updated_at END,"
    " status = 'enabled', status_reason = NULL, auth_type = EXCLUDED.auth_type,"
    " primary_key = EXCLUDED.primary_key, secondary_key = EXCLUDED.secondary_key,"
    " primary_thumbprint = EXCLUDED.primary_thumbprint, secondary_thumbprint = NULL,"
    " etag = h.etag + 1, updated_at = now() RETURNING 1)"
    " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM ins) FROM s";

static void dps_job_settle(struct dps_job *j)
{
    char code[16];
    char *payload = j->payload ? json_dumps(j->payload, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    bool assigned = strcmp(j->status, "assigned") == 0;
    const char *dps_id = j->d->srv->cfg->prov.dps[j->idx].id;
    struct hub_auth auth = {0};
    const char *params[14];
    /* the identity's credentials (a key opened, derived and sealed again:
     * microseconds, no I/O); a key that does not open leaves type only */
    if (assigned && !hub_auth_for_assignment(j->d->srv->env, dps_id, j->kind, j->enr_id, j->doc, j->att_info,
                                             j->regid, j->hub, j->device_id, &auth)) {
        log_warn("event=hub_identity_keys_unsealable dps=%s registration=%s", dps_id, j->regid);
        auth.type = "sas";
    }
    snprintf(code, sizeof code, "%d", j->err_code);
    params[0] = dps_id;
    params[1] = j->regid;
    params[2] = j->op;
    params[3] = j->status;
    params[4] = assigned ? j->substatus : NULL;
    params[5] = assigned ? j->hub : NULL;
    params[6] = assigned ? j->device_id : NULL;
    params[7] = assigned ? payload : NULL;
    params[8] = assigned || strcmp(j->status, "failed") != 0 ? NULL : code;
    params[9] = assigned ? NULL : j->err_msg;
    params[10] = auth.type ? auth.type : "none";
    params[11] = auth.primary_key;
    params[12] = auth.secondary_key;
    params[13] = auth.primary_thumbprint;
    pgpool_query(j->d->srv->pool, DPS_SETTLE_SQL, 14, params, dps_job_on_update, j);
    /* shutting down: the row stays 'assigning' */
    hub_auth_clear(&auth);
    free(payload);
}

static void dps_job_fail(struct dps_job *j, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void dps_job_fail(struct dps_job *j, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err_msg, sizeof j->err_msg, fmt, ap);
    va_end(ap);
    j->status = "failed";
    j->err_code = code;
    dps_job_settle(j);
}

static void dps_job_assign(struct dps_job *j, const char *hub, const char *substatus)
{
    const char *dev = strcmp(j->kind, "individual") == 0 ? dps_json_str(j->doc, "deviceId") : NULL;
    j->status = "assigned";
    j->hub = xstrdup(hub);
    j->substatus = xstrdup(substatus);
    j->device_id = xstrdup(dev && *dev ? dev : j->regid);
    dps_job_settle(j);
}

static void dps_job_on_webhook(const struct http_result *res, void *arg)
{
    struct dps_job *j = arg;
    const char *hub;
    j->wh = NULL;
    if (res->status < 200 || res->status >= 300) {
        if (res->status)
            dps_job_fail(j, ERR_WEBHOOK_FAILED, "the custom allocation webhook answered %d", res->status);
        else
            dps_job_fail(j, ERR_WEBHOOK_FAILED, "%s", res->error ? res->error : "the webhook failed");
        return;
    }
    hub = dps_json_str(res->body, "iotHubHostName");
    for (size_t i = 0; hub && i < j->n_linked; i++)
        if (strcasecmp(j->linked[i], hub) == 0) {
            json_t *p = json_object_get(res->body, "payload");
            if (p && !json_is_null(p))
                j->payload = json_incref(p);
            dps_job_assign(j, j->linked[i], j->reprov_substatus);
            return;
        }
    dps_job_fail(j, ERR_WEBHOOK_ANSWER, "the custom allocation webhook chose %s%s%s, not one of the linked hubs",
                 hub ? "'" : "no hub", hub ? hub : "", hub ? "'" : "");
}

/* The AllocationRequest of spec §9. */
static char *dps_job_webhook_body(struct dps_job *j)
{
    json_t *ctx = json_pack("{s:s}", "registrationId", j->regid);
    json_t *hubs = json_array();
    json_t *req, *doc;
    char *text;
    bool group = strcmp(j->kind, "group") == 0;
    if (j->prev_hub) {
        json_object_set_new(ctx, "currentIotHubHostName", json_string(j->prev_hub));
        json_object_set_new(ctx, "currentDeviceId", json_string(j->prev_device ? j->prev_device : j->regid));
    }
    if (j->att_info)
        json_object_set(ctx, "x509", j->att_info);
    else
        json_object_set_new(ctx, "symmetricKey", json_object());
    if (j->dev_payload)
        json_object_set(ctx, "payload", j->dev_payload);
    for (size_t i = 0; i < j->n_linked; i++)
        json_array_append_new(hubs, json_string(j->linked[i]));
    /* the enrollment as the service API shows it, without its secret keys */
    doc = json_deep_copy(j->doc);
    json_object_del(json_object_get(json_object_get(doc, "attestation"), "symmetricKey"), "primaryKey");
    json_object_del(json_object_get(json_object_get(doc, "attestation"), "symmetricKey"), "secondaryKey");
    req = json_pack("{s:o, s:o, s:o}", group ? "enrollmentGroup" : "individualEnrollment", doc,
                    "deviceRuntimeContext", ctx, "linkedHubs", hubs);
    text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    return text;
}

/* Candidates: the stamp's hubs taking part in allocation, narrowed to the
 * enrollment's iotHubs (in that order) when it names any. */
static size_t dps_job_candidates(struct dps_job *j, enum dps_policy policy, struct dps_alloc_hub *out)
{
    const struct agent_provisioning_config *pc = &j->d->srv->cfg->prov;
    json_t *want = json_object_get(j->doc, "iotHubs");
    size_t n = 0;
    if (json_array_size(want) > 0) {
        size_t k;
        json_t *v;
        json_array_foreach(want, k, v) {
            int i = json_is_string(v) ? dps_hub_index(pc, json_string_value(v)) : -1;
            bool dup = false;
            if (i < 0 || n == AGENT_MAX_HUBS)
                continue;
            for (size_t m = 0; m < n; m++)
                dup = dup || out[m].host == pc->hubs[i].host_name;
            if (dup)
                continue;
            /* static names its hub outright; the other policies keep
             * applyAllocationPolicy: false hubs out */
            out[n] = (struct dps_alloc_hub){pc->hubs[i].host_name, pc->hubs[i].allocation_weight, 0,
                                            pc->hubs[i].max_devices,
                                            policy != DPS_POLICY_STATIC && !pc->hubs[i].apply_allocation_policy};
            n++;
        }
    } else {
        for (size_t i = 0; i < pc->n_hubs; i++) {
            if (!pc->hubs[i].apply_allocation_policy)
                continue;
            out[n++] = (struct dps_alloc_hub){pc->hubs[i].host_name, pc->hubs[i].allocation_weight, 0,
                                              pc->hubs[i].max_devices, false};
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct agent_hub_load *hl = dps_hub_load(j->d, out[i].host);
        out[i].devices = hl ? (int64_t)hl->devices : 0;
        /* a device already on this hub doesn't count against its room */
        if (j->prev_hub && strcasecmp(j->prev_hub, out[i].host) == 0 && out[i].devices > 0)
            out[i].devices--;
    }
    return n;
}

static void dps_job_allocate(struct dps_job *j)
{
    const struct agent_dps_config *dc = &j->d->srv->cfg->prov.dps[j->idx];
    json_t *rp = json_object_get(j->doc, "reprovisionPolicy");
    struct dps_alloc_hub cand[AGENT_MAX_HUBS];
    const char *pol = dps_json_str(j->doc, "allocationPolicy");
    enum dps_policy policy = dps_policy_parse(pol);
    size_t n;
    int pick;

    if (j->reprovision) {
        if (!dps_json_bool(rp, "updateHubAssignment", true)) {
            dps_job_assign(j, j->prev_hub, j->prev_substatus ? j->prev_substatus : "initialAssignment");
            return;
        }
        j->reprov_substatus = dps_json_bool(rp, "migrateDeviceData", true) ? "deviceDataMigrated" : "deviceDataReset";
    } else {
        j->reprov_substatus = "initialAssignment";
        if (!j->d->counts_loaded) {
            /* the registrations held are not known yet (start-up): wait for them */
            j->waiting = true;
            TAILQ_INSERT_TAIL(&j->d->waiting, j, wait_link);
            dps_refresh_counts(j->d);
            return;
        }
        if (j->d->inst[j->idx].held + j->d->inst[j->idx].pending >= dc->max_registrations) {
            log_info("event=dps_quota_reached dps=%s held=%lld pending=%lld max=%lld", dc->id,
                     (long long)j->d->inst[j->idx].held, (long long)j->d->inst[j->idx].pending,
                     (long long)dc->max_registrations);
            dps_job_fail(j, ERR_QUOTA, "the DPS instance holds its maximum of %lld registrations",
                         (long long)dc->max_registrations);
            return;
        }
        j->d->inst[j->idx].pending++;   /* until the job settles (dps_job_count) or ends (dps_job_free) */
        j->counted = true;
    }
    if (policy == DPS_POLICY_INVALID) {
        dps_job_fail(j, ERR_ALLOC_CONFIG, "unknown allocation policy '%s'", pol);
        return;
    }
    n = dps_job_candidates(j, policy, cand);
    if (policy == DPS_POLICY_CUSTOM) {
        json_t *def = json_object_get(j->doc, "customAllocationDefinition");
        const char *url = dps_json_str(def, "webhookUrl");
        char *body;
        for (size_t i = 0; i < n; i++)
            if (dps_alloc_eligible(&cand[i]))
                j->linked[j->n_linked++] = cand[i].host;
        if (!url || !*url) {
            dps_job_fail(j, ERR_ALLOC_CONFIG, "the custom allocation policy has no webhookUrl");
            return;
        }
        if (j->n_linked == 0) {
            dps_job_fail(j, ERR_NO_HUB, "no linked IoT hub can take the device");
            return;
        }
        if (!(body = dps_job_webhook_body(j))) {
            dps_job_fail(j, ERR_INTERNAL, "the allocation request could not be built");
            return;
        }
        j->wh = dps_webhook_post(j->d->webhook, url, body, (int)j->d->srv->cfg->prov.webhook_timeout_ms,
                                 dps_job_on_webhook, j);
        free(body);
        return;
    }
    pick = dps_alloc_pick(policy, cand, n, j->regid);
    if (pick < 0) {
        dps_job_fail(j, ERR_NO_HUB, "no linked IoT hub can take the device (none eligible or all full)");
        return;
    }
    dps_job_assign(j, cand[pick].host, j->reprov_substatus);
}

/* Columns of the job's row query. */
enum { JC_STATUS, JC_OP, JC_KIND, JC_ENR, JC_HUB, JC_DEVICE, JC_SUBSTATUS, JC_PAYLOAD, JC_ATT, JC_DOC };

static void dps_job_on_row(const struct pgq_result *q, void *arg)
{
    struct dps_job *j = arg;
    const PGresult *res = q->res;
    const char *doc, *v;
    if (q->status != PGQ_OK) {
        log_warn("event=dps_db_error what=job_load registration=%s error=\"%s\"", j->regid,
                 q->message ? q->message : "");
        dps_job_free(j);
        return;
    }
    if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, JC_STATUS), "assigning") != 0 ||
        strcmp(PQgetvalue(res, 0, JC_OP), j->op) != 0) {
        dps_job_free(j);           /* settled or superseded meanwhile */
        return;
    }
    j->kind = xstrdup(PQgetvalue(res, 0, JC_KIND));
    j->enr_id = xstrdup(PQgetvalue(res, 0, JC_ENR));
    j->prev_hub = dps_dup_or_null(dps_pg_val(res, 0, JC_HUB));
    j->prev_device = dps_dup_or_null(dps_pg_val(res, 0, JC_DEVICE));
    j->prev_substatus = dps_dup_or_null(dps_pg_val(res, 0, JC_SUBSTATUS));
    j->reprovision = j->prev_hub != NULL;
    if ((v = dps_pg_val(res, 0, JC_PAYLOAD)) != NULL)
        j->dev_payload = json_loads(v, JSON_DECODE_ANY, NULL);
    if ((v = dps_pg_val(res, 0, JC_ATT)) != NULL)
        j->att_info = json_loads(v, 0, NULL);
    doc = dps_pg_val(res, 0, JC_DOC);
    j->doc = doc ? json_loads(doc, 0, NULL) : NULL;   /* not inside json_is_object(): a macro */
    if (!json_is_object(j->doc)) {
        dps_job_fail(j, ERR_ENROLLMENT_GONE, "the enrollment '%s' no longer exists", j->enr_id);
        return;
    }
    v = dps_json_str(j->doc, "provisioningStatus");
    if (v && strcmp(v, "disabled") == 0) {
        j->status = "disabled";
        snprintf(j->err_msg, sizeof j->err_msg, "the enrollment is disabled");
        dps_job_settle(j);
        return;
    }
    dps_job_allocate(j);
}

static void dps_job_start(struct dps_device *d, int idx, const char *regid, const char *op)
{
    char *key = xasprintf("%d/%s/%s", idx, regid, op);
    struct dps_job *j;
    const char *params[2];
    if (strmap_get(d->jobs, key)) {
        free(key);
        return;
    }
    j = xcalloc(1, sizeof *j);
    j->d = d;
    j->idx = idx;
    j->key = key;
    j->regid = xstrdup(regid);
    j->op = xstrdup(op);
    strmap_put(d->jobs, key, j);
    TAILQ_INSERT_TAIL(&d->job_list, j, link);
    params[0] = d->srv->cfg->prov.dps[idx].id;
    params[1] = regid;
    pgpool_query(d->srv->pool,
                 "SELECT r.status, r.operation_id, r.enrollment_kind, r.enrollment_id, r.assigned_hub, r.device_id,"
                 " r.substatus, r.device_payload::text, r.attestation_info::text, e.doc::text"
                 " FROM dps_registrations r LEFT JOIN dps_enrollments e ON e.dps_id = r.dps_id"
                 " AND e.kind = r.enrollment_kind AND e.enrollment_id = r.enrollment_id"
                 " WHERE r.dps_id = $1 AND r.registration_id = $2",
                 2, params, dps_job_on_row, j);
}

/* ---- periodic: load counters and their refresh ---- */

static char *dps_text_array(size_t n, const char *(*get)(const struct agent_provisioning_config *, size_t),
                            const struct agent_provisioning_config *pc)
{
    size_t len = 3;
    char *out, *p;
    for (size_t i = 0; i < n; i++)
        len += strlen(get(pc, i)) + 3;
    out = p = xmalloc(len);
    *p++ = '{';
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%s\"%s\"", i ? "," : "", get(pc, i));   /* ids and host names need no escaping */
    *p++ = '}';
    *p = '\0';
    return out;
}

static const char *dps_get_id(const struct agent_provisioning_config *pc, size_t i) { return pc->dps[i].id; }
static const char *dps_get_host(const struct agent_provisioning_config *pc, size_t i) { return pc->hubs[i].host_name; }

/* The counts are loaded: the first allocations that waited for them go on. */
static void dps_resume_waiting(struct dps_device *d)
{
    struct dps_job *j;
    while ((j = TAILQ_FIRST(&d->waiting)) != NULL) {
        TAILQ_REMOVE(&d->waiting, j, wait_link);
        j->waiting = false;
        dps_job_allocate(j);
    }
}

static void dps_on_held(const struct pgq_result *q, void *arg)
{
    struct dps_device *d = arg;
    const struct agent_provisioning_config *pc = &d->srv->cfg->prov;
    d->refresh_held = false;
    if (q->status != PGQ_OK)
        return;
    if (!d->counts_loaded)
        log_info("event=dps_counts_loaded instances=%zu", pc->n_dps);
    d->counts_loaded = true;
    for (size_t i = 0; i < pc->n_dps; i++) {
        struct agent_dps_load *dl = agent_load_dps(d->srv->load, pc->dps[i].id);
        d->inst[i].held = 0;
        for (int k = 0; k < PQntuples(q->res); k++)
            if (strcmp(PQgetvalue(q->res, k, 0), pc->dps[i].id) == 0)
                d->inst[i].held = strtoll(PQgetvalue(q->res, k, 1), NULL, 10);
        if (dl)
            dl->registrations = (uint64_t)d->inst[i].held;
    }
    dps_resume_waiting(d);
}

static void dps_on_hub_counts(const struct pgq_result *q, void *arg)
{
    struct dps_device *d = arg;
    const struct agent_provisioning_config *pc = &d->srv->cfg->prov;
    d->refresh_hubs = false;
    if (q->status != PGQ_OK)
        return;
    for (size_t i = 0; i < pc->n_hubs; i++) {
        struct agent_hub_load *hl = agent_load_hub(d->srv->load, pc->hubs[i].id);
        uint64_t n = 0;
        for (int k = 0; k < PQntuples(q->res); k++)
            if (strcasecmp(PQgetvalue(q->res, k, 0), pc->hubs[i].host_name) == 0)
                n += (uint64_t)strtoll(PQgetvalue(q->res, k, 1), NULL, 10);
        if (hl)
            hl->devices = n;
    }
}

/* Assigned devices per (DPS instance, enrollment group); at most
 * DSV_GROUP_CAP groups per instance and attestation type, so bounded. */
static void dps_on_group_counts(const struct pgq_result *q, void *arg)
{
    struct dps_device *d = arg;
    int n;
    d->refresh_groups = false;
    if (q->status != PGQ_OK)
        return;
    n = PQntuples(q->res);
    agent_load_groups_clear(d->srv->load);
    for (int k = 0; k < n && k < DPS_GROUP_ROWS_MAX; k++)
        agent_load_group_add(d->srv->load, PQgetvalue(q->res, k, 0), PQgetvalue(q->res, k, 1),
                             (uint64_t)strtoll(PQgetvalue(q->res, k, 2), NULL, 10));
}

static void dps_refresh_counts(struct dps_device *d)
{
    const struct agent_provisioning_config *pc = &d->srv->cfg->prov;
    if (!pgpool_is_ready(d->srv->pool))
        return;
    if (!d->refresh_held) {
        d->refresh_held = true;   /* until its callback */
        pgpool_query(d->srv->pool,
                     "SELECT dps_id, count(*) FROM dps_registrations"
                     " WHERE status = 'assigned' AND dps_id = ANY($1::text[]) GROUP BY dps_id",
                     1, (const char *const *)&d->dps_ids, dps_on_held, d);
    }
    if (!d->refresh_hubs && pc->n_hubs > 0) {
        d->refresh_hubs = true;   /* until its callback */
        pgpool_query(d->srv->pool,
                     /* the hub registry's identities (hub_registry.h), of
                      * every origin: assignments and the registry API */
                     "SELECT hub_host, count(*) FROM hub_devices"
                     " WHERE hub_host = ANY (SELECT lower(h) FROM unnest($1::text[]) AS h)"
                     " GROUP BY hub_host",
                     1, (const char *const *)&d->hub_hosts, dps_on_hub_counts, d);
    }
    if (!d->refresh_groups) {
        d->refresh_groups = true;   /* until its callback */
        pgpool_query(d->srv->pool,
                     "SELECT dps_id, enrollment_id, count(*) FROM dps_registrations"
                     " WHERE status = 'assigned' AND enrollment_kind = 'group'"
                     " AND dps_id = ANY($1::text[])"
                     " GROUP BY 1, 2 ORDER BY 1, 2",
                     1, (const char *const *)&d->dps_ids, dps_on_group_counts, d);
    }
}

static void dps_tick(evutil_socket_t fd, short what, void *arg)
{
    struct dps_device *d = arg;
    const struct agent_provisioning_config *pc = &d->srv->cfg->prov;
    int64_t now = util_mono_ms();
    (void)fd; (void)what;
    for (size_t i = 0; i < pc->n_dps; i++) {
        struct agent_dps_load *dl = agent_load_dps(d->srv->load, pc->dps[i].id);
        if (!dl)
            continue;
        dl->registrations_last_minute = dps_minute_sum(&d->inst[i].regs_minute, now);
        dl->throttled_last_minute = dps_minute_sum(&d->inst[i].throttled_minute, now);
    }
    dps_keyed_gcra_sweep(d->polls, now);
    dps_keyed_gcra_sweep(d->auth_fail, now);
    /* every tick until the counts are first loaded, then every DPS_REFRESH_TICKS */
    if (d->ticks++ % DPS_REFRESH_TICKS == 0 || !d->counts_loaded)
        dps_refresh_counts(d);
}

/* ---- entry points ---- */

struct dps_device *dps_device_new(struct dps_server *s)
{
    const struct agent_provisioning_config *pc = &s->cfg->prov;
    struct dps_device *d = xcalloc(1, sizeof *d);
    struct timeval tv = {DPS_TICK_MS / 1000, (DPS_TICK_MS % 1000) * 1000};
    int64_t now = util_mono_ms();
    d->srv = s;
    d->inst = xcalloc(pc->n_dps ? pc->n_dps : 1, sizeof *d->inst);
    for (size_t i = 0; i < pc->n_dps; i++) {
        dps_bucket_init(&d->inst[i].regs, pc->dps[i].registrations_per_minute, 60000, now);
        dps_bucket_init(&d->inst[i].lookups, pc->dps[i].lookups_per_minute, 60000, now);
    }
    d->dps_ids = dps_text_array(pc->n_dps, dps_get_id, pc);
    d->hub_hosts = dps_text_array(pc->n_hubs, dps_get_host, pc);
    d->polls = dps_keyed_gcra_new();
    d->auth_fail = dps_keyed_gcra_new();
    d->jobs = strmap_new();
    TAILQ_INIT(&d->job_list);
    TAILQ_INIT(&d->waiting);
    d->webhook = dps_webhook_new(s->base);
    d->tick = event_new(s->base, -1, EV_PERSIST, dps_tick, d);
    if (!d->tick || event_add(d->tick, &tv) != 0) {
        log_error("event=timer_failed timer=dps_device");
        abort();
    }
    return d;
}

/* Jobs still in flight are dropped: their rows stay 'assigning' and the
 * devices' next polls (or re-registrations) finish them after a restart. */
void dps_device_free(struct dps_device *d)
{
    if (!d) return;
    while (!TAILQ_EMPTY(&d->job_list))
        dps_job_free(TAILQ_FIRST(&d->job_list));
    if (d->tick) event_free(d->tick);
    dps_webhook_free(d->webhook);
    strmap_free(d->jobs, NULL);
    dps_keyed_gcra_free(d->polls);
    dps_keyed_gcra_free(d->auth_fail);
    free(d->dps_ids);
    free(d->hub_hosts);
    free(d->inst);
    free(d);
}

/* Route and validate; refuse a source address over its failed-authentication
 * limit before any database or HMAC work; then authenticate
 * (dps_on_enrollments carries on, and only then are the rate limits charged).
 * Replies exactly once on every path. */
void dps_device_handle(struct dps_req *r)
{
    struct dps_device *d = r->srv->device;
    struct dps_ctx *c;
    int64_t wait = 0;
    enum dps_route route;
    const char *regid = r->segs[2];

    if (r->nsegs == 4 && strcasecmp(r->segs[3], "register") == 0)
        route = ROUTE_REGISTER;
    else if (r->nsegs == 5 && strcasecmp(r->segs[3], "operations") == 0)
        route = ROUTE_OPERATION;
    else if (r->nsegs == 3)
        route = ROUTE_LOOKUP;
    else {
        dps_reply_error(r, 404, 404000, "no such route");
        return;
    }
    if ((route == ROUTE_REGISTER && r->method != EVHTTP_REQ_PUT) ||
        (route == ROUTE_OPERATION && r->method != EVHTTP_REQ_GET) ||
        (route == ROUTE_LOOKUP && r->method != EVHTTP_REQ_POST)) {
        dps_reply_error(r, 405, ERR_METHOD, "method not allowed on this route");
        return;
    }
    if (!dps_valid_regid(regid)) {
        dps_reply_error(r, 400, ERR_BAD_REQUEST, "the registration id is malformed");
        return;
    }
    c = xcalloc(1, sizeof *c);
    c->r = r;
    c->d = d;
    c->route = route;
    c->regid = regid;
    c->op = route == ROUTE_OPERATION ? r->segs[4] : NULL;
    dps_source_key(r, c->src, sizeof c->src);
    if (!dps_keyed_gcra_peek(d->auth_fail, c->src, r->srv->cfg->prov.auth_failures_per_10s, 10000, util_mono_ms(),
                             &wait)) {
        dps_set_retry_after(r, dps_retry_after_s(wait));
        dps_reply_error(r, 429, ERR_AUTH_THROTTLED, "too many failed authentications from this address");
        dps_ctx_free(c);
        return;
    }
    if (route == ROUTE_REGISTER) {
        json_t *body = r->body ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
        const char *id = dps_json_str(body, "registrationId");
        json_t *p = json_object_get(body, "payload");
        if (!json_is_object(body) || !id || strcmp(id, regid) != 0) {
            json_decref(body);
            dps_reply_error(r, 400, ERR_BAD_BODY, "the body must be {\"registrationId\":\"%s\", ...}", regid);
            dps_ctx_free(c);
            return;
        }
        if (p && !json_is_null(p))
            c->device_payload = json_incref(p);
        json_decref(body);
    }
    dps_authenticate(c);
}
