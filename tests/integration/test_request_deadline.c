/*
 * test_request_deadline - every device request has an end-to-end deadline
 * (http.requestDeadlineMs, docs/api.md; docs/architecture.md "Deadline and
 * tokens"):
 *
 * The eu geography's database is a private PostgreSQL server; the deadline
 * is 1000 ms, while the database bounds are far longer (queryTimeoutMs 5000,
 * queueTimeoutMs 4000: without the deadline a stalled request would wait
 * 4-5 s). The server is stopped (SIGSTOP) and 8 new devices locate at once:
 *  - each is answered 503 deadline_exceeded, with a JSON error and a
 *    jittered Retry-After (1 or 2), within deadline + 1000 ms and not before
 *    the deadline; /healthz stays fast meanwhile;
 *  - after SIGCONT: no device row exists for any of them, and the lookups
 *    that waited in the batcher's queue were dropped, never sent: the
 *    control plane's own count at shutdown (event=pg_batch_stats
 *    batcher=lookup:eu ... expired=N) says N >= 1 and the statements sent
 *    during the stall + N = 8;
 *  - new requests are served again (200).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"

#define DEADLINE_MS 1000
#define NSTALL 8

static struct ts_pgserver *pg;
static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub" } } },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", NULL } };
    (void)state;
    pg = ts_pgserver_start("deadline");
    o.geo_dbs[0] = ts_pg_create_db(pg->conninfo, ts_unique("eu"));
    o.extra_json = ts_json("'http':{'requestDeadlineMs':%d},"
                           "'db':{'poolSize':4,'queryTimeoutMs':5000,'queueTimeoutMs':4000,'cancelGraceMs':5000}",
                           DEADLINE_MS);
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    eu_db = ts_rt_geo_db(rt, "eu");
    acme = ts_rt_tenant(rt->cp[0], "{\"id\":\"acme\",\"name\":\"Acme\",\"residency\":{\"geographies\":[\"eu\"]}}");
    return 0;
}

static struct ts_rt_job jobs[NSTALL];

/* "key=123" in a log line: the number, or -1. */
static long log_field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void test_stalled_geography(void **state)
{
    struct ts_cp *cp = rt->cp[0];
    struct ts_resp *r;
    int outside = 0;   /* lookups sent outside the stall */
    (void)state;

    TS_EXPECT_STATUS(ts_rt_locate(cp, acme, "warm-0"), 200);
    outside++;

    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < NSTALL; i++) {
        const char *id = ts_str("stall-%d", i);
        jobs[i].port = cp->port;
        jobs[i].path = ts_str("/v1/tenants/acme/registrations/%s/locate", id);
        jobs[i].authz = ts_rt_sas(acme, id, 0);
    }
    ts_pgserver_signal(pg, SIGSTOP);
    {
        struct ts_rt_batch *b = ts_rt_batch_start(jobs, NSTALL, NSTALL);
        ts_sleep_ms(300);
        r = ts_get(cp, "/healthz");
        TS_EXPECT_STATUS(r, 200);
        if (r->elapsed_ms >= 500)
            ts_fail("/healthz took %lld ms during the stall", (long long)r->elapsed_ms);
        ts_rt_batch_wait(b);
    }
    for (int i = 0; i < NSTALL; i++) {
        struct ts_rt_answer *a = &jobs[i].ans;
        int64_t ms = a->at_ms - a->sent_ms;
        const char *code = ts_rt_answer_code(a);
        ts_log("stalled locate %d: %d %s after %lld ms, Retry-After %s", i, a->status, code ? code : "-",
               (long long)ms, a->retry_after);
        if (a->status != 503 || !code || strcmp(code, "deadline_exceeded") != 0)
            ts_fail("stalled locate %d: expected 503 deadline_exceeded, got %d %s", i, a->status, a->body);
        if (strcmp(a->retry_after, "1") != 0 && strcmp(a->retry_after, "2") != 0)
            ts_fail("stalled locate %d: Retry-After \"%s\", expected 1 or 2", i, a->retry_after);
        if (ms < DEADLINE_MS - 100 || ms > DEADLINE_MS + 1000)
            ts_fail("stalled locate %d answered after %lld ms: the deadline is %d ms", i, (long long)ms, DEADLINE_MS);
    }
    ts_sleep_ms(300);
    ts_pgserver_signal(pg, SIGCONT);

    /* service comes back: the statement that was in flight finishes, then new ones run */
    {
        int64_t t0 = ts_now_ms();
        int status = 0;
        for (int i = 0; ts_now_ms() - t0 < 8000; i++) {
            status = ts_rt_locate(cp, acme, ts_str("after-%d", i))->status;
            outside++;
            if (status == 200)
                break;
            ts_sleep_ms(200);
        }
        if (status != 200)
            ts_fail("no 200 within 8 s after SIGCONT");
        ts_log("first 200 %lld ms after SIGCONT", (long long)(ts_now_ms() - t0));
    }
    TS_EXPECT_STATUS(ts_rt_locate(cp, acme, "stall-0"), 200);   /* placed now, on request */
    outside++;
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id LIKE 'stall-%' "
                                        "AND registration_id <> 'stall-0'"), 0);

    /* what the batcher sent and what it dropped, in its own words */
    assert_int_equal(ts_controlplane_stop(cp, 10000), 0);
    {
        size_t len;
        char *log = ts_read_file(cp->proc->log_path, &len);
        const char *line = log ? strstr(log, "event=pg_batch_stats batcher=lookup:eu ") : NULL;
        long items, expired;
        if (!line)
            ts_fail("no event=pg_batch_stats for lookup:eu in the log");
        items = log_field(line, " items=");
        expired = log_field(line, " expired=");
        ts_log("lookup:eu batcher: %ld items sent (%d outside the stall), %ld dropped for their deadline", items,
               outside, expired);
        if (expired < 1)
            ts_fail("no lookup was dropped from the queue: the stalled ones were all sent");
        if (items - outside + expired != NSTALL)
            ts_fail("sent during the stall (%ld) + dropped (%ld) != %d stalled locates", items - outside, expired,
                    NSTALL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stalled_geography),
    };
    ts_init("test_request_deadline");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
