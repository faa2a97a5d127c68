/*
 * test_token_refund - a DPS token is spent only by an assignment that was
 * sent to the database in time; every outcome that placed nothing gives it
 * back (docs/architecture.md "Deadline and tokens").
 *
 * One DPS instance allows 4 registrations per minute (a bucket of 4 that
 * refills one token every 15 s); the deadline is 1500 ms; database bounds are
 * long (no server lock timeout, queryTimeoutMs 10000) so only the deadline
 * ends a wait; the layout is re-read only when asked (layoutRefreshMs 60000).
 * Assignments are held by a test transaction that locks dps_usage_shards
 * (lookups don't touch it):
 *  A. one first locate's assignment is in flight, held by the lock; three more
 *     take tokens and queue behind it: all four answer 503 deadline_exceeded;
 *     the three queued assignments are dropped unsent (no device rows after
 *     the lock goes), the one in flight commits then (its device exists, its
 *     token stays spent): the bucket is down by 1, not 4;
 *  B. two concurrent first locates of one device: both take a token, one
 *     assignment answers 'assigned', the other 'existing': both 200, one row,
 *     the bucket down by 1 more;
 *  C. the DPS's usage shards are filled behind the router's back: the
 *     assignment answers 'dps_full', the device gets 503 capacity_exhausted,
 *     the token comes back;
 *  D. the bucket (read in Redis) holds the 2 tokens the two real placements
 *     left; 2 new devices are placed (200) and the next is refused 429
 *     throttled: a real assignment spends its token.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <cmocka.h>

#include "ts.h"

#define DEADLINE_MS 1500
#define PER_MINUTE 4
#define DPS "eu-west-1-dps"

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;
static int64_t first_take_ms;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { DPS, 1000, PER_MINUTE } },
          .hubs = { { "eu-west-1-hub" } } },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", NULL }, .layout_refresh_ms = 60000 };
    (void)state;
    o.extra_json = ts_json("'http':{'requestDeadlineMs':%d},"
                           "'db':{'poolSize':4,'queryTimeoutMs':10000,'queueTimeoutMs':5000,'lockTimeoutMs':0}",
                           DEADLINE_MS);
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);   /* each catalog write has the router re-read the layout */
    ts_rt_agent_start(rt, &layout.stamps[0]);
    /* not ts_rt_start_agents: it waits for two periodic layout refreshes (2 min here) */
    if (!ts_rt_wait_health(rt, layout.stamps[0].id, "healthy", 10000))
        ts_fail("stamp not healthy 10 s after its agent started");
    eu_db = ts_rt_geo_db(rt, "eu");
    acme = ts_rt_tenant(rt->cp[0], "{\"id\":\"acme\",\"name\":\"Acme\",\"residency\":{\"geographies\":[\"eu\"]}}");
    return 0;
}

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* The DPS bucket's tokens now (what the script would see: refilled since its ts, capped). */
static double bucket_tokens(void)
{
    const char *t = ts_redis_cmd(rt->redis->addr, "HGET dps:" DPS ":bucket tokens");
    const char *ts = ts_redis_cmd(rt->redis->addr, "HGET dps:" DPS ":bucket ts");
    double v;
    if (!t || !ts || !*t || !*ts)
        ts_fail("no bucket dps:" DPS ":bucket in Redis");
    v = strtod(t, NULL) + (double)(wall_ms() - strtoll(ts, NULL, 10)) * PER_MINUTE / 60000.0;
    return v > PER_MINUTE ? PER_MINUTE : v;
}

/* After `spent` real placements the bucket holds PER_MINUTE - spent tokens,
 * plus what refilled since the first take (1 per 15 s), never a given-back
 * token less. */
static void expect_bucket(int spent, const char *when)
{
    double v = bucket_tokens(), refill = (double)(ts_now_ms() - first_take_ms) * PER_MINUTE / 60000.0 + 0.05;
    ts_log("%s: bucket %.3f tokens (expected %d, + up to %.3f refilled)", when, v, PER_MINUTE - spent, refill);
    if (v < PER_MINUTE - spent - 0.001)
        ts_fail("%s: the bucket holds %.3f tokens, fewer than %d: a token of a placement that did not happen "
                "was not given back", when, v, PER_MINUTE - spent);
    if (v > PER_MINUTE - spent + refill)
        ts_fail("%s: the bucket holds %.3f tokens, more than %d + refill: a real placement's token came back", when,
                v, PER_MINUTE - spent);
}

static PGconn *lock_shards(void)
{
    PGconn *c = ts_pg_connect(eu_db);
    PGresult *r = PQexec(c, "BEGIN; LOCK TABLE dps_usage_shards IN EXCLUSIVE MODE");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        ts_fail("lock dps_usage_shards: %s", PQerrorMessage(c));
    PQclear(r);
    return c;
}

static bool one_waiter(void *arg)
{
    (void)arg;
    return ts_pg_count(eu_db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stampcp-controlplane'"
                              " AND datname = current_database() AND wait_event_type = 'Lock'") >= 1;
}

static void job_init(struct ts_rt_job *j, const char *regid)
{
    memset(j, 0, sizeof *j);
    j->port = rt->cp[0]->port;
    j->path = ts_str("/v1/tenants/acme/registrations/%s/locate", regid);
    j->authz = ts_rt_sas(acme, regid, 0);
}

