/*
 * test_tenant_quotas - tenant quotas (quotas.maxDevices,
 * quotas.maxProvisionsPerMinute) and suspend/resume (docs/api.md "Quotas",
 * "Suspend and resume"), with two control planes and a real stamp agent
 * serving the DPS device and service API (no mock).
 *
 * Layout: geography eu, region eu-west, stamp eu-west-1 with one DPS
 * instance (registrationsPerMinute 40 at the control plane) and one hub. The
 * agent runs its provisioning endpoint on the eu database; the instance has
 * service credentials, so the reconciler (dps.enrollmentSyncMs 300) keeps
 * each tenant's group there.
 *
 * Covered:
 *  - bad input: negative, zero, huge, non-integer quotas, a non-object,
 *    unknown fields (create and PATCH), status in a PATCH, a body on suspend,
 *    GET on suspend, an unknown tenant; the defaults (null, null, active);
 *  - the tenant bucket: tenant "greedy" (5/min) fires 50 first placements
 *    through both routers: at most 6 are placed, the others are 429
 *    tenant_throttled with an integer Retry-After >= 1; the shared DPS
 *    bucket (40) is not emptied: tenant "polite" then places 10 devices on the
 *    same DPS, and the DPS bucket in Redis still holds tokens;
 *  - maxDevices 3: three placements, the fourth is 403 quota_exceeded, placed
 *    devices keep locating at both routers, a deprovision frees a place, PATCH
 *    raises and clears the quota (null: unlimited) at both routers;
 *  - the race: maxDevices 10 and 60 concurrent first placements through both
 *    routers: exactly 10 are placed (200 and a row each), the rest are 403
 *    quota_exceeded or 429 quota_pending (Retry-After), and a retry of a
 *    quota_pending one is 403 quota_exceeded;
 *  - a repeated /provision of a registered device answers from the record:
 *    same hub and deviceId, no new DPS operation at the stamp, and no token
 *    (tenant at 2/min: after one provision and three repeats a second device
 *    still provisions, the third is 429 tenant_throttled);
 *  - suspend: 200 "suspended", idempotent (same version); the device routes
 *    (locate, provision, reprovision, a first placement) are 403
 *    tenant_suspended at both routers after the credential is checked (a bad
 *    signature stays 401); the group is written provisioningStatus disabled
 *    at the stamp, whose DPS then answers "disabled" to a device of the
 *    tenant registering directly (the stamp's own API and sd-provision-one);
 *    nothing is deleted; resume: 200 "active", idempotent, the group is
 *    enabled again and the same devices work at both routers and the stamp.
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
#include "ts_devrun.h"
#include "ts_stamp.h"

#define KEY_NAME "provisioningserviceowner"
#define S1 "eu-west-1"
#define D1 "eu-west-1-dps"
#define DPS_PER_MINUTE 40

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = S1, .region = "eu-west", .dps = { { D1, 0, DPS_PER_MINUTE } }, .hubs = { { "eu-west-1-hub", 0 } } },
        { .id = NULL },
    },
};

static struct ts_stamp agent;

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */


#define expect_err ts_expect_err

static void expect_bad(struct ts_resp *r, const char *code, const char *field, const char *what)
{
    const char *target;
    expect_err(r, 400, code, what);
    target = ts_jstr(json_object_get(r->json, "error"), "target");
    if (field && (!target || strcmp(target, field) != 0))
        ts_fail("%s: expected target '%s', got %s", what, field, ts_resp_str(r));
}

static long retry_after(const struct ts_resp *r)
{
    const char *v = ts_header(r, "Retry-After");
    char *end;
    long n;
    if (!v)
        ts_fail("no Retry-After: %s", ts_resp_str(r));
    n = strtol(v, &end, 10);
    if (*end || end == v || n < 1)
        ts_fail("Retry-After \"%s\" is not a positive integer", v);
    return n;
}

