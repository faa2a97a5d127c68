/*
 * test_agent_config.c - agent_config_load(): defaults, and one test per class
 * of bad config checking that the error names the offending field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_config.h"
#include "log.h"

#define TEST_MIN_FIELDS "\"stampId\":\"eu-west-1\",\"region\":\"eu-west\",\"redis\":\"127.0.0.1:6379\""

/* Write text to a fresh temp file; returns its path (caller unlinks and frees). */
static char *test_write_file(const char *text)
{
    char *path = xstrdup("/tmp/test_agent_config_XXXXXX");
    int fd = mkstemp(path);
    size_t n = strlen(text);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    assert_int_equal(close(fd), 0);
    return path;
}

/* Load text as a config; returns whether it passed (cfg is freed on return). */
static bool test_load(const char *text, struct jv_err *err)
{
    struct agent_config cfg;
    char *path = test_write_file(text);
    bool ok = agent_config_load(path, &cfg, err);

    if (ok)
        agent_config_free(&cfg);
    unlink(path);
    free(path);
    return ok;
}

/* The config must fail with this code, err->field == field, and the field in the message. */
static void test_bad(const char *text, const char *code, const char *field)
{
    struct jv_err err;

    assert_false(test_load(text, &err));
    assert_string_equal(err.code, code);
    assert_string_equal(err.field, field);
    if (*field)
        assert_non_null(strstr(err.message, field));
}

static void test_minimal_defaults(void **state)
{
    struct agent_config cfg;
    struct jv_err err;
    char *path = test_write_file("{" TEST_MIN_FIELDS "}");

    assert_true(agent_config_load(path, &cfg, &err));
    assert_string_equal(cfg.stamp_id, "eu-west-1");
    assert_string_equal(cfg.region, "eu-west");
    assert_string_equal(cfg.redis.direct.host, "127.0.0.1");
    assert_int_equal(cfg.redis.direct.port, 6379);
    assert_int_equal(cfg.report_interval_ms, 1000);
    assert_int_equal(cfg.n_dps, 0);
    assert_int_equal(cfg.n_hubs, 0);
    assert_int_equal(cfg.log_level, -1);
    agent_config_free(&cfg);
    unlink(path);
    free(path);
}

static void test_full(void **state)
{
    struct agent_config cfg;
    struct jv_err err;
    char *path = test_write_file(
        "{" TEST_MIN_FIELDS ",\"reportIntervalMs\":250,\"dpsInstances\":[\"eu-west-1-dps\"],"
        "\"hubs\":[\"eu-west-1-hub1\",\"eu-west-1-hub2\"],\"logLevel\":\"debug\"}");

    assert_true(agent_config_load(path, &cfg, &err));
    assert_int_equal(cfg.report_interval_ms, 250);
    assert_int_equal(cfg.n_dps, 1);
    assert_string_equal(cfg.dps_ids[0], "eu-west-1-dps");
    assert_int_equal(cfg.n_hubs, 2);
    assert_string_equal(cfg.hub_ids[1], "eu-west-1-hub2");
    assert_int_equal(cfg.log_level, LOG_DEBUG);
    agent_config_free(&cfg);
    unlink(path);
    free(path);
}

static void test_interval_bounds_accepted(void **state)
{
    struct jv_err err;
    assert_true(test_load("{" TEST_MIN_FIELDS ",\"reportIntervalMs\":50}", &err));
    assert_true(test_load("{" TEST_MIN_FIELDS ",\"reportIntervalMs\":60000}", &err));
}

static void test_missing_stamp_id(void **state)
{
    test_bad("{\"region\":\"eu-west\",\"redis\":\"127.0.0.1:6379\"}", "missing_field", "stampId");
}

static void test_missing_region(void **state)
{
    test_bad("{\"stampId\":\"s1\",\"redis\":\"127.0.0.1:6379\"}", "missing_field", "region");
}

static void test_missing_redis(void **state)
{
    test_bad("{\"stampId\":\"s1\",\"region\":\"r1\"}", "missing_field", "redis");
}

static void test_bad_id_syntax(void **state)
{
    test_bad("{\"stampId\":\"EU_West\",\"region\":\"eu-west\",\"redis\":\"h:1\"}",
             "invalid_value", "stampId");
    test_bad("{\"stampId\":\"-eu\",\"region\":\"eu-west\",\"redis\":\"h:1\"}",
             "invalid_value", "stampId");
    test_bad("{\"stampId\":\"eu\",\"region\":\"Eu West\",\"redis\":\"h:1\"}",
             "invalid_value", "region");
}

static void test_unknown_field(void **state)
{
    test_bad("{" TEST_MIN_FIELDS ",\"reportInterval\":100}", "unknown_field", "reportInterval");
}

static void test_wrong_type(void **state)
{
    test_bad("{" TEST_MIN_FIELDS ",\"reportIntervalMs\":\"100\"}", "invalid_type",
             "reportIntervalMs");
    test_bad("{\"stampId\":7,\"region\":\"eu-west\",\"redis\":\"h:1\"}", "invalid_type", "stampId");
    test_bad("{" TEST_MIN_FIELDS ",\"hubs\":\"eu-west-1-hub1\"}", "invalid_type", "hubs");
    test_bad("{" TEST_MIN_FIELDS ",\"reportIntervalMs\":100.5}", "invalid_type",
             "reportIntervalMs");
}

