/*
 * dps_x509.c - certificate parsing, matching, chain checks and info.
 */
#include "dps_x509.h"

#include <ctype.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

X509 *dps_x509_parse(const char *text)
{
    X509 *x = NULL;
    if (!text)
        return NULL;
    while (isspace((unsigned char)*text))
        text++;
    if (strncmp(text, "-----BEGIN", 10) == 0) {
        BIO *b = BIO_new_mem_buf(text, -1);
        if (b) {
            x = PEM_read_bio_X509(b, NULL, NULL, NULL);
            BIO_free(b);
        }
        return x;
    } else {
        /* not sas_b64_decode(): that one is sized for keys and signatures
         * (768 characters at most), a DER certificate is usually longer */
        size_t n = strlen(text), o = 0;
        char *clean = xmalloc(n + 1);
        unsigned char *der;
        const unsigned char *p;
        int len, pad = 0;
        for (size_t i = 0; i < n; i++)
            if (!isspace((unsigned char)text[i]))
                clean[o++] = text[i];
        clean[o] = '\0';
        if (o == 0 || o % 4 != 0) {
            free(clean);
            return NULL;
        }
        der = xmalloc(o / 4 * 3 + 1);
        len = EVP_DecodeBlock(der, (const unsigned char *)clean, (int)o);
        if (clean[o - 1] == '=') pad++;
        if (o > 1 && clean[o - 2] == '=') pad++;
        free(clean);
        if (len > 0) {
            p = der;
            x = d2i_X509(NULL, &p, len - pad);
        }
        free(der);
        return x;
    }
}

char *dps_x509_cn(X509 *c)
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

bool dps_x509_leaf_usable(X509 *leaf, char *err, size_t errlen)
{
    uint32_t flags;
    if (!leaf) {
        snprintf(err, errlen, "no certificate");
        return false;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) >= 0) {
        snprintf(err, errlen, "certificate is not yet valid");
        return false;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
        snprintf(err, errlen, "certificate has expired");
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

bool dps_x509_same(X509 *a, X509 *b)
{
    unsigned char da[EVP_MAX_MD_SIZE], db[EVP_MAX_MD_SIZE];
    unsigned int la = 0, lb = 0;
    if (!a || !b || !X509_digest(a, EVP_sha256(), da, &la) || !X509_digest(b, EVP_sha256(), db, &lb))
        return false;
    return la == lb && CRYPTO_memcmp(da, db, la) == 0;
}

bool dps_x509_verify(X509 *ca, X509 *leaf, STACK_OF(X509) *untrusted, char *err, size_t errlen)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    bool ok = false;
    if (!store || !ctx || !ca || !leaf || X509_STORE_add_cert(store, ca) != 1) {
        snprintf(err, errlen, "could not set up the verification");
        goto out;
    }
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1) {
        snprintf(err, errlen, "could not set up the verification");
        goto out;
    }
    ok = X509_verify_cert(ctx) == 1;
    if (!ok)
        snprintf(err, errlen, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return ok;
}

static char *dps_x509_name(X509_NAME *n)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out;
    long len;
    if (!b)
        return xstrdup("");
    X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    len = BIO_get_mem_data(b, &data);
    out = xstrndup(data ? data : "", len > 0 ? (size_t)len : 0);
    BIO_free(b);
    return out;
}

static void dps_x509_hex(X509 *c, const EVP_MD *md, char *out)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (X509_digest(c, md, d, &n))
        for (unsigned int i = 0; i < n; i++)
            sprintf(out + 2 * i, "%02X", d[i]);
}

static void dps_x509_time(const ASN1_TIME *t, char *out, size_t outlen)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) {
        snprintf(out, outlen, "%s", "");
        return;
    }
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
}

json_t *dps_x509_info(X509 *c)
{
    char sha1[2 * EVP_MAX_MD_SIZE + 1], sha256[2 * EVP_MAX_MD_SIZE + 1], nb[40], na[40];
    char *subject = dps_x509_name(X509_get_subject_name(c));
    char *issuer = dps_x509_name(X509_get_issuer_name(c));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(c), NULL);
    char *serial = bn ? BN_bn2hex(bn) : NULL;
    json_t *j;
    dps_x509_hex(c, EVP_sha1(), sha1);
    dps_x509_hex(c, EVP_sha256(), sha256);
    dps_x509_time(X509_get0_notBefore(c), nb, sizeof nb);
    dps_x509_time(X509_get0_notAfter(c), na, sizeof na);
    j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i}", "subjectName", subject, "sha1Thumbprint", sha1,
                  "sha256Thumbprint", sha256, "issuerName", issuer, "notBeforeUtc", nb, "notAfterUtc", na,
                  "serialNumber", serial ? serial : "", "version", (int)X509_get_version(c) + 1);
    free(subject);
    free(issuer);
    OPENSSL_free(serial);
    BN_free(bn);
    return j;
}