static struct ts_tenant *tenant(const char *id, const char *quotas)
{
    return ts_rt_tenant(rt->cp[0], ts_json("{'id':'%s','name':'%s','residency':{'geographies':['eu']}%s%s}", id, id,
                                           quotas ? ",'quotas':" : "", quotas ? quotas : ""));
}

static long assigned_devices(const char *tenant_id)
{
    return ts_pg_count(ts_rt_geo_db(rt, "eu"),
                       ts_str("SELECT count(*) FROM devices WHERE tenant_id = '%s' AND status = 'assigned'",
                              tenant_id));
}

/* The tenant's group's provisioningStatus at the stamp ("" when absent). */
static const char *group_status(const char *group)
{
    return ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                        ts_str("SELECT coalesce((SELECT doc->>'provisioningStatus' FROM dps_enrollments"
                               " WHERE dps_id = '%s' AND kind = 'group' AND enrollment_id = '%s'), '')",
                               D1, group));
}

struct group_want {
    const char *group, *status;
};

static bool group_is(void *arg)
{
    const struct group_want *w = arg;
    const char *s = group_status(w->group);
    return s && strcmp(s, w->status) == 0;
}

static void wait_group(const char *group, const char *status)
{
    struct group_want w = { group, status };
    if (!ts_wait_until(group_is, &w, 15000))
        ts_fail("group %s on %s: wanted provisioningStatus '%s', have '%s' after 15 s; sync: %s", group, D1, status,
                group_status(group),
                ts_resp_str(ts_admin(rt->cp[0], "GET", "/v1/dps-instances/" D1 "/enrollment-sync", NULL)));
}

/* Register directly at the stamp's DPS with the device's derived key. */
static struct ts_resp *stamp_provision(const struct ts_tenant *t, const char *regid)
{
    const char *scope = ts_rt_id_scope(D1);
    return ts_stamp_provision(&agent, scope, regid,
                              ts_device_sas(scope, regid, ts_derive_key(t->key_b64, regid), 0), 15000);
}

/* sd-provision-one (libstampdevice), DPS only, with the tenant's group key: its output. */
static const char *sd_provision(const struct ts_tenant *t, const char *regid, int *rc)
{
    char *argv[] = { (char *)ts_bin("sd-provision-one"), "--dps", (char *)agent.hostport, "--scope",
                     (char *)ts_rt_id_scope(D1), "--registration-id", (char *)regid, "--group-key",
                     (char *)t->key_b64, "--ca", (char *)ts_pki_ca(), "--state",
                     (char *)ts_str("%s/sd-%s-%lld.state", ts_tmp(), regid, (long long)ts_now_ms()), "-v", NULL };
    char *out = NULL;
    *rc = ts_run(argv, 30000, &out);
    ts_expect_no_sanitizer_report("sd-provision-one", out ? out : "");
    return out ? out : "";
}

