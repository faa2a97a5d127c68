/*
 * test_overload - issue 14, finding 9: at 10x capacity with a 2 s client
 * timeout, memory stays bounded, goodput is at least 80 % of capacity and
 * /readyz stays 200.
 *
 * What "capacity" is here. The machine has two cores shared by the router,
 * PostgreSQL, Redis and the load generator, so the test cannot offer ten
 * times the router's raw throughput (docs/performance.md: thousands of first
 * placements a second on a quiet machine). Capacity is therefore a limit the
 * system enforces and that costs the router little to refuse: the one DPS
 * instance's registrationsPerMinute (RATE_PER_MIN, a token bucket in Redis
 * refilled at RATE_PER_MIN / 60 per second; docs/architecture.md "Rate").
 * A request beyond it costs a lookup (batched) and one Redis EVAL, then 429.
 * The bucket starts with a whole minute's allowance; the test empties it
 * (tokens 0, on Redis's clock) before each phase, so that both phases measure
 * the refill rate, not the burst.
 *
 * Phases (one control plane with its defaults - http.maxInFlight 1024,
 * db.poolSize 4 - over plain HTTP, one geography, one stamp, one DPS):
 *  1. capacity: open loop at 1.5x the configured rate for CAL_MS, distinct
 *     first-time locates, 2 s client timeout. Capacity = 200s answered within
 *     2 s per second, from the first request's due time to the last 200 (the
 *     bucket refills until then; goodput is counted the same way). (Open loop slightly above the limit rather than a closed
 *     loop: clients that resend as soon as a 429 arrives - in a millisecond -
 *     would offer whatever they can spin, not 1x. Measured, not assumed: if
 *     the router could not keep up with the limit on this machine, capacity is
 *     what it does keep up with.)
 *  2. overload: open loop at 10x the measured capacity for OVER_MS, again
 *     distinct first-time locates with a 2 s client timeout (a request not
 *     answered within 2 s is closed by the client and counts as lost, whatever
 *     the router did with it later), while /readyz is probed every 100 ms
 *     (2 s timeout) and the router's VmRSS is sampled with it.
 * Asserted:
 *  - goodput (200s within 2 s per second of the overload phase) >= 80 % of
 *    the measured capacity;
 *  - every /readyz probe answered 200 within its 2 s ("ready" or "degraded":
 *    both are 200 by docs/api.md, Probes; the words seen are logged);
 *  - the router's VmRSS never exceeds its value just before the phase by more
 *    than a bound set by the connections in use (RSS_BASE_MB, RSS_PER_CONN_KB;
 *    not under ASan, whose quarantine keeps freed memory);
 *  - every device answered 200 is assigned in the geography's database;
 *  - every other answer is 429 throttled or 503 (overloaded,
 *    database_unavailable, deadline_exceeded), with the JSON error contract
 *    and an integer Retry-After >= 1, not all the same (jitter); no other
 *    status and no transport failure.
 * Logged: the phase numbers, devices placed whose answer came too late (a
 * token spent for nothing), latency, the generator's lag behind its schedule.
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
#include "ts_load.h"

/*
 * The DPS's limit: 150 first placements a second, so 10x is ~1,500 requests a
 * second. Why not more: the router spends ~190 us of CPU per request of this
 * mix (the test logs its CPU), and on two cores shared with PostgreSQL, Redis,
 * the generator and whatever else runs on the machine it may get as little as
 * ~0.3 of a core (load average 10: 3.5 s of CPU in the 13 s phase). 1,500/s
 * fits in that; 3,000/s (a 300/s limit) does not, and then the phase measures
 * a router starved of CPU (there, at c4b6bff, goodput fell to 12-92 % of
 * capacity: most tokens went to requests answered after the client's 2 s;
 * docs/performance.md, "Overload"). For the same reason ctest runs it alone
 * (RUN_SERIAL). ASan daemons need ~4.5x the CPU per request (860 us), hence
 * 40/s there; only the ratio is asserted.
 */
