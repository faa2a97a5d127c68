/*
 * test_redis_acl - Redis with ACL users per role (infra/redis-acl-users, the
 * same users infra/stack makes), the control plane and the stamp agents
 * authenticating as their own users (issue #9, item 4, Redis):
 *
 *  - reports flow: both stamps healthy in the admin API, the control plane
 *    ready, nothing refused (no NOPERM, no auth failure in any log);
 *  - a raw connection as stamp A's user can write A's hash and channel, and
 *    gets NOPERM from Redis itself for B's hash, B's channel, reads and
 *    anything else; a report A publishes on its own channel claiming to be
 *    B is dropped by the control plane (B stays healthy, its load unchanged);
 *    the control plane's user cannot write a load report either; a
 *    connection without AUTH can do nothing;
 *  - the control plane's user does what the router needs: first-time locates
 *    (the rate-limit EVAL on dps:*:bucket; for a tenant with quotas also
 *    tenant:*:bucket, tenant:*:placing and tenant:*:placed) and invalidations
 *    (PUBLISH cp:invalidate, which comes back on its own subscription);
 *  - a control plane and an agent with a wrong password stay up, log
 *    redis_auth_failed without the password, keep retrying, and recover once
 *    Redis accepts the password (ACL SETUSER ... >password);
 *  - a report stamped an hour in the future does not blind the control plane
 *    to the agent's later reports: the stamp stays healthy and lastReportAt
 *    comes back to the present.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "ts.h"

#define NCONN 16

static struct ts_redis *redis;
static struct ts_rt rt;
static struct ts_cp *cp;
static const char *auth_dir;
static struct ts_proc *agent1, *agent2;
static redisContext *conns[NCONN];
static int nconns;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
        { .id = "eu-west-2", .region = "eu-west", .dps = { { "eu-west-2-dps" } }, .hubs = { { "eu-west-2-hub1" } } },
        /* its agent starts with a wrong password */
        { .id = "eu-west-3", .region = "eu-west", .dps = { { "eu-west-3-dps" } }, .hubs = { { "eu-west-3-hub1" } } },
    },
};

/* Wall clock, Unix ms (ts_now_ms is monotonic). */
static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ---- Redis helpers ---- */

static const char *password_of(const char *user)
{
    char *p = ts_read_file(ts_str("%s/%s.pass", auth_dir, user), NULL);
    if (!p)
        ts_fail("no password file for %s in %s", user, auth_dir);
    p[strcspn(p, "\r\n")] = '\0';
    return p;
}

/* A connection (5 s timeouts); AUTH as user unless user is NULL. Freed at teardown. */
static redisContext *rconn(const char *user)
{
    struct timeval tv = { 5, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis->port, tv);
    redisReply *rep;
    if (!c || c->err)
        ts_fail("cannot connect to Redis on port %d: %s", redis->port, c ? c->errstr : "oom");
    redisSetTimeout(c, tv);
    if (nconns == NCONN)
        ts_fail("too many Redis connections in this test");
    conns[nconns++] = c;
    if (!user)
        return c;
    rep = redisCommand(c, "AUTH %s %s", user, password_of(user));
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        ts_fail("AUTH as %s refused: %s", user, rep ? rep->str : c->errstr);
    freeReplyObject(rep);
    return c;
}

/* One command; the reply as text: "ERR..."/"NOPERM..." for errors (library-owned). */
static const char *rcmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    redisReply *rep;
    const char *out;
    va_start(ap, fmt);
    rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!rep)
        ts_fail("Redis connection failed: %s", c->errstr);
    switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        out = ts_str("%s", rep->str);
        break;
    case REDIS_REPLY_INTEGER:
        out = ts_str("%lld", rep->integer);
        break;
    case REDIS_REPLY_NIL:
        out = "(nil)";
        break;
    default:
        out = ts_str("(array of %zu)", rep->elements);
        break;
    }
    freeReplyObject(rep);
    return out;
}

