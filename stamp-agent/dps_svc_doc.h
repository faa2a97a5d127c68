/*
 * dps_svc_doc.h - the pure half of the DPS service API: validation and
 * normalisation of enrollment documents, etags and If-Match, query paging
 * (page size, continuation tokens) and X.509 certificate info. No sockets,
 * no database: dps_service.c calls these, and the unit tests do too.
 *
 * Stored enrollment documents (dps_enrollments.doc, read by the device API):
 *   - the IndividualEnrollment / EnrollmentGroup object of spec §8.4 with
 *     etag, createdDateTimeUtc, lastUpdatedDateTimeUtc and registrationState
 *     removed and unknown top-level members dropped;
 *   - attestation holds only the member of its type:
 *       {"type":"symmetricKey","symmetricKey":{"primaryKey","secondaryKey"}}
 *         (both always present: base64 of 16-64 bytes, generated when omitted);
 *       {"type":"x509","x509":{"signingCertificates"|"clientCertificates":
 *         {"primary":{"certificate":PEM,"info":{...}},"secondary"?:{...}}}}
 *         (signingCertificates for groups, clientCertificates for individual
 *         enrollments; certificates normalised to PEM);
 *   - provisioningStatus always present ("enabled" by default);
 *   - reprovisionPolicy always present (both flags default true, as in DPS);
 *   - capabilities always present ({"iotEdge":false} by default);
 *   - allocationPolicy, iotHubs, customAllocationDefinition, initialTwin,
 *     deviceId, iotHubHostName only when given (no allocationPolicy: the
 *     instance's default, hashed).
 */
#ifndef STAMPAGENT_DPS_SVC_DOC_H
#define STAMPAGENT_DPS_SVC_DOC_H

#include <jansson.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>

#include "agent_config.h"
#include "util.h"

#define DSV_GROUP_CAP       100   /* enrollment groups per instance and attestation type (limits.md) */
#define DSV_MAX_HUBS        50    /* iotHubs entries */
#define DSV_ID_MAX          128
#define DSV_PAGE_DEFAULT    100
#define DSV_PAGE_MAX        1000
#define DSV_TOKEN_MAX       200   /* encoded continuation token, NUL included */
#define DSV_ETAG_MAX        32
#define DSV_BULK_MAX        10    /* enrollments per bulk operation (DPS limit) */

enum dsv_kind { DSV_INDIVIDUAL, DSV_GROUP };

/* DPS error codes this API answers with. */
#define DSV_E_INVALID       400004
#define DSV_E_GROUP_CAP     400005
#define DSV_E_UNAUTHORIZED  401002
#define DSV_E_NOT_FOUND     404201   /* enrollment or enrollment group */
#define DSV_E_NO_REG        404202   /* device registration */
#define DSV_E_NO_INSTANCE   404001
#define DSV_E_METHOD        405000
#define DSV_E_CONFLICT      409201
#define DSV_E_ETAG          412002
#define DSV_E_INTERNAL      500000
#define DSV_E_UNAVAILABLE   503000

struct dsv_err {
    int status;          /* HTTP status */
    int code;            /* DPS errorCode */
    char msg[256];
};

void dsv_set_err(struct dsv_err *e, int status, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The id field of a kind: "registrationId" or "enrollmentGroupId". */
const char *dsv_id_field(enum dsv_kind kind);
/* "individual" / "group": the kind column of dps_enrollments. */
const char *dsv_kind_word(enum dsv_kind kind);

/* Registration ids: 1-128 of [a-z0-9-._:], ending in [a-z0-9-] (DPS rule,
 * lower case as the device API compares them). Group ids may also use upper case. */
bool dsv_valid_id(enum dsv_kind kind, const char *id);

/*
 * Validate body (borrowed) as an enrollment of kind whose URL id is url_id,
 * against the stamp's hubs in pc. Returns a new reference to the normalised
 * document (see above) and sets *attestation to "symmetricKey" or "x509"
 * (static strings); NULL with e set (400) otherwise.
 */
json_t *dsv_normalize(json_t *body, enum dsv_kind kind, const char *url_id,
                      const struct agent_provisioning_config *pc, const char **attestation,
                      struct dsv_err *e) MUSTCHECK;

/* Etags: stored as a counter, sent as the quoted string "\"<n>\"". */
void dsv_etag_format(int64_t etag, char *out, size_t outlen);

enum dsv_match {
    DSV_MATCH_NONE,      /* no condition */
    DSV_MATCH_ANY,       /* If-Match: * */
    DSV_MATCH_VALUE,     /* *etag holds the value */
    DSV_MATCH_NEVER,     /* an etag we never issued: matches nothing */
};
/* The condition of a request: the If-Match header when present (and not
 * empty), else the body's "etag" member (body may be NULL). Accepts "3",
 * "\"3\"" and W/"3". */
enum dsv_match dsv_if_match(const char *header, json_t *body, int64_t *etag);
/* The condition as the SQL parameter "etag = $n" of an update or delete:
 * NULL for none/any, "0" for never (etags start at 1), else the number (buf >= 24). */
const char *dsv_match_param(enum dsv_match m, int64_t etag, char *buf, size_t buflen);

/* x-ms-max-item-count: NULL -> 100; 1..1000 (larger values are clamped to
 * 1000); anything else is false. */
bool dsv_page_size(const char *header, int *out) MUSTCHECK;
/* Continuation tokens carry the last id of the page ("c1" + base64url(id)). */
void dsv_token_encode(const char *last_id, char *out, size_t outlen);
bool dsv_token_decode(const char *token, char *id, size_t idlen) MUSTCHECK;

/* A certificate given as PEM or base64 DER (whitespace ignored); NULL if it
 * does not parse. The caller frees it. Same as dps_x509_parse(). */
X509 *dsv_cert_parse(const char *text);
/* X509CertificateInfo as DPS fills it in (new reference). */
json_t *dsv_cert_info(X509 *cert);
/* PEM text of cert (caller frees). */
char *dsv_cert_pem(X509 *cert);

#endif
