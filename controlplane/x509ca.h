/*
 * x509ca.h - the X.509 checks of tenant CA certificates, without a database
 * or a socket: strict parsing of an uploaded CA (one PEM certificate, a CA,
 * in its validity period, a usable key), the proof of possession (a leaf
 * with CN = the verification code signed by that CA, as Azure DPS does it),
 * and the check of a device's client certificate chain against a tenant's
 * verified, enabled CAs with the leaf rules the stamp's DPS applies
 * (stamp-agent/dps_x509.c dps_x509_leaf_usable and dps_x509_cn).
 *
 * Ownership: functions returning X509* or char* hand the caller a new
 * object (X509_free / free); arguments are borrowed.
 */
#ifndef CP_X509CA_H
#define CP_X509CA_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define X509CA_MAX_PEM 16384          /* bytes of one uploaded certificate */
#define X509CA_CODE_LEN 32            /* hex characters of a verification code */

/* A failed check: an error code of docs/api.md and a message. */
struct x509ca_err {
    int status;                       /* 400 or 422 */
    char code[48];
    char msg[200];
};

/* The PEM text holds exactly one "CERTIFICATE" block (whitespace around it
 * only, at most X509CA_MAX_PEM bytes) that parses: the certificate, or NULL
 * with e set (400 invalid_certificate). */
X509 *x509ca_parse_one(const char *pem, struct x509ca_err *e) MUSTCHECK;

/* An uploaded CA: basicConstraints CA:TRUE (and keyCertSign when key usage
 * is present), inside its validity period, an RSA key of 2048 bits or more
 * or an EC key of 256 bits or more. false with e set (422). */
bool x509ca_check_ca(X509 *ca, struct x509ca_err *e) MUSTCHECK;

/* Proof of possession: leaf has exactly one CN, equal to code, is inside its
 * validity period and is signed by ca's key. false with e set (422
 * verification_code_mismatch / wrong_signer / certificate_expired). */
bool x509ca_check_proof(X509 *ca, X509 *leaf, const char *code, struct x509ca_err *e) MUSTCHECK;

/* The summary stored with a CA: subject (RFC 2253), SHA-256 thumbprint
 * (64 upper-case hex), validity as RFC 3339 UTC. */
struct x509ca_info {
    char subject[512];
    char thumbprint[65];
    char not_before[32], not_after[32];
};
bool x509ca_info(X509 *c, struct x509ca_info *out) MUSTCHECK;

/* The subject's single CN (no embedded NUL) as a new string, or NULL. */
char *x509ca_cn(X509 *c) MUSTCHECK;

/* Whether a device's leaf may authenticate now (the stamp's rules): inside
 * its validity period, no invalid extensions, clientAuth when it has an
 * extended key usage. err gets the reason on false. */
bool x509ca_leaf_usable(X509 *leaf, char *err, size_t errlen) MUSTCHECK;

/* Whether leaf (with the intermediates the client sent, may be NULL)
 * chains to one of cas[0..ncas) (partial chains: a CA may be an
 * intermediate), validity periods checked, and is usable. err on false. */
bool x509ca_verify_device(X509 *const *cas, int ncas, X509 *leaf, STACK_OF(X509) *chain, char *err,
                          size_t errlen) MUSTCHECK;

#endif
