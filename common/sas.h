/*
 * sas.h - SharedAccessSignature tokens as Azure DPS devices send them, and
 * the group-enrollment key derivation (docs: ../shared/specs/dps-wire.md §4).
 *
 * Verification follows the rule every SDK variant satisfies: fields in any
 * order; sr and se signed exactly as sent (not URL-decoded); sig URL-decoded
 * before comparing; the comparison in constant time.
 */
#ifndef STAMPCP_SAS_H
#define STAMPCP_SAS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define SAS_KEY_LEN 32

struct sas_token {
    char sr[512];       /* as sent */
    char sr_decoded[512];
    char sig[128];      /* URL-decoded base64 signature */
    char se[24];        /* as sent */
    char skn[64];       /* URL-decoded */
    int64_t expiry;     /* se as a number (Unix seconds) */
};

enum sas_error {
    SAS_OK = 0,
    SAS_MALFORMED,      /* not "SharedAccessSignature k=v&...", a field missing/duplicated/too long */
    SAS_EXPIRED,        /* se is in the past */
    SAS_WRONG_RESOURCE, /* sr names another scope/tenant or device */
    SAS_BAD_SIGNATURE,  /* the signature does not verify with the key */
};

/* The API error code for an error: "malformed_token", "expired_token", ... */
const char *sas_error_code(enum sas_error e);

/* Parse an Authorization header value. */
enum sas_error sas_parse(const char *header, struct sas_token *t) MUSTCHECK;

/* Check that urldecode(sr) equals "{prefix}/registrations/{registration_id}" (case-insensitively)
 * and that the token has not expired at now_s. */
enum sas_error sas_check_claims(const struct sas_token *t, const char *prefix,
                                const char *registration_id, int64_t now_s) MUSTCHECK;

/* Verify the signature with a raw key (constant time). */
bool sas_verify(const struct sas_token *t, const unsigned char *key, size_t keylen) MUSTCHECK;

/* deviceKey = HMAC-SHA256(groupKey, registrationId), raw 32 bytes. */
void sas_derive_key(const unsigned char *group_key, size_t group_keylen, const char *registration_id,
                    unsigned char out[SAS_KEY_LEN]);

/* Base64 helpers (standard alphabet, padded). decode returns the byte count or -1. */
int sas_b64_decode(const char *in, unsigned char *out, size_t outlen);
void sas_b64_encode(const unsigned char *in, size_t len, char *out, size_t outlen);

/* Build a token (for clients and tests): sr is used as given. */
void sas_build(const char *sr, const unsigned char *key, size_t keylen, int64_t expiry,
               const char *skn, char *out, size_t outlen);

#endif
