/*
 * test_redisauth.c - the "redisAuth" config object of both daemons
 * (common/redisauth.c): inline password, password file (trailing newline,
 * CRLF), every refusal naming the field, no error message quoting the
 * password, and the control plane's config carrying it.
 */
#define _GNU_SOURCE 1 /* asprintf */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cp_config.h"
#include "redisauth.h"

static bool parse(const char *text, struct redis_auth *a, struct jv_err *e)
{
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    bool ok;
    assert_non_null(root);
    memset(e, 0, sizeof *e);
    ok = redis_auth_parse(root, "", "redisAuth", a, e);
    json_decref(root);
    return ok;
}

/* A temporary file holding content; returns its path (static buffer). */
static const char *tmpfile_with(const char *content, size_t len)
{
    static char path[64];
    int fd;
    snprintf(path, sizeof path, "/tmp/redisauthXXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_absent_and_inline(void **state)
{
    struct redis_auth a;
    struct jv_err e;
    (void)state;
    assert_true(parse("{}", &a, &e));
    assert_false(redis_auth_enabled(&a));
    assert_string_equal(redis_auth_user(&a), "default");
    redis_auth_free(&a);

    assert_true(parse("{\"redisAuth\":{\"user\":\"cp\",\"password\":\"s3cret pass\"}}", &a, &e));
    assert_true(redis_auth_enabled(&a));
    assert_string_equal(a.user, "cp");
    assert_string_equal(a.password, "s3cret pass");
    redis_auth_free(&a);
    assert_null(a.password);
    assert_null(a.user);

    /* requirepass style: no user */
    assert_true(parse("{\"redisAuth\":{\"password\":\"pw\"}}", &a, &e));
    assert_null(a.user);
    assert_string_equal(redis_auth_user(&a), "default");
    redis_auth_free(&a);
}

static void test_password_file(void **state)
{
    struct redis_auth a, copy;
    struct jv_err e;
    const char *path;
    char *json;
    (void)state;
    path = tmpfile_with("filepass-123\n", 13);
    json = NULL;
    assert_true(asprintf(&json, "{\"redisAuth\":{\"user\":\"agent-eu-west-1\",\"passwordFile\":\"%s\"}}", path) > 0);
    assert_true(parse(json, &a, &e));
    assert_string_equal(a.user, "agent-eu-west-1");
    assert_string_equal(a.password, "filepass-123");
    redis_auth_copy(&copy, &a);
    assert_string_equal(copy.password, "filepass-123");
    assert_true(copy.password != a.password);
    redis_auth_free(&copy);
    redis_auth_free(&a);
    free(json);
    unlink(path);

    path = tmpfile_with("crlf\r\n", 6);
    assert_true(asprintf(&json, "{\"redisAuth\":{\"user\":\"cp\",\"passwordFile\":\"%s\"}}", path) > 0);
    assert_true(parse(json, &a, &e));
    assert_string_equal(a.password, "crlf");
    redis_auth_free(&a);
    free(json);
    unlink(path);
}

static void test_refusals(void **state)
{
    static const struct {
        const char *json, *code, *field;
    } cases[] = {
        {"{\"redisAuth\":\"cp:pw\"}", "invalid_type", "redisAuth"},
        {"{\"redisAuth\":{\"user\":\"cp\"}}", "missing_field", "redisAuth.password"},
        {"{\"redisAuth\":{\"user\":\"cp\",\"password\":\"x\",\"passwordFile\":\"/p\"}}", "invalid_value",
         "redisAuth.password"},
        {"{\"redisAuth\":{\"user\":\"cp\",\"password\":\"\"}}", "invalid_value", "redisAuth.password"},
        {"{\"redisAuth\":{\"user\":\"cp\",\"password\":\"line1\\nline2\"}}", "invalid_value", "redisAuth.password"},
        {"{\"redisAuth\":{\"user\":\"c p\",\"password\":\"x\"}}", "invalid_value", "redisAuth.user"},
        {"{\"redisAuth\":{\"user\":\"cp\",\"pass\":\"x\"}}", "unknown_field", "redisAuth.pass"},
        {"{\"redisAuth\":{\"user\":\"cp\",\"passwordFile\":\"/nonexistent/redis.pass\"}}", "invalid_value",
         "redisAuth.passwordFile"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct redis_auth a;
        struct jv_err e;
        if (parse(cases[i].json, &a, &e))
            fail_msg("accepted: %s", cases[i].json);
        assert_null(a.password);
        if (strcmp(e.code, cases[i].code) != 0 || strcmp(e.field, cases[i].field) != 0)
            fail_msg("%s: got %s %s (%s)", cases[i].json, e.code, e.field, e.message);
        redis_auth_free(&a);
    }
}

/* A bad password file is refused without its content in the message. */
static void test_file_errors_keep_the_secret(void **state)
{
    static const char secret[] = "Top-Secret-42";
    char content[64], *json = NULL;
    const char *path;
    struct redis_auth a;
    struct jv_err e;
    (void)state;
    /* two lines: refused */
    snprintf(content, sizeof content, "%s\nsecond line\n", secret);
    path = tmpfile_with(content, strlen(content));
    assert_true(asprintf(&json, "{\"redisAuth\":{\"user\":\"cp\",\"passwordFile\":\"%s\"}}", path) > 0);
    assert_false(parse(json, &a, &e));
    assert_string_equal(e.field, "redisAuth.passwordFile");
    assert_non_null(strstr(e.message, path));
    assert_null(strstr(e.message, secret));
    free(json);
    unlink(path);
    /* empty: refused */
    path = tmpfile_with("\n", 1);
    assert_true(asprintf(&json, "{\"redisAuth\":{\"user\":\"cp\",\"passwordFile\":\"%s\"}}", path) > 0);
    assert_false(parse(json, &a, &e));
    assert_string_equal(e.field, "redisAuth.passwordFile");
    free(json);
    unlink(path);
    /* inline with a control character: the message does not echo it either */
    assert_false(parse("{\"redisAuth\":{\"user\":\"cp\",\"password\":\"Top-Secret-42\\t\"}}", &a, &e));
    assert_null(strstr(e.message, secret));
}

/* The control plane's config carries it (and frees it). */
static void test_cp_config(void **state)
{
    static const char base[] = "\"globalDatabase\":\"dbname=g\",\"geographies\":{\"eu\":\"dbname=eu\"},"
                               "\"redis\":\"127.0.0.1:6379\",\"plainHttp\":true";
    struct cp_config cfg;
    struct jv_err e;
    char *text = NULL;
    json_t *root;
    (void)state;
    assert_true(asprintf(&text, "{%s,\"redisAuth\":{\"user\":\"cp\",\"password\":\"pw-cp\"}}", base) > 0);
    root = json_loads(text, 0, NULL);
    assert_non_null(root);
    memset(&cfg, 0, sizeof cfg);
    if (!cp_config_parse(root, &cfg, &e))
        fail_msg("%s", e.message);
    assert_string_equal(cfg.redis_auth.user, "cp");
    assert_string_equal(cfg.redis_auth.password, "pw-cp");
    cp_config_free(&cfg);
    json_decref(root);
    free(text);

    assert_true(asprintf(&text, "{%s,\"redisAuth\":{\"user\":\"cp\"}}", base) > 0);
    root = json_loads(text, 0, NULL);
    memset(&cfg, 0, sizeof cfg);
    assert_false(cp_config_parse(root, &cfg, &e));
    assert_string_equal(e.field, "redisAuth.password");
    cp_config_free(&cfg);
    json_decref(root);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_absent_and_inline),
        cmocka_unit_test(test_password_file),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_file_errors_keep_the_secret),
        cmocka_unit_test(test_cp_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
