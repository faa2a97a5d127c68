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

#define CORE_BASE "\"globalDatabase\":\"dbname=g\",\"geographies\":{\"eu\":\"dbname=eu\"},\"redis\":\"127.0.0.1:6379\""
/* plain HTTP, said explicitly (a config without it or tls is refused) */
#define GOOD_BASE CORE_BASE ",\"plainHttp\":true"

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
    assert_string_equal(cfg.redis.direct.host, "127.0.0.1");
    assert_int_equal(cfg.redis.direct.port, 6379);
    assert_int_equal(cfg.max_body_bytes, 65536);
    assert_int_equal(cfg.stale_after_intervals, 3);
    assert_int_equal(cfg.down_after_intervals, 10);
    assert_int_equal(cfg.db_pool_size, 4);
    assert_int_equal(cfg.max_enrollment_groups, 100);
    assert_int_equal(cfg.cache_trust_ms, 1000);
    assert_true(cfg.stamp_ops_enabled);
    assert_int_equal(cfg.stamp_ops_poll_ms, 1000);
    assert_int_equal(cfg.stamp_ops_max_backoff_ms, 300000);
    assert_int_equal(cfg.stamp_ops_move_grace_s, 86400);
    assert_null(cfg.operator_token);
    cp_config_free(&cfg);
}

static void test_tls(void **state)
{
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    assert_true(parse("{" CORE_BASE ",\"tls\":{\"cert\":\"/etc/cp/cert.pem\",\"key\":\"/etc/cp/key.pem\"}}", &cfg, &e));
    assert_false(cfg.plain_http);
    assert_string_equal(cfg.tls_cert, "/etc/cp/cert.pem");
    assert_string_equal(cfg.tls_key, "/etc/cp/key.pem");
    assert_null(cfg.tls_client_ca);
    cp_config_free(&cfg);
    assert_true(parse("{" CORE_BASE ",\"tls\":{\"cert\":\"c\",\"key\":\"k\",\"clientCa\":\"/etc/cp/devices-ca.pem\"}}",
                      &cfg, &e));
    assert_string_equal(cfg.tls_client_ca, "/etc/cp/devices-ca.pem");
    cp_config_free(&cfg);
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_true(cfg.plain_http);
    assert_null(cfg.tls_cert);
    cp_config_free(&cfg);
}

