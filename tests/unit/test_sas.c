/*
 * test_sas.c - SAS tokens against the worked examples of the DPS wire spec
 * (§4.3, §4.4): derived keys, raw and URL-encoded sr, field order, expiry,
 * wrong resource, and malformed tokens.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "sas.h"

#define GROUP_KEY "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
#define NOW 1699990000

static void derived(unsigned char dk[SAS_KEY_LEN])
{
    unsigned char gk[64];
    int n = sas_b64_decode(GROUP_KEY, gk, sizeof gk);
    assert_int_equal(n, 32);
    sas_derive_key(gk, (size_t)n, "my-device-01", dk);
}

static void test_derive(void **state)
{
    unsigned char dk[SAS_KEY_LEN];
    char b64[64];
    (void)state;
    derived(dk);
    sas_b64_encode(dk, sizeof dk, b64, sizeof b64);
    assert_string_equal(b64, "ez2EJNvml5U2VhBfDgGWzVyI37ejK/l5JFo8njJXL6w=");
}

static void verify_ok(const char *header)
{
    unsigned char dk[SAS_KEY_LEN];
    struct sas_token t;
    derived(dk);
    assert_int_equal(sas_parse(header, &t), SAS_OK);
    assert_int_equal(sas_check_claims(&t, "0ne00000A0A", "my-device-01", NOW), SAS_OK);
    assert_true(sas_verify(&t, dk, sizeof dk));
}

static void test_spec_vectors(void **state)
{
    (void)state;
    /* Node SDK: raw sr, order sr sig skn se */
    verify_ok("SharedAccessSignature sr=0ne00000A0A/registrations/my-device-01&sig=ER6%2Bcr4KlbCJ6zy8FKgj7%2BXbkLr0eOnKM5961Brkgnw%3D&skn=registration&se=1700000000");
    /* Python sample: encoded sr, order sr sig se skn */
    verify_ok("SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device-01&sig=BorSB2eOlaoAytxa61YPYQSBmaexXNk3hy8UP35paOQ%3D&se=1700000000&skn=registration");
    /* embedded C SDK: lowercase hex */
    verify_ok("SharedAccessSignature se=1700000000&skn=registration&sig=zB1BhftVL9kqjIgSa8GdntcGn9gJHOzkfQDsQbNxnJk%3D&sr=0ne00000A0A%2fregistrations%2fmy-device-01");
}

static void test_build_roundtrip(void **state)
{
    unsigned char dk[SAS_KEY_LEN];
    char tok[600];
    (void)state;
    derived(dk);
    sas_build("0ne00000A0A/registrations/my-device-01", dk, sizeof dk, 1700000000, "registration",
              tok, sizeof tok);
    assert_string_equal(tok, "SharedAccessSignature sr=0ne00000A0A/registrations/my-device-01&sig=ER6%2Bcr4KlbCJ6zy8FKgj7%2BXbkLr0eOnKM5961Brkgnw%3D&skn=registration&se=1700000000");
}

static void test_rejections(void **state)
{
    unsigned char dk[SAS_KEY_LEN], other[SAS_KEY_LEN];
    struct sas_token t;
    const char *good = "SharedAccessSignature sr=0ne00000A0A/registrations/my-device-01&sig=ER6%2Bcr4KlbCJ6zy8FKgj7%2BXbkLr0eOnKM5961Brkgnw%3D&skn=registration&se=1700000000";
    static const char *const malformed[] = {
        "",
        "Bearer abc",
        "SharedAccessSignature ",
        "SharedAccessSignature sr=a/registrations/b&se=1",                      /* no sig */
        "SharedAccessSignature sr=a/registrations/b&sig=x&se=soon",             /* se not a number */
        "SharedAccessSignature sr=a&sr=b&sig=x&se=1",                           /* duplicate */
        "SharedAccessSignature sr=a&sig=x&se=1&extra=1",                        /* unknown field */
        "SharedAccessSignature sr=a&sig=%zz&se=1",                              /* bad escape */
        "SharedAccessSignature sr=a%00b&sig=x&se=1",                            /* NUL */
        "SharedAccessSignature sr=a&sig&se=1",                                  /* no '=' */
    };
    (void)state;
    derived(dk);
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++)
        if (sas_parse(malformed[i], &t) != SAS_MALFORMED)
            fail_msg("accepted malformed token %zu: %s", i, malformed[i]);

    assert_int_equal(sas_parse(good, &t), SAS_OK);
    assert_int_equal(sas_check_claims(&t, "0ne00000A0A", "my-device-01", 1700000000), SAS_EXPIRED);
    assert_int_equal(sas_check_claims(&t, "0ne00000A0A", "my-device-02", NOW), SAS_WRONG_RESOURCE);
    assert_int_equal(sas_check_claims(&t, "0ne00000B0B", "my-device-01", NOW), SAS_WRONG_RESOURCE);
    memcpy(other, dk, sizeof dk);
    other[0] ^= 1;
    assert_false(sas_verify(&t, other, sizeof other));

    /* a tampered se breaks the signature */
    assert_int_equal(sas_parse("SharedAccessSignature sr=0ne00000A0A/registrations/my-device-01&sig=ER6%2Bcr4KlbCJ6zy8FKgj7%2BXbkLr0eOnKM5961Brkgnw%3D&skn=registration&se=1700000001", &t), SAS_OK);
    assert_false(sas_verify(&t, dk, sizeof dk));
    /* a signature that is not 32 bytes of base64 */
    assert_int_equal(sas_parse("SharedAccessSignature sr=0ne00000A0A/registrations/my-device-01&sig=abc&se=1700000000", &t), SAS_OK);
    assert_false(sas_verify(&t, dk, sizeof dk));
    assert_string_equal(sas_error_code(SAS_EXPIRED), "expired_token");
}

static void test_b64(void **state)
{
    unsigned char out[8];
    (void)state;
    assert_int_equal(sas_b64_decode("YQ==", out, sizeof out), 1);
    assert_int_equal(sas_b64_decode("YWI=", out, sizeof out), 2);
    assert_int_equal(sas_b64_decode("YWJj", out, sizeof out), 3);
    assert_int_equal(sas_b64_decode("YWJ", out, sizeof out), -1);
    assert_int_equal(sas_b64_decode("Y=Jj", out, sizeof out), -1);
    assert_int_equal(sas_b64_decode("Y Jj", out, sizeof out), -1);
    assert_int_equal(sas_b64_decode("", out, sizeof out), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_derive),
        cmocka_unit_test(test_spec_vectors),
        cmocka_unit_test(test_build_roundtrip),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_b64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
