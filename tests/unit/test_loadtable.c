/*
 * test_loadtable.c - stamp health from report age (healthy, stale, down),
 * ordering of reports (run id + seq, live before snapshot, never the agent's
 * clock: a report stamped an hour ahead does not hide later ones), a final
 * "down" report, and malformed reports.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "loadtable.h"

static json_t *report(const char *stamp, const char *health, long long ts, long long interval)
{
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:{s:[], s:[]}}", "stampId", stamp, "health", health,
                     "ts", ts, "intervalMs", interval, "seq", 1LL, "load", "dps", "hubs");
}

static bool apply(struct loadtable *lt, json_t *r, long long wall, long long mono)
{
    bool ok = loadtable_apply(lt, r, wall, mono);
    json_decref(r);
    return ok;
}

/* A report of agent run `run` (NULL: no runId) with sequence number seq. */
static json_t *report_run(const char *stamp, const char *health, long long ts, const char *run, long long seq)
{
    json_t *r = report(stamp, health, ts, 1000);
    json_object_set_new(r, "seq", json_integer(seq));
    if (run)
        json_object_set_new(r, "runId", json_string(run));
    return r;
}

static bool apply_src(struct loadtable *lt, json_t *r, enum load_source src, long long subscribed, long long wall,
                      long long mono)
{
    bool ok = loadtable_apply_from(lt, r, src, subscribed, wall, mono);
    json_decref(r);
    return ok;
}

static void test_health_by_age(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    (void)state;
    assert_int_equal(loadtable_health(lt, "s1", 1000), STAMP_DOWN);   /* never reported */
    assert_null(loadtable_get(lt, "s1"));
    assert_true(apply(lt, report("s1", "healthy", 50000, 1000), 50000, 100000));
    assert_int_equal(loadtable_health(lt, "s1", 100000), STAMP_HEALTHY);
    assert_int_equal(loadtable_health(lt, "s1", 102999), STAMP_HEALTHY);
    assert_int_equal(loadtable_health(lt, "s1", 103000), STAMP_STALE);
    assert_int_equal(loadtable_health(lt, "s1", 109999), STAMP_STALE);
    assert_int_equal(loadtable_health(lt, "s1", 110000), STAMP_DOWN);
    assert_non_null(loadtable_get(lt, "s1")->load);
    assert_string_equal(loadtable_health_word(STAMP_STALE), "stale");
    loadtable_free(lt);
}

static void test_snapshot_age_and_order(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    (void)state;
    /* A snapshot read 2.5 s after the report was written is already 2.5 s old. */
    assert_true(apply_src(lt, report_run("s1", "healthy", 47500, "r1", 5), LOAD_SNAPSHOT, 99000, 50000, 100000));
    assert_int_equal(loadtable_health(lt, "s1", 100400), STAMP_HEALTHY);
    assert_int_equal(loadtable_health(lt, "s1", 100500), STAMP_STALE);
    /* An older report of the same run arriving late does not roll the entry
     * back, live or snapshot, whatever its timestamp says. */
    assert_true(apply(lt, report_run("s1", "down", 90000, "r1", 4), 50000, 100600));
    assert_true(apply_src(lt, report_run("s1", "down", 90000, "r1", 3), LOAD_SNAPSHOT, 99000, 50000, 100600));
    assert_int_equal(loadtable_get(lt, "s1")->seq, 5);
    assert_int_equal(loadtable_get(lt, "s1")->report_wall_ms, 47500);
    assert_int_equal(loadtable_health(lt, "s1", 100600), STAMP_STALE);   /* not refreshed by them */
    /* A live report is current when it arrives, even if the agent's clock lags. */
    assert_true(apply(lt, report_run("s1", "healthy", 1000, "r1", 6), 50000, 100700));
    assert_int_equal(loadtable_health(lt, "s1", 100700), STAMP_HEALTHY);
    assert_int_equal(loadtable_health(lt, "s1", 103699), STAMP_HEALTHY);
    /* A snapshot of another run read after that live report (it may predate
     * it) is ignored; the same after a new subscription is taken. */
    assert_true(apply_src(lt, report_run("s1", "down", 99999, "r0", 900), LOAD_SNAPSHOT, 100650, 50000, 100800));
    assert_int_equal(loadtable_get(lt, "s1")->seq, 6);
    assert_true(apply_src(lt, report_run("s1", "healthy", 50000, "r2", 2), LOAD_SNAPSHOT, 100750, 50000, 100800));
    assert_string_equal(loadtable_get(lt, "s1")->run_id, "r2");
    assert_int_equal(loadtable_get(lt, "s1")->seq, 2);
    /* A newer final report says down at once. */
    assert_true(apply(lt, report_run("s1", "down", 48000, "r2", 3), 48000, 100900));
    assert_int_equal(loadtable_health(lt, "s1", 100900), STAMP_DOWN);
    /* and the first report after a restart (new run, seq 1) brings it back */
    assert_true(apply(lt, report_run("s1", "healthy", 40000, "r3", 1), 49000, 101000));
    assert_int_equal(loadtable_health(lt, "s1", 101000), STAMP_HEALTHY);
    assert_int_equal(loadtable_get(lt, "s1")->seq, 1);
    loadtable_free(lt);
}