static void expect_noperm(const char *what, const char *reply)
{
    if (strncmp(reply, "NOPERM", 6) != 0)
        ts_fail("%s: expected NOPERM from Redis, got '%s'", what, reply);
}

/* ---- daemons ---- */

static const char *stamp_field(const char *stamp, const char *field)
{
    struct ts_resp *r = ts_admin(cp, "GET", ts_str("/v1/stamps/%s", stamp), NULL);
    if (r->status != 200)
        return NULL;
    return ts_jstr(r->json, field);
}

/* Agent config of our own: ts_agent_start has no redisAuth. password_file NULL: inline password. */
static struct ts_proc *agent_start(const char *stamp, const char *dps, const char *hub, const char *password)
{
    static int seq;
    const char *path = ts_str("%s/agent-%s-%d.json", ts_tmp(), stamp, seq);
    json_t *cfg = json_pack("{s:s, s:s, s:s, s:i, s:[s], s:[s], s:s}", "stampId", stamp, "region", "eu-west",
                            "redis", redis->addr, "reportIntervalMs", 200, "dpsInstances", dps, "hubs", hub,
                            "logLevel", "info");
    const char *user = ts_str("agent-%s", stamp);
    struct ts_proc *p;
    char *txt;

    if (password)
        json_object_set_new(cfg, "redisAuth", json_pack("{s:s, s:s}", "user", user, "password", password));
    else
        json_object_set_new(cfg, "redisAuth", json_pack("{s:s, s:s}", "user", user, "passwordFile",
                                                        ts_str("%s/%s.pass", auth_dir, user)));
    txt = json_dumps(cfg, JSON_INDENT(2));
    json_decref(cfg);
    ts_write_file(path, txt);
    free(txt);
    char *argv[] = { (char *)ts_bin("stamp-agent"), "--config", (char *)path, NULL };
    p = ts_proc_spawn(ts_str("agent-%s-%d", stamp, seq++), argv, NULL, NULL);
    ts_sleep_ms(200);
    if (!ts_proc_alive(p)) {
        ts_proc_dump_log(p, 4000);
        ts_fail("stamp-agent for %s exited at startup (exit %d)", stamp, ts_proc_exit_code(p));
    }
    return p;
}

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "eu", NULL }, .stale_after = 3, .down_after = 10 };
    char *argv[] = { (char *)ts_str("%s/infra/redis-acl-users", ts_env("STAMPCP_SOURCE_DIR")),
                     (char *)ts_str("%s/redis-auth", ts_tmp()), "eu-west-1", "eu-west-2", "eu-west-3", NULL };
    char *out = NULL;
    (void)state;

    auth_dir = argv[1];
    if (ts_run(argv, 30000, &out) != 0)
        ts_fail("infra/redis-acl-users failed: %s", out ? out : "");
    redis = ts_redis_start_acl("acl", ts_str("%s/users.acl", auth_dir));
    o.redis = redis->addr;
    o.extra_json = ts_str("\"layoutRefreshMs\": 200, \"redisAuth\": {\"user\": \"controlplane\", \"passwordFile\": "
                          "\"%s/controlplane.pass\"}", auth_dir);
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000))
        ts_fail("control plane not ready with its Redis user: %s", ts_resp_str(ts_get(cp, "/readyz")));
    rt.redis = redis;
    rt.cp[0] = cp;
    rt.ncp = 1;
    rt.layout_refresh_ms = 200;
    ts_rt_register_layout(&rt, &layout);
    agent1 = agent_start("eu-west-1", "eu-west-1-dps", "eu-west-1-hub1", NULL);
    agent2 = agent_start("eu-west-2", "eu-west-2-dps", "eu-west-2-hub1", NULL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < nconns; i++)
        redisFree(conns[i]);
    nconns = 0;
    return 0;
}