#ifndef RATE_PER_MIN
#if defined(__SANITIZE_ADDRESS__)
#define RATE_PER_MIN 2400
#else
#define RATE_PER_MIN 9000
#endif
#endif
#define CAL_FACTOR 1.5
#define CAL_MS 4000
#define OVER_FACTOR 10.0
#define OVER_MS 12000
#define CLIENT_TIMEOUT_MS 2000
#define GOODPUT_MIN 0.80
/* Router memory growth allowed during the overload phase: RSS_BASE_MB plus
 * RSS_PER_CONN_KB for each connection the generator held open at once. What
 * the router holds for load is bounded by its caps, not by the offered rate
 * or by time: at most http.maxInFlight (1024) requests in progress and one
 * evhttp connection (buffers, request, headers) per client connection, each
 * a few kB (measured here: +3 MB with ~250 connections, +28 MB with 2,048
 * connections and 1,024 requests in flight at 10,000 requests/s). Memory
 * that grew per request (a leak, an unbounded queue) would pass the bound
 * within seconds: the phase sends tens of thousands. */
#define RSS_BASE_MB 8
#define RSS_PER_CONN_KB 16
#define MAX_CONNS 2048

#define DPS_ID "eu-west-1-dps"

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = {"eu", NULL},
    .regions = {{"eu-west", "eu"}},
    .stamps = {
        {.id = "eu-west-1", .region = "eu-west", .dps = {{DPS_ID, 0, RATE_PER_MIN}},
         .hubs = {{"eu-west-1-hub"}}},
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = {.ncp = 1, .geos = {"eu", NULL}, .plain_http = true};
    (void)state;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    eu_db = ts_rt_geo_db(rt, "eu");
    acme = ts_rt_tenant(rt->cp[0], "{\"id\":\"acme\",\"name\":\"Acme\",\"residency\":{\"geographies\":[\"eu\"]}}");
    return 0;
}

/* Empty the DPS's bucket now (Redis's clock): it refills from zero. */
static void drain_bucket(void)
{
    static const char lua[] =
        "local t = redis.call('TIME') "
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
        "redis.call('HSET', KEYS[1], 'tokens', '0', 'ts', tostring(now)) return now";
    const char *r = ts_redis_cmd(rt->redis->addr, "EVAL %s 1 %s", lua, "dps:" DPS_ID ":bucket");
    if (!r || strtoll(r, NULL, 10) <= 0)
        ts_fail("could not empty the bucket: %s", r ? r : "(no reply)");
}

/* n distinct first-time locates "ovl-<phase>-NNNNN", each with its own SAS. */
static struct ts_load_item *make_items(char phase, int n)
{
    struct ts_load_item *it = ts_keep(calloc((size_t)n, sizeof *it));
    for (int i = 0; i < n; i++) {
        const char *id = ts_str("ovl-%c-%05d", phase, i);
        it[i].path = ts_str("/v1/tenants/%s/registrations/%s/locate", acme->id, id);
        it[i].authz = ts_rt_sas(acme, id, 0);
    }
    return it;
}

struct phase {
    const char *name;
    char tag;                      /* registration ids ovl-<tag>-NNNNN */
    double rate;
    int ms;
    struct ts_load_rec *recs;
    struct ts_load_summary s;
    int64_t router_cpu_ms;         /* CPU time the router used while the phase ran */
    char loadavg[32];              /* /proc/loadavg when the phase started (context for the numbers) */
    int n200;                      /* 200 within the client timeout */
    int64_t window_ms;             /* first due time to the last 200 (at least ms): the bucket refilled all along */
    int n429, n503;
    int ra_min, ra_max;            /* Retry-After values of the refusals */
    int placed_late;               /* assigned in the database without a 200 in time */
    int lat[3][2];                 /* p50, p99 latency (ms) of the 200s, 429s, 503s; -1: none */
};

