/*
 * hub_registry.c - the IoT Hub registry REST subset of the stamp's hubs
 * (hub_registry.h) and the identity an assignment creates.
 *
 * Errors are IoT Hub's: {"Message":"ErrorCode:<code>;<text>","ExceptionMessage":
 * "Tracking ID:<id>-TimeStamp:<utc>"} with the header iothub-errorcode: <code>.
 * Etags are the row's counter, base64 of its decimal text (opaque, as IoT
 * Hub's); If-Match takes "*" or an etag, quoted or not.
 */
#include "hub_registry.h"

#include <ctype.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jsonv.h"
#include "log.h"
#include "sas.h"
#include "util.h"

#define HUB_ID_MAX       128
#define HUB_REASON_MAX   128
#define HUB_KEY_MIN      16      /* IoT Hub: symmetric keys of 16 to 64 bytes */
#define HUB_KEY_MAX      64
#define HUB_GEN_KEY      32      /* generated keys */

/* One registry request waiting on the database. */
struct hub_op {
    struct dps_req *r;
    const char *hub;           /* lower-cased host name (owned) */
    char hub_lc[256];
    const char *id;            /* the path deviceId (owned by r) */
    bool conditional;          /* If-Match given */
    bool any;                  /* If-Match "*" */
    int64_t etag;              /* If-Match <etag> (any false) */
    bool bad_etag;             /* an If-Match that is no etag of ours: matches nothing */
};

/* Device columns, in this order (hub_device_json). */
#define HUB_COLS "device_id, generation_id, etag, status, status_reason, " DPS_SQL_TS("status_updated_at") \
                 ", auth_type, primary_key, secondary_key, primary_thumbprint, secondary_thumbprint, iot_edge"
enum { HC_ID, HC_GEN, HC_ETAG, HC_STATUS, HC_REASON, HC_STATUS_TS, HC_TYPE, HC_PK, HC_SK, HC_TP1, HC_TP2, HC_EDGE };

static const char sql_get[] = "SELECT " HUB_COLS " FROM hub_devices WHERE hub_host = $1 AND device_id = $2";
static const char sql_create[] =
    "INSERT INTO hub_devices (hub_host, device_id, status, status_reason, auth_type, primary_key, secondary_key,"
    " primary_thumbprint, secondary_thumbprint, iot_edge, generation_id)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::boolean, (floor(random() * 9e17) + 1e17)::bigint::text)"
    " ON CONFLICT (hub_host, device_id) DO NOTHING RETURNING " HUB_COLS;
/* $11: keep the authentication (the body has none); $12: the etag wanted (NULL: any). */
static const char sql_update[] =
    "UPDATE hub_devices SET"
    " status_updated_at = CASE WHEN status <> $3 THEN now() ELSE status_updated_at END,"
    " status = $3, status_reason = $4,"
    " auth_type = CASE WHEN $11::boolean THEN auth_type ELSE $5 END,"
    " primary_key = CASE WHEN $11::boolean THEN primary_key ELSE $6 END,"
    " secondary_key = CASE WHEN $11::boolean THEN secondary_key ELSE $7 END,"
    " primary_thumbprint = CASE WHEN $11::boolean THEN primary_thumbprint ELSE $8 END,"
    " secondary_thumbprint = CASE WHEN $11::boolean THEN secondary_thumbprint ELSE $9 END,"
    " iot_edge = $10::boolean, etag = etag + 1, updated_at = now()"
    " WHERE hub_host = $1 AND device_id = $2 AND ($12::bigint IS NULL OR etag = $12::bigint)"
    " RETURNING " HUB_COLS;
static const char sql_delete[] =
    "WITH cur AS (SELECT 1 FROM hub_devices WHERE hub_host = $1 AND device_id = $2),"
    " del AS (DELETE FROM hub_devices WHERE hub_host = $1 AND device_id = $2"
    " AND ($3::bigint IS NULL OR etag = $3::bigint) RETURNING 1)"
    " SELECT (SELECT count(*) FROM cur), (SELECT count(*) FROM del)";
