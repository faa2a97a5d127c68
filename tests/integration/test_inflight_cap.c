/*
 * test_inflight_cap - http.maxInFlight (docs/api.md): with 2 requests held
 * in progress (their database table locked), a third is answered at once
 * 503 overloaded with a jittered Retry-After (1 or 2), while /healthz and
 * /readyz are still served; once the lock goes, the held two complete 200
 * and new requests are served again.
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

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", NULL }, .extra_json = "\"http\":{\"maxInFlight\":2}" };
    (void)state;
    rt = ts_rt_start(&o);
    gdb = rt->cp[0]->global_db;
    return 0;
}

struct held {
    int port;
    char req[1024];
    char out[16384];
    size_t outlen;
    char err[256];
    bool ok;
};

static void *held_run(void *arg)
{
    struct held *h = arg;
    h->ok = ts_http_exchange_mt(h->port, h->req, strlen(h->req), 20000, h->out, sizeof h->out, &h->outlen, h->err,
                                sizeof h->err);
    return NULL;
}

static bool two_waiting(void *arg)
{
    (void)arg;
    return ts_pg_count(gdb, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE '%tenants%'") >= 2;
}

static void test_cap(void **state)
{
    struct held *h = ts_keep(calloc(2, sizeof *h));
    PGconn *lock = ts_pg_connect(gdb);
    pthread_t th[2];
    PGresult *res;
    struct ts_resp *r;
    int64_t t0;
    (void)state;

    res = PQexec(lock, "BEGIN; LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE");
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    for (int i = 0; i < 2; i++) {
        h[i].port = rt->cp[0]->port;
        snprintf(h[i].req, sizeof h[i].req,
                 "GET /v1/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n",
                 rt->cp[0]->token);
        assert_int_equal(pthread_create(&th[i], NULL, held_run, &h[i]), 0);
    }
    if (!ts_wait_until(two_waiting, NULL, 5000)) {
        PQfinish(lock);
        ts_fail("the two requests never reached the database");
    }
    t0 = ts_now_ms();
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants", NULL);
    TS_EXPECT_ERROR(r, 503, "overloaded");
    ts_expect_retry_after(r, 1);
    if (ts_now_ms() - t0 > 1000)
        ts_fail("the refusal took %lld ms: it must not wait for anything", (long long)(ts_now_ms() - t0));
    TS_EXPECT_STATUS(ts_get(rt->cp[0], "/healthz"), 200);
    res = PQexec(lock, "ROLLBACK");
    PQclear(res);
    PQfinish(lock);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        if (!h[i].ok || strncmp(h[i].out, "HTTP/1.1 200", 12) != 0)
            ts_fail("held request %d: %s %.300s", i, h[i].err, h[i].out);
    }
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "GET", "/v1/tenants", NULL), 200);
    TS_EXPECT_STATUS(ts_get(rt->cp[0], "/readyz"), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap),
    };
    ts_init("test_inflight_cap");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
