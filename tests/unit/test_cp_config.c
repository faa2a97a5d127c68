/*
 * test_cp_config.c - control plane config parsing: defaults, every rule, and
 * an error that names the field for each kind of mistake.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>
#include <unistd.h>
#include <stdlib.h>

#include "cp_config.h"

#define GOOD_BASE "\"globalDatabase\":\"dbname=g\",\"geographies\":{\"eu\":\"dbname=eu\"},\"redis\":\"127.0.0.1:6379\""

static bool parse(const char *text, struct cp_config *cfg, struct jv_err *e)
{
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    bool ok;
    assert_non_null(root);
    memset(cfg, 0, sizeof *cfg);
    ok = cp_config_parse(root, cfg, e);
    json_decref(root);
    return ok;
}

static void test_minimal_defaults(void **state)
{
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_string_equal(cfg.listen_host, "127.0.0.1");
    assert_int_equal(cfg.listen_port, 8080);
    assert_int_equal(cfg.n_geos, 1);
    assert_string_equal(cfg.geos[0].id, "eu");
    assert_string_equal(cp_config_geo_conninfo(&cfg, "eu"), "dbname=eu");
    assert_null(cp_config_geo_conninfo(&cfg, "us"));
    assert_string_equal(cfg.redis_host, "127.0.0.1");
    assert_int_equal(cfg.redis_port, 6379);
    assert_int_equal(cfg.max_body_bytes, 65536);
    assert_int_equal(cfg.stale_after_intervals, 3);
    assert_int_equal(cfg.down_after_intervals, 10);
    assert_int_equal(cfg.db_pool_size, 4);
    assert_int_equal(cfg.max_enrollment_groups, 100);
    assert_null(cfg.operator_token);
    cp_config_free(&cfg);
}

static void test_full(void **state)
{
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    assert_true(parse("{" GOOD_BASE ",\"listen\":\"[::1]:9000\",\"operatorToken\":\"0123456789abcdef\","
                      "\"maxBodyBytes\":2048,\"staleAfterIntervals\":2,\"downAfterIntervals\":5,"
                      "\"db\":{\"poolSize\":8,\"queryTimeoutMs\":1000},\"logLevel\":\"debug\","
                      "\"dps\":{\"maxEnrollmentGroups\":2}}",
                      &cfg, &e));
    assert_string_equal(cfg.listen_host, "::1");
    assert_int_equal(cfg.listen_port, 9000);
    assert_string_equal(cfg.operator_token, "0123456789abcdef");
    assert_int_equal(cfg.max_body_bytes, 2048);
    assert_int_equal(cfg.db_pool_size, 8);
    assert_int_equal(cfg.db_query_timeout_ms, 1000);
    assert_int_equal(cfg.max_enrollment_groups, 2);
    assert_int_equal(cfg.log_level, 0);
    cp_config_free(&cfg);
}

struct bad_case {
    const char *json;
    const char *code;
    const char *field;
};

static void test_bad_configs(void **state)
{
    static const struct bad_case cases[] = {
        {"{" GOOD_BASE ",\"colour\":1}", "unknown_field", "colour"},
        {"{\"geographies\":{\"eu\":\"x\"},\"redis\":\"h:1\"}", "missing_field", "globalDatabase"},
        {"{\"globalDatabase\":\"x\",\"redis\":\"h:1\"}", "missing_field", "geographies"},
        {"{\"globalDatabase\":\"x\",\"geographies\":{\"eu\":\"x\"}}", "missing_field", "redis"},
        {"{\"globalDatabase\":5,\"geographies\":{\"eu\":\"x\"},\"redis\":\"h:1\"}", "invalid_type", "globalDatabase"},
        {"{" GOOD_BASE ",\"listen\":\"nohostport\"}", "invalid_value", "listen"},
        {"{" GOOD_BASE ",\"listen\":\"h:99999\"}", "invalid_value", "listen"},
        {"{\"globalDatabase\":\"x\",\"geographies\":{\"eu\":\"x\"},\"redis\":\"nope\"}", "invalid_value", "redis"},
        {"{\"globalDatabase\":\"x\",\"geographies\":{},\"redis\":\"h:1\"}", "invalid_value", "geographies"},
        {"{\"globalDatabase\":\"x\",\"geographies\":{\"EU\":\"x\"},\"redis\":\"h:1\"}", "invalid_value", "geographies.EU"},
        {"{\"globalDatabase\":\"x\",\"geographies\":{\"eu\":3},\"redis\":\"h:1\"}", "invalid_type", "geographies.eu"},
        {"{" GOOD_BASE ",\"operatorToken\":\"short\"}", "invalid_value", "operatorToken"},
        {"{" GOOD_BASE ",\"maxBodyBytes\":10}", "out_of_range", "maxBodyBytes"},
        {"{" GOOD_BASE ",\"maxBodyBytes\":\"big\"}", "invalid_type", "maxBodyBytes"},
        {"{" GOOD_BASE ",\"staleAfterIntervals\":5,\"downAfterIntervals\":5}", "invalid_value", "downAfterIntervals"},
        {"{" GOOD_BASE ",\"db\":{\"poolSize\":0}}", "out_of_range", "db.poolSize"},
        {"{" GOOD_BASE ",\"db\":{\"size\":2}}", "unknown_field", "db.size"},
        {"{" GOOD_BASE ",\"db\":[]}", "invalid_type", "db"},
        {"{" GOOD_BASE ",\"logLevel\":\"loud\"}", "invalid_value", "logLevel"},
        {"{" GOOD_BASE ",\"dps\":{\"maxEnrollmentGroups\":101}}", "out_of_range", "dps.maxEnrollmentGroups"},
        {"{" GOOD_BASE ",\"dps\":{\"maxEnrollmentGroups\":0}}", "out_of_range", "dps.maxEnrollmentGroups"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct cp_config cfg;
        struct jv_err e;
        memset(&e, 0, sizeof e);
        if (parse(cases[i].json, &cfg, &e))
            fail_msg("case %zu accepted: %s", i, cases[i].json);
        if (strcmp(e.code, cases[i].code) != 0 || strcmp(e.field, cases[i].field) != 0)
            fail_msg("case %zu: got %s/%s, want %s/%s (%s)", i, e.code, e.field, cases[i].code,
                     cases[i].field, e.message);
        assert_non_null(strstr(e.message, cases[i].field[0] ? cases[i].field : ""));
        cp_config_free(&cfg);
    }
}

static void test_load_file_errors(void **state)
{
    struct cp_config cfg;
    struct jv_err e;
    char path[] = "/tmp/cpcfgXXXXXX";
    int fd;
    (void)state;
    memset(&cfg, 0, sizeof cfg);
    assert_false(cp_config_load("/nonexistent/cp.json", &cfg, &e));
    assert_non_null(strstr(e.message, "/nonexistent/cp.json"));
    cp_config_free(&cfg);

    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "{\"redis\": ", 10), 10);
    close(fd);
    memset(&cfg, 0, sizeof cfg);
    assert_false(cp_config_load(path, &cfg, &e));
    assert_string_equal(e.code, "invalid_json");
    assert_non_null(strstr(e.message, path));
    cp_config_free(&cfg);
    unlink(path);
}

static void test_set_listen(void **state)
{
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_true(cp_config_set_listen(&cfg, "0.0.0.0:1234", &e));
    assert_string_equal(cfg.listen_host, "0.0.0.0");
    assert_int_equal(cfg.listen_port, 1234);
    assert_false(cp_config_set_listen(&cfg, ":1234", &e));
    assert_false(cp_config_set_listen(&cfg, "host:", &e));
    assert_false(cp_config_set_listen(&cfg, "host:12a", &e));
    cp_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_set_listen),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