static const char sql_exists[] = "SELECT 1 FROM hub_devices WHERE hub_host = $1 AND device_id = $2";

/* ---- small helpers ---- */

void hub_registry_aad(char *out, size_t outlen, const char *hub, const char *device_id)
{
    char lc[256];
    size_t i;
    for (i = 0; hub[i] && i + 1 < sizeof lc; i++)
        lc[i] = (char)tolower((unsigned char)hub[i]);
    lc[i] = '\0';
    snprintf(out, outlen, "hub:%s:%s:symmetric-key", lc, device_id);
}

int hub_registry_hub_of(const struct agent_provisioning_config *pc, const char *host_header)
{
    size_t n;
    if (!host_header)
        return -1;
    n = strcspn(host_header, ":");   /* host names only: no IPv6 literal is a hub name */
    for (size_t i = 0; i < pc->n_hubs; i++)
        if (strlen(pc->hubs[i].host_name) == n && strncasecmp(pc->hubs[i].host_name, host_header, n) == 0)
            return (int)i;
    return -1;
}

/* IoT Hub's deviceId rule: 1-128 of [A-Za-z0-9-:.+%_#*?!(),=@$']. */
static bool hub_valid_device_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > HUB_ID_MAX)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-:.+%_#*?!(),=@$'", *p))
            return false;
    return true;
}