/* No daemon was refused anything, and no log holds a password. */
static void expect_clean_logs(struct ts_proc *p)
{
    static const char *const users[] = { "controlplane", "agent-eu-west-1", "agent-eu-west-2", "admin" };
    if (ts_proc_log_contains(p, "NOPERM"))
        ts_fail("%s was refused a command by Redis (NOPERM in its log)", p->name);
    if (ts_proc_log_contains(p, "redis_auth_failed"))
        ts_fail("%s failed to authenticate", p->name);
    for (size_t i = 0; i < sizeof users / sizeof users[0]; i++)
        if (ts_proc_log_contains(p, password_of(users[i])))
            ts_fail("the password of %s is in the log of %s", users[i], p->name);
}

static void test_reports_flow(void **state)
{
    redisContext *admin = rconn("admin");
    (void)state;
    if (!ts_rt_wait_health(&rt, "eu-west-1", "healthy", 10000) || !ts_rt_wait_health(&rt, "eu-west-2", "healthy", 10000))
        ts_fail("stamps not healthy with ACL users: %s / %s", ts_rt_health(cp, "eu-west-1"), ts_rt_health(cp, "eu-west-2"));
    TS_EXPECT_STATUS(ts_get(cp, "/readyz"), 200);
    TS_EXPECT_STREQ(ts_rt_health(cp, "eu-west-3"), "down");   /* no agent yet */
    /* what the agents wrote, read back as admin: their own hash, with a run id */
    TS_EXPECT_STREQ(rcmd(admin, "HGET stamp:eu-west-1:load stampId"), "eu-west-1");
    TS_EXPECT_STREQ(rcmd(admin, "HGET stamp:eu-west-2:load stampId"), "eu-west-2");
    if (strlen(rcmd(admin, "HGET stamp:eu-west-1:load runId")) != 16)
        ts_fail("the report carries no 16-digit runId: '%s'", rcmd(admin, "HGET stamp:eu-west-1:load runId"));
    if (strcmp(rcmd(admin, "HGET stamp:eu-west-1:load runId"), rcmd(admin, "HGET stamp:eu-west-2:load runId")) == 0)
        ts_fail("two agents share a runId");
    ts_sleep_ms(500);
    expect_clean_logs(cp->proc);
    expect_clean_logs(agent1);
    expect_clean_logs(agent2);
}

