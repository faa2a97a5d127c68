/*
 * dps_x509.h - X.509 attestation helpers: certificates from enrollment
 * documents (PEM or base64 DER), leaf matching for individual enrollments,
 * chain verification against one enrollment group's signing certificate, and
 * the certificateInfo object of the registration state.
 */
#ifndef STAMPAGENT_DPS_X509_H
#define STAMPAGENT_DPS_X509_H

#include <jansson.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* A certificate from "-----BEGIN CERTIFICATE-----..." or bare base64 DER
 * (whitespace ignored); NULL if neither parses. Caller frees (X509_free). */
X509 *dps_x509_parse(const char *text);

/* The subject CN as a new string, or NULL (caller frees). NULL too when the
 * subject has more than one CN or the CN holds an embedded NUL: either could
 * make two parties read two different names. */
char *dps_x509_cn(X509 *c);

/* Whether a device's leaf certificate may authenticate now: inside its
 * validity period, and for clientAuth when it has an extended key usage.
 * err gets the reason on false. */
bool dps_x509_leaf_usable(X509 *leaf, char *err, size_t errlen);

/* Same certificate (SHA-256 of the DER). */
bool dps_x509_same(X509 *a, X509 *b);

/* Whether leaf chains up to ca, using untrusted (may be NULL) as
 * intermediates; ca may itself be an intermediate (partial chains accepted).
 * Validity periods are checked. err gets the reason on false. */
bool dps_x509_verify(X509 *ca, X509 *leaf, STACK_OF(X509) *untrusted, char *err, size_t errlen);

/* {subjectName, sha1Thumbprint, sha256Thumbprint, issuerName, notBeforeUtc,
 * notAfterUtc, serialNumber, version}: a new reference, or NULL. */
json_t *dps_x509_info(X509 *c) MUSTCHECK;

#endif
