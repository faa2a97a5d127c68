/*
 * test_ha_pg_failover - the geography database is a Patroni cluster (two
 * PostgreSQL 15 servers over one etcd, synchronous_mode: a primary and a
 * synchronous standby; infra/patroni-cluster), and two routers reach it with
 * a multi-host conninfo (host=127.0.0.1,127.0.0.1 port=P0,P1
 * target_session_attrs=read-write). Four threads stream first locates of
 * distinct devices through both routers.
 *
 * 1. test_kill_leader: kill -9 the leader's postmaster (Patroni fails over to
 *    the sync standby: primary_start_timeout 0). Every device that was
 *    answered 200 is in the database afterwards, on the new leader, as it was
 *    answered; every other answer is a 503 with Retry-After or a request
 *    still running when the stream stopped; and new placements resume through
 *    BOTH routers within FAILOVER_BOUND_MS of the kill (measured: see
 *    docs/deploy.md "Failures").
 * 2. test_switchover: once the old leader is back as sync standby, a planned
 *    patronictl switchover under the same stream: 0 failed requests beyond
 *    those answered 503 with Retry-After (no 500, no dropped connection, no
 *    timeout), every 200 present, placements resume within
 *    SWITCHOVER_BOUND_MS.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"

#define NJOBS 60000
#define NTHREADS 4
/* From the kill (or the end of the switchover command) until each router has
 * placed a new device again. Measured on a loaded 2-core machine: see the
 * log line "resumed after"; the bounds leave room for ASan and load. */
#define FAILOVER_BOUND_MS 30000
#define SWITCHOVER_BOUND_MS 20000

static struct ts_patroni *pg;
static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;
static int probe_seq;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps", 0, 10000000 } },
          .hubs = { { "eu-west-1-hub" } } },
    },
};

static struct ts_rt_job jobs[NJOBS];

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 2, .geos = { "eu", NULL } };
    pg = ts_patroni_start("eu");
    o.geo_dbs[0] = ts_patroni_create_db(pg, "cp_eu");
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    eu_db = ts_rt_geo_db(rt, "eu");
    acme = ts_rt_tenant_acme(rt->cp[0]);
    ts_log("conninfo of the geography: %s", eu_db);
    return 0;
}

/* jobs[0..n): distinct devices "<prefix>-NNNNN", alternating between the routers. */
static void prepare_jobs(const char *prefix, int n)
{
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < n; i++) {
        ts_rt_job_locate(&jobs[i], rt->cp[i % 2]->port, acme, ts_str("%s-%05d", prefix, i));
    }
}

/* Place a new device through each router until both answered 200; returns ms since t0. */
static int64_t wait_placements_resume(int64_t t0, int64_t bound_ms)
{
    bool ok[2] = { false, false };
    int64_t at[2] = { 0, 0 };
    while (!(ok[0] && ok[1])) {
        for (int c = 0; c < 2; c++) {
            struct ts_resp *r;
            const char *id;
            if (ok[c])
                continue;
            id = ts_str("probe-%d", probe_seq++);
            r = ts_rt_locate(rt->cp[c], acme, id);
            if (r->status == 200) {
                ok[c] = true;
                at[c] = ts_now_ms() - t0;
            } else if (r->status != 503 && r->status != 0) {
                ts_fail("router %d answered a new device %s during the failover: %s", c, id, ts_resp_str(r));
            }
            ts_resp_free(r);
        }
        if (ts_now_ms() - t0 > bound_ms)
            ts_fail("placements did not resume within %lld ms (router 0: %s, router 1: %s)\n%s",
                    (long long)bound_ms, ok[0] ? "yes" : "no", ok[1] ? "yes" : "no", ts_patroni_status(pg));
        if (!(ok[0] && ok[1]))
            ts_sleep_ms(100);
    }
    ts_log("placements resumed after %lld ms (router 0) and %lld ms (router 1)", (long long)at[0],
           (long long)at[1]);
    return at[0] > at[1] ? at[0] : at[1];
}

struct tally {
    int n200, n503, n0, nother, nrunning;
    int64_t first503, last503;   /* when the first and last 503 arrived (ts_now_ms), 0: none */
};

/* Every 200 is in the database as answered; counts the rest. */
static struct tally check_answers(const char *prefix, int n)
{
    struct tally t = { 0 };
    PGresult *res = ts_pg_query(eu_db, ts_str("SELECT registration_id, stamp_id, id_scope, etag::text, status"
                                              " FROM devices WHERE tenant_id = 'acme'"
                                              " AND registration_id LIKE '%s-%%' ORDER BY registration_id",
                                              prefix));
    int nrows = PQntuples(res), lost = 0;
    const char *first_lost = NULL;

