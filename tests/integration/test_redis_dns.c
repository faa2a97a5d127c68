/*
 * test_redis_dns - a slow resolver does not stall the event loop (issue 14,
 * finding 4). Both daemons name their Redis by host name, resolved through a
 * DNS server on loopback that this test starts (tests/support/slowdns.py,
 * "dns.resolvConf") and that answers only after 5 s. While Redis is
 * restarted and both daemons reconnect (each reconnect resolving the name
 * again, 5 s each), sequential /healthz requests keep a p99 under 50 ms; the
 * daemons do reconnect through the slow server (its log shows the queries,
 * the logs an outage that ended), and reports flow again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"

#define DNS_DELAY_MS 5000
#define REDIS_NAME "redis.stampcp.test"
#define HEALTHZ_P99_MS 50

static struct ts_redis *redis;
static struct ts_cp *cp;
static struct ts_proc *agent, *dns;
static const char *dns_log;

/* Start the slow DNS server and write a resolv.conf that points at it only. */
static const char *slow_resolver(void)
{
    int port = ts_free_port();
    const char *conf = ts_str("%s/resolv-slow.conf", ts_tmp());
    const char *script = ts_str("%s/tests/support/slowdns.py", ts_env("STAMPCP_SOURCE_DIR"));
    char *argv[] = {"/usr/bin/python3", (char *)script, "--port", (char *)ts_str("%d", port), "--delay-ms",
                    (char *)ts_str("%d", DNS_DELAY_MS), REDIS_NAME "=127.0.0.1", NULL};
    dns_log = ts_str("%s/slowdns.log", ts_tmp());
    dns = ts_proc_spawn("slowdns", argv, dns_log, NULL);
    for (int i = 0; i < 50; i++) {
        char *log = ts_read_file(dns_log, NULL);
        if (log && strstr(log, "listening"))
            break;
        ts_sleep_ms(100);
    }
    /* One attempt with a timeout beyond the delay: the answer is slow, not lost. */
    ts_write_file(conf, ts_str("nameserver 127.0.0.1:%d\noptions timeout:10 attempts:1\n", port));
    return conf;
}

/* Queries for our name's A record the server has seen so far. */
static int dns_queries(void)
{
    char *log = ts_read_file(dns_log, NULL);
    int n = 0;
    for (char *p = log; p && (p = strstr(p, " query 1 " REDIS_NAME)); p++)
        n++;
    return n;
}

static int group_setup(void **state)
{
    const char *conf = slow_resolver();
    const char *by_name;
    struct ts_cp_opts o = {.geo_ids = {"eu", NULL}, .plain_http = true, .resolv_conf = conf};
    (void)state;
    redis = ts_redis_start("dns");
    by_name = ts_str(REDIS_NAME ":%d", redis->port);
    o.redis = by_name;
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 30000))
        return -1;
    ts_admin_post_stamp(cp, "eu", "eu-west", "eu-west-1");
    {
        struct ts_agent_opts a = {
            .stamp_id = "eu-west-1", .region = "eu-west", .redis = by_name, .resolv_conf = conf, .interval_ms = 200,
            .dps = {"eu-west-1-dps", NULL}, .hubs = {"eu-west-1-hub1", NULL},
        };
        agent = ts_agent_start(&a);
    }
    return 0;
}

static int64_t last_report(void)
{
    struct ts_resp *r = ts_admin(cp, "GET", "/v1/stamps/eu-west-1", NULL);
    const char *s = r->status == 200 ? ts_jstr(r->json, "lastReportAt") : NULL;
    return s ? ts_parse_rfc3339(s) : 0;
}

static bool reporting(void *arg)
{
    int64_t after = *(int64_t *)arg;
    return last_report() > after;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sequential /healthz for ms milliseconds; latencies appended to lat. */
static void sample_healthz(int64_t *lat, int *n, int cap, int ms)
{
    int64_t end = ts_now_ms() + ms;
    while (ts_now_ms() < end && *n < cap) {
        int64_t t0 = ts_now_ms();
        struct ts_resp *r = ts_http(cp->port, "GET", "/healthz", NULL, NULL, 0);
        if (r->status != 200)
            ts_fail("/healthz answered %d during the reconnect", r->status);
        lat[(*n)++] = ts_now_ms() - t0;
        ts_resp_free(r);
        ts_sleep_ms(5);
    }
}

static bool reconnected(void *arg)
{
    (void)arg;
    return ts_proc_log_contains(cp->proc, "event=redis_connected conn=cmd") &&
           ts_proc_log_contains(cp->proc, "outage_ms=") && ts_proc_log_contains(agent, "outage_ms=");
}

static void test_slow_resolver_reconnect(void **state)
{
    static int64_t lat[20000];
    int n = 0, q0;
    int64_t t_back, before, p50, p99, max;
    (void)state;

    before = ts_now_ms() - 60000;
    if (!ts_wait_until(reporting, &before, 15000))
        ts_fail("no report reached the control plane (agent resolving through the slow DNS)");
    if (dns_queries() < 2)
        ts_fail("the daemons did not ask the test's DNS server (%d queries)", dns_queries());

    q0 = dns_queries();
    ts_redis_stop(redis);
    sample_healthz(lat, &n, 20000, 3000);          /* both daemons retrying, each retry resolving for 5 s */
    ts_redis_restart(redis);
    t_back = ts_now_ms();
    before = ts_now_ms();
    while (!reconnected(NULL) || !reporting(&before)) {
        if (ts_now_ms() - t_back > 30000)
            ts_fail("the daemons did not reconnect 30 s after Redis came back");
        sample_healthz(lat, &n, 20000, 500);
    }
    ts_log("reconnected and reporting %lld ms after Redis came back; %d DNS queries meanwhile",
           (long long)(ts_now_ms() - t_back), dns_queries() - q0);
    sample_healthz(lat, &n, 20000, 1000);
    if (dns_queries() - q0 < 2)
        ts_fail("the reconnects did not resolve through the slow DNS server (%d queries)", dns_queries() - q0);

    qsort(lat, (size_t)n, sizeof lat[0], cmp_i64);
    p50 = lat[n / 2];
    p99 = lat[(n * 99) / 100];
    max = lat[n - 1];
    ts_log("/healthz through the reconnect: n=%d p50=%lld ms p99=%lld ms max=%lld ms", n, (long long)p50,
           (long long)p99, (long long)max);
    if (n < 200)
        ts_fail("only %d /healthz samples", n);
    if (p99 >= HEALTHZ_P99_MS)
        ts_fail("/healthz p99 %lld ms >= %d ms while resolving slowly: the loop is blocked", (long long)p99,
                HEALTHZ_P99_MS);
    assert_true(ts_proc_alive(cp->proc));
    assert_true(ts_proc_alive(agent));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_resolver_reconnect),
    };
    ts_init("test_redis_dns");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
