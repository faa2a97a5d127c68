/*
 * x509ca.c - tenant CA certificates: strict parsing, the CA and proof of
 * possession checks, and device chain verification (x509ca.h).
 */
#include "x509ca.h"

#include <ctype.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define X509CA_BEGIN "-----BEGIN CERTIFICATE-----"
#define X509CA_END "-----END CERTIFICATE-----"

static bool x509ca_fail(struct x509ca_err *e, int status, const char *code, const char *msg)
{
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    return false;
}

static int x509ca_count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

X509 *x509ca_parse_one(const char *pem, struct x509ca_err *e)
{
    const char *p, *end;
    BIO *b;
    X509 *x;
    size_t n = pem ? strlen(pem) : 0;

    if (n == 0 || n > X509CA_MAX_PEM) {
        x509ca_fail(e, 400, "invalid_certificate", "the certificate must be 1 to 16384 bytes of PEM");
        return NULL;
    }
    for (p = pem; isspace((unsigned char)*p); p++) {}
    if (strncmp(p, X509CA_BEGIN, strlen(X509CA_BEGIN)) != 0) {
        x509ca_fail(e, 400, "invalid_certificate",
                    "the certificate must be PEM: one '" X509CA_BEGIN "' block and nothing else");
        return NULL;
    }
    if (x509ca_count(pem, "-----BEGIN") != 1 || x509ca_count(pem, "-----END") != 1) {
        x509ca_fail(e, 400, "invalid_certificate", "exactly one PEM certificate is expected (no chain, no key)");
        return NULL;
    }
    if (!(end = strstr(p, X509CA_END))) {
        x509ca_fail(e, 400, "invalid_certificate", "the PEM block has no '" X509CA_END "' line");
        return NULL;
    }
    for (end += strlen(X509CA_END); *end; end++)
        if (!isspace((unsigned char)*end)) {
            x509ca_fail(e, 400, "invalid_certificate", "text follows the PEM certificate");
            return NULL;
        }
    if (!(b = BIO_new_mem_buf(p, -1))) {
        x509ca_fail(e, 400, "invalid_certificate", "the certificate could not be read");
        return NULL;
    }
    x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    ERR_clear_error();
    if (!x)
        x509ca_fail(e, 400, "invalid_certificate", "the PEM block is not a valid X.509 certificate");
    return x;
}

/* Validity period: "" when fine, else the problem. */
static const char *x509ca_period(X509 *c)
{
    if (X509_cmp_current_time(X509_get0_notBefore(c)) >= 0)
        return "the certificate is not yet valid";
    if (X509_cmp_current_time(X509_get0_notAfter(c)) <= 0)
        return "the certificate has expired";
    return "";
}

bool x509ca_check_ca(X509 *ca, struct x509ca_err *e)
{
    uint32_t flags = X509_get_extension_flags(ca);
    EVP_PKEY *pk = X509_get0_pubkey(ca);
    const char *period = x509ca_period(ca);
    int bits;

    if (flags & EXFLAG_INVALID)
        return x509ca_fail(e, 422, "invalid_certificate", "the certificate has invalid extensions");
    if (!(flags & EXFLAG_BCONS) || !(flags & EXFLAG_CA))
        return x509ca_fail(e, 422, "not_a_ca", "the certificate is not a CA (basicConstraints CA:TRUE is required)");
    if ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(ca) & KU_KEY_CERT_SIGN))
        return x509ca_fail(e, 422, "not_a_ca", "the certificate's key usage does not allow keyCertSign");
    if (*period)
        return x509ca_fail(e, 422, strstr(period, "expired") ? "certificate_expired" : "certificate_not_yet_valid",
                           period);
    if (!pk)
        return x509ca_fail(e, 422, "invalid_certificate", "the certificate's public key cannot be read");
    bits = EVP_PKEY_get_bits(pk);
    if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA ? bits < 2048
        : EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC ? bits < 256
                                                    : true)
        return x509ca_fail(e, 422, "weak_key", "the CA's key must be RSA of 2048 bits or more, or EC of 256 bits or more");
    return true;
}

char *x509ca_cn(X509 *c)
{
    X509_NAME *n = X509_get_subject_name(c);
    int i = n ? X509_NAME_get_index_by_NID(n, NID_commonName, -1) : -1;
    ASN1_STRING *s;
    unsigned char *utf8 = NULL;
    char *out;
    int len;
    if (i < 0 || X509_NAME_get_index_by_NID(n, NID_commonName, i) >= 0 ||
        !(s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i))))
        return NULL;
    if ((len = ASN1_STRING_to_UTF8(&utf8, s)) < 0)
        return NULL;
    if (memchr(utf8, '\0', (size_t)len)) {
        OPENSSL_free(utf8);
        return NULL;
    }
    out = xstrndup((const char *)utf8, (size_t)len);
    OPENSSL_free(utf8);
    return out;
}

