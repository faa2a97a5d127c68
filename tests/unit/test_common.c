/*
 * test_common.c - the shared helpers: UTF-8 validation, strict integer and
 * host:port parsing, secret comparison, id syntax, JSON body parsing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "jsonv.h"
#include "log.h"
#include "util.h"

static void test_utf8(void **state)
{
    (void)state;
    assert_true(util_utf8_valid("plain", 5));
    assert_true(util_utf8_valid("\xc3\xa9t\xc3\xa9", 6));
    assert_true(util_utf8_valid("\xf0\x9f\x98\x80", 4));
    assert_false(util_utf8_valid("\xc3", 1));             /* truncated */
    assert_false(util_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(util_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(util_utf8_valid("\xff", 1));
    assert_false(util_utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
}

static void test_parsers(void **state)
{
    int64_t n;
    char host[64];
    int port;
    (void)state;
    assert_true(util_parse_int64("42", 0, 100, &n));
    assert_int_equal(n, 42);
    assert_false(util_parse_int64("101", 0, 100, &n));
    assert_false(util_parse_int64("4x", 0, 100, &n));
    assert_false(util_parse_int64("", 0, 100, &n));
    assert_false(util_parse_int64(" 4", 0, 100, &n));
    assert_false(util_parse_int64("99999999999999999999", 0, INT64_MAX, &n));
    assert_true(util_parse_hostport("127.0.0.1:80", host, sizeof host, &port));
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 80);
    assert_true(util_parse_hostport("[::1]:443", host, sizeof host, &port));
    assert_string_equal(host, "::1");
    assert_false(util_parse_hostport("[::1]443", host, sizeof host, &port));
    assert_false(util_parse_hostport("host", host, sizeof host, &port));
    assert_false(util_parse_hostport("host:65536", host, sizeof host, &port));
}

static void test_secrets_and_ids(void **state)
{
    char hex[17];
    (void)state;
    assert_true(util_secret_equal("abc", "abc"));
    assert_false(util_secret_equal("abc", "abd"));
    assert_false(util_secret_equal("abc", "abcd"));
    assert_false(util_secret_equal(NULL, "abc"));
    assert_true(jv_valid_id("eu-west-1"));
    assert_false(jv_valid_id("Eu"));
    assert_false(jv_valid_id("-eu"));
    assert_false(jv_valid_id("e_u"));
    assert_false(jv_valid_id("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    util_random_hex(hex, 8);
    assert_int_equal(strlen(hex), 16);
}

static void test_parse_object(void **state)
{
    struct jv_err e;
    json_t *o;
    (void)state;
    o = jv_parse_object("{\"a\":1}", 7, &e);
    assert_non_null(o);
    json_decref(o);
    assert_null(jv_parse_object("", 0, &e));
    assert_string_equal(e.code, "invalid_json");
    assert_null(jv_parse_object("[1]", 3, &e));
    assert_string_equal(e.code, "invalid_json");
    assert_null(jv_parse_object("{\"a\":1,\"a\":2}", 13, &e));
    assert_string_equal(e.code, "invalid_json");
    assert_null(jv_parse_object("{\"a\":\"\xff\"}", 9, &e));
    assert_string_equal(e.code, "invalid_encoding");
    assert_null(jv_parse_object("{\"a\":1} x", 9, &e));
    assert_string_equal(e.code, "invalid_json");
}

static void test_log_quote(void **state)
{
    char buf[16];
    (void)state;
    assert_string_equal(log_quote("a \"b\"\n", buf, sizeof buf), "\"a \\\"b\\\"\\x0a\"");
    assert_string_equal(log_quote("0123456789abcdefghij", buf, sizeof buf), "\"0123456789abc\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_parsers),
        cmocka_unit_test(test_secrets_and_ids),
        cmocka_unit_test(test_parse_object),
        cmocka_unit_test(test_log_quote),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