static void test_forgery_refused(void **state)
{
    redisContext *a = rconn("agent-eu-west-1"), *b = rconn("agent-eu-west-2"), *c = rconn("controlplane");
    redisContext *anon = rconn(NULL), *admin = rconn("admin");
    const char *load2 = rcmd(admin, "HGET stamp:eu-west-2:load load"), *seq2;
    const char *forged = "{\"stampId\":\"eu-west-2\",\"region\":\"eu-west\",\"health\":\"down\",\"ts\":1,"
                         "\"intervalMs\":200,\"seq\":999999,\"runId\":\"badbadbadbadbad0\","
                         "\"load\":{\"dps\":[],\"hubs\":[],\"groups\":[]}}";
    (void)state;

    /* A's user against B's key and channel: refused by Redis itself. */
    expect_noperm("HSET B's hash as A", rcmd(a, "HSET stamp:eu-west-2:load health down"));
    expect_noperm("PEXPIRE B's hash as A", rcmd(a, "PEXPIRE stamp:eu-west-2:load 1"));
    expect_noperm("PUBLISH on B's channel as A", rcmd(a, "PUBLISH stamps:load:eu-west-2 %s", forged));
    expect_noperm("PUBLISH on the old shared channel as A", rcmd(a, "PUBLISH stamps:load %s", forged));
    expect_noperm("DEL B's hash as A", rcmd(a, "DEL stamp:eu-west-2:load"));
    expect_noperm("HGETALL own hash as A", rcmd(a, "HGETALL stamp:eu-west-1:load"));
    expect_noperm("rate-limit bucket as A", rcmd(a, "HSET dps:eu-west-2-dps:bucket tokens 0"));
    expect_noperm("invalidation as A", rcmd(a, "PUBLISH cp:invalidate %s", "tenant acme"));
    expect_noperm("FLUSHALL as A", rcmd(a, "FLUSHALL"));
    expect_noperm("ACL as A", rcmd(a, "ACL SETUSER agent-eu-west-1 allkeys"));
    /* ... inside a transaction too: EXEC is aborted */
    TS_EXPECT_STREQ(rcmd(a, "MULTI"), "OK");
    expect_noperm("HSET B's hash in MULTI", rcmd(a, "HSET stamp:eu-west-2:load health down"));
    if (strncmp(rcmd(a, "EXEC"), "EXECABORT", 9) != 0)
        ts_fail("EXEC after a refused command should be EXECABORT");
    /* and B against A */
    expect_noperm("HSET A's hash as B", rcmd(b, "HSET stamp:eu-west-1:load health down"));
    expect_noperm("PUBLISH on A's channel as B", rcmd(b, "PUBLISH stamps:load:eu-west-1 x"));
    /* Its own hash and channel: allowed (what the agent does every interval). */
    TS_EXPECT_STREQ(rcmd(a, "HSET stamp:eu-west-1:load probe 1"), "1");
    TS_EXPECT_STREQ(rcmd(a, "PEXPIRE stamp:eu-west-1:load 60000"), "1");
    if (strncmp(rcmd(a, "PUBLISH stamps:load:eu-west-1 %s", "not a report"), "NOPERM", 6) == 0)
        ts_fail("A may not publish on its own channel");
    /* A report A publishes on its own channel but in B's name: the control
     * plane counts it for nobody (B stays healthy, B's seq is B's own). */
    TS_EXPECT_STREQ(rcmd(a, "PUBLISH stamps:load:eu-west-1 %s", forged), "1");
    ts_sleep_ms(300);
    TS_EXPECT_STREQ(ts_rt_health(cp, "eu-west-2"), "healthy");
    if (!ts_proc_log_contains(cp->proc, "load_report_stamp_mismatch"))
        ts_fail("the control plane did not flag a report for eu-west-2 on eu-west-1's channel");
    seq2 = rcmd(admin, "HGET stamp:eu-west-2:load seq");
    if (atoll(seq2) >= 999999)
        ts_fail("the forged seq reached B's hash: %s", seq2);
    if (load2[0] == '(')
        ts_fail("B's hash has no load field");
    /* The control plane's user reads reports but cannot write one. */
    expect_noperm("HSET a load hash as the control plane", rcmd(c, "HSET stamp:eu-west-1:load health down"));
    expect_noperm("PUBLISH a load report as the control plane", rcmd(c, "PUBLISH stamps:load:eu-west-1 %s", forged));
    expect_noperm("other keys as the control plane", rcmd(c, "HSET somekey f v"));
    expect_noperm("FLUSHALL as the control plane", rcmd(c, "FLUSHALL"));
    if (strncmp(rcmd(c, "HGETALL stamp:eu-west-2:load"), "(array", 6) != 0)
        ts_fail("the control plane's user cannot read a load hash");
    /* Without AUTH nothing works (the default user is off). */
    if (strncmp(rcmd(anon, "PING"), "NOAUTH", 6) != 0)
        ts_fail("an unauthenticated PING was answered");
    if (strncmp(rcmd(anon, "AUTH default x"), "WRONGPASS", 9) != 0)
        ts_fail("the default user is not off");
    /* B's reports kept flowing through all this */
    TS_EXPECT_STREQ(stamp_field("eu-west-2", "health"), "healthy");
    TS_EXPECT_STREQ(stamp_field("eu-west-1", "health"), "healthy");
}

/* Tenant and first-time locate (rate-limit EVAL), then a deprovision whose
 * invalidation comes back to the control plane's subscription. */
