/*
 * pseudonym.h - keyed pseudonyms of device identifiers, for the control
 * plane's logs and its Redis messages (docs/security.md, "Residency in the
 * plumbing"): a registration id never leaves the process in clear there.
 *
 *   pseudonym = "dev_" + hex(HMAC-SHA256(K, tenant "/" registrationId)[0..8))
 *   K         = HMAC-SHA256(pseudonymKey, "stampcp device pseudonym v1")
 *
 * pseudonymKey is a per-deployment secret from the config (every control
 * plane of a deployment must use the same one, so that invalidations match);
 * without one, the operator token stands in for it. The operator maps a
 * pseudonym back with `controlplane --config FILE --pseudonym TENANT/REGID...`
 * or the `pseudonym` field of GET /v1/tenants/{t}/devices/{r}.
 *
 * Ownership: struct pseudonym is a plain value (no heap); outputs are written
 * into caller buffers.
 */
#ifndef CP_PSEUDONYM_H
#define CP_PSEUDONYM_H

#include <stdbool.h>
#include <stddef.h>

#define PSEUDONYM_LEN 21   /* "dev_" + 16 hex + NUL */

struct pseudonym {
    unsigned char key[32];
    char key_id[12];   /* "k" + 8 hex of HMAC(K, "key id"): names the key, reveals nothing of it */
    bool ready;
};

/* Derive the key from secret (the config's pseudonymKey, else the operator token). */
void pseudonym_init(struct pseudonym *p, const char *secret);
/* Wipe the key. */
void pseudonym_clear(struct pseudonym *p);
/* out = the device's pseudonym; returns out. */
const char *pseudonym_device(const struct pseudonym *p, const char *tenant, const char *regid,
                             char out[PSEUDONYM_LEN]);
/* The key's id: control planes with different keys can tell that their
 * pseudonyms don't match (invalidations then drop the whole cache). */
const char *pseudonym_key_id(const struct pseudonym *p);
/* Whether s has the shape of a pseudonym. */
bool pseudonym_valid(const char *s);
/*
 * A request path (or URI) fit for a log line: every segment after
 * "registrations" or "devices" becomes the device's pseudonym (with the
 * tenant from the segment after "tenants"), and a query's cursor value is
 * replaced by "-" (it may hold a registration id). Returns out.
 */
const char *pseudonym_redact_path(const struct pseudonym *p, const char *path, char *out, size_t outlen);

#endif