/* db.* server-side bounds: explicit values (0 = not sent) and keepalives. */
static void test_db_bounds(void **state)
{
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    assert_true(parse("{" GOOD_BASE ",\"db\":{\"statementTimeoutMs\":0,\"lockTimeoutMs\":250,"
                      "\"idleInTransactionTimeoutMs\":9000,\"keepalivesIdleS\":30,\"keepalivesIntervalS\":5,"
                      "\"keepalivesCount\":4,\"cancelGraceMs\":700}}",
                      &cfg, &e));
    assert_int_equal(cfg.db_statement_timeout_ms, 0);
    assert_int_equal(cfg.db_lock_timeout_ms, 250);
    assert_int_equal(cfg.db_idle_in_tx_timeout_ms, 9000);
    assert_int_equal(cfg.db_keepalives_idle_s, 30);
    assert_int_equal(cfg.db_keepalives_interval_s, 5);
    assert_int_equal(cfg.db_keepalives_count, 4);
    assert_int_equal(cfg.db_cancel_grace_ms, 700);
    cp_config_free(&cfg);
    /* absent db object: derived from the default queryTimeoutMs (5000) */
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_int_equal(cfg.db_statement_timeout_ms, 5000);
    assert_int_equal(cfg.db_lock_timeout_ms, 2500);
    cp_config_free(&cfg);
    assert_false(parse("{" GOOD_BASE ",\"db\":{\"keepalivesCount\":0}}", &cfg, &e));
    assert_string_equal(e.field, "db.keepalivesCount");
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
                      "\"dps\":{\"maxEnrollmentGroups\":2},"
                      "\"stampOps\":{\"enabled\":false,\"pollMs\":200,\"maxBackoffMs\":1000,\"moveGraceSeconds\":0}}",
                      &cfg, &e));
    assert_string_equal(cfg.listen_host, "::1");
    assert_int_equal(cfg.listen_port, 9000);
    assert_string_equal(cfg.operator_token, "0123456789abcdef");
    assert_int_equal(cfg.max_body_bytes, 2048);
    assert_int_equal(cfg.db_pool_size, 8);
    assert_int_equal(cfg.db_query_timeout_ms, 1000);
    /* server-side bounds derived from queryTimeoutMs */
    assert_int_equal(cfg.db_statement_timeout_ms, 1000);
    assert_int_equal(cfg.db_lock_timeout_ms, 500);
    assert_int_equal(cfg.db_idle_in_tx_timeout_ms, 2000);
    assert_int_equal(cfg.db_cancel_grace_ms, 1000);
    assert_int_equal(cfg.db_keepalives_idle_s, 10);
    assert_int_equal(cfg.max_enrollment_groups, 2);
    assert_false(cfg.stamp_ops_enabled);
    assert_int_equal(cfg.stamp_ops_poll_ms, 200);
    assert_int_equal(cfg.stamp_ops_max_backoff_ms, 1000);
    assert_int_equal(cfg.stamp_ops_move_grace_s, 0);
    assert_int_equal(cfg.log_level, 0);
    cp_config_free(&cfg);
    /* stampDrift: defaults, then every key */
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_true(cfg.stamp_drift_enabled);
    assert_int_equal(cfg.stamp_drift_interval_ms, 60000);
    assert_int_equal(cfg.stamp_drift_grace_s, 600);
    assert_int_equal(cfg.stamp_drift_sample_page, 1000);
    cp_config_free(&cfg);
    assert_true(parse("{" GOOD_BASE ",\"stampDrift\":{\"enabled\":false,\"intervalMs\":300,\"graceSeconds\":0,"
                      "\"samplePage\":1}}", &cfg, &e));
    assert_false(cfg.stamp_drift_enabled);
    assert_int_equal(cfg.stamp_drift_interval_ms, 300);
    assert_int_equal(cfg.stamp_drift_grace_s, 0);
    assert_int_equal(cfg.stamp_drift_sample_page, 1);
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
        {"{" GOOD_BASE ",\"cacheTrustMs\":199}", "out_of_range", "cacheTrustMs"},
        {"{" GOOD_BASE ",\"cacheTrustMs\":60001}", "out_of_range", "cacheTrustMs"},
        {"{" GOOD_BASE ",\"cacheTrustMs\":\"1000\"}", "invalid_type", "cacheTrustMs"},
        {"{" GOOD_BASE ",\"cacheTrustMs\":1000.5}", "invalid_type", "cacheTrustMs"},
        {"{" GOOD_BASE ",\"http\":{\"requestDeadlineMs\":600001}}", "out_of_range", "http.requestDeadlineMs"},
        {"{" GOOD_BASE ",\"http\":{\"requestDeadlineMs\":\"10s\"}}", "invalid_type", "http.requestDeadlineMs"},
        {"{" GOOD_BASE ",\"http\":{\"requestDeadlineMs\":null}}", "invalid_type", "http.requestDeadlineMs"},
        {"{" GOOD_BASE ",\"dps\":{\"maxEnrollmentGroups\":101}}", "out_of_range", "dps.maxEnrollmentGroups"},
        {"{" GOOD_BASE ",\"dps\":{\"maxEnrollmentGroups\":0}}", "out_of_range", "dps.maxEnrollmentGroups"},
        {"{" GOOD_BASE ",\"stampDrift\":{\"samplePage\":1001}}", "out_of_range", "stampDrift.samplePage"},
        {"{" GOOD_BASE ",\"stampDrift\":{\"samplePage\":0}}", "out_of_range", "stampDrift.samplePage"},
        {"{" GOOD_BASE ",\"stampDrift\":{\"intervalMs\":199}}", "out_of_range", "stampDrift.intervalMs"},
        {"{" GOOD_BASE ",\"stampDrift\":{\"graceSeconds\":-1}}", "out_of_range", "stampDrift.graceSeconds"},
        {"{" GOOD_BASE ",\"stampDrift\":{\"enabled\":\"yes\"}}", "invalid_type", "stampDrift.enabled"},
        {"{" GOOD_BASE ",\"stampDrift\":{\"grace\":5}}", "unknown_field", "stampDrift.grace"},
        {"{" GOOD_BASE ",\"stampDrift\":true}", "invalid_type", "stampDrift"},
        /* stampOps: the stamp-operation outbox's worker */
        {"{" GOOD_BASE ",\"stampOps\":{\"pollMS\":100}}", "unknown_field", "stampOps.pollMS"},
        {"{" GOOD_BASE ",\"stampOps\":{\"pollMs\":49}}", "out_of_range", "stampOps.pollMs"},
        {"{" GOOD_BASE ",\"stampOps\":{\"maxBackoffMs\":99}}", "out_of_range", "stampOps.maxBackoffMs"},
        {"{" GOOD_BASE ",\"stampOps\":{\"moveGraceSeconds\":-1}}", "out_of_range", "stampOps.moveGraceSeconds"},
        {"{" GOOD_BASE ",\"stampOps\":{\"enabled\":\"yes\"}}", "invalid_type", "stampOps.enabled"},
        {"{" GOOD_BASE ",\"stampOps\":true}", "invalid_type", "stampOps"},
        /* transport: TLS unless plain HTTP is asked for, never both */
        {"{" CORE_BASE "}", "missing_field", "tls"},
        {"{" CORE_BASE ",\"plainHttp\":false}", "missing_field", "tls"},
        {"{" CORE_BASE ",\"plainHttp\":\"yes\"}", "invalid_type", "plainHttp"},
        {"{" GOOD_BASE ",\"tls\":{\"cert\":\"c.pem\",\"key\":\"k.pem\"}}", "invalid_value", "plainHttp"},
        {"{" CORE_BASE ",\"tls\":{\"cert\":\"c.pem\"}}", "missing_field", "tls.key"},
        {"{" CORE_BASE ",\"tls\":{\"key\":\"k.pem\"}}", "missing_field", "tls.cert"},
        {"{" CORE_BASE ",\"tls\":{\"cert\":\"c.pem\",\"key\":\"k.pem\",\"ca\":\"x\"}}", "unknown_field", "tls.ca"},
        {"{" CORE_BASE ",\"tls\":{\"cert\":\"\",\"key\":\"k.pem\"}}", "invalid_value", "tls.cert"},
        {"{" CORE_BASE ",\"tls\":\"c.pem\"}", "invalid_type", "tls"},
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

