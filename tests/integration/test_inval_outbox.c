/*
 * test_inval_outbox - a committed change whose publish never happened still
 * reaches every router's cache, through the outbox and its relay (issue 14,
 * finding 8):
 *
 *  - router 1 answers dev-1's stamp from its cache;
 *  - the device is moved by a statement nobody publishes (an UPDATE straight
 *    on the geography database: what a control plane killed -9 between
 *    COMMIT and PUBLISH leaves behind); the trigger writes an outbox row;
 *  - polling router 1 from the commit on: it answers the new stamp within
 *    the relay's bound (asserted 3 s; the relay runs every second, the cache
 *    TTL is 60 s), and never the old stamp again afterwards;
 *  - the same through a real control plane: with STAMPCP_FAULT=
 *    exit_after_commit:device_move (test-only hook) router 0 kills itself
 *    (SIGKILL) right after committing a reprovision move, before publishing;
 *    router 1, which cached the old stamp, answers the new one within 3 s
 *    (its relay delivers router 0's outbox row) and never the old again;
 *  - the outbox is empty afterwards, in the geography and the global DB
 *    (a tenant change's row - the trigger on tenants - is relayed too).
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

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { "eu-north", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub" } } },
        { .id = "eu-north-1", .region = "eu-north", .dps = { { "eu-north-1-dps" } }, .hubs = { { "eu-north-1-hub" } } },
    },
};

static int group_setup(void **state)
{
    (void)state;
    /* inherited by the daemons; only router 0's move in the last test hits it */
    setenv("STAMPCP_FAULT", "exit_after_commit:device_move", 1);
    rt = ts_rt_start_fleet_acme(&layout, 2, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");
    return 0;
}

static const char *stamp_of_dev(struct ts_cp *cp, const char *regid)
{
    struct ts_resp *r = ts_rt_locate(cp, acme, regid);
    if (r->status != 200 || !ts_jstr(r->json, "stamp"))
        ts_fail("locate: %s", ts_resp_str(r));
    return ts_jstr(r->json, "stamp");
}

static const char *stamp_of(struct ts_cp *cp)
{
    return stamp_of_dev(cp, "dev-1");
}

/* Poll router 1 for 6 s: the first time it answers new_stamp (ms after t0,
 * at most 3000) and never old after that. */
static void expect_new_stamp(const char *regid, const char *old, const char *new_stamp, int64_t t0,
                             const char *what)
{
    int64_t seen_new = -1;
    while (ts_now_ms() - t0 < 6000) {
        const char *s = stamp_of_dev(rt->cp[1], regid);
        if (strcmp(s, new_stamp) == 0 && seen_new < 0)
            seen_new = ts_now_ms() - t0;
        if (seen_new >= 0 && strcmp(s, old) == 0)
            ts_fail("router 1 answered the old stamp %s again after the new one", old);
        ts_sleep_ms(50);
    }
    if (seen_new < 0 || seen_new > 3000)
        ts_fail("router 1 answered the old stamp for %lld ms after the commit (bound 3000)", (long long)seen_new);
    printf("# %s reached router 1's cache after %lld ms\n", what, (long long)seen_new);
}

static void test_unpublished_move_reaches_cache(void **state)
{
    const char *old, *new_stamp;
    int64_t t0;
    (void)state;
    old = ts_str("%s", stamp_of(rt->cp[0]));
    new_stamp = strcmp(old, "eu-west-1") == 0 ? "eu-north-1" : "eu-west-1";
    TS_EXPECT_STREQ(stamp_of(rt->cp[1]), old);   /* cached on router 1 now */
    TS_EXPECT_STREQ(stamp_of(rt->cp[1]), old);

    /* committed, never published */
    ts_pg_scalar(eu_db, ts_str("WITH u AS (UPDATE devices SET stamp_id = '%s', region_id = '%s', dps_id = '%s-dps',"
                               " id_scope = 'moved-by-sql', etag = etag + 1 WHERE registration_id = 'dev-1'"
                               " RETURNING 1) SELECT count(*) FROM u",
                               new_stamp, strcmp(new_stamp, "eu-west-1") == 0 ? "eu-west" : "eu-north",
                               new_stamp));
    t0 = ts_now_ms();
    expect_new_stamp("dev-1", old, new_stamp, t0, "an unpublished move");
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT count(*) FROM invalidation_outbox"), "0");
}

static void test_kill_between_commit_and_publish(void **state)
{
    const char *old, *new_stamp;
    struct ts_resp *r;
    int64_t t0;
    (void)state;
    old = ts_str("%s", stamp_of_dev(rt->cp[0], "dev-2"));
    new_stamp = strcmp(old, "eu-west-1") == 0 ? "eu-north-1" : "eu-west-1";
    TS_EXPECT_STREQ(stamp_of_dev(rt->cp[1], "dev-2"), old);   /* cached on router 1 */
    TS_EXPECT_STREQ(stamp_of_dev(rt->cp[1], "dev-2"), old);
    TS_EXPECT_STATUS(ts_admin(rt->cp[1], "PATCH", ts_str("/v1/stamps/%s", old), "{\"status\":\"draining\"}"), 200);
    ts_rt_wait_layout(rt);
    r = ts_rt_device(rt->cp[0], "reprovision", "acme", "dev-2", ts_rt_sas(acme, "dev-2", 0), NULL);
    t0 = ts_now_ms();
    ts_log("reprovision through router 0 (fault armed): %s", ts_resp_str(r));
    if (!ts_proc_wait(rt->cp[0]->proc, 5000) || ts_proc_term_signal(rt->cp[0]->proc) != 9)
        ts_fail("router 0 must die by SIGKILL after committing the move");
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT stamp_id FROM devices WHERE registration_id = 'dev-2'"), new_stamp);
    expect_new_stamp("dev-2", old, new_stamp, t0, "a move whose router was killed before publishing");
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT count(*) FROM invalidation_outbox"), "0");
}

static void test_tenant_outbox_relayed(void **state)
{
    int64_t t0 = ts_now_ms();
    (void)state;
    ts_pg_scalar(rt->cp[1]->global_db,
                 "WITH u AS (UPDATE tenants SET updated_at = now() WHERE id = 'acme' RETURNING 1) SELECT count(*) FROM u");
    while (strcmp(ts_pg_scalar(rt->cp[1]->global_db, "SELECT count(*) FROM invalidation_outbox"), "0") != 0) {
        if (ts_now_ms() - t0 > 3000)
            ts_fail("the global outbox was not drained within 3 s");
        ts_sleep_ms(50);
    }
    printf("# tenant outbox row relayed within %lld ms\n", (long long)(ts_now_ms() - t0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unpublished_move_reaches_cache),
        cmocka_unit_test(test_tenant_outbox_relayed),
        cmocka_unit_test(test_kill_between_commit_and_publish),
    };
    ts_init("test_inval_outbox");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