static void test_controlplane_user_works(void **state)
{
    redisContext *sub = rconn("admin"), *admin = rconn("admin");
    struct ts_tenant *t;
    struct ts_resp *r;
    redisReply *rep;
    bool seen = false;
    int64_t deadline;
    const char *dps, *stamp;
    (void)state;

    t = ts_rt_tenant_acme(cp);
    ts_rt_wait_layout(&rt);
    r = ts_rt_locate(cp, t, "dev-1");
    TS_EXPECT_STATUS(r, 200);
    stamp = ts_jstr(r->json, "stamp");
    if (!stamp || (strcmp(stamp, "eu-west-1") != 0 && strcmp(stamp, "eu-west-2") != 0))
        ts_fail("locate placed dev-1 outside the healthy stamps: %s", ts_resp_str(r));
    dps = ts_str("%s-dps", stamp);
    /* the token bucket the EVAL took from */
    if (strcmp(rcmd(admin, "EXISTS dps:%s:bucket", dps), "1") != 0)
        ts_fail("no token bucket dps:%s:bucket after a first-time locate", dps);
    for (int i = 2; i <= 5; i++)
        TS_EXPECT_STATUS(ts_rt_locate(cp, t, ts_str("dev-%d", i)), 200);

    rep = redisCommand(sub, "SUBSCRIBE cp:invalidate");
    if (!rep || rep->type != REDIS_REPLY_ARRAY)
        ts_fail("SUBSCRIBE cp:invalidate as admin failed");
    freeReplyObject(rep);
    r = ts_admin(cp, "POST", "/v1/tenants/acme/devices/dev-1/deprovision", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "deprovisioned");
    deadline = ts_now_ms() + 5000;
    while (!seen && ts_now_ms() < deadline) {
        void *v = NULL;
        if (redisGetReply(sub, &v) != REDIS_OK || !v)
            break;
        rep = v;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 && rep->element[2]->type == REDIS_REPLY_STRING &&
            strncmp(rep->element[2]->str, "device ", 7) == 0)
            seen = true;
        freeReplyObject(rep);
    }
    if (!seen)
        ts_fail("no device invalidation on cp:invalidate within 5 s of the deprovision");
    /* it came back to the control plane's own subscription (else it logs invalidation_not_confirmed) */
    ts_sleep_ms(1300);
    if (ts_proc_log_contains(cp->proc, "invalidation_not_confirmed"))
        ts_fail("the control plane's invalidation did not come back to its subscription");
    /* placed afresh */
    TS_EXPECT_STATUS(ts_rt_locate(cp, t, "dev-1"), 200);

    /* a tenant with limits: its bucket and quota sets are the control plane's keys too */
    t = ts_rt_tenant(cp, "{\"id\":\"lim\",\"name\":\"Lim\",\"residency\":{\"geographies\":[\"eu\"]},"
                         "\"quotas\":{\"maxDevices\":2,\"maxProvisionsPerMinute\":100}}");
    TS_EXPECT_STATUS(ts_rt_locate(cp, t, "lim-1"), 200);
    TS_EXPECT_STATUS(ts_rt_locate(cp, t, "lim-2"), 200);
    r = ts_rt_locate(cp, t, "lim-3");
    TS_EXPECT_ERROR(r, 403, "quota_exceeded");
    if (strcmp(rcmd(admin, "EXISTS tenant:lim:bucket"), "1") != 0)
        ts_fail("no tenant:lim:bucket after placements of a tenant with maxProvisionsPerMinute");
    if (strcmp(rcmd(admin, "ZCARD tenant:lim:placed"), "2") != 0)
        ts_fail("tenant:lim:placed should hold the two settled placements, has %s",
                rcmd(admin, "ZCARD tenant:lim:placed"));
    expect_clean_logs(cp->proc);
}

static bool readyz_redis_failing(void *arg)
{
    struct ts_cp *c = arg;
    struct ts_resp *r = ts_get(c, "/readyz");
    const char *s = ts_jstr(json_object_get(r->json, "checks"), "redis");
    const char *st = ts_jstr(r->json, "status");   /* degraded, not unready: lookups are served */
    return r->status == 200 && st && strcmp(st, "degraded") == 0 && s && strcmp(s, "ok") != 0;
}

