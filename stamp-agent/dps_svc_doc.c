/*
 * dps_svc_doc.c - enrollment document validation and normalisation, etags,
 * paging and certificate info for the DPS service API (see dps_svc_doc.h).
 */
#include "dps_svc_doc.h"

#include <ctype.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "dps_webhook.h"
#include "dps_x509.h"
#include "sas.h"

void dsv_set_err(struct dsv_err *e, int status, int code, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

#define DSV_BAD(e, ...) (dsv_set_err((e), 400, DSV_E_INVALID, __VA_ARGS__), false)

const char *dsv_id_field(enum dsv_kind kind)
{
    return kind == DSV_GROUP ? "enrollmentGroupId" : "registrationId";
}

const char *dsv_kind_word(enum dsv_kind kind)
{
    return kind == DSV_GROUP ? "group" : "individual";
}

bool dsv_valid_id(enum dsv_kind kind, const char *id)
{
    size_t n = id ? strlen(id) : 0;
    char last;
    if (n == 0 || n > DSV_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
                  c == ':' || (kind == DSV_GROUP && c >= 'A' && c <= 'Z');
        if (!ok)
            return false;
    }
    last = (char)tolower((unsigned char)id[n - 1]);
    return (last >= 'a' && last <= 'z') || (last >= '0' && last <= '9') || last == '-';
}

/* ---- attestation ---- */

static bool dsv_sym_key(json_t *sk, const char *name, json_t *out, struct dsv_err *e)
{
    json_t *v = sk ? json_object_get(sk, name) : NULL;
    unsigned char raw[128];
    int n;
    if (!v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0)) {
        char b64[96];
        if (!util_random_bytes(raw, 64)) {
            dsv_set_err(e, 500, DSV_E_INTERNAL, "could not generate a key");
            return false;
        }
        sas_b64_encode(raw, 64, b64, sizeof b64);
        json_object_set_new(out, name, json_string(b64));
        return true;
    }
    if (!json_is_string(v))
        return DSV_BAD(e, "attestation.symmetricKey.%s must be a string", name);
    n = sas_b64_decode(json_string_value(v), raw, sizeof raw);
    if (n < 16 || n > 64)
        return DSV_BAD(e, "attestation.symmetricKey.%s must be base64 of 16 to 64 bytes", name);
    json_object_set(out, name, v);
    return true;
}

/* {primary:{certificate}, secondary?:{certificate}} -> the same with PEM and info. */
static bool dsv_cert_pair(json_t *in, const char *path, json_t **out, struct dsv_err *e)
{
    static const char *const slots[] = {"primary", "secondary"};
    if (!json_is_object(in))
        return DSV_BAD(e, "%s must be an object with a primary certificate", path);
    *out = json_object();
    for (size_t i = 0; i < 2; i++) {
        json_t *slot = json_object_get(in, slots[i]), *c;
        X509 *x;
        char *pem;
        if (!slot || json_is_null(slot)) {
            if (i == 0) {
                json_decref(*out);
                return DSV_BAD(e, "%s.primary is required", path);
            }
            continue;
        }
        c = json_is_object(slot) ? json_object_get(slot, "certificate") : NULL;
        if (!json_is_string(c)) {
            json_decref(*out);
            return DSV_BAD(e, "%s.%s.certificate must be a string (PEM or base64 DER)", path, slots[i]);
        }
        if (!(x = dsv_cert_parse(json_string_value(c)))) {
            json_decref(*out);
            return DSV_BAD(e, "%s.%s.certificate is not an X.509 certificate (PEM or base64 DER)", path, slots[i]);
        }
        pem = dsv_cert_pem(x);
        json_object_set_new(*out, slots[i], json_pack("{s:s, s:o}", "certificate", pem, "info", dsv_cert_info(x)));
        free(pem);
        X509_free(x);
    }
    return true;
}