static const char *dps_tokens(void)
{
    return ts_redis_cmd(rt->redis->addr, "HGET dps:%s:bucket tokens", D1);
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    struct ts_rt_served_opts so = { .ncp = 2, .policy = KEY_NAME };
    static const char *const served[] = { D1 };
    (void)state;

    rt = ts_rt_start_served_ready(&so, &layout, served, &agent, 1);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

static void test_bad_input(void **state)
{
    static const struct { const char *quotas, *code, *field; } bad[] = {
        { "{'maxDevices':-1}", "out_of_range", "quotas.maxDevices" },
        { "{'maxDevices':0}", "out_of_range", "quotas.maxDevices" },
        { "{'maxDevices':10000000000}", "out_of_range", "quotas.maxDevices" },
        { "{'maxDevices':99999999999999999999999}", NULL, NULL },   /* not even a JSON integer jansson takes */
        { "{'maxDevices':'5'}", "invalid_type", "quotas.maxDevices" },
        { "{'maxDevices':2.5}", "invalid_type", "quotas.maxDevices" },
        { "{'maxDevices':true}", "invalid_type", "quotas.maxDevices" },
        { "{'maxProvisionsPerMinute':-5}", "out_of_range", "quotas.maxProvisionsPerMinute" },
        { "{'maxProvisionsPerMinute':0}", "out_of_range", "quotas.maxProvisionsPerMinute" },
        { "{'maxProvisionsPerMinute':1000001}", "out_of_range", "quotas.maxProvisionsPerMinute" },
        { "{'maxProvisionsPerMinute':[1]}", "invalid_type", "quotas.maxProvisionsPerMinute" },
        { "{'maxDevice':3}", "unknown_field", "quotas.maxDevice" },
        { "[3]", "invalid_type", "quotas" },
        { "5", "invalid_type", "quotas" },
    };
    struct ts_tenant *t;
    struct ts_resp *r;
    json_int_t version;
    (void)state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *body = ts_json("{'id':'bad-%zu','name':'x','residency':{'geographies':['eu']},'quotas':%s}", i,
                                   bad[i].quotas);
        r = ts_admin(rt->cp[0], "POST", "/v1/tenants", body);
        if (bad[i].code)
            expect_bad(r, bad[i].code, bad[i].field, ts_str("create with quotas %s", bad[i].quotas));
        else if (r->status != 400 || !ts_is_error_body(r))
            ts_fail("create with quotas %s: expected a 400 error, got %s", bad[i].quotas, ts_resp_str(r));
        r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/bad-%zu", i), NULL);
        expect_err(r, 404, "not_found", "a refused create left nothing");
    }

    /* defaults: unlimited, active */
    t = tenant("plain", NULL);
    if (!json_is_null(json_object_get(json_object_get(t->json, "quotas"), "maxDevices")) ||
        !json_is_null(json_object_get(json_object_get(t->json, "quotas"), "maxProvisionsPerMinute")))
        ts_fail("a tenant without quotas should show both as null: %s", ts_jdump(t->json));
    TS_EXPECT_STREQ(ts_jstr(t->json, "status"), "active");
    t = tenant("explicit", "{'maxDevices':null,'maxProvisionsPerMinute':7}");
    if (ts_jint(json_object_get(t->json, "quotas"), "maxProvisionsPerMinute", -1) != 7 ||
        !json_is_null(json_object_get(json_object_get(t->json, "quotas"), "maxDevices")))
        ts_fail("quotas as given expected: %s", ts_jdump(t->json));
    version = ts_jint(t->json, "version", 0);

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = ts_admin(rt->cp[0], "PATCH", "/v1/tenants/explicit", ts_json("{'quotas':%s}", bad[i].quotas));
        if (bad[i].code)
            expect_bad(r, bad[i].code, bad[i].field, ts_str("PATCH quotas %s", bad[i].quotas));
        else if (r->status != 400)
            ts_fail("PATCH quotas %s: expected 400, got %s", bad[i].quotas, ts_resp_str(r));
    }
    expect_bad(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/explicit", "{\"status\":\"suspended\"}"), "read_only_field",
               "status", "PATCH status");
    expect_bad(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/explicit", "{\"quota\":{}}"), "unknown_field", "quota",
               "PATCH quota (typo)");
    /* nothing changed */
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/explicit", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (ts_jint(r->json, "version", 0) != version ||
        ts_jint(json_object_get(r->json, "quotas"), "maxProvisionsPerMinute", -1) != 7)
        ts_fail("refused PATCHes changed the tenant: %s", ts_resp_str(r));
    /* PATCH of one field leaves the other */
    r = ts_admin(rt->cp[0], "PATCH", "/v1/tenants/explicit", "{\"quotas\":{\"maxDevices\":12}}");
    TS_EXPECT_STATUS(r, 200);
    if (ts_jint(json_object_get(r->json, "quotas"), "maxDevices", -1) != 12 ||
        ts_jint(json_object_get(r->json, "quotas"), "maxProvisionsPerMinute", -1) != 7 ||
        ts_jint(r->json, "version", 0) != version + 1)
        ts_fail("PATCH maxDevices 12: %s", ts_resp_str(r));

    /* suspend / resume: bodies, methods, unknown tenants */
    expect_bad(ts_admin(rt->cp[0], "POST", "/v1/tenants/explicit/suspend", "{\"reason\":\"x\"}"), "unknown_field",
               "reason", "suspend with a field");
    expect_bad(ts_admin(rt->cp[0], "POST", "/v1/tenants/explicit/resume", "{\"now\":true}"), "unknown_field", "now",
               "resume with a field");
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/explicit/suspend", "[1]");
    if (r->status != 400 || !ts_is_error_body(r))
        ts_fail("suspend with an array body: expected 400, got %s", ts_resp_str(r));
    expect_err(ts_admin(rt->cp[0], "GET", "/v1/tenants/explicit/suspend", NULL), 405, "method_not_allowed",
               "GET suspend");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/nobody/suspend", NULL), 404, "not_found",
               "suspend of an unknown tenant");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/nobody/resume", "{}"), 404, "not_found",
               "resume of an unknown tenant");
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/explicit", NULL);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "active");
}