static bool readyz_ok(void *arg)
{
    struct ts_resp *r = ts_get(arg, "/readyz");
    const char *st = ts_jstr(r->json, "status");
    return r->status == 200 && st && strcmp(st, "ready") == 0;
}

static bool log_has_auth_failure(void *arg)
{
    return ts_proc_log_contains(arg, "event=redis_auth_failed");
}

/* A control plane with a wrong password: up, not ready, the failure logged
 * without the password, retried; ready once Redis accepts the password. */
static void test_wrong_password_controlplane(void **state)
{
    char wrong[33];
    struct ts_cp_opts o = { .geo_ids = { "eu", NULL }, .stale_after = 3, .down_after = 10 };
    redisContext *admin = rconn("admin");
    struct ts_cp *bad;
    pid_t pid;
    (void)state;

    snprintf(wrong, sizeof wrong, "wrong-%lld-%d", (long long)ts_now_ms(), (int)getpid());
    o.global_db = cp->global_db;
    o.geo_dbs[0] = cp->geo_dbs[0];
    o.redis = redis->addr;
    o.name = "badpass";
    o.extra_json = ts_str("\"redisAuth\": {\"user\": \"controlplane\", \"password\": \"%s\"}", wrong);
    bad = ts_controlplane_start(&o);
    pid = bad->proc->pid;
    if (!ts_wait_until(log_has_auth_failure, bad->proc, 5000))
        ts_fail("no event=redis_auth_failed in the log of a control plane with a wrong password");
    ts_sleep_ms(1500);   /* a few retries */
    if (!ts_proc_alive(bad->proc))
        ts_fail("the control plane exited on a wrong Redis password");
    TS_EXPECT_STATUS(ts_get(bad, "/healthz"), 200);
    if (!readyz_redis_failing(bad))
        ts_fail("readyz should fail on redis: %s", ts_resp_str(ts_get(bad, "/readyz")));
    if (ts_proc_log_contains(bad->proc, wrong))
        ts_fail("the control plane logged its Redis password");
    if (!ts_proc_log_contains(bad->proc, "user=controlplane") || !ts_proc_log_contains(bad->proc, "WRONGPASS"))
        ts_fail("the auth failure line should name the user and Redis's answer");

    /* The operator adds the password to the user (a rotation's first step). */
    TS_EXPECT_STREQ(rcmd(admin, "ACL SETUSER controlplane >%s", wrong), "OK");
    if (!ts_wait_until(readyz_ok, bad, 10000))
        ts_fail("control plane not ready 10 s after Redis accepted its password: %s",
                ts_resp_str(ts_get(bad, "/readyz")));
    assert_int_equal(bad->proc->pid, pid);
    if (!ts_proc_log_contains(bad->proc, "auth_failures="))
        ts_fail("the reconnect after auth failures is not logged");
    if (ts_proc_log_contains(bad->proc, wrong))
        ts_fail("the control plane logged its Redis password");
    TS_EXPECT_STREQ(rcmd(admin, "ACL SETUSER controlplane <%s", wrong), "OK");
    TS_EXPECT_STATUS(ts_admin(bad, "GET", "/v1/stamps/eu-west-1", NULL), 200);
    TS_EXPECT_STREQ(ts_rt_health(bad, "eu-west-1"), "healthy");
    ts_controlplane_stop(bad, 10000);
}