/* tenants.* (the unknown-tenant flood) and pseudonymKey (device pseudonyms in logs) */
static void test_tenants_and_pseudonym(void **state)
{
    static const struct bad_case bad[] = {
        {"{" GOOD_BASE ",\"tenants\":{\"negativeCacheSize\":0}}", "out_of_range", "tenants.negativeCacheSize"},
        {"{" GOOD_BASE ",\"tenants\":{\"unknownFetchesPerSecond\":0}}", "out_of_range", "tenants.unknownFetchesPerSecond"},
        {"{" GOOD_BASE ",\"tenants\":{\"unknownFetchBurst\":\"9\"}}", "invalid_type", "tenants.unknownFetchBurst"},
        {"{" GOOD_BASE ",\"tenants\":{\"negativeTtlMs\":5}}", "out_of_range", "tenants.negativeTtlMs"},
        {"{" GOOD_BASE ",\"tenants\":{\"size\":5}}", "unknown_field", "tenants.size"},
        {"{" GOOD_BASE ",\"tenants\":5}", "invalid_type", "tenants"},
        {"{" GOOD_BASE ",\"pseudonymKey\":\"short\"}", "invalid_value", "pseudonymKey"},
        {"{" GOOD_BASE ",\"pseudonymKey\":7}", "invalid_type", "pseudonymKey"},
    };
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_int_equal(cfg.tenants_negative_size, 10000);
    assert_int_equal(cfg.tenants_negative_ttl_ms, 2000);
    assert_int_equal(cfg.tenants_unknown_per_s, 100);
    assert_int_equal(cfg.tenants_unknown_burst, 200);
    assert_null(cfg.pseudonym_key);
    cp_config_free(&cfg);
    assert_true(parse("{" GOOD_BASE ",\"tenants\":{\"negativeCacheSize\":5,\"negativeTtlMs\":100,"
                      "\"unknownFetchesPerSecond\":3,\"unknownFetchBurst\":4},"
                      "\"pseudonymKey\":\"0123456789abcdef\"}", &cfg, &e));
    assert_int_equal(cfg.tenants_negative_size, 5);
    assert_int_equal(cfg.tenants_negative_ttl_ms, 100);
    assert_int_equal(cfg.tenants_unknown_per_s, 3);
    assert_int_equal(cfg.tenants_unknown_burst, 4);
    assert_string_equal(cfg.pseudonym_key, "0123456789abcdef");
    cp_config_free(&cfg);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        if (parse(bad[i].json, &cfg, &e))
            fail_msg("case %zu accepted: %s", i, bad[i].json);
        if (strcmp(e.code, bad[i].code) != 0 || strcmp(e.field, bad[i].field) != 0)
            fail_msg("case %zu: got %s/%s, want %s/%s (%s)", i, e.code, e.field, bad[i].code, bad[i].field,
                     e.message);
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

/* "http": the listener's bounds (common/connguard.h) */
static void test_http_limits(void **state)
{
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_int_equal(cfg.http_max_connections, 4096);
    assert_int_equal(cfg.http_header_timeout_ms, 10000);
    assert_int_equal(cfg.http_request_timeout_ms, 30000);
    assert_int_equal(cfg.http_idle_timeout_ms, 60000);
    assert_int_equal(cfg.http_request_deadline_ms, 10000);
    cp_config_free(&cfg);
    assert_true(parse("{" GOOD_BASE ",\"http\":{\"maxConnections\":8,\"headerTimeoutMs\":1500,"
                      "\"requestTimeoutMs\":3000,\"idleTimeoutMs\":2500,\"requestDeadlineMs\":700}}", &cfg, &e));
    assert_int_equal(cfg.http_request_deadline_ms, 700);
    assert_int_equal(cfg.http_max_connections, 8);
    assert_int_equal(cfg.http_header_timeout_ms, 1500);
    assert_int_equal(cfg.http_request_timeout_ms, 3000);
    assert_int_equal(cfg.http_idle_timeout_ms, 2500);
    cp_config_free(&cfg);
    assert_false(parse("{" GOOD_BASE ",\"http\":{\"maxConns\":8}}", &cfg, &e));
    assert_string_equal(e.field, "http.maxConns");
    cp_config_free(&cfg);
    assert_false(parse("{" GOOD_BASE ",\"http\":{\"maxConnections\":0}}", &cfg, &e));
    assert_string_equal(e.field, "http.maxConnections");
    cp_config_free(&cfg);
    assert_false(parse("{" GOOD_BASE ",\"http\":{\"requestDeadlineMs\":99}}", &cfg, &e));
    assert_string_equal(e.field, "http.requestDeadlineMs");
    cp_config_free(&cfg);
    assert_false(parse("{" GOOD_BASE ",\"http\":{\"headerTimeoutMs\":5000,\"requestTimeoutMs\":1000}}", &cfg, &e));
    assert_string_equal(e.field, "http.requestTimeoutMs");
    cp_config_free(&cfg);
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

/* "redis" or "redisSentinel" (common/redistarget.c), and "dns" (common/dns.c) */
#define NO_REDIS "\"globalDatabase\":\"dbname=g\",\"geographies\":{\"eu\":\"dbname=eu\"},\"plainHttp\":true"
static void test_redis_sentinel_and_dns(void **state)
{
    static const struct { const char *json, *code, *field; } bad[] = {
        {"{" NO_REDIS "}", "missing_field", "redis"},
        {"{" GOOD_BASE ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\"]}}", "invalid_value", "redis"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"sentinels\":[\"h:1\"]}}", "missing_field", "redisSentinel.masterName"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\"}}", "missing_field", "redisSentinel.sentinels"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[]}}", "invalid_value", "redisSentinel.sentinels"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"a b\",\"sentinels\":[\"h:1\"]}}", "invalid_value", "redisSentinel.masterName"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\",\"h\"]}}", "invalid_value", "redisSentinel.sentinels[1]"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[5]}}", "invalid_type", "redisSentinel.sentinels[0]"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\"],\"auth\":1}}", "invalid_type", "redisSentinel.auth"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\"],\"auth\":{\"pass\":\"x\"}}}", "unknown_field", "redisSentinel.auth.pass"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\"],\"auth\":{\"passwordFile\":\"/nonexistent/p\"}}}", "invalid_value", "redisSentinel.auth.passwordFile"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\"],\"extra\":1}}", "unknown_field", "redisSentinel.extra"},
        {"{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\",\"h:2\",\"h:3\",\"h:4\",\"h:5\",\"h:6\",\"h:7\",\"h:8\",\"h:9\"]}}", "invalid_value", "redisSentinel.sentinels"},
        {"{" GOOD_BASE ",\"dns\":{\"resolv\":\"/x\"}}", "unknown_field", "dns.resolv"},
        {"{" GOOD_BASE ",\"dns\":{\"resolvConf\":\"\"}}", "invalid_value", "dns.resolvConf"},
        {"{" GOOD_BASE ",\"dns\":\"/etc/resolv.conf\"}", "invalid_type", "dns"},
    };
    struct cp_config cfg;
    struct jv_err e;
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        if (parse(bad[i].json, &cfg, &e))
            fail_msg("case %zu accepted: %s", i, bad[i].json);
        if (strcmp(e.code, bad[i].code) != 0 || strcmp(e.field, bad[i].field) != 0)
            fail_msg("case %zu: got %s/%s, want %s/%s (%s)", i, e.code, e.field, bad[i].code, bad[i].field, e.message);
        cp_config_free(&cfg);
    }
    assert_true(parse("{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"stampcp\",\"sentinels\":"
                      "[\"s1.example:26379\",\"[::1]:26380\"]},\"dns\":{\"resolvConf\":\"/tmp/r.conf\"}}", &cfg, &e));
    assert_true(redis_target_sentinel(&cfg.redis));
    assert_null(cfg.redis.direct.host);
    assert_string_equal(cfg.redis.master_name, "stampcp");
    assert_int_equal(cfg.redis.n_sentinels, 2);
    assert_string_equal(cfg.redis.sentinels[0].host, "s1.example");
    assert_int_equal(cfg.redis.sentinels[0].port, 26379);
    assert_string_equal(cfg.redis.sentinels[1].host, "::1");
    assert_int_equal(cfg.redis.sentinels[1].port, 26380);
    assert_string_equal(cfg.redis.text, "sentinel:stampcp");
    assert_string_equal(cfg.dns_resolv_conf, "/tmp/r.conf");
    assert_false(redis_auth_enabled(&cfg.redis.sentinel_auth));   /* none given: no AUTH to Sentinels */
    cp_config_free(&cfg);
    /* the message names the field from the root too */
    memset(&e, 0, sizeof e);
    assert_false(parse("{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\"],"
                       "\"auth\":{\"pass\":\"x\"}}}", &cfg, &e));
    if (!strstr(e.message, "'redisSentinel.auth.pass'"))
        fail_msg("message does not name redisSentinel.auth.pass: %s", e.message);
    cp_config_free(&cfg);
    assert_true(parse("{" NO_REDIS ",\"redisSentinel\":{\"masterName\":\"m\",\"sentinels\":[\"h:1\"],"
                      "\"auth\":{\"password\":\"s3cret\"}}}", &cfg, &e));
    assert_true(redis_auth_enabled(&cfg.redis.sentinel_auth));
    assert_string_equal(cfg.redis.sentinel_auth.password, "s3cret");
    assert_null(cfg.redis.sentinel_auth.user);
    cp_config_free(&cfg);
    assert_true(parse("{" GOOD_BASE "}", &cfg, &e));
    assert_false(redis_target_sentinel(&cfg.redis));
    assert_null(cfg.dns_resolv_conf);
    cp_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_db_bounds),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_tenants_and_pseudonym),
        cmocka_unit_test(test_set_listen),
        cmocka_unit_test(test_http_limits),
        cmocka_unit_test(test_redis_sentinel_and_dns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
