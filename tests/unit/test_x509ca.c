/*
 * test_x509ca - the tenant CA checks of controlplane/x509ca.c, on
 * certificates made in-process (OpenSSL API): strict PEM parsing, what
 * counts as a CA (basicConstraints, keyCertSign, validity, key size), the
 * proof of possession (CN, signer, validity) and device chain verification
 * (several CAs, intermediates, expired and not-yet-valid leaves, EKU,
 * a leaf of an unknown CA).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "x509ca.h"

struct kc {
    X509 *crt;
    EVP_PKEY *key;
};

static EVP_PKEY *new_key(int rsa_bits)
{
    return rsa_bits ? EVP_RSA_gen((unsigned)rsa_bits) : EVP_EC_gen("P-256");
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ex;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(ex);
    assert_int_equal(X509_add_ext(x, ex, -1), 1);
    X509_EXTENSION_free(ex);
}

/* A certificate for cn signed by issuer (NULL: self-signed); validity from
 * now + nb_s to now + na_s; bc / ku / eku extension values or NULL. */
static struct kc make(const struct kc *issuer, const char *cn, int rsa_bits, long nb_s, long na_s, const char *bc,
                      const char *ku, const char *eku)
{
    static long serial = 1;
    struct kc out;
    X509_NAME *name;
    out.key = new_key(rsa_bits);
    out.crt = X509_new();
    assert_non_null(out.key);
    assert_non_null(out.crt);
    X509_set_version(out.crt, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(out.crt), serial++);
    X509_gmtime_adj(X509_getm_notBefore(out.crt), nb_s);
    X509_gmtime_adj(X509_getm_notAfter(out.crt), na_s);
    X509_set_pubkey(out.crt, out.key);
    name = X509_get_subject_name(out.crt);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(out.crt, issuer ? X509_get_subject_name(issuer->crt) : name);
    if (bc) add_ext(out.crt, issuer ? issuer->crt : out.crt, NID_basic_constraints, bc);
    if (ku) add_ext(out.crt, issuer ? issuer->crt : out.crt, NID_key_usage, ku);
    if (eku) add_ext(out.crt, issuer ? issuer->crt : out.crt, NID_ext_key_usage, eku);
    assert_true(X509_sign(out.crt, issuer ? issuer->key : out.key, EVP_sha256()) > 0);
    return out;
}

static struct kc make_ca(const struct kc *issuer, const char *cn)
{
    return make(issuer, cn, 2048, -60, 86400, "critical,CA:TRUE", "critical,keyCertSign,cRLSign", NULL);
}

static struct kc make_leaf(const struct kc *issuer, const char *cn)
{
    return make(issuer, cn, 0, -60, 86400, "CA:FALSE", "critical,digitalSignature", "clientAuth");
}

static void kc_free(struct kc *k)
{
    X509_free(k->crt);
    EVP_PKEY_free(k->key);
}

/* PEM text of a certificate (caller frees). */
static char *pem(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    long n;
    PEM_write_bio_X509(b, x);
    n = BIO_get_mem_data(b, &data);
    out = malloc((size_t)n + 1);
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
    BIO_free(b);
    return out;
}

static void test_parse(void **state)
{
    struct kc ca = make_ca(NULL, "CA");
    char *p = pem(ca.crt), *two, *junk;
    struct x509ca_err e;
    X509 *x;
    (void)state;

    x = x509ca_parse_one(p, &e);
    assert_non_null(x);
    X509_free(x);
    junk = malloc(strlen(p) + 16);
    sprintf(junk, "\n  %s\n\n", p);
    x = x509ca_parse_one(junk, &e);   /* whitespace around: fine */
    assert_non_null(x);
    X509_free(x);
    two = malloc(2 * strlen(p) + 1);
    sprintf(two, "%s%s", p, p);
    assert_null(x509ca_parse_one(two, &e));
    assert_string_equal(e.code, "invalid_certificate");
    assert_int_equal(e.status, 400);
    sprintf(junk, "x%s", p);
    assert_null(x509ca_parse_one(junk, &e));
    sprintf(junk, "%s.", p);
    assert_null(x509ca_parse_one(junk, &e));
    assert_null(x509ca_parse_one("", &e));
    assert_null(x509ca_parse_one("-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n", &e));
    assert_null(x509ca_parse_one("-----BEGIN CERTIFICATE-----\nQUJD\n", &e));
    free(junk);
    free(two);
    free(p);
    kc_free(&ca);
}