static void hub_error(struct dps_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void hub_error(struct dps_req *r, int status, const char *code, const char *fmt, ...)
{
    char msg[400], full[520], exc[160], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    util_format_time(util_wall_ms(), ts, sizeof ts);
    snprintf(full, sizeof full, "ErrorCode:%s;%s", code, msg);
    snprintf(exc, sizeof exc, "Tracking ID:%s-TimeStamp:%s", r->id, ts);
    dps_add_header(r, "iothub-errorcode", code);
    dps_reply_json(r, status, json_pack("{s:s, s:s}", "Message", full, "ExceptionMessage", exc));
}

static void hub_op_fail(struct hub_op *op, int status, const char *code, const char *msg)
{
    hub_error(op->r, status, code, "%s", msg);
    free(op);
}

static bool hub_db_ok(struct hub_op *op, const struct pgq_result *q)
{
    if (q->status == PGQ_OK)
        return true;
    log_write(LOG_WARN, op->r->id, "event=hub_registry_db_error sqlstate=%s message=\"%s\"",
              q->sqlstate ? q->sqlstate : "-", q->message ? q->message : "");
    if (q->status == PGQ_UNAVAILABLE)
        hub_op_fail(op, 503, "ServiceUnavailable", "the registry database is unavailable; retry later");
    else
        hub_op_fail(op, 500, "ServerError", "internal error");
    return false;
}

static void hub_etag_text(const char *num, char *out, size_t outlen)
{
    sas_b64_encode((const unsigned char *)num, strlen(num), out, outlen);
}

/* If-Match: absent, "*", or an etag of ours (quoted or not). */
static void hub_parse_if_match(struct hub_op *op)
{
    const char *h = dps_req_header(op->r, "If-Match");
    char tag[96], num[64];
    size_t n;
    int len;
    if (!h)
        return;
    op->conditional = true;
    while (*h == ' ')
        h++;
    n = strlen(h);
    while (n > 0 && h[n - 1] == ' ')
        n--;
    if (n >= 2 && h[0] == '"' && h[n - 1] == '"') {
        h++;
        n -= 2;
    }
    if (n == 1 && h[0] == '*') {
        op->any = true;
        return;
    }
    if (n == 0 || n >= sizeof tag) {
        op->bad_etag = true;
        return;
    }
    memcpy(tag, h, n);
    tag[n] = '\0';
    len = sas_b64_decode(tag, (unsigned char *)num, sizeof num - 1);
    if (len <= 0) {
        op->bad_etag = true;
        return;
    }
    num[len] = '\0';
    if (!util_parse_int64(num, 1, INT64_MAX, &op->etag))
        op->bad_etag = true;
}

/* ---- the device document ---- */

static json_t *hub_text_or_null(const PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? json_null() : json_string(PQgetvalue(res, 0, col));
}

/* A sealed key opened to its base64 text, or JSON null (NULL: it does not open). */
static json_t *hub_open_key(struct envelope *env, const PGresult *res, int col, const char *aad)
{
    unsigned char key[HUB_KEY_MAX];
    char b64[128];
    size_t n = 0;
    if (PQgetisnull(res, 0, col))
        return json_null();
    if (!envelope_open_b64key(env, PQgetvalue(res, 0, col), aad, key, sizeof key, &n))
        return NULL;
    sas_b64_encode(key, n, b64, sizeof b64);
    OPENSSL_cleanse(key, sizeof key);
    return json_string(b64);
}

/* The device as IoT Hub answers it (keys opened: the API returns them). */
static json_t *hub_device_json(struct dps_req *r, const char *hub, const PGresult *res)
{
    char etag[64], aad[512];
    json_t *pk, *sk, *dev;
    const char *never = "0001-01-01T00:00:00Z";   /* IoT Hub's "never" */
    hub_registry_aad(aad, sizeof aad, hub, PQgetvalue(res, 0, HC_ID));
    pk = hub_open_key(r->srv->env, res, HC_PK, aad);
    sk = hub_open_key(r->srv->env, res, HC_SK, aad);
    if (!pk || !sk) {
        log_write(LOG_ERROR, r->id, "event=hub_key_unsealable hub=%s device=%s", hub, PQgetvalue(res, 0, HC_ID));
        json_decref(pk);
        json_decref(sk);
        return NULL;
    }
    hub_etag_text(PQgetvalue(res, 0, HC_ETAG), etag, sizeof etag);
    dev = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:s, s:i, s:{s:o, s:{s:o, s:o}, s:{s:o, s:o}}, s:{s:b}}",
                    "deviceId", PQgetvalue(res, 0, HC_ID), "generationId", PQgetvalue(res, 0, HC_GEN),
                    "etag", etag, "connectionState", "Disconnected", "status", PQgetvalue(res, 0, HC_STATUS),
                    "statusReason", hub_text_or_null(res, HC_REASON),
                    "statusUpdatedTime", PQgetvalue(res, 0, HC_STATUS_TS), "connectionStateUpdatedTime", never,
                    "lastActivityTime", never, "cloudToDeviceMessageCount", 0,
                    "authentication", "type", json_string(PQgetvalue(res, 0, HC_TYPE)),
                    "symmetricKey", "primaryKey", pk, "secondaryKey", sk,
                    "x509Thumbprint", "primaryThumbprint", hub_text_or_null(res, HC_TP1),
                    "secondaryThumbprint", hub_text_or_null(res, HC_TP2),
                    "capabilities", "iotEdge", strcmp(PQgetvalue(res, 0, HC_EDGE), "t") == 0);
    return dev;
}

static void hub_reply_device(struct hub_op *op, const PGresult *res)
{
    json_t *dev = hub_device_json(op->r, op->hub, res);
    char etag[80];
    if (!dev) {
        hub_op_fail(op, 500, "ServerError", "the device's keys could not be read");
        return;
    }
    snprintf(etag, sizeof etag, "\"%s\"", json_string_value(json_object_get(dev, "etag")));
    dps_add_header(op->r, "ETag", etag);
    dps_reply_json(op->r, 200, dev);
    free(op);
}

/* ---- the PUT body ---- */

/* What a PUT stores: text parameters of sql_create / sql_update. */
struct hub_put {
    const char *status, *reason;
    bool keep_auth;            /* update without an authentication object */
    struct hub_auth auth;
    bool edge;
};

static bool hub_str_or_null(json_t *v)
{
    return !v || json_is_null(v) || json_is_string(v);
}

/* The fields a PUT may carry; the read-only ones are accepted and ignored
 * (the SDK sends back the whole Device it got). */
static const char *const hub_fields[] = {
    "deviceId", "generationId", "etag", "status", "statusReason", "statusUpdatedTime", "connectionState",
    "connectionStateUpdatedTime", "lastActivityTime", "cloudToDeviceMessageCount", "authentication",
    "capabilities", "deviceScope", "parentScopes", "modelId", NULL
};