static bool dsv_attestation(json_t *att, enum dsv_kind kind, json_t **out, const char **type, struct dsv_err *e)
{
    json_t *t = json_is_object(att) ? json_object_get(att, "type") : NULL;
    const char *ts;
    if (!json_is_object(att))
        return DSV_BAD(e, "attestation is required and must be an object");
    if (!json_is_string(t))
        return DSV_BAD(e, "attestation.type is required: symmetricKey or x509");
    ts = json_string_value(t);
    if (strcmp(ts, "symmetricKey") == 0) {
        json_t *sk = json_object_get(att, "symmetricKey"), *keys;
        if (sk && !json_is_null(sk) && !json_is_object(sk))
            return DSV_BAD(e, "attestation.symmetricKey must be an object");
        if (json_is_null(sk))
            sk = NULL;
        keys = json_object();
        if (!dsv_sym_key(sk, "primaryKey", keys, e) || !dsv_sym_key(sk, "secondaryKey", keys, e)) {
            json_decref(keys);
            return false;
        }
        *out = json_pack("{s:s, s:o}", "type", "symmetricKey", "symmetricKey", keys);
        *type = "symmetricKey";
        return true;
    }
    if (strcmp(ts, "x509") == 0) {
        json_t *x = json_object_get(att, "x509"), *pair;
        const char *want = kind == DSV_GROUP ? "signingCertificates" : "clientCertificates";
        const char *other = kind == DSV_GROUP ? "clientCertificates" : "signingCertificates";
        char path[64];
        json_t *ca;
        if (!json_is_object(x))
            return DSV_BAD(e, "attestation.x509 is required and must be an object");
        ca = json_object_get(x, "caReferences");
        if (ca && !json_is_null(ca))
            return DSV_BAD(e, "attestation.x509.caReferences is not supported: give the certificates in %s", want);
        if (json_object_get(x, other) && !json_is_null(json_object_get(x, other)))
            return DSV_BAD(e, "attestation.x509.%s is not valid for %s: use %s", other,
                           kind == DSV_GROUP ? "an enrollment group" : "an individual enrollment", want);
        snprintf(path, sizeof path, "attestation.x509.%s", want);
        if (!dsv_cert_pair(json_object_get(x, want), path, &pair, e))
            return false;
        *out = json_pack("{s:s, s:{s:o}}", "type", "x509", "x509", want, pair);
        *type = "x509";
        return true;
    }
    if (strcmp(ts, "tpm") == 0)
        return DSV_BAD(e, "TPM attestation is not supported by this service; use symmetricKey or x509");
    return DSV_BAD(e, "attestation.type must be symmetricKey or x509");
}

/* ---- the rest of the document ---- */

static bool dsv_is_hub(const struct agent_provisioning_config *pc, const char *host)
{
    for (size_t i = 0; i < pc->n_hubs; i++)
        if (strcasecmp(pc->hubs[i].host_name, host) == 0)
            return true;
    return false;
}

static bool dsv_http_url(const char *s)
{
    const char *host;
    if (strncasecmp(s, "https://", 8) == 0)
        host = s + 8;
    else if (strncasecmp(s, "http://", 7) == 0)
        host = s + 7;
    else
        return false;
    if (!*host || *host == '/' || *host == ':' || strlen(s) > 2048)
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

/* IoT Hub device id: up to 128 of [A-Za-z0-9] and -.+%_#*?!(),:=@$' */
static bool dsv_valid_device_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("-.+%_#*?!(),:=@$'", s[i]))
            return false;
    return true;
}

/* An optional member: absent and null are both "not given". */
static json_t *dsv_opt(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v && !json_is_null(v) ? v : NULL;
}

