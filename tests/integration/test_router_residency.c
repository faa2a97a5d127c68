/*
 * test_router_residency - residency is a hard rule (docs/architecture.md
 * "Placement"), checked property-style over random layouts.
 *
 * Each round (seeded PRNG; the seed is printed, STAMPCP_TEST_SEED repeats a
 * run) builds a fresh layout over 2-3 of the geographies eu/us/ap (two
 * regions each, created once): 1-3 stamps per geography, each with one DPS
 * of a tiny random capacity (sometimes a tiny registrations/minute) and one
 * hub; some agents are killed (the stamp goes `down`), some stamps are
 * PATCHed to draining. Three tenants per round: one bound to a geography,
 * one to a region, one to two geographies. ~50 new devices per round are
 * located, and every answer is checked against a model of the round:
 *
 *  - 200: the geography (and region) is allowed, the stamp is one of the
 *    round's live (healthy, active), not yet full stamps there; the device
 *    row is in that geography's database and in no other;
 *  - otherwise only: 503 no_eligible_stamp (residency/tenancy leave no
 *    stamp), 503 no_healthy_stamp (none live), 503 capacity_exhausted (all
 *    live ones full), 429 throttled (all live, non-full ones have a tiny
 *    rate) - and nothing was written anywhere;
 *  - round 0 forces the geography-bound tenant's geography to have every
 *    stamp down while another geography is healthy: 503 no_healthy_stamp.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"

#define NROUNDS 4
#define PER_ROUND 50
#define NGEO 3

static const char *const geos[NGEO] = { "eu", "us", "ap" };
static struct ts_rt *rt;
static uint64_t rng;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int rnd_int(int lo, int hi) /* inclusive */
{
    return lo + (int)(rnd() % (uint64_t)(hi - lo + 1));
}

static bool chance(int percent)
{
    return rnd_int(1, 100) <= percent;
}

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", "us", "ap", NULL } };
    static struct ts_rt_layout base = {
        .geographies = { "eu", "us", "ap", NULL },
        .regions = { { "eu-r1", "eu" }, { "eu-r2", "eu" }, { "us-r1", "us" },
                     { "us-r2", "us" }, { "ap-r1", "ap" }, { "ap-r2", "ap" } },
    };
    const char *s = getenv("STAMPCP_TEST_SEED");
    uint64_t seed = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    if (!seed)
        seed = 1;
    rng = seed;
    ts_log("seed %llu (repeat with STAMPCP_TEST_SEED=%llu)", (unsigned long long)seed, (unsigned long long)seed);
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &base);
    return 0;
}

struct mstamp {
    const char *id, *geo, *region, *dps, *hub;
    long maxreg, rpm, hubmax;
    bool killed, draining;
    long placed;
};

struct mround {
    struct mstamp st[NGEO * 3];
    int n;
    bool geo_in[NGEO];
};

struct mtenant {
    struct ts_tenant *t;
    bool geo_ok[NGEO];
    const char *region;   /* NULL: any region */
    const char *what;
};

static int geo_index(const char *g)
{
    for (int i = 0; i < NGEO; i++)
        if (g && strcmp(geos[i], g) == 0)
            return i;
    return -1;
}

static bool allowed(const struct mtenant *t, const struct mstamp *s)
{
    return t->geo_ok[geo_index(s->geo)] && (!t->region || strcmp(t->region, s->region) == 0);
}

static bool live(const struct mstamp *s)
{
    return !s->killed && !s->draining;
}

static bool full(const struct mstamp *s)
{
    return s->placed >= s->maxreg || s->placed >= s->hubmax;
}

static void build_round(int round, struct mround *m, struct ts_rt_layout *l)
{
    int ngeo = rnd_int(2, 3), start = rnd_int(0, NGEO - 1);
    memset(m, 0, sizeof *m);
    memset(l, 0, sizeof *l);
    for (int k = 0; k < ngeo; k++) {
        int g = (start + k) % NGEO;
        int nst = rnd_int(1, 3);
        m->geo_in[g] = true;
        for (int j = 0; j < nst; j++) {
            struct mstamp *s = &m->st[m->n];
            struct ts_rt_stamp *ls = &l->stamps[m->n];
            s->geo = geos[g];
            s->region = ts_str("%s-r%d", geos[g], rnd_int(1, 2));
            s->id = ts_str("r%d-%s-%d", round, geos[g], j + 1);
            s->dps = ts_str("%s-dps", s->id);
            s->hub = ts_str("%s-hub", s->id);
            s->maxreg = chance(30) ? 1000 : rnd_int(1, 8);
            s->hubmax = chance(80) ? 1000 : rnd_int(1, 5);
            s->rpm = chance(15) ? rnd_int(1, 3) : 1000000;
            ls->id = s->id;
            ls->region = s->region;
            ls->dps[0] = (struct ts_rt_dps){ s->dps, s->maxreg, s->rpm };
            ls->hubs[0] = (struct ts_rt_hub){ s->hub, s->hubmax };
            m->n++;
        }
    }
}