static bool hub_known(const char *k, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(*list, k) == 0)
            return true;
    return false;
}

/* A thumbprint: 40 (SHA-1) or 64 (SHA-256) hex digits; empty/null: none. */
static bool hub_thumbprint(json_t *v, char **out, char *err, size_t errlen, const char *name)
{
    const char *s;
    size_t n;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        snprintf(err, errlen, "authentication.x509Thumbprint.%s must be a string", name);
        return false;
    }
    s = json_string_value(v);
    if ((n = strlen(s)) == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            n = 0;
    if (n != 40 && n != 64) {
        snprintf(err, errlen, "authentication.x509Thumbprint.%s must be 40 or 64 hexadecimal digits", name);
        return false;
    }
    *out = xstrdup(s);
    return true;
}

/* A symmetric key: base64 of 16-64 bytes, or empty/null (generated); sealed into *out. */
static bool hub_sym_key(struct envelope *env, json_t *v, const char *aad, char **out, char *err, size_t errlen,
                        const char *name)
{
    unsigned char key[HUB_KEY_MAX + 8];
    char b64[128];
    int n = 0;
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (v && !json_is_null(v) && !json_is_string(v)) {
        snprintf(err, errlen, "authentication.symmetricKey.%s must be a string", name);
        return false;
    }
    if (*s) {
        n = strlen(s) < sizeof b64 ? sas_b64_decode(s, key, sizeof key) : -1;
        if (n < HUB_KEY_MIN || n > HUB_KEY_MAX) {
            snprintf(err, errlen, "authentication.symmetricKey.%s must be the base64 of 16 to 64 bytes", name);
            OPENSSL_cleanse(key, sizeof key);
            return false;
        }
    } else {
        n = HUB_GEN_KEY;
        if (!util_random_bytes(key, HUB_GEN_KEY)) {
            snprintf(err, errlen, "no key could be generated");
            return false;
        }
    }
    sas_b64_encode(key, (size_t)n, b64, sizeof b64);
    OPENSSL_cleanse(key, sizeof key);
    *out = envelope_seal_text(env, b64, aad);
    OPENSSL_cleanse(b64, sizeof b64);
    if (!*out) {
        snprintf(err, errlen, "the key could not be sealed");
        return false;
    }
    return true;
}