static bool dsv_optional_fields(json_t *body, enum dsv_kind kind, const struct agent_provisioning_config *pc,
                                json_t *doc, struct dsv_err *e)
{
    json_t *v;
    const char *policy = NULL;

    if ((v = dsv_opt(body, "provisioningStatus"))) {
        if (!json_is_string(v) || (strcmp(json_string_value(v), "enabled") != 0 &&
                                   strcmp(json_string_value(v), "disabled") != 0))
            return DSV_BAD(e, "provisioningStatus must be enabled or disabled");
        json_object_set(doc, "provisioningStatus", v);
    } else
        json_object_set_new(doc, "provisioningStatus", json_string("enabled"));

    if (kind == DSV_INDIVIDUAL && (v = dsv_opt(body, "deviceId"))) {
        if (!json_is_string(v) || !dsv_valid_device_id(json_string_value(v)))
            return DSV_BAD(e, "deviceId must be 1-128 characters of letters, digits and -.+%%_#*?!(),:=@$'");
        json_object_set(doc, "deviceId", v);
    }
    if ((v = dsv_opt(body, "iotHubHostName"))) {
        if (!json_is_string(v) || !dsv_is_hub(pc, json_string_value(v)))
            return DSV_BAD(e, "iotHubHostName must name one of this stamp's hubs");
        json_object_set(doc, "iotHubHostName", v);
    }
    if ((v = dsv_opt(body, "iotHubs"))) {
        size_t i;
        json_t *h;
        if (!json_is_array(v) || json_array_size(v) > DSV_MAX_HUBS)
            return DSV_BAD(e, "iotHubs must be an array of at most %d hub host names", DSV_MAX_HUBS);
        json_array_foreach(v, i, h) {
            if (!json_is_string(h))
                return DSV_BAD(e, "iotHubs[%zu] must be a string", i);
            if (!dsv_is_hub(pc, json_string_value(h)))
                return DSV_BAD(e, "iotHubs[%zu] '%.128s' is not a hub of this stamp", i, json_string_value(h));
        }
        json_object_set(doc, "iotHubs", v);
    }
    if ((v = dsv_opt(body, "allocationPolicy"))) {
        static const char *const policies[] = {"hashed", "geoLatency", "static", "custom"};
        bool ok = false;
        if (json_is_string(v))
            for (size_t i = 0; i < ARRAY_LEN(policies); i++)
                ok = ok || strcmp(json_string_value(v), policies[i]) == 0;
        if (!ok)
            return DSV_BAD(e, "allocationPolicy must be hashed, geoLatency, static or custom");
        policy = json_string_value(v);
        json_object_set(doc, "allocationPolicy", v);
    }
    if ((v = dsv_opt(body, "customAllocationDefinition")) || (policy && strcmp(policy, "custom") == 0)) {
        json_t *url = v ? json_object_get(v, "webhookUrl") : NULL, *ver = v ? json_object_get(v, "apiVersion") : NULL;
        char why[200];
        if (!json_is_object(v))
            return DSV_BAD(e, "customAllocationDefinition {webhookUrl, apiVersion} is required with allocationPolicy custom");
        if (!json_is_string(url) || !dsv_http_url(json_string_value(url)))
            return DSV_BAD(e, "customAllocationDefinition.webhookUrl must be an https URL");
        /* the target rules of dps_webhook.h; checked again on every call */
        if (!dps_webhook_url_check(json_string_value(url), pc->webhook_allow_private, why, sizeof why))
            return DSV_BAD(e, "customAllocationDefinition.webhookUrl: %s", why);
        if (!json_is_string(ver) || json_string_length(ver) == 0 || json_string_length(ver) > 32)
            return DSV_BAD(e, "customAllocationDefinition.apiVersion must be a version string such as 2021-10-01");
        json_object_set_new(doc, "customAllocationDefinition",
                            json_pack("{s:O, s:O}", "webhookUrl", url, "apiVersion", ver));
    }
    if ((v = dsv_opt(body, "reprovisionPolicy"))) {
        json_t *u, *m;
        if (!json_is_object(v))
            return DSV_BAD(e, "reprovisionPolicy must be an object");
        u = dsv_opt(v, "updateHubAssignment");
        m = dsv_opt(v, "migrateDeviceData");
        if ((u && !json_is_boolean(u)) || (m && !json_is_boolean(m)))
            return DSV_BAD(e, "reprovisionPolicy.updateHubAssignment and migrateDeviceData must be booleans");
        json_object_set_new(doc, "reprovisionPolicy",
                            json_pack("{s:b, s:b}", "updateHubAssignment", u ? json_is_true(u) : 1,
                                      "migrateDeviceData", m ? json_is_true(m) : 1));
    } else
        json_object_set_new(doc, "reprovisionPolicy",
                            json_pack("{s:b, s:b}", "updateHubAssignment", 1, "migrateDeviceData", 1));
    if ((v = dsv_opt(body, "initialTwin"))) {
        if (!json_is_object(v))
            return DSV_BAD(e, "initialTwin must be an object");
        json_object_set(doc, "initialTwin", v);
    }
    if ((v = dsv_opt(body, "capabilities"))) {
        json_t *edge;
        if (!json_is_object(v))
            return DSV_BAD(e, "capabilities must be an object");
        edge = dsv_opt(v, "iotEdge");
        if (edge && !json_is_boolean(edge))
            return DSV_BAD(e, "capabilities.iotEdge must be a boolean");
        json_object_set_new(doc, "capabilities", json_deep_copy(v));
        if (!edge)
            json_object_set_new(json_object_get(doc, "capabilities"), "iotEdge", json_false());
    } else
        json_object_set_new(doc, "capabilities", json_pack("{s:b}", "iotEdge", 0));
    return true;
}