static struct ts_rt_job jobs[64];

static void test_tenant_bucket(void **state)
{
    struct ts_tenant *greedy = tenant("greedy", "{'maxProvisionsPerMinute':5}");
    struct ts_tenant *polite = tenant("polite", NULL);
    int n200 = 0, n429 = 0, n = 50;
    int64_t t0, elapsed;
    const char *tokens;
    (void)state;

    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < n; i++) {
        ts_rt_job_locate(&jobs[i], rt->cp[i % 2]->port, greedy, ts_str("g-%02d", i));
    }
    t0 = ts_now_ms();
    ts_rt_run_jobs(jobs, n, 8);
    elapsed = ts_now_ms() - t0;
    for (int i = 0; i < n; i++) {
        struct ts_rt_answer *a = &jobs[i].ans;
        const char *code = ts_rt_answer_code(a);
        if (a->status == 200) {
            n200++;
        } else if (a->status == 429 && code && strcmp(code, "tenant_throttled") == 0) {
            char *end;
            long ra = strtol(a->retry_after, &end, 10);
            n429++;
            /* 5/min: a token every 12 s */
            if (!a->retry_after[0] || *end || ra < 1 || ra > 60)
                ts_fail("greedy %d: Retry-After \"%s\" is not an integer in [1, 60]", i, a->retry_after);
        } else {
            ts_fail("greedy %d: expected 200 or 429 tenant_throttled, got %d %s", i, a->status, a->body);
        }
    }
    ts_log("greedy: %d x 200, %d x 429 in %lld ms", n200, n429, (long long)elapsed);
    if (n200 < 5 || n200 > 5 + 1 + elapsed / 12000)
        ts_fail("greedy placed %d devices; its bucket allows 5 (+1 per 12 s)", n200);
    assert_int_equal(assigned_devices("greedy"), n200);
    /* the shared DPS bucket lost only greedy's admitted placements */
    tokens = dps_tokens();
    if (!tokens || atof(tokens) < DPS_PER_MINUTE - n200 - 1)
        ts_fail("the DPS bucket holds %s tokens after greedy's burst; expected at least %d (tenant refusals take "
                "no DPS token)", tokens ? tokens : "(none)", DPS_PER_MINUTE - n200 - 1);

    /* the other tenant still provisions on the same DPS, at both routers */
    for (int i = 0; i < 10; i++) {
        struct ts_resp *r = ts_rt_locate(rt->cp[i % 2], polite, ts_str("p-%02d", i));
        if (r->status != 200)
            ts_fail("polite p-%02d after greedy's burst: expected 200, got %s", i, ts_resp_str(r));
        TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), S1);
    }
    /* greedy's own placed devices still locate (no token needed) */
    for (int i = 0; i < n; i++)
        if (jobs[i].ans.status == 200) {
            TS_EXPECT_STATUS(ts_rt_locate(rt->cp[(i + 1) % 2], greedy, ts_str("g-%02d", i)), 200);
            break;
        }
    /* and greedy is still refused a new one, with Retry-After */
    {
        struct ts_resp *r = ts_rt_locate(rt->cp[0], greedy, "g-late");
        expect_err(r, 429, "tenant_throttled", "greedy after its burst");
        (void)retry_after(r);
    }
}