static void test_check_ca(void **state)
{
    struct kc ok = make_ca(NULL, "CA"), ec = make(NULL, "EC CA", 0, -60, 86400, "critical,CA:TRUE", NULL, NULL);
    struct kc no_bc = make(NULL, "no bc", 2048, -60, 86400, NULL, NULL, NULL);
    struct kc not_ca = make(NULL, "leaf", 2048, -60, 86400, "CA:FALSE", NULL, NULL);
    struct kc no_sign = make(NULL, "no keyCertSign", 2048, -60, 86400, "critical,CA:TRUE", "digitalSignature", NULL);
    struct kc expired = make(NULL, "old", 2048, -7200, -3600, "critical,CA:TRUE", NULL, NULL);
    struct kc future = make(NULL, "future", 2048, 3600, 7200, "critical,CA:TRUE", NULL, NULL);
    struct kc weak = make(NULL, "weak", 1024, -60, 86400, "critical,CA:TRUE", NULL, NULL);
    struct x509ca_err e;
    struct x509ca_info info;
    (void)state;

    assert_true(x509ca_check_ca(ok.crt, &e));
    assert_true(x509ca_check_ca(ec.crt, &e));
    assert_false(x509ca_check_ca(no_bc.crt, &e));
    assert_string_equal(e.code, "not_a_ca");
    assert_false(x509ca_check_ca(not_ca.crt, &e));
    assert_string_equal(e.code, "not_a_ca");
    assert_false(x509ca_check_ca(no_sign.crt, &e));
    assert_string_equal(e.code, "not_a_ca");
    assert_false(x509ca_check_ca(expired.crt, &e));
    assert_string_equal(e.code, "certificate_expired");
    assert_int_equal(e.status, 422);
    assert_false(x509ca_check_ca(future.crt, &e));
    assert_string_equal(e.code, "certificate_not_yet_valid");
    assert_false(x509ca_check_ca(weak.crt, &e));
    assert_string_equal(e.code, "weak_key");

    assert_true(x509ca_info(ok.crt, &info));
    assert_string_equal(info.subject, "CN=CA");
    assert_int_equal(strlen(info.thumbprint), 64);
    assert_int_equal(info.not_before[19], 'Z');
    kc_free(&ok); kc_free(&ec); kc_free(&no_bc); kc_free(&not_ca); kc_free(&no_sign);
    kc_free(&expired); kc_free(&future); kc_free(&weak);
}

static void test_proof(void **state)
{
    struct kc ca = make_ca(NULL, "CA"), other = make_ca(NULL, "CA");   /* same name, other key */
    struct kc good = make_leaf(&ca, "0123ABCD"), wrong_cn = make_leaf(&ca, "0123ABCE");
    struct kc wrong_signer = make_leaf(&other, "0123ABCD");
    struct kc expired = make(&ca, "0123ABCD", 0, -7200, -3600, NULL, NULL, NULL);
    struct x509ca_err e;
    (void)state;

    assert_true(x509ca_check_proof(ca.crt, good.crt, "0123ABCD", &e));
    assert_false(x509ca_check_proof(ca.crt, wrong_cn.crt, "0123ABCD", &e));
    assert_string_equal(e.code, "verification_code_mismatch");
    assert_false(x509ca_check_proof(ca.crt, wrong_signer.crt, "0123ABCD", &e));
    assert_string_equal(e.code, "wrong_signer");
    assert_false(x509ca_check_proof(ca.crt, expired.crt, "0123ABCD", &e));
    assert_string_equal(e.code, "certificate_expired");
    assert_false(x509ca_check_proof(ca.crt, ca.crt, "0123ABCD", &e));
    assert_string_equal(e.code, "verification_code_mismatch");
    kc_free(&ca); kc_free(&other); kc_free(&good); kc_free(&wrong_cn); kc_free(&wrong_signer); kc_free(&expired);
}