json_t *dsv_normalize(json_t *body, enum dsv_kind kind, const char *url_id,
                      const struct agent_provisioning_config *pc, const char **attestation,
                      struct dsv_err *e)
{
    const char *idf = dsv_id_field(kind);
    json_t *id, *doc, *att = NULL;

    if (!json_is_object(body)) {
        dsv_set_err(e, 400, DSV_E_INVALID, "the body must be a JSON object (%s)",
                    kind == DSV_GROUP ? "EnrollmentGroup" : "IndividualEnrollment");
        return NULL;
    }
    id = json_object_get(body, idf);
    if (!json_is_string(id)) {
        dsv_set_err(e, 400, DSV_E_INVALID, "%s is required", idf);
        return NULL;
    }
    if (strcmp(json_string_value(id), url_id) != 0) {
        dsv_set_err(e, 400, DSV_E_INVALID, "%s '%.128s' does not match the id in the path", idf, json_string_value(id));
        return NULL;
    }
    if (!dsv_valid_id(kind, url_id)) {
        dsv_set_err(e, 400, DSV_E_INVALID, "%s must be 1-128 characters of %s, '-', '.', '_' and ':', "
                    "ending in a letter, digit or '-'", idf,
                    kind == DSV_GROUP ? "letters, digits" : "lower-case letters, digits");
        return NULL;
    }
    if (!dsv_attestation(json_object_get(body, "attestation"), kind, &att, attestation, e))
        return NULL;
    doc = json_pack("{s:O, s:o}", idf, id, "attestation", att);
    if (!dsv_optional_fields(body, kind, pc, doc, e)) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* ---- etags ---- */

void dsv_etag_format(int64_t etag, char *out, size_t outlen)
{
    snprintf(out, outlen, "\"%lld\"", (long long)etag);
}

static enum dsv_match dsv_parse_etag(const char *s, int64_t *etag)
{
    char buf[DSV_ETAG_MAX];
    size_t n;
    while (*s == ' ' || *s == '\t')
        s++;
    if (strncmp(s, "W/", 2) == 0)
        s += 2;
    n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0)
        return DSV_MATCH_NONE;
    if (n == 1 && s[0] == '*')
        return DSV_MATCH_ANY;
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof buf)
        return DSV_MATCH_NEVER;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (!util_parse_int64(buf, 1, INT64_MAX, etag))
        return DSV_MATCH_NEVER;
    return DSV_MATCH_VALUE;
}

enum dsv_match dsv_if_match(const char *header, json_t *body, int64_t *etag)
{
    json_t *b;
    enum dsv_match m;
    *etag = 0;
    if (header && (m = dsv_parse_etag(header, etag)) != DSV_MATCH_NONE)
        return m;
    b = body ? json_object_get(body, "etag") : NULL;
    if (json_is_string(b))
        return dsv_parse_etag(json_string_value(b), etag);
    return DSV_MATCH_NONE;
}

const char *dsv_match_param(enum dsv_match m, int64_t etag, char *buf, size_t buflen)
{
    switch (m) {
    case DSV_MATCH_NONE:
    case DSV_MATCH_ANY:
        return NULL;
    case DSV_MATCH_NEVER:
        snprintf(buf, buflen, "0");
        return buf;
    case DSV_MATCH_VALUE:
        snprintf(buf, buflen, "%lld", (long long)etag);
        return buf;
    }
    return NULL;
}

/* ---- paging ---- */

bool dsv_page_size(const char *header, int *out)
{
    int64_t n;
    if (!header) {
        *out = DSV_PAGE_DEFAULT;
        return true;
    }
    if (!util_parse_int64(header, 1, INT64_MAX, &n))
        return false;
    *out = n > DSV_PAGE_MAX ? DSV_PAGE_MAX : (int)n;
    return true;
}