static void test_max_devices(void **state)
{
    struct ts_tenant *q = tenant("capped", "{'maxDevices':3}");
    struct ts_resp *r;
    (void)state;

    for (int i = 0; i < 3; i++)
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[i % 2], q, ts_str("c-%d", i)), 200);
    for (int c = 0; c < 2; c++)
        expect_err(ts_rt_locate(rt->cp[c], q, "c-3"), 403, "quota_exceeded", "a fourth device");
    assert_int_equal(assigned_devices("capped"), 3);
    /* placed devices keep working at both routers (and reprovision keeps them) */
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 3; i++)
            TS_EXPECT_STATUS(ts_rt_locate(rt->cp[c], q, ts_str("c-%d", i)), 200);
    TS_EXPECT_STATUS(ts_rt_device(rt->cp[1], "reprovision", "capped", "c-0", ts_rt_sas(q, "c-0", 0), NULL), 200);
    /* a deprovision frees a place */
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/capped/devices/c-1/deprovision", NULL), 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], q, "c-3"), 200);
    expect_err(ts_rt_locate(rt->cp[0], q, "c-1"), 403, "quota_exceeded", "the deprovisioned device, place taken");
    /* raised at both routers at once (the change invalidates their caches) */
    r = ts_admin(rt->cp[0], "PATCH", "/v1/tenants/capped", "{\"quotas\":{\"maxDevices\":4}}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], q, "c-1"), 200);
    expect_err(ts_rt_locate(rt->cp[1], q, "c-4"), 403, "quota_exceeded", "a fifth device under maxDevices 4");
    /* lowered below the count: nothing is removed, nothing new is placed */
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/capped", "{\"quotas\":{\"maxDevices\":2}}"), 200);
    for (int i = 0; i < 4; i++)
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], q, ts_str("c-%d", i)), 200);
    expect_err(ts_rt_locate(rt->cp[0], q, "c-4"), 403, "quota_exceeded", "a device over a lowered quota");
    assert_int_equal(assigned_devices("capped"), 4);
    /* null: unlimited */
    r = ts_admin(rt->cp[0], "PATCH", "/v1/tenants/capped", "{\"quotas\":{\"maxDevices\":null}}");
    TS_EXPECT_STATUS(r, 200);
    if (!json_is_null(json_object_get(json_object_get(r->json, "quotas"), "maxDevices")))
        ts_fail("maxDevices null should show as null: %s", ts_resp_str(r));
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], q, "c-4"), 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], q, "c-5"), 200);
    assert_int_equal(assigned_devices("capped"), 6);
}

static void test_max_devices_race(void **state)
{
    struct ts_tenant *q = tenant("racy", "{'maxDevices':10}");
    int n200 = 0, nexceeded = 0, npending = 0, n = 60, pending_one = -1;
    (void)state;

    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < n; i++) {
        ts_rt_job_locate(&jobs[i], rt->cp[i % 2]->port, q, ts_str("r-%02d", i));
    }
    ts_rt_run_jobs(jobs, n, 16);
    for (int i = 0; i < n; i++) {
        struct ts_rt_answer *a = &jobs[i].ans;
        const char *code = ts_rt_answer_code(a);
        if (a->status == 200) {
            n200++;
        } else if (a->status == 403 && code && strcmp(code, "quota_exceeded") == 0) {
            nexceeded++;
        } else if (a->status == 429 && code && strcmp(code, "quota_pending") == 0) {
            npending++;
            if (!a->retry_after[0] || atoi(a->retry_after) < 1)
                ts_fail("racy %d: 429 quota_pending without a Retry-After: %s", i, a->body);
            pending_one = i;
        } else {
            ts_fail("racy %d: expected 200, 403 quota_exceeded or 429 quota_pending; got %d %s", i, a->status,
                    a->body);
        }
    }
    ts_log("racy: %d x 200, %d x quota_exceeded, %d x quota_pending", n200, nexceeded, npending);
    /* never beyond the quota; and every admitted placement commits, so exactly the quota */
    assert_int_equal(assigned_devices("racy"), n200);
    assert_int_equal(n200, 10);
    if (pending_one >= 0) {
        const char *id = ts_str("r-%02d", pending_one);
        expect_err(ts_rt_locate(rt->cp[0], q, id), 403, "quota_exceeded", "a quota_pending device retried");
    }
}

