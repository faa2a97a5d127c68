/*
 * test_inval_cut - a router cut off from Redis never answers a device's old
 * stamp after a move (issue 14, finding 8). Two control planes share the
 * databases; router A (cp[0]) reaches Redis directly, router B (cp[1]) only
 * through a TCP proxy (ts_tcpproxy). B has dev-1's stamp in its cache
 * (asserted: a repeated locate is a cache hit), then:
 *
 *  - CUT (every connection closed, new ones refused): the device is moved
 *    through A; B, polled during the cut and after the restore, answers the
 *    new stamp or 503 with Retry-After, never the old one. After the restore
 *    B resubscribes (its log: event=subscribed, measured) and serves dev-1
 *    from its cache again (a new cache hit);
 *  - STALL (connections stay open, nothing relayed: a silent partition; B's
 *    sockets look alive): the move is committed through A right after the
 *    stall begins. B may answer from its cache only while its subscription
 *    was proven alive within cacheTrustMs (default 1000 ms, docs/
 *    architecture.md "Invalidation"): no request sent later than
 *    stall + 1000 ms (+200 ms for the edges of our own clock readings; B
 *    checks on arrival, so load can't stretch it) gets the old stamp, and
 *    none after it answered the new one. B logs the lapse
 *    (event=invalidations_unproven); after the restore it resubscribes and
 *    serves from its cache again, as above.
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

#define TRUST_MS 1000        /* cacheTrustMs's default: the bound asserted */
#define EDGE_MS 200          /* our clock readings around the mode switch */
#define RESUB_BOUND_MS 10000 /* restore -> resubscribed (backoff 5 s + handshake 2 s + load) */

static struct ts_rt *rt;
static struct ts_tenant *acme;
static struct ts_cp *A, *B;
static struct ts_tcpproxy *proxy;

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
    struct ts_rt_opts o = { .ncp = 2, .geos = { "eu", NULL }, .redis_proxied = { false, true } };
    (void)state;
    setenv("TS_CP_LOG", "debug", 1);   /* B's cache hits are logged (event=cache_hit) */
    rt = ts_rt_start(&o);
    unsetenv("TS_CP_LOG");
    A = rt->cp[0];
    B = rt->cp[1];
    proxy = rt->redis_proxy[1];
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    acme = ts_rt_tenant(A, "{\"id\":\"acme\",\"name\":\"Acme\",\"residency\":{\"geographies\":[\"eu\"]}}");
    return 0;
}

static const char *other(const char *stamp)
{
    return strcmp(stamp, "eu-west-1") == 0 ? "eu-north-1" : "eu-west-1";
}

static const char *stamp_on(struct ts_cp *cp)
{
    struct ts_resp *r = ts_rt_locate(cp, acme, "dev-1");
    if (r->status != 200 || !ts_jstr(r->json, "stamp"))
        ts_fail("locate on %s: %s", cp->name, ts_resp_str(r));
    return ts_jstr(r->json, "stamp");
}

static int cache_hits(void)
{
    return ts_proc_log_count(B->proc, "event=cache_hit");
}

/* B answers dev-1 with `stamp`, and then from its cache (a few tries: a
 * heartbeat answered late on a loaded machine bypasses the cache a moment). */
static void expect_cached_on_b(const char *stamp)
{
    int hits;
    TS_EXPECT_STREQ(stamp_on(B), stamp);
    hits = cache_hits();
    for (int i = 0; i < 20; i++) {
        TS_EXPECT_STREQ(stamp_on(B), stamp);
        if (cache_hits() > hits)
            return;
        ts_sleep_ms(100);
    }
    ts_fail("router B did not answer dev-1 from its cache in 20 tries (%d cache hits before, %d after)", hits,
            cache_hits());
}

static void set_status(const char *stamp, const char *status)
{
    TS_EXPECT_STATUS(ts_admin(A, "PATCH", ts_str("/v1/stamps/%s", stamp), ts_json("{'status':'%s'}", status)),
                     200);
}

/* Through A: off `from` (draining already) onto the other stamp. */
static void move_through_a(const char *from)
{
    struct ts_resp *r = ts_rt_device(A, "reprovision", "acme", "dev-1", ts_rt_sas(acme, "dev-1", 0), NULL);
    if (r->status != 200 || !json_is_true(json_object_get(r->json, "moved")) ||
        strcmp(ts_jstr(r->json, "stamp") ? ts_jstr(r->json, "stamp") : "", other(from)) != 0)
        ts_fail("reprovision through router A must move dev-1 off %s: %s", from, ts_resp_str(r));
}

struct poll_stats {
    int fresh, unavailable;
    int64_t last_old_sent;   /* ms after t0 of the last request answered with the old stamp; -1: none */
    int64_t first_new;       /* ms after t0 of the first answer with the new stamp; -1: none */
};

/*
 * Locate dev-1 on B every 50 ms until `until` (ms after t0). Allowed: the new
 * stamp, or 503 with Retry-After; the old stamp only for a request sent
 * before old_ok_until (ms after t0) and never after the new one was seen.
 */