/* The same for a stamp agent: its stamp stays down until Redis accepts it. */
static void test_wrong_password_agent(void **state)
{
    char wrong[33];
    redisContext *admin = rconn("admin");
    struct ts_proc *bad;
    (void)state;

    snprintf(wrong, sizeof wrong, "agentwrong-%lld", (long long)ts_now_ms());
    bad = agent_start("eu-west-3", "eu-west-3-dps", "eu-west-3-hub1", wrong);
    if (!ts_wait_until(log_has_auth_failure, bad, 5000))
        ts_fail("no event=redis_auth_failed in the log of an agent with a wrong password");
    ts_sleep_ms(1500);
    if (!ts_proc_alive(bad))
        ts_fail("the agent exited on a wrong Redis password");
    TS_EXPECT_STREQ(ts_rt_health(cp, "eu-west-3"), "down");
    TS_EXPECT_STREQ(rcmd(admin, "EXISTS stamp:eu-west-3:load"), "0");
    if (ts_proc_log_contains(bad, wrong))
        ts_fail("the agent logged its Redis password");
    if (!ts_proc_log_contains(bad, "user=agent-eu-west-3"))
        ts_fail("the agent's auth failure line does not name the user");

    TS_EXPECT_STREQ(rcmd(admin, "ACL SETUSER agent-eu-west-3 >%s", wrong), "OK");
    if (!ts_rt_wait_health(&rt, "eu-west-3", "healthy", 10000))
        ts_fail("stamp eu-west-3 not healthy 10 s after Redis accepted its agent's password (%s)",
                ts_rt_health(cp, "eu-west-3"));
    if (ts_proc_log_contains(bad, wrong))
        ts_fail("the agent logged its Redis password");
    ts_proc_kill(bad, SIGTERM);
    if (!ts_proc_wait(bad, 5000) || ts_proc_exit_code(bad) != 0)
        ts_fail("the agent did not shut down cleanly after recovering");
}

/* Issue #9: a report stamped an hour ahead (the agent's clock jumped) must not
 * hide the agent's later reports from the control plane. */
static void test_future_timestamp(void **state)
{
    redisContext *a = rconn("agent-eu-west-1");
    int64_t future = wall_ms() + 3600 * 1000LL, t_end;
    const char *msg;
    (void)state;

    if (!ts_rt_wait_health(&rt, "eu-west-1", "healthy", 5000))
        ts_fail("eu-west-1 not healthy before the test");
    /* what an agent whose clock is an hour ahead writes (same user, own key and channel) */
    msg = ts_str("{\"stampId\":\"eu-west-1\",\"region\":\"eu-west\",\"health\":\"healthy\",\"ts\":%lld,"
                 "\"intervalMs\":200,\"seq\":1,\"runId\":\"0f0f0f0f0f0f0f0f\","
                 "\"load\":{\"dps\":[],\"hubs\":[],\"groups\":[]}}", (long long)future);
    TS_EXPECT_STREQ(rcmd(a, "PUBLISH stamps:load:eu-west-1 %s", msg), "1");
    /* The real agent keeps reporting every 200 ms: for 3 s (15 intervals,
     * far beyond staleAfterIntervals 3) the stamp must stay healthy, and
     * lastReportAt must come back from the future. */
    t_end = ts_now_ms() + 3000;
    while (ts_now_ms() < t_end) {
        const char *h = stamp_field("eu-west-1", "health");
        if (!h || strcmp(h, "healthy") != 0)
            ts_fail("eu-west-1 went %s after a report stamped an hour ahead", h ? h : "?");
        ts_sleep_ms(100);
    }
    if (ts_parse_rfc3339(stamp_field("eu-west-1", "lastReportAt")) > wall_ms() + 60000)
        ts_fail("lastReportAt still in the future (%s): the later reports were ignored",
                stamp_field("eu-west-1", "lastReportAt"));
    /* and the real run's seq is what the control plane holds again */
    TS_EXPECT_STREQ(stamp_field("eu-west-2", "health"), "healthy");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reports_flow),
        cmocka_unit_test(test_forgery_refused),
        cmocka_unit_test(test_controlplane_user_works),
        cmocka_unit_test(test_future_timestamp),
        cmocka_unit_test(test_wrong_password_controlplane),
        cmocka_unit_test(test_wrong_password_agent),
    };
    ts_init("test_redis_acl");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, group_teardown));
}