static void test_repeated_provision(void **state)
{
    struct ts_tenant *t = tenant("repeat", "{'maxProvisionsPerMinute':2}");
    const char *db = ts_rt_geo_db(rt, "eu");
    const char *hub, *devid, *op;
    struct ts_resp *r;
    (void)state;

    wait_group("repeat", "enabled");
    r = ts_rt_device(rt->cp[0], "provision", "repeat", "rp-1", ts_rt_sas(t, "rp-1", 0), NULL);
    if (r->status != 200 || !ts_jstr(r->json, "assignedHub"))
        ts_fail("provision rp-1: expected 200 with a hub, got %s", ts_resp_str(r));
    hub = ts_jstr(r->json, "assignedHub");
    devid = ts_jstr(r->json, "deviceId");
    op = ts_pg_scalar(db, "SELECT operation_id FROM dps_registrations WHERE registration_id = 'rp-1'");
    if (!op || !*op)
        ts_fail("rp-1 has no registration at the stamp after its provision");
    /* three repeats at both routers: from the record, no DPS call, no token */
    for (int i = 0; i < 3; i++) {
        r = ts_rt_device(rt->cp[i % 2], "provision", "repeat", "rp-1", ts_rt_sas(t, "rp-1", 0), NULL);
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "assignedHub"), hub);
        TS_EXPECT_STREQ(ts_jstr(r->json, "deviceId"), devid);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
        TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), S1);
    }
    TS_EXPECT_STREQ(ts_pg_scalar(db, "SELECT operation_id FROM dps_registrations WHERE registration_id = 'rp-1'"),
                    op);
    /* the bucket (2/min) still has its second token ... */
    r = ts_rt_device(rt->cp[1], "provision", "repeat", "rp-2", ts_rt_sas(t, "rp-2", 0), NULL);
    if (r->status != 200)
        ts_fail("rp-2 after three repeats of rp-1: expected 200 (the repeats took no token), got %s",
                ts_resp_str(r));
    /* ... and no third */
    r = ts_rt_device(rt->cp[0], "provision", "repeat", "rp-3", ts_rt_sas(t, "rp-3", 0), NULL);
    expect_err(r, 429, "tenant_throttled", "rp-3, the tenant's bucket spent");
    (void)retry_after(r);
    /* rp-1 still answers from its record */
    TS_EXPECT_STATUS(ts_rt_device(rt->cp[0], "provision", "repeat", "rp-1", ts_rt_sas(t, "rp-1", 0), NULL), 200);
}