static void test_verify_device(void **state)
{
    struct kc ca1 = make_ca(NULL, "CA1"), ca2 = make_ca(NULL, "CA2"), stranger = make_ca(NULL, "CA3");
    struct kc inter = make_ca(&ca2, "CA2 intermediate");
    struct kc d1 = make_leaf(&ca1, "d1"), d2 = make_leaf(&inter, "d2"), d3 = make_leaf(&stranger, "d3");
    struct kc expired = make(&ca1, "old", 0, -7200, -3600, NULL, NULL, NULL);
    struct kc future = make(&ca1, "future", 0, 3600, 7200, NULL, NULL, NULL);
    struct kc server = make(&ca1, "server", 0, -60, 86400, NULL, NULL, "serverAuth");
    struct kc no_eku = make(&ca1, "plain", 0, -60, 86400, NULL, NULL, NULL);
    X509 *both[2] = {ca1.crt, ca2.crt}, *only1[1] = {ca1.crt}, *only_inter[1] = {inter.crt};
    STACK_OF(X509) *chain = sk_X509_new_null();
    char err[160], *cn;
    (void)state;

    sk_X509_push(chain, inter.crt);
    assert_true(x509ca_verify_device(both, 2, d1.crt, NULL, err, sizeof err));
    assert_true(x509ca_verify_device(both, 2, d2.crt, chain, err, sizeof err));
    assert_false(x509ca_verify_device(both, 2, d2.crt, NULL, err, sizeof err));   /* intermediate not sent */
    assert_true(x509ca_verify_device(only_inter, 1, d2.crt, NULL, err, sizeof err));   /* partial chain */
    assert_false(x509ca_verify_device(only1, 1, d2.crt, chain, err, sizeof err));   /* CA2 disabled */
    assert_false(x509ca_verify_device(both, 2, d3.crt, NULL, err, sizeof err));
    assert_false(x509ca_verify_device(both, 0, d1.crt, NULL, err, sizeof err));
    assert_false(x509ca_verify_device(both, 2, expired.crt, NULL, err, sizeof err));
    assert_non_null(strstr(err, "expired"));
    assert_false(x509ca_verify_device(both, 2, future.crt, NULL, err, sizeof err));
    assert_non_null(strstr(err, "not yet valid"));
    assert_false(x509ca_verify_device(both, 2, server.crt, NULL, err, sizeof err));
    assert_non_null(strstr(err, "clientAuth"));
    assert_true(x509ca_verify_device(both, 2, no_eku.crt, NULL, err, sizeof err));
    cn = x509ca_cn(d1.crt);
    assert_string_equal(cn, "d1");
    free(cn);
    sk_X509_free(chain);
    kc_free(&ca1); kc_free(&ca2); kc_free(&stranger); kc_free(&inter); kc_free(&d1); kc_free(&d2); kc_free(&d3);
    kc_free(&expired); kc_free(&future); kc_free(&server); kc_free(&no_eku);
}

static void test_cn(void **state)
{
    struct kc two = make(NULL, "a", 0, -60, 86400, NULL, NULL, NULL);
    char *cn;
    (void)state;
    X509_NAME_add_entry_by_txt(X509_get_subject_name(two.crt), "CN", MBSTRING_ASC, (const unsigned char *)"b", -1,
                               -1, 0);
    assert_null(x509ca_cn(two.crt));   /* two CNs: no name */
    cn = x509ca_cn(two.crt);
    assert_null(cn);
    kc_free(&two);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_check_ca),
        cmocka_unit_test(test_proof),
        cmocka_unit_test(test_verify_device),
        cmocka_unit_test(test_cn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