static long device_rows(const char *like)
{
    return ts_pg_count(eu_db, ts_str("SELECT count(*) FROM devices WHERE registration_id LIKE '%s'", like));
}

static void expect_code(const struct ts_rt_answer *a, int status, const char *code, const char *what)
{
    const char *c = ts_rt_answer_code(a);
    if (a->status != status || (code && (!c || strcmp(c, code) != 0)))
        ts_fail("%s: expected %d %s, got %d %s", what, status, code ? code : "", a->status, a->body);
}

/* A: queued past the deadline (refunded) and in flight past it (spent). */
static void step_deadline(void)
{
    static struct ts_rt_job held[1], queued[3];
    struct ts_rt_batch *bh, *bq;
    PGconn *lock = lock_shards();

    job_init(&held[0], "held-0");
    for (int i = 0; i < 3; i++)
        job_init(&queued[i], ts_str("queued-%d", i + 1));
    first_take_ms = ts_now_ms();
    bh = ts_rt_batch_start(held, 1, 1);
    if (!ts_wait_until(one_waiter, NULL, 1000)) {
        PQfinish(lock);
        ts_fail("the first assignment never waited on the lock");
    }
    bq = ts_rt_batch_start(queued, 3, 3);
    ts_rt_batch_wait(bh);
    ts_rt_batch_wait(bq);
    expect_code(&held[0].ans, 503, "deadline_exceeded", "held-0 (assignment in flight)");
    for (int i = 0; i < 3; i++)
        expect_code(&queued[i].ans, 503, "deadline_exceeded", ts_str("queued-%d (assignment queued)", i + 1));
    PQfinish(lock);   /* rolls back: the assignment in flight goes on */
    ts_sleep_ms(500);
    assert_int_equal(device_rows("held-0"), 1);
    assert_int_equal(device_rows("queued-%"), 0);
    ts_log("A: 4 x 503 deadline_exceeded; the assignment in flight committed after the lock, the 3 queued never ran");
    expect_bucket(1, "A");
}

/* B: two first locates of one device: 'assigned' spends, 'existing' gives back. */
static void step_existing(void)
{
    static struct ts_rt_job dup[2];
    struct ts_rt_batch *b;
    PGconn *lock = lock_shards();

    job_init(&dup[0], "dup-1");
    job_init(&dup[1], "dup-1");
    b = ts_rt_batch_start(dup, 2, 2);
    if (!ts_wait_until(one_waiter, NULL, 1000)) {
        PQfinish(lock);
        ts_fail("the assignment never waited on the lock");
    }
    ts_sleep_ms(250);   /* the other one took its token and queued behind it */
    PQfinish(lock);
    ts_rt_batch_wait(b);
    expect_code(&dup[0].ans, 200, NULL, "dup-1 (first)");
    expect_code(&dup[1].ans, 200, NULL, "dup-1 (second)");
    assert_int_equal(device_rows("dup-1"), 1);
    expect_bucket(2, "B");
}

/* C: the shards fill behind the router's back: dps_full gives the token back. */
static void step_dps_full(void)
{
    struct ts_resp *r;
    PQclear(ts_pg_query(eu_db, "UPDATE dps_usage_shards SET registrations = registrations + "
                               "cp_shard_quota(1000, shard) WHERE dps_id = '" DPS "'"));
    r = ts_rt_locate(rt->cp[0], acme, "full-1");
    TS_EXPECT_ERROR(r, 503, "capacity_exhausted");
    PQclear(ts_pg_query(eu_db, "UPDATE dps_usage_shards SET registrations = registrations - "
                               "cp_shard_quota(1000, shard) WHERE dps_id = '" DPS "'"));
    assert_int_equal(device_rows("full-1"), 0);
    expect_bucket(2, "C");
    /* a catalog write makes the router re-read the layout (and the usage) now */
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", "/v1/dps-instances/" DPS,
                              ts_str("{\"registrationsPerMinute\":%d}", PER_MINUTE)), 200);
    ts_sleep_ms(500);
}

static void test_refunds(void **state)
{
    struct ts_resp *r;
    int64_t t0;
    (void)state;

    step_deadline();
    step_existing();
    step_dps_full();

    /* D: the tokens that came back place real devices; a real placement spends one */
    t0 = ts_now_ms();
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "real-1"), 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "real-2"), 200);
    r = ts_rt_locate(rt->cp[0], acme, "real-3");
    ts_log("D: real-1, real-2 placed; real-3: %d (%lld ms after the first token was taken)", r->status,
           (long long)(ts_now_ms() - first_take_ms));
    if (ts_now_ms() - first_take_ms < 14000)   /* a refill (1 per 15 s) would admit it */
        TS_EXPECT_ERROR(r, 429, "throttled");
    assert_int_equal(device_rows("real-%"), r->status == 200 ? 3 : 2);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE status = 'assigned'"),
                     r->status == 200 ? 5 : 4);
    ts_log("D took %lld ms", (long long)(ts_now_ms() - t0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refunds),
    };
    ts_init("test_token_refund");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
