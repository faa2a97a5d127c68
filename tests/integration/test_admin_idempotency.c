/*
 * test_admin_idempotency - Idempotency-Key on the admin API's creates
 * (docs/api.md "Idempotency"), with a real control plane and PostgreSQL:
 *
 *  - replay: the same key and request answer the first answer again, byte
 *    for byte (the same generated tenant id, the same enrollmentKey, the
 *    same Location), marked Idempotent-Replayed; one tenant exists;
 *  - the same key with another body or another path: 422
 *    idempotency_mismatch;
 *  - in progress: while the first request is held (the tenants table is
 *    locked by the test), the same request is 409 idempotency_in_progress
 *    with Retry-After; once the lock goes the first one completes, and a
 *    retry replays its answer;
 *  - the stored answer is sealed: answer_key is an envelope value, and no
 *    column of the table holds the enrollment key, the tenant id or name;
 *  - a 4xx answer is not stored (the key is released: the same key with a
 *    corrected body then creates);
 *  - an expired key is free again (another body creates); a 'pending' claim
 *    older than 120 s (its control plane died) is taken over;
 *  - key syntax: empty, a space, a non-ASCII byte or 256 characters are 400
 *    invalid_value with target Idempotency-Key; 255 visible characters are
 *    accepted.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"

static struct ts_rt *rt;
static const char *gdb;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub" } } },
        { .id = NULL },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", NULL } };
    (void)state;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    gdb = rt->cp[0]->global_db;
    return 0;
}

static struct ts_resp *post_key(const char *path, const char *key, const char *body)
{
    const char *auth = ts_str("Authorization: Bearer %s", rt->cp[0]->token);
    const char *h[] = { auth, "Content-Type: application/json", key ? ts_str("Idempotency-Key: %s", key) : NULL, NULL };
    return ts_http(rt->cp[0]->port, "POST", path, h, body, strlen(body));
}

static const char *tenant_body(const char *name)
{
    return ts_str("{\"name\":\"%s\",\"residency\":{\"geographies\":[\"eu\"]}}", name);
}

static void test_replay(void **state)
{
    struct ts_resp *a, *b, *c;
    (void)state;
    a = post_key("/v1/tenants", "onboard-1", tenant_body("Idem One"));
    TS_EXPECT_STATUS(a, 201);
    assert_null(ts_header(a, "Idempotent-Replayed"));
    assert_non_null(ts_jstr(a->json, "enrollmentKey"));
    b = post_key("/v1/tenants", "onboard-1", tenant_body("Idem One"));
    TS_EXPECT_STATUS(b, 201);
    TS_EXPECT_STREQ(ts_header(b, "Idempotent-Replayed"), "true");
    TS_EXPECT_STREQ(ts_header(b, "Cache-Control"), "no-store");
    TS_EXPECT_STREQ(b->body, a->body);   /* same generated id, same enrollmentKey */
    TS_EXPECT_STREQ(ts_jstr(b->json, "id"), ts_jstr(a->json, "id"));
    TS_EXPECT_STREQ(ts_jstr(b->json, "enrollmentKey"), ts_jstr(a->json, "enrollmentKey"));
    TS_EXPECT_STREQ(ts_header(b, "Location"), ts_header(a, "Location"));
    TS_EXPECT_STREQ(ts_header(a, "Location"), ts_str("/v1/tenants/%s", ts_jstr(a->json, "id")));
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM tenants WHERE name = 'Idem One'"), 1);

    /* another key is another request */
    c = post_key("/v1/tenants", "onboard-2", tenant_body("Idem One"));
    TS_EXPECT_STATUS(c, 201);
    assert_true(strcmp(ts_jstr(c->json, "id"), ts_jstr(a->json, "id")) != 0);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM tenants WHERE name = 'Idem One'"), 2);
    /* without a key, nothing is stored */
    TS_EXPECT_STATUS(post_key("/v1/tenants", NULL, tenant_body("No Key")), 201);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM idempotency_keys"), 2);
}