static void test_interval_out_of_range(void **state)
{
    test_bad("{" TEST_MIN_FIELDS ",\"reportIntervalMs\":49}", "out_of_range", "reportIntervalMs");
    test_bad("{" TEST_MIN_FIELDS ",\"reportIntervalMs\":60001}", "out_of_range",
             "reportIntervalMs");
    test_bad("{" TEST_MIN_FIELDS ",\"reportIntervalMs\":-1}", "out_of_range", "reportIntervalMs");
}

static void test_bad_redis_address(void **state)
{
    test_bad("{\"stampId\":\"s1\",\"region\":\"r1\",\"redis\":\"localhost\"}", "invalid_value", "redis");
    test_bad("{\"stampId\":\"s1\",\"region\":\"r1\",\"redis\":\"localhost:99999\"}", "invalid_value",
             "redis");
    test_bad("{\"stampId\":\"s1\",\"region\":\"r1\",\"redis\":\"localhost:0\"}", "invalid_value",
             "redis");
    test_bad("{\"stampId\":\"s1\",\"region\":\"r1\",\"redis\":\":6379\"}", "invalid_value", "redis");
}

static void test_too_many_hubs(void **state)
{
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "{" TEST_MIN_FIELDS ",\"hubs\":[");

    for (int i = 0; i < 51; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"hub%d\"", i ? "," : "", i);
    snprintf(buf + n, sizeof buf - n, "]}");
    test_bad(buf, "invalid_value", "hubs");
}

static void test_too_many_dps(void **state)
{
    test_bad("{" TEST_MIN_FIELDS ",\"dpsInstances\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\","
             "\"h\",\"i\",\"j\",\"k\"]}", "invalid_value", "dpsInstances");
}

static void test_non_string_hub(void **state)
{
    test_bad("{" TEST_MIN_FIELDS ",\"hubs\":[\"hub1\",42]}", "invalid_type", "hubs[1]");
    test_bad("{" TEST_MIN_FIELDS ",\"hubs\":[\"Hub 1\"]}", "invalid_value", "hubs[0]");
    test_bad("{" TEST_MIN_FIELDS ",\"dpsInstances\":[null]}", "invalid_type", "dpsInstances[0]");
}

static void test_duplicate_hub(void **state)
{
    test_bad("{" TEST_MIN_FIELDS ",\"hubs\":[\"hub1\",\"hub2\",\"hub1\"]}", "invalid_value",
             "hubs[2]");
}

static void test_bad_log_level(void **state)
{
    test_bad("{" TEST_MIN_FIELDS ",\"logLevel\":\"verbose\"}", "invalid_value", "logLevel");
}

static void test_malformed_json(void **state)
{
    struct jv_err err;

    assert_false(test_load("{\"stampId\": \"s1\",", &err));
    assert_string_equal(err.code, "invalid_json");
    assert_non_null(strstr(err.message, "/tmp/test_agent_config_"));
    assert_false(test_load("[1, 2]", &err));
    assert_string_equal(err.code, "invalid_json");
    test_bad("{" TEST_MIN_FIELDS ",\"region\":\"again\"}", "invalid_json", "");
}

/* provisioning.geography (docs/security.md "Database roles"): an id, optional. */
#define TEST_PROV(extra) \
    "{" TEST_MIN_FIELDS ",\"provisioning\":{\"listen\":\"127.0.0.1:8443\",\"database\":\"dbname=x\"," \
    "\"tls\":{\"cert\":\"c.pem\",\"key\":\"k.pem\"}," \
    "\"servicePolicies\":[{\"name\":\"p\",\"key\":\"MDEyMzQ1Njc4OWFiY2RlZg==\"}]," \
    "\"instances\":[{\"id\":\"d1\",\"idScope\":\"0ne1\"}],\"hubs\":[]" extra "}}"

static void test_prov_geography(void **state)
{
    struct agent_config cfg;
    struct jv_err err;
    char *path = test_write_file(TEST_PROV(",\"geography\":\"eu\""));

    assert_true(agent_config_load(path, &cfg, &err));
    assert_string_equal(cfg.prov.geography, "eu");
    agent_config_free(&cfg);
    unlink(path);
    free(path);
    path = test_write_file(TEST_PROV(""));
    assert_true(agent_config_load(path, &cfg, &err));
    assert_null(cfg.prov.geography);
    agent_config_free(&cfg);
    unlink(path);
    free(path);
    test_bad(TEST_PROV(",\"geography\":\"EU West\""), "invalid_value", "provisioning.geography");
    test_bad(TEST_PROV(",\"geography\":7"), "invalid_type", "provisioning.geography");
    test_bad(TEST_PROV(",\"geography\":\"\""), "invalid_value", "provisioning.geography");
}