/* authentication {type?, symmetricKey?, x509Thumbprint?} into p->auth. */
static bool hub_parse_auth(struct hub_op *op, json_t *a, struct hub_put *p, char *err, size_t errlen)
{
    static const char *const fields[] = {"type", "symmetricKey", "x509Thumbprint", NULL};
    json_t *type = json_object_get(a, "type"), *sym = json_object_get(a, "symmetricKey");
    json_t *x509 = json_object_get(a, "x509Thumbprint");
    const char *k;
    json_t *v;
    char aad[512];
    json_object_foreach(a, k, v)
        if (!hub_known(k, fields)) {
            snprintf(err, errlen, "authentication.%.64s is not a known member", k);
            return false;
        }
    if ((sym && !json_is_null(sym) && !json_is_object(sym)) || (x509 && !json_is_null(x509) && !json_is_object(x509)) ||
        !hub_str_or_null(type)) {
        snprintf(err, errlen, "authentication.type must be a string, symmetricKey and x509Thumbprint objects");
        return false;
    }
    if (!hub_thumbprint(json_object_get(x509, "primaryThumbprint"), &p->auth.primary_thumbprint, err, errlen,
                        "primaryThumbprint") ||
        !hub_thumbprint(json_object_get(x509, "secondaryThumbprint"), &p->auth.secondary_thumbprint, err, errlen,
                        "secondaryThumbprint"))
        return false;
    k = json_string_value(type);
    if (!k)   /* as the SDK normalises: thumbprints mean selfSigned */
        k = p->auth.primary_thumbprint || p->auth.secondary_thumbprint ? "selfSigned" : "sas";
    if (strcmp(k, "sas") == 0) {
        p->auth.type = "sas";
        hub_registry_aad(aad, sizeof aad, op->hub, op->id);
        if (p->auth.primary_thumbprint || p->auth.secondary_thumbprint) {
            snprintf(err, errlen, "a sas device carries no x509Thumbprint");
            return false;
        }
        return hub_sym_key(op->r->srv->env, json_object_get(sym, "primaryKey"), aad, &p->auth.primary_key, err,
                           errlen, "primaryKey") &&
               hub_sym_key(op->r->srv->env, json_object_get(sym, "secondaryKey"), aad, &p->auth.secondary_key, err,
                           errlen, "secondaryKey");
    }
    if (strcmp(k, "selfSigned") == 0)
        p->auth.type = "selfSigned";
    else if (strcmp(k, "certificateAuthority") == 0)
        p->auth.type = "certificateAuthority";
    else if (strcmp(k, "none") == 0)
        p->auth.type = "none";
    else {
        snprintf(err, errlen, "authentication.type must be sas, selfSigned, certificateAuthority or none");
        return false;
    }
    if (json_is_string(json_object_get(sym, "primaryKey")) && *json_string_value(json_object_get(sym, "primaryKey"))) {
        snprintf(err, errlen, "a %s device carries no symmetric keys", p->auth.type);
        return false;
    }
    if (strcmp(p->auth.type, "selfSigned") == 0 && !p->auth.primary_thumbprint) {
        snprintf(err, errlen, "a selfSigned device needs authentication.x509Thumbprint.primaryThumbprint");
        return false;
    }
    if (strcmp(p->auth.type, "selfSigned") != 0 && (p->auth.primary_thumbprint || p->auth.secondary_thumbprint)) {
        snprintf(err, errlen, "only a selfSigned device carries thumbprints");
        return false;
    }
    return true;
}

/* The body of a PUT; false with err (400) when it is not a device. */
static bool hub_parse_put(struct hub_op *op, json_t *body, struct hub_put *p, char *err, size_t errlen)
{
    json_t *id = json_object_get(body, "deviceId"), *st = json_object_get(body, "status");
    json_t *reason = json_object_get(body, "statusReason"), *auth = json_object_get(body, "authentication");
    json_t *caps = json_object_get(body, "capabilities"), *edge = json_object_get(caps, "iotEdge");
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v)
        if (!hub_known(k, hub_fields)) {
            snprintf(err, errlen, "'%.64s' is not a member of a device", k);
            return false;
        }
    if (!json_is_string(id) || strcmp(json_string_value(id), op->id) != 0) {
        snprintf(err, errlen, "the body's deviceId must be the one of the path");
        return false;
    }
    if (!hub_str_or_null(st) || (json_is_string(st) && strcmp(json_string_value(st), "enabled") != 0 &&
                                 strcmp(json_string_value(st), "disabled") != 0)) {
        snprintf(err, errlen, "status must be \"enabled\" or \"disabled\"");
        return false;
    }
    p->status = json_is_string(st) ? json_string_value(st) : "enabled";
    if (!hub_str_or_null(reason) || (json_is_string(reason) && strlen(json_string_value(reason)) > HUB_REASON_MAX)) {
        snprintf(err, errlen, "statusReason must be a string of at most %d characters", HUB_REASON_MAX);
        return false;
    }
    p->reason = json_string_value(reason);
    if ((caps && !json_is_null(caps) && !json_is_object(caps)) || (edge && !json_is_null(edge) && !json_is_boolean(edge))) {
        snprintf(err, errlen, "capabilities must be {\"iotEdge\": true|false}");
        return false;
    }
    p->edge = json_is_true(edge);
    if (auth && !json_is_null(auth) && !json_is_object(auth)) {
        snprintf(err, errlen, "authentication must be an object");
        return false;
    }
    if ((!auth || json_is_null(auth)) && op->conditional) {
        p->keep_auth = true;   /* an update that only changes the status keeps the credentials */
        return true;
    }
    {
        json_t *none = auth && !json_is_null(auth) ? NULL : json_object();   /* no authentication: sas, keys generated */
        bool ok = hub_parse_auth(op, none ? none : auth, p, err, errlen);
        json_decref(none);
        return ok;
    }
}