static void test_mismatch(void **state)
{
    struct ts_resp *r;
    (void)state;
    r = post_key("/v1/tenants", "onboard-1", tenant_body("Idem Other"));
    TS_EXPECT_ERROR(r, 422, "idempotency_mismatch");
    TS_EXPECT_STREQ(ts_err_target(r), "Idempotency-Key");
    r = post_key("/v1/geographies", "onboard-1", "{\"id\":\"zz\",\"name\":\"Z\"}");
    TS_EXPECT_ERROR(r, 422, "idempotency_mismatch");
    r = post_key("/v1/tenants?x=1", "onboard-1", tenant_body("Idem One"));   /* the key is checked first */
    TS_EXPECT_ERROR(r, 422, "idempotency_mismatch");
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM tenants WHERE name = 'Idem Other'"), 0);
}

static void test_sealed_at_rest(void **state)
{
    struct ts_resp *a;
    const char *key, *id;
    (void)state;
    a = post_key("/v1/tenants", "sealed-1", tenant_body("Sealed Tenant"));
    TS_EXPECT_STATUS(a, 201);
    key = ts_jstr(a->json, "enrollmentKey");
    id = ts_jstr(a->json, "id");
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM idempotency_keys WHERE idem_key = 'sealed-1'"
                                      " AND caller = 'operator' AND state = 'done' AND status = 201"
                                      " AND answer_key LIKE 'enc:v1:%' AND answer IS NOT NULL"), 1);
    assert_int_equal(ts_pg_count(gdb, ts_str("SELECT count(*) FROM idempotency_keys k"
                                             " WHERE strpos(row_to_json(k)::text, '%s') > 0", key)), 0);
    assert_int_equal(ts_pg_count(gdb, ts_str("SELECT count(*) FROM idempotency_keys k WHERE idem_key = 'sealed-1'"
                                             " AND (strpos(answer, '%s') > 0 OR strpos(answer, 'Sealed') > 0"
                                             " OR strpos(answer, 'enrollmentKey') > 0)", id)), 0);
    /* and it still opens: the replay is the answer */
    TS_EXPECT_STREQ(post_key("/v1/tenants", "sealed-1", tenant_body("Sealed Tenant"))->body, a->body);
}

static void test_client_error_not_stored(void **state)
{
    struct ts_resp *r;
    (void)state;
    r = post_key("/v1/tenants", "fix-me", "{\"name\":\"Fix\",\"residency\":{\"geographies\":[\"mars\"]}}");
    if (r->status < 400 || r->status >= 500)
        ts_fail("a tenant in an unknown geography: expected 4xx, got %s", ts_resp_str(r));
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM idempotency_keys WHERE idem_key = 'fix-me'"), 0);
    /* the key was released: the corrected request with it creates */
    r = post_key("/v1/tenants", "fix-me", tenant_body("Fix"));
    TS_EXPECT_STATUS(r, 201);
    r = post_key("/v1/tenants", "fix-me", "{\"name\":\"Fix\",\"residency\":{\"geographies\":[\"mars\"]}}");
    TS_EXPECT_ERROR(r, 422, "idempotency_mismatch");
}

static void test_key_syntax(void **state)
{
    char long_key[300];
    struct ts_resp *r;
    const char *bad[] = { "", "a b", "caf\xc3\xa9", NULL, NULL };
    (void)state;
    memset(long_key, 'k', 256);
    long_key[256] = '\0';
    bad[3] = long_key;
    for (int i = 0; bad[i]; i++) {
        r = post_key("/v1/tenants", bad[i], tenant_body("Bad Key"));
        TS_EXPECT_ERROR(r, 400, "invalid_value");
        TS_EXPECT_STREQ(ts_err_target(r), "Idempotency-Key");
    }
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM tenants WHERE name = 'Bad Key'"), 0);
    long_key[255] = '\0';
    long_key[0] = '!';
    long_key[254] = '~';
    TS_EXPECT_STATUS(post_key("/v1/tenants", long_key, tenant_body("Long Key")), 201);
    TS_EXPECT_STATUS(post_key("/v1/tenants", long_key, tenant_body("Long Key")), 201);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM tenants WHERE name = 'Long Key'"), 1);
}

struct slow_post {
    char req[1024];
    char out[8192];
    size_t outlen;
    bool ok;
    char err[160];
    int port;
};

static void *slow_post_run(void *arg)
{
    struct slow_post *s = arg;
    s->ok = ts_http_exchange_mt(s->port, s->req, strlen(s->req), 20000, s->out, sizeof s->out, &s->outlen, s->err,
                                sizeof s->err);
    return NULL;
}

