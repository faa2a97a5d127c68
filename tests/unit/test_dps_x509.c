/*
 * test_dps_x509.c - the X.509 checks a device certificate passes before it
 * may authenticate at the stamp (stamp-agent/dps_x509.c): one CN without an
 * embedded NUL, inside its validity period, clientAuth when it has an
 * extended key usage. The certificates are made in-process with OpenSSL, so
 * expired and not-yet-valid ones need no clock tricks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "dps_x509.h"

static EVP_PKEY *test_key;

/* A self-signed certificate: valid from now+from_s to now+to_s, subject CN
 * cn (length cn_len, so a NUL can be embedded), a second CN when cn2, and an
 * extendedKeyUsage eku ("clientAuth", "serverAuth", ...) unless NULL. */
static X509 *make_cert(const char *cn, int cn_len, const char *cn2, long from_s, long to_s, const char *eku)
{
    X509 *x = X509_new();
    X509_NAME *n;
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 7), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), from_s));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), to_s));
    n = X509_get_subject_name(x);
    assert_int_equal(X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_ASC, (const unsigned char *)cn, cn_len,
                                                -1, 0), 1);
    if (cn2)
        assert_int_equal(X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_ASC, (const unsigned char *)cn2, -1,
                                                    -1, 0), 1);
    assert_int_equal(X509_set_issuer_name(x, n), 1);
    assert_int_equal(X509_set_pubkey(x, test_key), 1);
    if (eku) {
        X509V3_CTX ctx;
        X509_EXTENSION *ext;
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_ext_key_usage, eku);
        assert_non_null(ext);
        assert_int_equal(X509_add_ext(x, ext, -1), 1);
        X509_EXTENSION_free(ext);
    }
    assert_true(X509_sign(x, test_key, EVP_sha256()) > 0);
    return x;
}

static int setup(void **state)
{
    (void)state;
    test_key = EVP_EC_gen("P-256");
    return test_key ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(test_key);
    return 0;
}

static void expect_usable(X509 *x, bool want, const char *why_part)
{
    char err[160] = "";
    assert_int_equal(dps_x509_leaf_usable(x, err, sizeof err), want);
    if (!want)
        assert_non_null(strstr(err, why_part));
    X509_free(x);
}

static void test_validity_and_usage(void **state)
{
    (void)state;
    expect_usable(make_cert("dev-1", -1, NULL, -60, 3600, NULL), true, NULL);
    expect_usable(make_cert("dev-1", -1, NULL, -60, 3600, "clientAuth"), true, NULL);
    expect_usable(make_cert("dev-1", -1, NULL, -60, 3600, "serverAuth,clientAuth"), true, NULL);
    expect_usable(make_cert("dev-1", -1, NULL, -7200, -3600, "clientAuth"), false, "expired");
    expect_usable(make_cert("dev-1", -1, NULL, 3600, 7200, "clientAuth"), false, "not yet valid");
    expect_usable(make_cert("dev-1", -1, NULL, -60, 3600, "serverAuth"), false, "clientAuth");
    expect_usable(make_cert("dev-1", -1, NULL, -60, 3600, "codeSigning"), false, "clientAuth");
    {
        char err[32];
        assert_false(dps_x509_leaf_usable(NULL, err, sizeof err));
    }
}

static void test_common_name(void **state)
{
    X509 *x;
    char *cn;
    (void)state;
    x = make_cert("dev-1", -1, NULL, -60, 3600, NULL);
    cn = dps_x509_cn(x);
    assert_string_equal(cn, "dev-1");
    free(cn);
    X509_free(x);
    /* "victim\0.evil": a C string comparison would read "victim" */
    x = make_cert("victim\0.evil", 12, NULL, -60, 3600, NULL);
    assert_null(dps_x509_cn(x));
    X509_free(x);
    /* two CNs: which one is "the" CN is a matter of opinion, so neither */
    x = make_cert("victim", -1, "attacker", -60, 3600, NULL);
    assert_null(dps_x509_cn(x));
    X509_free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validity_and_usage),
        cmocka_unit_test(test_common_name),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