/* provisioning.http (the listener's bounds) and provisioning.webhookAllowPrivate */
static void test_prov_limits(void **state)
{
    struct agent_config cfg;
    struct jv_err err;
    char *path = test_write_file(TEST_PROV(""));
    (void)state;

    assert_true(agent_config_load(path, &cfg, &err));
    assert_int_equal(cfg.prov.http_max_connections, 4096);
    assert_int_equal(cfg.prov.http_header_timeout_ms, 10000);
    assert_int_equal(cfg.prov.http_request_timeout_ms, 30000);
    assert_int_equal(cfg.prov.http_idle_timeout_ms, 60000);
    assert_false(cfg.prov.webhook_allow_private);
    agent_config_free(&cfg);
    unlink(path);
    free(path);
    path = test_write_file(TEST_PROV(",\"webhookAllowPrivate\":true,\"http\":{\"maxConnections\":5,"
                                     "\"headerTimeoutMs\":1000,\"requestTimeoutMs\":2000,\"idleTimeoutMs\":3000}"));
    assert_true(agent_config_load(path, &cfg, &err));
    assert_int_equal(cfg.prov.http_max_connections, 5);
    assert_int_equal(cfg.prov.http_header_timeout_ms, 1000);
    assert_int_equal(cfg.prov.http_request_timeout_ms, 2000);
    assert_int_equal(cfg.prov.http_idle_timeout_ms, 3000);
    assert_true(cfg.prov.webhook_allow_private);
    agent_config_free(&cfg);
    unlink(path);
    free(path);
    test_bad(TEST_PROV(",\"webhookAllowPrivate\":\"yes\""), "invalid_type", "provisioning.webhookAllowPrivate");
    test_bad(TEST_PROV(",\"http\":{\"maxConns\":5}"), "unknown_field", "provisioning.http.maxConns");
    test_bad(TEST_PROV(",\"http\":{\"maxConnections\":0}"), "out_of_range", "provisioning.http.maxConnections");
    test_bad(TEST_PROV(",\"http\":{\"headerTimeoutMs\":5000,\"requestTimeoutMs\":1000}"), "invalid_value",
             "provisioning.http.requestTimeoutMs");
}

/* hub host names: not the service host name, not repeated in another case
 * (the listener routes by Host, any case, port stripped) */
static void test_prov_hub_hosts(void **state)
{
#define TEST_HUBS(svc, hubs) "{" TEST_MIN_FIELDS ",\"provisioning\":{\"listen\":\"127.0.0.1:8443\"," \
    "\"database\":\"postgresql:///x\",\"tls\":{\"cert\":\"c.pem\",\"key\":\"k.pem\"}," svc \
    "\"servicePolicies\":[{\"name\":\"p\",\"key\":\"MDEyMzQ1Njc4OWFiY2RlZg==\"}]," \
    "\"instances\":[{\"id\":\"d1\",\"idScope\":\"0ne1\"}],\"hubs\":[" hubs "]}}"
    struct jv_err err;
    (void)state;
    assert_true(test_load(TEST_HUBS("\"serviceHostName\":\"dps.example.net\",",
                                    "{\"id\":\"a\",\"hostName\":\"a.example.net\"},"
                                    "{\"id\":\"b\",\"hostName\":\"b.example.net\"}"), &err));
    test_bad(TEST_HUBS("\"serviceHostName\":\"dps.example.net\",", "{\"id\":\"a\",\"hostName\":\"DPS.example.net\"}"),
             "invalid_value", "provisioning.hubs");
    test_bad(TEST_HUBS("\"serviceHostName\":\"dps.example.net:8443\",",
                       "{\"id\":\"a\",\"hostName\":\"dps.example.net\"}"),
             "invalid_value", "provisioning.hubs");
    test_bad(TEST_HUBS("", "{\"id\":\"a\",\"hostName\":\"127.0.0.1\"}"), "invalid_value", "provisioning.hubs");
    test_bad(TEST_HUBS("\"serviceHostName\":\"dps.example.net\",",
                       "{\"id\":\"a\",\"hostName\":\"a.example.net\"},{\"id\":\"b\",\"hostName\":\"A.Example.net\"}"),
             "invalid_value", "provisioning.hubs");
#undef TEST_HUBS
}

static void test_missing_file(void **state)
{
    struct agent_config cfg;
    struct jv_err err;

    assert_false(agent_config_load("/nonexistent/agent.json", &cfg, &err));
    assert_string_equal(err.code, "invalid_json");
    assert_non_null(strstr(err.message, "/nonexistent/agent.json"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_prov_limits),
        cmocka_unit_test(test_prov_hub_hosts),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_interval_bounds_accepted),
        cmocka_unit_test(test_missing_stamp_id),
        cmocka_unit_test(test_missing_region),
        cmocka_unit_test(test_missing_redis),
        cmocka_unit_test(test_bad_id_syntax),
        cmocka_unit_test(test_unknown_field),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_interval_out_of_range),
        cmocka_unit_test(test_bad_redis_address),
        cmocka_unit_test(test_too_many_hubs),
        cmocka_unit_test(test_too_many_dps),
        cmocka_unit_test(test_non_string_hub),
        cmocka_unit_test(test_duplicate_hub),
        cmocka_unit_test(test_bad_log_level),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_prov_geography),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