/* Issue #9: a report whose timestamp is an hour ahead must not blind the
 * table to the agent's later reports (it used to: "ts < held ts" ignored
 * every report for an hour and the stamp went down). */
static void test_future_timestamp(void **state)
{
    const long long wall = 1795740000000LL, hour = 3600000LL;
    const char *runs[] = { "a1b2c3d4e5f60718", NULL };
    (void)state;
    for (int i = 0; i < 2; i++) {
        struct loadtable *lt = loadtable_new(3, 10);
        long long mono = 500000;
        const char *run = runs[i];
        assert_true(apply(lt, report_run("s1", "healthy", wall + hour, run, 1), wall, mono));
        assert_int_equal(loadtable_health(lt, "s1", mono), STAMP_HEALTHY);
        assert_int_equal(loadtable_get(lt, "s1")->report_wall_ms, wall + hour);
        /* 30 normal reports, one a second: each is taken, the stamp stays healthy. */
        for (int k = 2; k <= 31; k++) {
            mono += 1000;
            assert_true(apply(lt, report_run("s1", "healthy", wall + (k - 1) * 1000, run, k), wall + (k - 1) * 1000,
                              mono));
            assert_int_equal(loadtable_get(lt, "s1")->seq, k);
            assert_int_equal(loadtable_get(lt, "s1")->report_wall_ms, wall + (k - 1) * 1000);
            assert_int_equal(loadtable_health(lt, "s1", mono + 999), STAMP_HEALTHY);
        }
        /* Its final report is taken too, and a snapshot stamped in the future
         * is not younger than "now". */
        assert_true(apply(lt, report_run("s1", "down", wall + 31000, run, 32), wall + 31000, mono + 1000));
        assert_int_equal(loadtable_health(lt, "s1", mono + 1000), STAMP_DOWN);
        assert_true(apply_src(lt, report_run("s2", "healthy", wall + hour, run, 7), LOAD_SNAPSHOT, 1, wall, mono));
        assert_int_equal(loadtable_get(lt, "s2")->seen_mono_ms, mono);
        assert_int_equal(loadtable_health(lt, "s2", mono + 3000), STAMP_STALE);
        loadtable_free(lt);
    }
}

static void test_malformed(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    json_t *r;
    (void)state;
    assert_false(loadtable_apply(lt, NULL, 0, 0));
    r = json_pack("{s:s}", "stampId", "s1");
    assert_false(apply(lt, r, 0, 0));
    r = report("Bad Id", "healthy", 1, 1000);
    assert_false(apply(lt, r, 0, 0));
    r = report("s1", "healthy", 1, 0);   /* interval 0 */
    assert_false(apply(lt, r, 0, 0));
    r = json_pack("{s:s, s:s, s:s, s:I}", "stampId", "s1", "health", "healthy", "ts", "soon", "intervalMs", 1000LL);
    assert_false(apply(lt, r, 0, 0));
    r = report_run("s1", "healthy", 1, "Not An Id", 1);
    assert_false(apply(lt, r, 0, 0));
    assert_null(loadtable_get(lt, "s1"));
    loadtable_free(lt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_by_age),
        cmocka_unit_test(test_snapshot_age_and_order),
        cmocka_unit_test(test_future_timestamp),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