static void poll_b(const char *old, const char *new_stamp, int64_t t0, int64_t until, int64_t old_ok_until,
                   struct poll_stats *st)
{
    while (ts_now_ms() - t0 < until) {
        int64_t sent = ts_now_ms() - t0;
        struct ts_resp *r = ts_rt_locate(B, acme, "dev-1");
        const char *s = r->status == 200 ? ts_jstr(r->json, "stamp") : NULL;
        if (r->status == 503) {
            if (!ts_header(r, "Retry-After"))
                ts_fail("503 without Retry-After: %s", ts_resp_str(r));
            st->unavailable++;
        } else if (s && strcmp(s, new_stamp) == 0) {
            if (st->first_new < 0)
                st->first_new = ts_now_ms() - t0;
            st->fresh++;
        } else if (s && strcmp(s, old) == 0) {
            if (sent >= old_ok_until || st->first_new >= 0)
                ts_fail("router B answered the old stamp %s for a request sent %lld ms after the %s "
                        "(allowed: before %lld ms, and never after the new stamp)",
                        old, (long long)sent, old_ok_until > 0 ? "stall" : "cut", (long long)old_ok_until);
            st->last_old_sent = sent;
        } else {
            ts_fail("unexpected answer from router B: %s", ts_resp_str(r));
        }
        ts_resp_free(r);
        ts_sleep_ms(50);
    }
}

/* Restore the proxy; returns how long B took to resubscribe to cp:invalidate. */
static int64_t restore_and_wait_resubscribed(void)
{
    int before = ts_proc_log_count(B->proc, "event=subscribed channel=cp:invalidate");
    int64_t t = ts_now_ms();
    ts_tcpproxy_set_mode(proxy, TS_PROXY_PASS);
    while (ts_proc_log_count(B->proc, "event=subscribed channel=cp:invalidate") <= before) {
        if (ts_now_ms() - t > RESUB_BOUND_MS)
            ts_fail("router B did not resubscribe within %d ms of the restore", RESUB_BOUND_MS);
        ts_sleep_ms(20);
    }
    return ts_now_ms() - t;
}

static void test_cut(void **state)
{
    struct poll_stats st = { .last_old_sent = -1, .first_new = -1 };
    const char *old, *new_stamp;
    int64_t t0, resub;
    (void)state;
    old = ts_str("%s", stamp_on(A));
    new_stamp = other(old);
    expect_cached_on_b(old);

    t0 = ts_now_ms();
    ts_tcpproxy_set_mode(proxy, TS_PROXY_CUT);
    if (ts_tcpproxy_live(proxy) != 0)
        ts_fail("CUT left %d connections open", ts_tcpproxy_live(proxy));
    set_status(old, "draining");
    ts_rt_wait_layout(rt);
    move_through_a(old);
    ts_log("dev-1 moved %s -> %s through A, %lld ms into the cut", old, new_stamp, (long long)(ts_now_ms() - t0));
    poll_b(old, new_stamp, t0, ts_now_ms() - t0 + 2000, 0, &st);
    resub = restore_and_wait_resubscribed();
    poll_b(old, new_stamp, t0, ts_now_ms() - t0 + 500, 0, &st);
    expect_cached_on_b(new_stamp);
    if (st.fresh == 0)
        ts_fail("router B never answered the new stamp");
    printf("# cut: %d new-stamp answers, %d 503, 0 old; resubscribed %lld ms after the restore\n", st.fresh,
           st.unavailable, (long long)resub);
}

static void test_stall(void **state)
{
    struct poll_stats st = { .last_old_sent = -1, .first_new = -1 };
    const char *old, *new_stamp;
    int64_t t0, moved_at, resub;
    int lapses = ts_proc_log_count(B->proc, "event=invalidations_unproven");
    long accepted;
    (void)state;
    old = ts_str("%s", stamp_on(A));
    new_stamp = other(old);
    /* the move's preconditions first: draining doesn't touch dev-1's answer */
    set_status(new_stamp, "active");
    set_status(old, "draining");
    ts_rt_wait_layout(rt);
    expect_cached_on_b(old);

    t0 = ts_now_ms();
    ts_tcpproxy_set_mode(proxy, TS_PROXY_STALL);
    accepted = ts_tcpproxy_accepted(proxy);
    move_through_a(old);
    moved_at = ts_now_ms() - t0;
    ts_log("dev-1 moved %s -> %s through A, %lld ms into the stall", old, new_stamp, (long long)moved_at);
    poll_b(old, new_stamp, t0, 5000, TRUST_MS + EDGE_MS, &st);
    if (ts_tcpproxy_accepted(proxy) == accepted)
        ts_fail("router B never tried to reconnect during the stall");
    if (ts_proc_log_count(B->proc, "event=invalidations_unproven") <= lapses)
        ts_fail("router B did not log the lapse of its subscription's proof (event=invalidations_unproven)");
    resub = restore_and_wait_resubscribed();
    poll_b(old, new_stamp, t0, ts_now_ms() - t0 + 500, 0, &st);
    expect_cached_on_b(new_stamp);
    if (st.first_new < 0)
        ts_fail("router B never answered the new stamp");
    printf("# stall: move committed %lld ms in; old stamp last answered to a request sent %lld ms in "
           "(bound %d); new stamp first at %lld ms; %d new, %d 503; resubscribed %lld ms after the restore\n",
           (long long)moved_at, (long long)st.last_old_sent, TRUST_MS, (long long)st.first_new, st.fresh,
           st.unavailable, (long long)resub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cut),
        cmocka_unit_test(test_stall),
    };
    ts_init("test_inval_cut");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