/* ---- database callbacks ---- */

static void hub_on_get(const struct pgq_result *q, void *arg)
{
    struct hub_op *op = arg;
    if (!hub_db_ok(op, q))
        return;
    if (PQntuples(q->res) == 0) {
        hub_op_fail(op, 404, "DeviceNotFound", "the device is not registered on this hub");
        return;
    }
    hub_reply_device(op, q->res);
}

static void hub_on_create(const struct pgq_result *q, void *arg)
{
    struct hub_op *op = arg;
    if (!hub_db_ok(op, q))
        return;
    if (PQntuples(q->res) == 0) {
        hub_op_fail(op, 409, "DeviceAlreadyExists", "a device with this deviceId is already registered");
        return;
    }
    log_write(LOG_INFO, op->r->id, "event=hub_device_created hub=%s device=%s", op->hub, op->id);
    dps_device_counts_changed(op->r->srv->device);
    hub_reply_device(op, q->res);
}

/* An update or delete that matched nothing: missing (404) or another etag (412). */
static void hub_on_exists(const struct pgq_result *q, void *arg)
{
    struct hub_op *op = arg;
    if (!hub_db_ok(op, q))
        return;
    if (PQntuples(q->res) == 0)
        hub_op_fail(op, 404, "DeviceNotFound", "the device is not registered on this hub");
    else
        hub_op_fail(op, 412, "PreconditionFailed", "the device's etag does not match If-Match");
}

static void hub_check_exists(struct hub_op *op)
{
    const char *v[] = {op->hub, op->id};
    pgpool_query(op->r->srv->pool, sql_exists, 2, v, hub_on_exists, op);
}

static void hub_on_update(const struct pgq_result *q, void *arg)
{
    struct hub_op *op = arg;
    if (!hub_db_ok(op, q))
        return;
    if (PQntuples(q->res) == 0) {
        hub_check_exists(op);
        return;
    }
    log_write(LOG_INFO, op->r->id, "event=hub_device_updated hub=%s device=%s status=%s", op->hub, op->id,
              PQgetvalue(q->res, 0, HC_STATUS));
    hub_reply_device(op, q->res);
}

static void hub_on_delete(const struct pgq_result *q, void *arg)
{
    struct hub_op *op = arg;
    if (!hub_db_ok(op, q))
        return;
    if (strcmp(PQgetvalue(q->res, 0, 0), "0") == 0) {
        hub_op_fail(op, 404, "DeviceNotFound", "the device is not registered on this hub");
        return;
    }
    if (strcmp(PQgetvalue(q->res, 0, 1), "0") == 0) {
        hub_op_fail(op, 412, "PreconditionFailed", "the device's etag does not match If-Match");
        return;
    }
    log_write(LOG_INFO, op->r->id, "event=hub_device_deleted hub=%s device=%s", op->hub, op->id);
    dps_device_counts_changed(op->r->srv->device);
    dps_reply_empty(op->r, 204);
    free(op);
}

/* ---- routes ---- */

static void hub_put(struct hub_op *op)
{
    struct hub_put p = {0};
    struct jv_err je;
    char err[300], etag[32];
    json_t *body = jv_parse_object(op->r->body ? op->r->body : "", op->r->body_len, &je);
    if (!body) {
        hub_op_fail(op, 400, "ArgumentInvalid", je.message);
        return;
    }
    if (!hub_parse_put(op, body, &p, err, sizeof err)) {
        json_decref(body);
        hub_auth_clear(&p.auth);
        hub_op_fail(op, 400, "ArgumentInvalid", err);
        return;
    }
    snprintf(etag, sizeof etag, "%lld", (long long)op->etag);
    {
        const char *v[] = {op->hub, op->id, p.status, p.reason, p.keep_auth ? "none" : p.auth.type,
                           p.auth.primary_key, p.auth.secondary_key, p.auth.primary_thumbprint,
                           p.auth.secondary_thumbprint, p.edge ? "true" : "false",
                           p.keep_auth ? "true" : "false", op->any ? NULL : etag};
        if (!op->conditional)
            pgpool_query(op->r->srv->pool, sql_create, 10, v, hub_on_create, op);
        else if (op->bad_etag)
            hub_check_exists(op);
        else
            pgpool_query(op->r->srv->pool, sql_update, 12, v, hub_on_update, op);
    }
    json_decref(body);
    hub_auth_clear(&p.auth);
}