static bool claim_pending(void *arg)
{
    (void)arg;
    return ts_pg_count(gdb, "SELECT count(*) FROM idempotency_keys WHERE idem_key = 'slow-1' AND state = 'pending'") == 1;
}

static void test_in_progress(void **state)
{
    const char *body = tenant_body("Slow One");
    struct slow_post *s = ts_keep(calloc(1, sizeof *s));
    PGconn *lock = ts_pg_connect(gdb);
    PGresult *res;
    pthread_t th;
    struct ts_resp *r;
    const char *sbody;
    (void)state;

    res = PQexec(lock, "BEGIN; LOCK TABLE tenants IN EXCLUSIVE MODE");
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    s->port = rt->cp[0]->port;
    snprintf(s->req, sizeof s->req,
             "POST /v1/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\nIdempotency-Key: slow-1\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s", rt->cp[0]->token, strlen(body), body);
    assert_int_equal(pthread_create(&th, NULL, slow_post_run, s), 0);
    if (!ts_wait_until(claim_pending, NULL, 3000)) {
        PQfinish(lock);
        pthread_join(th, NULL);
        ts_fail("the first request never claimed its key");
    }
    r = post_key("/v1/tenants", "slow-1", body);
    res = PQexec(lock, "ROLLBACK");
    PQclear(res);
    PQfinish(lock);
    pthread_join(th, NULL);
    TS_EXPECT_ERROR(r, 409, "idempotency_in_progress");
    ts_expect_retry_after(r, 1);
    if (!s->ok || strncmp(s->out, "HTTP/1.1 201", 12) != 0)
        ts_fail("the held request: %s %.300s", s->err, s->out);
    sbody = strstr(s->out, "\r\n\r\n");
    assert_non_null(sbody);
    r = post_key("/v1/tenants", "slow-1", body);
    TS_EXPECT_STATUS(r, 201);
    TS_EXPECT_STREQ(ts_header(r, "Idempotent-Replayed"), "true");
    if (!strstr(sbody, ts_jstr(r->json, "enrollmentKey")))
        ts_fail("the replay is not the held request's answer: %s vs %s", ts_resp_str(r), sbody);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM tenants WHERE name = 'Slow One'"), 1);
}

/* After 24 h a key is free again; a claim left pending (its control plane died) is taken over. */
static void test_expired_and_stale(void **state)
{
    struct ts_resp *r;
    (void)state;
    TS_EXPECT_STATUS(post_key("/v1/tenants", "expiring", tenant_body("Exp One")), 201);
    ts_pg_count(gdb, "WITH u AS (UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
                     " WHERE idem_key = 'expiring' RETURNING 1) SELECT count(*) FROM u");
    r = post_key("/v1/tenants", "expiring", tenant_body("Exp Two"));   /* another body: no mismatch any more */
    TS_EXPECT_STATUS(r, 201);
    assert_null(ts_header(r, "Idempotent-Replayed"));
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM idempotency_keys WHERE idem_key = 'expiring'"
                                      " AND expires_at > now() + interval '23 hours'"), 1);

    /* a pending claim younger than 120 s holds; an older one is taken over */
    ts_pg_count(gdb, "WITH u AS (INSERT INTO idempotency_keys (caller, idem_key, fingerprint, claim, expires_at)"
                     " VALUES ('operator', 'stale', 'x', 'dead', now() + interval '1 day') RETURNING 1)"
                     " SELECT count(*) FROM u");
    TS_EXPECT_ERROR(post_key("/v1/tenants", "stale", tenant_body("Stale")), 422, "idempotency_mismatch");
    ts_pg_count(gdb, "WITH u AS (UPDATE idempotency_keys SET fingerprint = 'y', created_at = now() - interval '5 minutes'"
                     " WHERE idem_key = 'stale' RETURNING 1) SELECT count(*) FROM u");
    TS_EXPECT_STATUS(post_key("/v1/tenants", "stale", tenant_body("Stale")), 201);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM idempotency_keys WHERE idem_key = 'stale'"
                                      " AND state = 'done' AND claim <> 'dead'"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_mismatch),
        cmocka_unit_test(test_sealed_at_rest),
        cmocka_unit_test(test_client_error_not_stored),
        cmocka_unit_test(test_key_syntax),
        cmocka_unit_test(test_in_progress),
        cmocka_unit_test(test_expired_and_stale),
    };
    ts_init("test_admin_idempotency");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