static void run_phase(struct phase *p, struct ts_watch **watch)
{
    int n = (int)(p->rate * p->ms / 1000.0) + 1;
    struct ts_load_opts o = {.port = rt->cp[0]->port, .items = make_items(p->tag, n), .nitems = n, .rate = p->rate,
                             .duration_ms = p->ms, .timeout_ms = CLIENT_TIMEOUT_MS, .max_conns = MAX_CONNS};
    struct ts_load *l;

    pid_t pid = rt->cp[0]->proc->pid;
    const char *la = ts_read_file("/proc/loadavg", NULL);
    int64_t cpu0;

    snprintf(p->loadavg, sizeof p->loadavg, "%.14s", la ? la : "?");
    p->recs = ts_keep(calloc((size_t)n, sizeof *p->recs));
    cpu0 = ts_proc_cpu_ms(pid);
    drain_bucket();
    l = ts_load_start(&o, p->recs);
    if (watch) {
        struct ts_watch_opts w = {.port = rt->cp[0]->port, .path = "/readyz", .interval_ms = 100,
                                  .timeout_ms = CLIENT_TIMEOUT_MS, .pid = rt->cp[0]->proc->pid};
        *watch = ts_watch_start(&w);
    }
    ts_load_wait(l, &p->s);
    p->router_cpu_ms = ts_proc_cpu_ms(pid) - cpu0;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

/* What is wrong with an answer (library-owned), NULL when it is a 200 with
 * the device's assignment or a refusal that keeps the error contract and
 * says when to come back. */
static const char *answer_problem(const struct phase *p, int i, const struct ts_load_rec *r)
{
    json_t *j = json_loads(r->body, 0, NULL), *err = json_object_get(j, "error");
    const char *code = ts_jstr(err, "code"), *problem = NULL;
    char want[32], *end;
    long ra;

    snprintf(want, sizeof want, "ovl-%c-%05d", p->tag, i);
    if (r->status == 200) {
        if (!ts_jstr(j, "registrationId") || strcmp(ts_jstr(j, "registrationId"), want) != 0 ||
            !ts_jstr(j, "stamp") || strcmp(ts_jstr(j, "stamp"), "eu-west-1") != 0)
            problem = "200 without the device's assignment";
    } else if (!code || !ts_jstr(err, "message")) {
        problem = "no JSON error contract";
    } else if (!(r->status == 429 && strcmp(code, "throttled") == 0) &&
               !(r->status == 503 && (strcmp(code, "overloaded") == 0 || strcmp(code, "database_unavailable") == 0 ||
                                      strcmp(code, "deadline_exceeded") == 0))) {
        problem = "an unexpected answer";
    } else if (ra = strtol(r->retry_after, &end, 10), !r->retry_after[0] || *end || ra < 1) {
        problem = "no integer Retry-After >= 1";
    }
    json_decref(j);
    return problem ? ts_str("%s request %d (%s): %s: %d, Retry-After \"%s\", %s", p->name, i, want, problem,
                            r->status, r->retry_after, r->body)
                   : NULL;
}

/* Every answer checked (answer_problem); counts and latencies. */
static void check_answers(struct phase *p)
{
    int *lat[3], nlat[3] = {0, 0, 0};

    p->window_ms = p->ms;

    for (int k = 0; k < 3; k++)
        lat[k] = ts_keep(calloc((size_t)p->s.due + 1, sizeof *lat[k]));
    for (int i = 0; i < p->s.due; i++) {
        const struct ts_load_rec *r = &p->recs[i];
        const char *problem;
        if (r->outcome == TS_LOAD_FAILED)
            ts_fail("%s request %d: transport failure: %s", p->name, i, r->body);
        if (r->outcome != TS_LOAD_ANSWERED)
            continue;
        if ((problem = answer_problem(p, i, r)) != NULL)
            ts_fail("%s", problem);
        {
            int k = r->status == 200 ? 0 : r->status == 429 ? 1 : 2;
            lat[k][nlat[k]++] = r->latency_ms;
        }
        if (r->status == 200) {
            p->n200++;
            if (r->due_ms + r->latency_ms - p->s.t0_ms > p->window_ms)
                p->window_ms = r->due_ms + r->latency_ms - p->s.t0_ms;
            continue;
        }
        if (r->status == 429)
            p->n429++;
        else
            p->n503++;
        if (p->n429 + p->n503 == 1 || atoi(r->retry_after) < p->ra_min)
            p->ra_min = atoi(r->retry_after);
        if (atoi(r->retry_after) > p->ra_max)
            p->ra_max = atoi(r->retry_after);
    }
    /* jittered everywhere (docs/api.md): thousands of refusals never share one value */
    if (p->n429 + p->n503 >= 100 && p->ra_min == p->ra_max)
        ts_fail("%s: all %d refusals say Retry-After %d: no jitter", p->name, p->n429 + p->n503, p->ra_min);
    for (int k = 0; k < 3; k++) {
        qsort(lat[k], (size_t)nlat[k], sizeof *lat[k], cmp_int);
        p->lat[k][0] = nlat[k] ? lat[k][nlat[k] / 2] : -1;
        p->lat[k][1] = nlat[k] ? lat[k][(nlat[k] * 99) / 100] : -1;
    }
}

/* Every 200 is in the database; devices placed there without a timely 200
 * are counted (their token was spent for a client that had given up). */
static void check_database(struct phase *p)
{
    PGresult *res = ts_pg_query(eu_db, ts_str("SELECT registration_id FROM devices WHERE tenant_id = 'acme' AND "
                                              "status = 'assigned' AND registration_id LIKE 'ovl-%c-%%'",
                                              p->tag));
    bool *placed = ts_keep(calloc((size_t)p->s.due + 1, sizeof *placed));
    const char *missing = NULL;

    for (int k = 0; k < PQntuples(res); k++) {
        int i = atoi(PQgetvalue(res, k, 0) + 6);
        if (i >= 0 && i < p->s.due)
            placed[i] = true;
    }
    PQclear(res);
    for (int i = 0; i < p->s.due; i++) {
        bool ok = p->recs[i].outcome == TS_LOAD_ANSWERED && p->recs[i].status == 200;
        if (ok && !placed[i] && !missing)
            missing = ts_str("ovl-%c-%05d", p->tag, i);
        if (!ok && placed[i])
            p->placed_late++;
    }
    if (missing)
        ts_fail("%s: device %s was answered 200 but is not assigned in the database", p->name, missing);
}

/* 200s within the client timeout per second, from the first due time to the
 * last of them: the bucket refilled for all of that, also after the last
 * request was due (both phases alike). */
static double phase_rate(const struct phase *p)
{
    return p->n200 / (p->window_ms / 1000.0);
}

static void log_phase(const struct phase *p)
{
    ts_log("%s: %d due at %.0f/s over %.1f s: %d x 200 within %d ms (%.1f/s over %.2f s), %d x 429, %d x 503 "
           "(Retry-After %d..%d), %d timeouts, %d not sent (no free connection); placed without a timely 200: %d",
           p->name, p->s.due, p->rate, p->ms / 1000.0, p->n200, CLIENT_TIMEOUT_MS, phase_rate(p),
           p->window_ms / 1000.0, p->n429, p->n503, p->ra_min,
           p->ra_max, p->s.timeouts, p->s.no_conn, p->placed_late);
    ts_log("%s: latency p50/p99 ms: 200 %d/%d, 429 %d/%d, 503 %d/%d; connections %d opened, %d at once; generator "
           "lag at most %lld ms; last answer %lld ms after the last request was due",
           p->name, p->lat[0][0], p->lat[0][1], p->lat[1][0], p->lat[1][1], p->lat[2][0], p->lat[2][1],
           p->s.conns_opened, p->s.conns_peak, (long long)p->s.max_lag_ms,
           (long long)(p->s.end_ms - (p->s.t0_ms + p->ms)));
    ts_log("%s: CPU: router %lld ms, generator %lld ms over %lld ms (load average at the start %s)", p->name,
           (long long)p->router_cpu_ms, (long long)p->s.cpu_ms, (long long)(p->s.end_ms - p->s.t0_ms), p->loadavg);
}

/* /readyz stayed 200 throughout; the router's memory stayed within bounds. */
static void check_watch(const struct ts_watch_sample *v, int n, long rss0_kb, int conns_peak)
{
    long bound_kb = RSS_BASE_MB * 1024L + (long)RSS_PER_CONN_KB * conns_peak;
    int nready = 0, ndegraded = 0, max_lat = 0;
    long rss_max = rss0_kb;
    const char *bad = NULL;

    if (n < 10)
        ts_fail("only %d /readyz probes during the overload phase", n);
    for (int i = 0; i < n; i++) {
        if (v[i].status != 200 && !bad)
            bad = ts_str("probe %d (+%lld ms): %s after %d ms", i, (long long)(v[i].at_ms - v[0].at_ms),
                         v[i].status ? ts_str("%d %s", v[i].status, v[i].word) : "no answer", v[i].latency_ms);
        nready += strcmp(v[i].word, "ready") == 0;
        ndegraded += strcmp(v[i].word, "degraded") == 0;
        if (v[i].latency_ms > max_lat)
            max_lat = v[i].latency_ms;
        if (v[i].rss_kb > rss_max)
            rss_max = v[i].rss_kb;
    }
    ts_log("/readyz: %d probes, %d ready, %d degraded, slowest %d ms; router VmRSS %ld kB before, at most %ld kB "
           "(+%ld kB; bound +%ld kB for %d connections%s)",
           n, nready, ndegraded, max_lat, rss0_kb, rss_max, rss_max - rss0_kb, bound_kb, conns_peak,
#if defined(__SANITIZE_ADDRESS__)
           ", not asserted under ASan"
#else
           ""
#endif
    );
    if (bad)
        ts_fail("/readyz was not 200 throughout the overload: %s", bad);
#if !defined(__SANITIZE_ADDRESS__)
    if (rss_max - rss0_kb > bound_kb)
        ts_fail("the router's memory grew by %ld kB under overload (bound %ld kB for %d connections)",
                rss_max - rss0_kb, bound_kb, conns_peak);
#endif
}

static void test_overload(void **state)
{
    struct phase cal = {.name = "capacity", .tag = 'c', .rate = CAL_FACTOR * RATE_PER_MIN / 60.0, .ms = CAL_MS};
    struct phase over = {.name = "overload", .tag = 'o', .ms = OVER_MS};
    const struct ts_watch_sample *samples;
    struct ts_watch *watch = NULL;
    double capacity, goodput;
    long rss0;
    int nsamples;
    (void)state;

    /* warm up: the tenant cached, the pools connected, the script loaded */
    for (int i = 0; i < 5; i++)
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, ts_str("ovl-w-%05d", i)), 200);

    run_phase(&cal, NULL);
    check_answers(&cal);
    check_database(&cal);
    log_phase(&cal);
    capacity = phase_rate(&cal);
    if (capacity < 0.5 * RATE_PER_MIN / 60.0)
        ts_fail("capacity %.1f/s is under half the DPS's limit (%.1f/s): the router cannot keep up with the limit "
                "here, so the overload would not measure what it should",
                capacity, RATE_PER_MIN / 60.0);

    over.rate = OVER_FACTOR * capacity;
    rss0 = ts_proc_rss_kb(rt->cp[0]->proc->pid);
    run_phase(&over, &watch);
    nsamples = ts_watch_stop(watch, &samples);
    check_answers(&over);
    check_database(&over);
    log_phase(&over);
    goodput = phase_rate(&over);
    ts_log("capacity %.1f/s (limit %.1f/s); offered %.1f/s; goodput %.1f/s = %.0f %% of capacity", capacity,
           RATE_PER_MIN / 60.0, over.rate, goodput, 100.0 * goodput / capacity);
    check_watch(samples, nsamples, rss0, over.s.conns_peak);
    if (goodput < GOODPUT_MIN * capacity)
        ts_fail("goodput %.1f/s is under %.0f %% of capacity %.1f/s at %.0fx load", goodput, GOODPUT_MIN * 100,
                capacity, OVER_FACTOR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_overload),
    };
    ts_init("test_overload");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