static void hub_delete(struct hub_op *op)
{
    char etag[32];
    const char *v[3];
    snprintf(etag, sizeof etag, "%lld", (long long)op->etag);
    v[0] = op->hub;
    v[1] = op->id;
    v[2] = op->conditional && !op->any ? etag : NULL;
    if (op->bad_etag) {
        hub_check_exists(op);
        return;
    }
    pgpool_query(op->r->srv->pool, sql_delete, 3, v, hub_on_delete, op);
}

/*
 * Whether the part of sr below the hub host name (rest: "" or "/seg/...")
 * covers the request's path: as IoT Hub, a token's resource URI is a prefix
 * of the resources it opens, segment by segment, so a token for
 * "<hub>/devices/dev-1" opens dev-1 and nothing else (not dev-10, not dev-2).
 * The collection name compares in any case (the routes do); deviceIds exactly.
 */
static bool hub_sr_covers(const char *rest, const struct dps_req *r)
{
    int i = 0;
    while (*rest == '/' && rest[1] != '\0') {
        const char *seg = rest + 1;
        size_t len = strcspn(seg, "/");
        if (i >= r->nsegs || strlen(r->segs[i]) != len ||
            (i == 0 ? strncasecmp(seg, r->segs[i], len) : strncmp(seg, r->segs[i], len)) != 0)
            return false;
        rest = seg + len;
        i++;
    }
    return *rest == '\0' || strcmp(rest, "/") == 0;
}

/* The IoT Hub service SAS: sr = the hub's host name (or a resource below it
 * that covers the request), a known policy's signature, not expired. */
static bool hub_authorized(struct dps_req *r, const char *hub)
{
    const struct agent_provisioning_config *pc = &r->srv->cfg->prov;
    const char *h = dps_req_header(r, "Authorization");
    const struct agent_service_policy *pol = NULL;
    struct sas_token t;
    size_t n = strlen(hub);
    if (!h || sas_parse(h, &t) != SAS_OK)
        return false;
    for (size_t i = 0; i < pc->n_policies; i++)
        if (strcmp(pc->policies[i].name, t.skn) == 0)
            pol = &pc->policies[i];
    if (!pol || !sas_verify(&t, pol->key, (size_t)pol->keylen) || t.expiry <= util_wall_ms() / 1000)
        return false;
    return strncasecmp(t.sr_decoded, hub, n) == 0 && (t.sr_decoded[n] == '\0' || t.sr_decoded[n] == '/') &&
           hub_sr_covers(t.sr_decoded + n, r);
}