bool x509ca_check_proof(X509 *ca, X509 *leaf, const char *code, struct x509ca_err *e)
{
    char *cn = x509ca_cn(leaf);
    bool same = cn && strlen(cn) == strlen(code) && CRYPTO_memcmp(cn, code, strlen(code)) == 0;
    EVP_PKEY *pk = X509_get0_pubkey(ca);
    const char *period = x509ca_period(leaf);
    free(cn);
    if (!same)
        return x509ca_fail(e, 422, "verification_code_mismatch",
                           "the certificate's subject must have one CN equal to the verificationCode");
    if (!pk || X509_check_issued(ca, leaf) != X509_V_OK || X509_verify(leaf, pk) != 1) {
        ERR_clear_error();
        return x509ca_fail(e, 422, "wrong_signer", "the certificate is not signed by this CA");
    }
    if (*period)
        return x509ca_fail(e, 422, strstr(period, "expired") ? "certificate_expired" : "certificate_not_yet_valid",
                           period);
    return true;
}

static void x509ca_time(const ASN1_TIME *t, char *out, size_t outlen)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) {
        snprintf(out, outlen, "%s", "");
        return;
    }
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

bool x509ca_info(X509 *c, struct x509ca_info *out)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL;
    long len;
    memset(out, 0, sizeof *out);
    if (!b || !X509_digest(c, EVP_sha256(), d, &n) || n != 32) {
        BIO_free(b);
        return false;
    }
    for (unsigned int i = 0; i < n; i++)
        snprintf(out->thumbprint + 2 * i, 3, "%02X", d[i]);
    X509_NAME_print_ex(b, X509_get_subject_name(c), 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    len = BIO_get_mem_data(b, &data);
    snprintf(out->subject, sizeof out->subject, "%.*s", len > 0 ? (int)len : 0, data ? data : "");
    BIO_free(b);
    x509ca_time(X509_get0_notBefore(c), out->not_before, sizeof out->not_before);
    x509ca_time(X509_get0_notAfter(c), out->not_after, sizeof out->not_after);
    return out->not_before[0] && out->not_after[0];
}

bool x509ca_leaf_usable(X509 *leaf, char *err, size_t errlen)
{
    uint32_t flags;
    const char *period;
    if (!leaf) {
        snprintf(err, errlen, "no certificate");
        return false;
    }
    if (*(period = x509ca_period(leaf))) {
        snprintf(err, errlen, "%s", period);
        return false;
    }
    flags = X509_get_extension_flags(leaf);
    if (flags & EXFLAG_INVALID) {
        snprintf(err, errlen, "certificate has invalid extensions");
        return false;
    }
    if ((flags & EXFLAG_XKUSAGE) && !(X509_get_extended_key_usage(leaf) & XKU_SSL_CLIENT)) {
        snprintf(err, errlen, "certificate's extended key usage has no clientAuth");
        return false;
    }
    return true;
}

bool x509ca_verify_device(X509 *const *cas, int ncas, X509 *leaf, STACK_OF(X509) *chain, char *err, size_t errlen)
{
    X509_STORE *store = NULL;
    X509_STORE_CTX *ctx = NULL;
    bool ok = false;
    if (!x509ca_leaf_usable(leaf, err, errlen))
        return false;
    if (ncas <= 0) {
        snprintf(err, errlen, "the tenant has no verified, enabled CA");
        return false;
    }
    if (!(store = X509_STORE_new()) || !(ctx = X509_STORE_CTX_new())) {
        snprintf(err, errlen, "could not set up the verification");
        goto out;
    }
    for (int i = 0; i < ncas; i++)
        if (X509_STORE_add_cert(store, cas[i]) != 1) {
            snprintf(err, errlen, "could not set up the verification");
            goto out;
        }
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    if (X509_STORE_CTX_init(ctx, store, leaf, chain) != 1) {
        snprintf(err, errlen, "could not set up the verification");
        goto out;
    }
    /* a device certificate, whatever purpose the chain's CAs were made for */
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_ANY);
    ok = X509_verify_cert(ctx) == 1;
    if (!ok)
        snprintf(err, errlen, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
out:
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return ok;
}