    for (int i = 0; i < n; i++) {
        struct ts_rt_answer *a = &jobs[i].ans;
        const char *id = ts_str("%s-%05d", prefix, i);
        json_t *j;
        int row = -1;
        if (!jobs[i].done) {
            t.nrunning++;
            continue;
        }
        if (a->status == 503) {
            if (!a->retry_after[0])
                ts_fail("%s: 503 without Retry-After: %s", id, a->body);
            t.n503++;
            if (!t.first503 || a->at_ms < t.first503)
                t.first503 = a->at_ms;
            if (a->at_ms > t.last503)
                t.last503 = a->at_ms;
            continue;
        }
        if (a->status == 0) {
            t.n0++;
            continue;
        }
        if (a->status != 200) {
            if (t.nother++ == 0)
                ts_log("first unexpected answer: %s -> %d %s", id, a->status, a->body);
            continue;
        }
        t.n200++;
        j = ts_rt_answer_json(a);
        /* the rows are ordered by registration_id, as the ids are */
        {
            int lo = 0, hi = nrows - 1;
            while (lo <= hi) {
                int mid = (lo + hi) / 2, c = strcmp(PQgetvalue(res, mid, 0), id);
                if (c == 0) {
                    row = mid;
                    break;
                }
                if (c < 0)
                    lo = mid + 1;
                else
                    hi = mid - 1;
            }
        }
        if (row < 0) {
            if (lost++ == 0)
                first_lost = ts_str("%s answered %s", id, a->body);
            continue;
        }
        if (strcmp(PQgetvalue(res, row, 1), ts_jstr(j, "stamp")) != 0 ||
            strcmp(PQgetvalue(res, row, 2), ts_jstr(j, "idScope")) != 0 ||
            strcmp(PQgetvalue(res, row, 3), ts_jstr(j, "etag")) != 0 ||
            strcmp(PQgetvalue(res, row, 4), "assigned") != 0) {
            const char *msg = ts_str("%s answered %s but the row is %s/%s/%s/%s", id, a->body, PQgetvalue(res, row, 1),
                                     PQgetvalue(res, row, 2), PQgetvalue(res, row, 3), PQgetvalue(res, row, 4));
            PQclear(res);
            ts_fail("%s", msg);
        }
    }
    PQclear(res);
    ts_log("%s: %d answered 200, %d answered 503 with Retry-After, %d without answer, %d other, %d not run;"
           " %d rows",
           prefix, t.n200, t.n503, t.n0, t.nother, t.nrunning, nrows);
    if (lost)
        ts_fail("%d devices answered 200 are not in the database after the failover (first: %s)", lost, first_lost);
    if (nrows < t.n200)
        ts_fail("%d rows for %d placements answered 200", nrows, t.n200);
    return t;
}

static void test_kill_leader(void **state)
{
    struct ts_rt_batch *b;
    const char *old_leader, *new_leader;
    int64_t t_kill, resumed;
    struct tally t;
    long before;

    prepare_jobs("kill", NJOBS);
    b = ts_rt_batch_start(jobs, NJOBS, NTHREADS);
    ts_sleep_ms(2000);
    before = ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id LIKE 'kill-%'");
    old_leader = ts_patroni_kill_leader(pg);
    t_kill = ts_now_ms();
    resumed = wait_placements_resume(t_kill, FAILOVER_BOUND_MS);
    /* a little more stream on the new leader */
    ts_sleep_ms(1000);
    ts_rt_batch_stop(b);
    ts_rt_batch_wait(b);

    new_leader = ts_patroni_leader(pg, NULL);
    ts_log("leader %s killed with %ld placements committed; new leader %s; resumed after %lld ms\n%s", old_leader,
           before, new_leader, (long long)resumed, ts_patroni_status(pg));
    if (strcmp(old_leader, new_leader) == 0)
        ts_fail("Patroni restarted %s in place instead of failing over to the sync standby", old_leader);
    if (before < 20)
        ts_fail("only %ld placements before the kill: the stream did not run", before);

    t = check_answers("kill", NJOBS);
    if (t.n503)
        ts_log("503s from %+lld ms to %+lld ms of the kill", (long long)(t.first503 - t_kill),
               (long long)(t.last503 - t_kill));
    if (t.nother)
        ts_fail("%d answers were neither 200 nor 503 with Retry-After nor a dropped connection", t.nother);
    /* the stream went on after the failover, and the database is consistent */
    if (ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id LIKE 'kill-%'") <= before)
        ts_fail("no placement of the stream after the failover");
    ts_rt_expect_usage_matches(eu_db, "after the failover");
}

static void test_switchover(void **state)
{
    struct ts_rt_batch *b;
    const char *to;
    int64_t t_start, t_done, resumed;
    struct tally t;

    /* the old leader is back as the sync standby */
    ts_patroni_wait(pg, 60);
    prepare_jobs("swo", NJOBS);
    b = ts_rt_batch_start(jobs, NJOBS, NTHREADS);
    ts_sleep_ms(1500);
    t_start = ts_now_ms();
    to = ts_patroni_switchover(pg);
    t_done = ts_now_ms();
    resumed = wait_placements_resume(t_done, SWITCHOVER_BOUND_MS);
    ts_sleep_ms(1000);
    ts_rt_batch_stop(b);
    ts_rt_batch_wait(b);
    TS_EXPECT_STREQ(ts_patroni_leader(pg, NULL), to);
    ts_log("switchover to %s: patronictl took %lld ms; placements resumed %lld ms after it returned", to,
           (long long)(t_done - t_start), (long long)resumed);

    t = check_answers("swo", NJOBS);
    if (t.n503)
        ts_log("503s from %+lld ms to %+lld ms of the switchover's start", (long long)(t.first503 - t_start),
               (long long)(t.last503 - t_start));
    if (t.n0 || t.nother)
        ts_fail("planned switchover: %d requests without an answer and %d answers other than 200 or 503 with"
                " Retry-After",
                t.n0, t.nother);
    if (t.n200 < 20)
        ts_fail("only %d placements during the switchover stream", t.n200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_leader),
        cmocka_unit_test(test_switchover),
    };
    ts_init("test_ha_pg_failover");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