void hub_registry_handle(struct dps_req *r, int hub)
{
    const char *host = r->srv->cfg->prov.hubs[hub].host_name;
    struct hub_op *op;
    size_t i;

    if (!hub_authorized(r, host)) {
        hub_error(r, 401, "IotHubUnauthorizedAccess", "Unauthorized: a SharedAccessSignature of a service "
                  "policy for this hub is required");
        return;
    }
    if (r->nsegs != 2 || strcasecmp(r->segs[0], "devices") != 0) {
        hub_error(r, 404, "NotFound", "no such route on this hub's registry (GET/PUT/DELETE /devices/{id})");
        return;
    }
    if (!dps_req_query(r, "api-version") || !*dps_req_query(r, "api-version")) {
        hub_error(r, 400, "InvalidProtocolVersion", "the api-version query parameter is required");
        return;
    }
    if (!hub_valid_device_id(r->segs[1])) {
        hub_error(r, 400, "ArgumentInvalid", "a deviceId is 1-128 characters of letters, digits and -:.+%%_#*?!(),=@$'");
        return;
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    op->id = r->segs[1];
    for (i = 0; host[i] && i + 1 < sizeof op->hub_lc; i++)
        op->hub_lc[i] = (char)tolower((unsigned char)host[i]);
    op->hub_lc[i] = '\0';
    op->hub = op->hub_lc;
    hub_parse_if_match(op);
    if (r->method == EVHTTP_REQ_GET) {
        const char *v[] = {op->hub, op->id};
        pgpool_query(r->srv->pool, sql_get, 2, v, hub_on_get, op);
    } else if (r->method == EVHTTP_REQ_PUT) {
        hub_put(op);
    } else if (r->method == EVHTTP_REQ_DELETE) {
        hub_delete(op);
    } else {
        dps_add_header(r, "Allow", "GET, PUT, DELETE");
        hub_op_fail(op, 405, "MethodNotAllowed", "method not allowed here (allowed: GET, PUT, DELETE)");
    }
}

/* ---- the identity of an assignment ---- */

void hub_auth_clear(struct hub_auth *a)
{
    free(a->primary_key);
    free(a->secondary_key);
    free(a->primary_thumbprint);
    free(a->secondary_thumbprint);
    memset(a, 0, sizeof *a);
}

/* One enrollment key (stored sealed under enr_aad) as the device's key
 * (derived for regid when derive), sealed under hub_aad; NULL stored: NULL. */
static bool hub_reseal_key(struct envelope *env, const char *stored, const char *enr_aad, const char *regid,
                           bool derive, const char *hub_aad, char **out)
{
    unsigned char key[HUB_KEY_MAX], dk[SAS_KEY_LEN];
    char b64[128];
    size_t n = 0;
    if (!stored || !*stored)
        return true;
    if (!envelope_open_b64key(env, stored, enr_aad, key, sizeof key, &n) || n == 0)
        return false;
    if (derive) {
        sas_derive_key(key, n, regid, dk);
        sas_b64_encode(dk, sizeof dk, b64, sizeof b64);
        OPENSSL_cleanse(dk, sizeof dk);
    } else {
        sas_b64_encode(key, n, b64, sizeof b64);
    }
    OPENSSL_cleanse(key, sizeof key);
    *out = envelope_seal_text(env, b64, hub_aad);
    OPENSSL_cleanse(b64, sizeof b64);
    return *out != NULL;
}

bool hub_auth_for_assignment(struct envelope *env, const char *dps_id, const char *kind, const char *enr_id,
                             json_t *doc, json_t *att_info, const char *regid, const char *hub,
                             const char *device_id, struct hub_auth *out)
{
    json_t *att = json_object_get(doc, "attestation");
    const char *type = json_string_value(json_object_get(att, "type"));
    bool group = strcmp(kind, "group") == 0;
    memset(out, 0, sizeof *out);
    if (type && strcmp(type, "symmetricKey") == 0) {
        json_t *sym = json_object_get(att, "symmetricKey");
        char enr_aad[512], hub_aad[512];
        envelope_aad_stamp_key(enr_aad, sizeof enr_aad, dps_id, kind, enr_id);
        hub_registry_aad(hub_aad, sizeof hub_aad, hub, device_id);
        out->type = "sas";
        if (!hub_reseal_key(env, json_string_value(json_object_get(sym, "primaryKey")), enr_aad, regid, group,
                            hub_aad, &out->primary_key) ||
            !hub_reseal_key(env, json_string_value(json_object_get(sym, "secondaryKey")), enr_aad, regid, group,
                            hub_aad, &out->secondary_key)) {
            hub_auth_clear(out);
            return false;
        }
        return true;
    }
    if (type && strcmp(type, "x509") == 0) {
        const char *tp = json_string_value(json_object_get(json_object_get(att_info, "certificateInfo"),
                                                           "sha1Thumbprint"));
        if (group || !tp) {
            out->type = "certificateAuthority";
            return true;
        }
        out->type = "selfSigned";
        out->primary_thumbprint = xstrdup(tp);
        return true;
    }
    out->type = "none";
    return true;
}