static void test_suspend_resume(void **state)
{
    struct ts_tenant *t = tenant("sleepy", NULL);
    struct ts_resp *r;
    json_int_t version;
    const char *out;
    int rc;
    (void)state;

    wait_group("sleepy", "enabled");
    r = ts_rt_locate(rt->cp[0], t, "s-1");
    TS_EXPECT_STATUS(r, 200);
    r = stamp_provision(t, "s-1");
    if (r->status != 200 || strcmp(ts_jstr(r->json, "status") ? ts_jstr(r->json, "status") : "", "assigned") != 0)
        ts_fail("s-1 at the stamp before the suspension: expected assigned, got %s", ts_resp_str(r));
    TS_EXPECT_STATUS(ts_rt_device(rt->cp[1], "provision", "sleepy", "s-2", ts_rt_sas(t, "s-2", 0), NULL), 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], t, "s-1"), 200);   /* cp[1] caches it */

    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/sleepy/suspend", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "suspended");
    version = ts_jint(r->json, "version", 0);
    r = ts_admin(rt->cp[1], "POST", "/v1/tenants/sleepy/suspend", "{}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "suspended");
    if (ts_jint(r->json, "version", 0) != version)
        ts_fail("suspending a suspended tenant changed its version: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(ts_admin(rt->cp[1], "GET", "/v1/tenants/sleepy", NULL)->json, "status"), "suspended");

    for (int c = 0; c < 2; c++) {
        expect_err(ts_rt_locate(rt->cp[c], t, "s-1"), 403, "tenant_suspended", "locate of a placed device");
        expect_err(ts_rt_device(rt->cp[c], "provision", "sleepy", "s-2", ts_rt_sas(t, "s-2", 0), NULL), 403,
                   "tenant_suspended", "provision of a registered device");
        expect_err(ts_rt_device(rt->cp[c], "reprovision", "sleepy", "s-1", ts_rt_sas(t, "s-1", 0), NULL), 403,
                   "tenant_suspended", "reprovision");
        expect_err(ts_rt_locate(rt->cp[c], t, "s-new"), 403, "tenant_suspended", "a first placement");
        /* a wrong signature learns nothing: still 401 */
        r = ts_rt_device(rt->cp[c], "locate", "sleepy", "s-1", ts_rt_sas(t, "s-other", 0), NULL);
        if (r->status != 401)
            ts_fail("locate with another device's signature while suspended: expected 401, got %s", ts_resp_str(r));
    }
    /* the stamp: the group is written disabled, and its DPS refuses the tenant's devices */
    wait_group("sleepy", "disabled");
    r = stamp_provision(t, "s-1");
    if (r->status != 200 || strcmp(ts_jstr(r->json, "status") ? ts_jstr(r->json, "status") : "", "disabled") != 0)
        ts_fail("s-1 registering at the stamp while suspended: expected status disabled, got %s", ts_resp_str(r));
    out = sd_provision(t, "s-3", &rc);
    if (rc == 0 || !strstr(out, "disabled") || strstr(out, "\"status\":\"ready\""))
        ts_fail("sd-provision-one s-3 while suspended: expected a refusal (disabled), exit %d: %s", rc, out);
    /* nothing deleted */
    assert_int_equal(assigned_devices("sleepy"), 2);
    assert_int_equal(ts_pg_count(ts_rt_geo_db(rt, "eu"),
                                 "SELECT count(*) FROM dps_registrations WHERE registration_id IN ('s-1','s-2')"),
                     2);

    r = ts_admin(rt->cp[1], "POST", "/v1/tenants/sleepy/resume", "{}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "active");
    version = ts_jint(r->json, "version", 0);
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/sleepy/resume", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (ts_jint(r->json, "version", 0) != version || strcmp(ts_jstr(r->json, "status"), "active") != 0)
        ts_fail("resuming an active tenant changed it: %s", ts_resp_str(r));
    for (int c = 0; c < 2; c++) {
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[c], t, "s-1"), 200);
        TS_EXPECT_STATUS(ts_rt_device(rt->cp[c], "provision", "sleepy", "s-2", ts_rt_sas(t, "s-2", 0), NULL), 200);
    }
    wait_group("sleepy", "enabled");
    r = stamp_provision(t, "s-1");
    if (r->status != 200 || strcmp(ts_jstr(r->json, "status") ? ts_jstr(r->json, "status") : "", "assigned") != 0)
        ts_fail("s-1 at the stamp after the resume: expected assigned, got %s", ts_resp_str(r));
    out = sd_provision(t, "s-3", &rc);
    if (rc != 0 || !strstr(out, "\"status\":\"ready\""))
        ts_fail("sd-provision-one s-3 after the resume: expected ready, exit %d: %s", rc, out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_tenant_bucket),
        cmocka_unit_test(test_max_devices),
        cmocka_unit_test(test_max_devices_race),
        cmocka_unit_test(test_repeated_provision),
        cmocka_unit_test(test_suspend_resume),
    };
    ts_init("test_tenant_quotas");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