static void teardown_round(struct mround *m, struct ts_rt_layout *l)
{
    for (int i = 0; i < m->n; i++) {
        if (l->stamps[i].agent && ts_proc_alive(l->stamps[i].agent)) {
            ts_proc_kill(l->stamps[i].agent, SIGKILL);
            (void)ts_proc_wait(l->stamps[i].agent, 2000);
        }
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "DELETE", ts_str("/v1/hubs/%s", m->st[i].hub), NULL), 204);
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "DELETE", ts_str("/v1/dps-instances/%s", m->st[i].dps), NULL), 204);
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "DELETE", ts_str("/v1/stamps/%s", m->st[i].id), NULL), 204);
    }
}

/* What the model allows for a new device of tenant t. */
struct expect { bool ok200, no_eligible, no_healthy, capacity, throttled; };

static struct expect model(const struct mround *m, const struct mtenant *t)
{
    struct expect e = { 0 };
    int n_allowed = 0, n_live = 0, n_room = 0, n_room_fast = 0;
    for (int i = 0; i < m->n; i++) {
        const struct mstamp *s = &m->st[i];
        if (!allowed(t, s))
            continue;
        n_allowed++;
        if (!live(s))
            continue;
        n_live++;
        if (full(s))
            continue;
        n_room++;
        if (s->rpm >= 1000)
            n_room_fast++;
    }
    if (n_allowed == 0)
        e.no_eligible = true;
    else if (n_live == 0)
        e.no_healthy = true;
    else if (n_room == 0)
        e.capacity = true;
    else {
        e.ok200 = true;
        e.throttled = n_room_fast == 0;
    }
    return e;
}

/* Each device of the round is in the database of the geography it was placed in, and nowhere else. */
static void check_rows(int round, const int *placed_geo, const char *const *tenant_of)
{
    for (int g = 0; g < NGEO; g++) {
        PGresult *res = ts_pg_query(ts_rt_geo_db(rt, geos[g]),
                                    ts_str("SELECT tenant_id, registration_id, status FROM devices"
                                           " WHERE registration_id LIKE 'r%d-dev-%%'", round));
        int expected = 0, rows = PQntuples(res);
        const char *err = NULL;
        for (int i = 0; i < PER_ROUND; i++)
            expected += placed_geo[i] == g;
        for (int k = 0; k < rows && !err; k++) {
            int i = atoi(PQgetvalue(res, k, 1) + strlen(ts_str("r%d-dev-", round)));
            if (i < 0 || i >= PER_ROUND || placed_geo[i] != g || strcmp(tenant_of[i], PQgetvalue(res, k, 0)) != 0 ||
                strcmp(PQgetvalue(res, k, 2), "assigned") != 0)
                err = ts_str("%s/%s (%s) is in the %s database but was answered %s", PQgetvalue(res, k, 0),
                             PQgetvalue(res, k, 1), PQgetvalue(res, k, 2), geos[g],
                             i >= 0 && i < PER_ROUND && placed_geo[i] >= 0 ? ts_str("200 in %s", geos[placed_geo[i]])
                                                                           : "without a placement");
        }
        PQclear(res);
        if (err)
            ts_fail("round %d: %s", round, err);
        if (rows != expected)
            ts_fail("round %d: %d devices answered 200 in %s, %d rows there", round, expected, geos[g], rows);
    }
}