void dsv_token_encode(const char *last_id, char *out, size_t outlen)
{
    char b64[DSV_TOKEN_MAX];
    size_t len = strlen(last_id), o = 0;
    if (len > DSV_ID_MAX || outlen < 3) {
        if (outlen) out[0] = '\0';
        return;
    }
    sas_b64_encode((const unsigned char *)last_id, len, b64, sizeof b64);
    out[o++] = 'c';
    out[o++] = '1';
    for (const char *p = b64; *p && *p != '=' && o + 1 < outlen; p++)
        out[o++] = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    out[o] = '\0';
}

bool dsv_token_decode(const char *token, char *id, size_t idlen)
{
    char b64[DSV_TOKEN_MAX + 4];
    unsigned char raw[DSV_ID_MAX + 4];
    size_t n, o = 0;
    int len;
    if (!token || strncmp(token, "c1", 2) != 0)
        return false;
    token += 2;
    n = strlen(token);
    if (n == 0 || n > DSV_TOKEN_MAX - 3 || n % 4 == 1)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = token[i];
        if (c == '-') c = '+';
        else if (c == '_') c = '/';
        else if (c == '+' || c == '/' || c == '=') return false;
        b64[o++] = c;
    }
    while (o % 4)
        b64[o++] = '=';
    b64[o] = '\0';
    len = sas_b64_decode(b64, raw, DSV_ID_MAX);
    if (len <= 0 || (size_t)len >= idlen || memchr(raw, '\0', (size_t)len))
        return false;
    memcpy(id, raw, (size_t)len);
    id[len] = '\0';
    return util_utf8_valid(id, (size_t)len);
}

/* ---- certificates ---- */

X509 *dsv_cert_parse(const char *text)
{
    return dps_x509_parse(text);
}

static void dsv_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static char *dsv_name(const X509_NAME *name)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    long n;
    X509_NAME_print_ex(b, name, 0, (XN_FLAG_RFC2253 & ~XN_FLAG_SEP_MASK) | XN_FLAG_SEP_CPLUS_SPC);
    n = BIO_get_mem_data(b, &data);
    out = xstrndup(data, n > 0 ? (size_t)n : 0);
    BIO_free(b);
    return out;
}

static void dsv_time(const ASN1_TIME *t, char *out, size_t outlen)
{
    struct tm tm;
    if (!t || !ASN1_TIME_to_tm(t, &tm)) {
        snprintf(out, outlen, "%s", "");
        return;
    }
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

json_t *dsv_cert_info(X509 *cert)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen;
    char sha1[2 * 20 + 1] = "", sha256[2 * 32 + 1] = "", nb[32], na[32];
    char *subject = dsv_name(X509_get_subject_name(cert)), *issuer = dsv_name(X509_get_issuer_name(cert));
    char serial[2 * 20 * 2 + 1] = "";
    const ASN1_INTEGER *sn = X509_get0_serialNumber(cert);
    json_t *info;

    if (X509_digest(cert, EVP_sha1(), md, &mdlen) && mdlen == 20)
        dsv_hex(md, mdlen, sha1);
    if (X509_digest(cert, EVP_sha256(), md, &mdlen) && mdlen == 32)
        dsv_hex(md, mdlen, sha256);
    if (sn && (size_t)sn->length * 2 < sizeof serial)
        dsv_hex(sn->data, (size_t)sn->length, serial);
    dsv_time(X509_get0_notBefore(cert), nb, sizeof nb);
    dsv_time(X509_get0_notAfter(cert), na, sizeof na);
    info = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "subjectName", subject, "sha1Thumbprint", sha1,
                     "sha256Thumbprint", sha256, "issuerName", issuer, "notBeforeUtc", nb, "notAfterUtc", na,
                     "serialNumber", serial, "version", (json_int_t)X509_get_version(cert) + 1);
    free(subject);
    free(issuer);
    return info;
}

char *dsv_cert_pem(X509 *cert)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    long n;
    PEM_write_bio_X509(b, cert);
    n = BIO_get_mem_data(b, &data);
    out = xstrndup(data, n > 0 ? (size_t)n : 0);
    BIO_free(b);
    return out;
}