static void run_round(int round, int *counts)
{
    static struct mround m;
    static struct ts_rt_layout l;
    struct mtenant tens[3];
    int forced_geo = -1;
    int placed_geo[PER_ROUND];
    const char *tenant_of[PER_ROUND];

    build_round(round, &m, &l);
    ts_rt_register_layout(rt, &l);
    ts_rt_start_agents(rt);

    /* tenants */
    {
        int g1 = -1, g2 = -1;
        for (int tries = 0; g1 < 0 || !m.geo_in[g1]; tries++)
            g1 = rnd_int(0, NGEO - 1);
        memset(tens, 0, sizeof tens);
        tens[0].t = ts_rt_tenant(rt->cp[0], ts_json("{'name':'geo-bound %d','residency':{'geographies':['%s']}}", round,
                                                    geos[g1]));
        tens[0].geo_ok[g1] = true;
        tens[0].what = ts_str("bound to %s", geos[g1]);
        if (round == 0)
            forced_geo = g1;
        g2 = rnd_int(0, NGEO - 1);
        tens[1].region = ts_str("%s-r%d", geos[g2], rnd_int(1, 2));
        tens[1].t = ts_rt_tenant(rt->cp[0], ts_json("{'name':'region-bound %d','residency':{'geographies':['%s'],"
                                                    "'regions':['%s']}}", round, geos[g2], tens[1].region));
        tens[1].geo_ok[g2] = true;
        tens[1].what = ts_str("bound to region %s", tens[1].region);
        g2 = (g1 + 1) % NGEO;
        tens[2].t = ts_rt_tenant(rt->cp[0], ts_json("{'name':'two geos %d','residency':{'geographies':['%s','%s']}}",
                                                    round, geos[g1], geos[g2]));
        tens[2].geo_ok[g1] = tens[2].geo_ok[g2] = true;
        tens[2].what = ts_str("bound to %s+%s", geos[g1], geos[g2]);
    }

    /* health and status */
    for (int i = 0; i < m.n; i++) {
        struct mstamp *s = &m.st[i];
        if (forced_geo >= 0)
            s->killed = strcmp(s->geo, geos[forced_geo]) == 0;
        else
            s->killed = chance(25);
        s->draining = !s->killed && forced_geo < 0 && chance(20);
    }
    if (forced_geo >= 0) {
        /* another geography has a live stamp */
        bool other_live = false;
        for (int i = 0; i < m.n; i++)
            other_live |= !m.st[i].killed;
        if (!other_live)
            ts_fail("round 0 layout has a single geography (bug in the test)");
    }
    for (int i = 0; i < m.n; i++) {
        if (m.st[i].killed) {
            ts_proc_kill(l.stamps[i].agent, SIGKILL);
            (void)ts_proc_wait(l.stamps[i].agent, 2000);
        }
        if (m.st[i].draining)
            TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", m.st[i].id),
                                      "{\"status\":\"draining\"}"),
                             200);
    }
    for (int i = 0; i < m.n; i++) {
        struct mstamp *s = &m.st[i];
        if (s->killed && !ts_rt_wait_health(rt, s->id, "down", 8000))
            ts_fail("%s not down after its agent was killed (%s)", s->id, ts_rt_health(rt->cp[0], s->id));
        ts_log("round %d: %s geo %s region %s dps max %ld rpm %ld hub max %ld %s%s", round, s->id, s->geo, s->region,
               s->maxreg, s->rpm, s->hubmax, s->killed ? "DOWN" : "healthy", s->draining ? " draining" : "");
    }
    for (int k = 0; k < 3; k++)
        ts_log("round %d: tenant %s %s", round, tens[k].t->id, tens[k].what);
    ts_rt_wait_layout(rt);
    /* the live ones are still healthy */
    for (int i = 0; i < m.n; i++)
        if (!m.st[i].killed && strcmp(ts_rt_health(rt->cp[0], m.st[i].id), "healthy") != 0)
            ts_fail("%s should be healthy: %s", m.st[i].id, ts_rt_health(rt->cp[0], m.st[i].id));

    for (int i = 0; i < PER_ROUND; i++) {
        int k = round == 0 && i < 10 ? 0 : rnd_int(0, 2);
        struct mtenant *t = &tens[k];
        const char *regid = ts_str("r%d-dev-%03d", round, i);
        struct expect e = model(&m, t);
        struct ts_resp *r = ts_rt_locate(rt->cp[0], t->t, regid);
        placed_geo[i] = -1;
        tenant_of[i] = t->t->id;
        const char *code = ts_err_code(r);
        const char *what = ts_str("round %d device %s of tenant %s (%s)", round, regid, t->t->id, t->what);

        if (r->status == 200) {
            const char *geo = ts_jstr(r->json, "geography"), *stamp = ts_jstr(r->json, "stamp");
            struct mstamp *s = NULL;
            int g = geo_index(geo);
            for (int j = 0; j < m.n; j++)
                if (stamp && strcmp(m.st[j].id, stamp) == 0)
                    s = &m.st[j];
            if (g < 0 || !t->geo_ok[g])
                ts_fail("RESIDENCY BROKEN: %s placed in geography %s: %s", what, geo ? geo : "?", ts_resp_str(r));
            if (t->region && strcmp(t->region, ts_jstr(r->json, "region") ? ts_jstr(r->json, "region") : "") != 0)
                ts_fail("RESIDENCY BROKEN: %s placed in region %s: %s", what, ts_jstr(r->json, "region"),
                        ts_resp_str(r));
            if (!s)
                ts_fail("%s placed on a stamp not in this round's layout: %s", what, ts_resp_str(r));
            if (strcmp(s->geo, geo) != 0 || strcmp(s->region, ts_jstr(r->json, "region")) != 0)
                ts_fail("%s: answer's geography/region do not match stamp %s: %s", what, s->id, ts_resp_str(r));
            if (!live(s))
                ts_fail("%s placed on %s stamp %s: %s", what, s->killed ? "a down" : "a draining", s->id, ts_resp_str(r));
            if (full(s))
                ts_fail("%s placed on full stamp %s (%ld placed, DPS max %ld, hub max %ld): %s", what, s->id, s->placed,
                        s->maxreg, s->hubmax, ts_resp_str(r));
            if (!e.ok200)
                ts_fail("%s: the model expected no placement: %s", what, ts_resp_str(r));
            TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_rt_id_scope(s->dps));
            s->placed++;
            placed_geo[i] = g;
            counts[0]++;
        } else if (r->status == 503 && code && strcmp(code, "no_eligible_stamp") == 0) {
            if (!e.no_eligible)
                ts_fail("%s: 503 no_eligible_stamp but allowed stamps exist: %s", what, ts_resp_str(r));
            counts[1]++;
        } else if (r->status == 503 && code && strcmp(code, "no_healthy_stamp") == 0) {
            if (!e.no_healthy)
                ts_fail("%s: 503 no_healthy_stamp but the model says %s: %s", what,
                        e.no_eligible ? "no eligible stamp" : "a live stamp exists", ts_resp_str(r));
            counts[2]++;
        } else if (r->status == 503 && code && strcmp(code, "capacity_exhausted") == 0) {
            if (!e.capacity)
                ts_fail("%s: 503 capacity_exhausted but the model says otherwise (ok200=%d no_healthy=%d"
                        " no_eligible=%d): %s", what, e.ok200, e.no_healthy, e.no_eligible, ts_resp_str(r));
            counts[3]++;
        } else if (r->status == 429 && code && strcmp(code, "throttled") == 0) {
            if (!e.throttled)
                ts_fail("%s: 429 although a live stamp with room has a high rate limit: %s", what, ts_resp_str(r));
            if (!ts_header(r, "Retry-After"))
                ts_fail("%s: 429 without Retry-After", what);
            counts[4]++;
        } else {
            ts_fail("%s: undocumented answer %s", what, ts_resp_str(r));
        }
        if (round == 0 && k == 0 && !(r->status == 503 && code && strcmp(code, "no_healthy_stamp") == 0))
            ts_fail("%s: every stamp of %s is down while another geography is healthy: expected 503"
                    " no_healthy_stamp, got %s", what, geos[forced_geo], ts_resp_str(r));
    }
    check_rows(round, placed_geo, tenant_of);
    teardown_round(&m, &l);
}

static void test_random_layouts(void **state)
{
    int counts[5] = { 0 };
    for (int round = 0; round < NROUNDS; round++)
        run_round(round, counts);
    ts_log("%d locates: %d placed, %d no_eligible_stamp, %d no_healthy_stamp, %d capacity_exhausted, %d throttled",
           NROUNDS * PER_ROUND, counts[0], counts[1], counts[2], counts[3], counts[4]);
    if (counts[0] == 0)
        ts_fail("no device was placed in %d rounds", NROUNDS);
    /* the global catalog never holds a device id */
    if (ts_pg_table_exists(rt->cp[0]->global_db, "devices"))
        ts_fail("the global catalog has a devices table");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_layouts),
    };
    ts_init("test_router_residency");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
