/*
 * test_hub_registry - the stamp's hub registry (stamp-agent/hub_registry.h,
 * docs/stamp-dps.md "Hub registry") with a real agent, curl and the official
 * azure-iothub SDK's Registry (tests/sdk/registry.js):
 *   - a device provisioned through the DPS device API has an identity on its
 *     assigned hub (sas, the group-derived key, sealed at rest); moved to
 *     another hub, its old identity is gone;
 *   - SDK create / get / update to disabled / delete, with status, etag and
 *     generationId asserted; 404, 409, 412;
 *   - a wrong key, sr or no credential -> 401; a Host that is no hub -> the
 *     DPS routes as before; bad bodies, ids and queries -> 400;
 *   - the load report's hub device counts and the maxDevices limit come from
 *     the registry;
 *   - the drift routes GET /registrationSummary and /registrationIds.
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
#include "ts_stamp.h"

#define SCOPE "0ne000HUB01"
#define DPS   "hub-dps"
#define HUB_A "hub-a.reg.test.net"
#define HUB_B "hub-b.reg.test.net"
#define HUB_C "hub-c.reg.test.net"   /* maxDevices 2 */
#define API   "?api-version=2021-04-12"

static struct ts_stamp *st;
static const char *gkey, *tkey;

/* A symmetric-key group with static allocation to one hub; tenant: managed by stampcp for it. */
static void put_group(const char *id, const char *key, const char *hub, const char *tenant)
{
    const char *twin = tenant ? ts_json(",'initialTwin':{'tags':{'managedBy':'stampcp','tenantId':'%s'}}", tenant) : "";
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "PUT", ts_str("/enrollmentGroups/%s?api-version=2021-10-01", id),
                                      ts_json("{'enrollmentGroupId':'%s','attestation':{'type':'symmetricKey',"
                                              "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}},"
                                              "'allocationPolicy':'static','iotHubs':['%s']%s}",
                                              id, key, ts_random_key(32), hub, twin)),
                     200);
}

static int group_setup(void **state)
{
    (void)state;
    struct ts_stamp_opts o = {
        .name = "hubreg",
        .inst = { { .id = DPS, .scope = SCOPE } },
        .hubs = { { .id = "hub-a", .host = HUB_A }, { .id = "hub-b", .host = HUB_B },
                  { .id = "hub-c", .host = HUB_C, .max_devices = 2 } },
    };
    st = ts_stamp_start(&o);
    gkey = ts_random_key(64);
    tkey = ts_random_key(64);
    put_group("grp-a", gkey, HUB_A, NULL);
    put_group("grp-t", tkey, HUB_B, "acme");
    return 0;
}

static const char *provision(const char *key, const char *regid)
{
    struct ts_resp *r = ts_stamp_provision(st, SCOPE, regid, ts_device_sas(SCOPE, regid, ts_derive_key(key, regid), 0),
                                           15000);
    if (!ts_jstr(r->json, "status") || strcmp(ts_jstr(r->json, "status"), "assigned") != 0)
        ts_fail("%s was not assigned: %s", regid, ts_resp_str(r));
    return ts_jstr(json_object_get(r->json, "registrationState"), "assignedHub");
}

static struct ts_resp *reg(const char *hub, const char *method, const char *path, const char *if_match,
                           const char *body)
{
    return ts_hub_registry(st, hub, ts_hub_sas(st, hub, NULL), method, path, if_match, body);
}

/* The SDK's answer; exit code in *rc. */
static json_t *sdk(const char *hub, const char *cmd, const char *args, int expect_rc)
{
    int rc = -2;
    json_t *j = ts_sdk_registry(st, hub, cmd, args, &rc);
    if (rc != expect_rc)
        ts_fail("registry.js %s %s on %s exited %d, not %d: %s", cmd, args, hub, rc, expect_rc,
                j ? json_dumps(j, JSON_COMPACT) : "(no output)");
    return j;
}

static json_t *body_of(json_t *j) { return json_object_get(j, "body"); }

/* An IoT Hub error: status, the iothub-errorcode header and "ErrorCode:<code>;" in Message. */
static void expect_hub_error(const struct ts_resp *r, int status, const char *code)
{
    const char *m = ts_jstr(r->json, "Message");
    if (r->status != status || !ts_header(r, "iothub-errorcode") || strcmp(ts_header(r, "iothub-errorcode"), code) != 0 ||
        !m || strncmp(m, ts_str("ErrorCode:%s;", code), strlen(code) + 11) != 0 || !ts_jstr(r->json, "ExceptionMessage"))
        ts_fail("expected %d %s, got %s", status, code, ts_resp_str(r));
}

/* ---- identities made by assignment ---- */

static void test_assignment_creates_identity(void **state)
{
    json_t *j, *auth;
    (void)state;
    TS_EXPECT_STREQ(provision(gkey, "dev-1"), HUB_A);
    j = sdk(HUB_A, "get", "{\"id\":\"dev-1\"}", 0);
    assert_int_equal(ts_jint(j, "statusCode", 0), 200);
    TS_EXPECT_STREQ(ts_jstr(body_of(j), "deviceId"), "dev-1");
    TS_EXPECT_STREQ(ts_jstr(body_of(j), "status"), "enabled");
    TS_EXPECT_STREQ(ts_jstr(body_of(j), "connectionState"), "Disconnected");
    auth = json_object_get(body_of(j), "authentication");
    TS_EXPECT_STREQ(ts_jstr(auth, "type"), "sas");
    /* the device's own key: the group key derived for its id */
    TS_EXPECT_STREQ(ts_jstr(json_object_get(auth, "symmetricKey"), "primaryKey"), ts_derive_key(gkey, "dev-1"));
    /* sealed at rest, with the registration that made it */
    TS_EXPECT_STREQ(ts_pg_scalar(st->db, "SELECT left(primary_key, 4) || dps_id || '/' || registration_id || '/' || "
                                         "owner FROM hub_devices WHERE device_id = 'dev-1'"),
                    "enc:" DPS "/dev-1/enrollment:group:grp-a");
    /* not on another hub */
    expect_hub_error(reg(HUB_B, "GET", "/devices/dev-1" API, NULL, NULL), 404, "DeviceNotFound");
    j = sdk(HUB_B, "get", "{\"id\":\"dev-1\"}", 1);
    assert_int_equal(ts_jint(j, "statusCode", 0), 404);
    TS_EXPECT_STREQ(ts_jstr(j, "name"), "DeviceNotFoundError");
}

/* Re-registered onto another hub, the device loses its old identity. */
static void test_move_removes_old_identity(void **state)
{
    (void)state;
    TS_EXPECT_STREQ(provision(gkey, "dev-move"), HUB_A);
    TS_EXPECT_STATUS(reg(HUB_A, "GET", "/devices/dev-move" API, NULL, NULL), 200);
    put_group("grp-a", gkey, HUB_B, NULL);
    TS_EXPECT_STREQ(provision(gkey, "dev-move"), HUB_B);
    TS_EXPECT_STATUS(reg(HUB_B, "GET", "/devices/dev-move" API, NULL, NULL), 200);
    expect_hub_error(reg(HUB_A, "GET", "/devices/dev-move" API, NULL, NULL), 404, "DeviceNotFound");
    TS_EXPECT_STREQ(ts_pg_scalar(st->db, "SELECT count(*) FROM hub_devices WHERE device_id = 'dev-move'"), "1");
    put_group("grp-a", gkey, HUB_A, NULL);
}

/* ---- the SDK round trip ---- */

static void test_sdk_round_trip(void **state)
{
    json_t *c, *g, *u, *e;
    const char *etag, *gen;
    (void)state;
    c = sdk(HUB_A, "create", "{\"deviceId\":\"api-1\"}", 0);
    TS_EXPECT_STREQ(ts_jstr(body_of(c), "deviceId"), "api-1");
    TS_EXPECT_STREQ(ts_jstr(body_of(c), "status"), "enabled");
    etag = ts_jstr(body_of(c), "etag");
    gen = ts_jstr(body_of(c), "generationId");
    assert_non_null(etag);
    assert_true(gen && strlen(gen) >= 10);
    /* keys generated, as IoT Hub does for an empty symmetricKey */
    assert_true(strlen(ts_jstr(json_object_get(json_object_get(body_of(c), "authentication"), "symmetricKey"),
                               "primaryKey")) == 44);
    g = sdk(HUB_A, "get", "{\"id\":\"api-1\"}", 0);
    TS_EXPECT_STREQ(ts_jstr(body_of(g), "etag"), etag);
    TS_EXPECT_STREQ(ts_jstr(body_of(g), "generationId"), gen);
    /* create again: 409 */
    e = sdk(HUB_A, "create", "{\"deviceId\":\"api-1\"}", 1);
    assert_int_equal(ts_jint(e, "statusCode", 0), 409);
    TS_EXPECT_STREQ(ts_jstr(e, "name"), "DeviceAlreadyExistsError");
    /* get, status disabled, update */
    u = sdk(HUB_A, "disable", "{\"id\":\"api-1\",\"statusReason\":\"stolen\"}", 0);
    TS_EXPECT_STREQ(ts_jstr(body_of(u), "status"), "disabled");
    TS_EXPECT_STREQ(ts_jstr(body_of(u), "statusReason"), "stolen");
    TS_EXPECT_STREQ(ts_jstr(body_of(u), "generationId"), gen);
    if (strcmp(ts_jstr(body_of(u), "etag"), etag) == 0)
        ts_fail("the etag did not change with the update: %s", etag);
    /* the keys are kept across the update */
    TS_EXPECT_STREQ(ts_jstr(json_object_get(json_object_get(body_of(u), "authentication"), "symmetricKey"), "primaryKey"),
                    ts_jstr(json_object_get(json_object_get(body_of(c), "authentication"), "symmetricKey"), "primaryKey"));
    g = sdk(HUB_A, "get", "{\"id\":\"api-1\"}", 0);
    TS_EXPECT_STREQ(ts_jstr(body_of(g), "status"), "disabled");
    /* delete, then it is gone */
    sdk(HUB_A, "delete", "{\"id\":\"api-1\"}", 0);
    e = sdk(HUB_A, "get", "{\"id\":\"api-1\"}", 1);
    assert_int_equal(ts_jint(e, "statusCode", 0), 404);
    e = sdk(HUB_A, "delete", "{\"id\":\"api-1\"}", 1);
    assert_int_equal(ts_jint(e, "statusCode", 0), 404);
    /* created again: a new generation */
    c = sdk(HUB_A, "create", "{\"deviceId\":\"api-1\",\"authentication\":{\"type\":\"selfSigned\","
                             "\"x509Thumbprint\":{\"primaryThumbprint\":\"00112233445566778899AABBCCDDEEFF00112233\"}}}",
            0);
    if (strcmp(ts_jstr(body_of(c), "generationId"), gen) == 0)
        ts_fail("a re-created device kept its generationId %s", gen);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(body_of(c), "authentication"), "type"), "selfSigned");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(json_object_get(body_of(c), "authentication"), "x509Thumbprint"),
                            "primaryThumbprint"),
                    "00112233445566778899AABBCCDDEEFF00112233");
    sdk(HUB_A, "delete", "{\"id\":\"api-1\"}", 0);
}

/* ---- conditions over curl: 404 / 412 ---- */

static void test_etags(void **state)
{
    struct ts_resp *r;
    const char *etag;
    (void)state;
    r = reg(HUB_A, "PUT", "/devices/cond-1" API, NULL, "{\"deviceId\":\"cond-1\"}");
    TS_EXPECT_STATUS(r, 200);
    etag = ts_jstr(r->json, "etag");
    TS_EXPECT_STREQ(ts_header(r, "ETag"), ts_str("\"%s\"", etag));
    /* update with the right etag, then with the old one */
    r = reg(HUB_A, "PUT", "/devices/cond-1" API, ts_str("\"%s\"", etag), "{\"deviceId\":\"cond-1\",\"status\":\"disabled\"}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "disabled");
    expect_hub_error(reg(HUB_A, "PUT", "/devices/cond-1" API, ts_str("\"%s\"", etag), "{\"deviceId\":\"cond-1\"}"), 412,
                     "PreconditionFailed");
    expect_hub_error(reg(HUB_A, "PUT", "/devices/cond-1" API, "\"garbage!\"", "{\"deviceId\":\"cond-1\"}"), 412,
                     "PreconditionFailed");
    expect_hub_error(reg(HUB_A, "DELETE", "/devices/cond-1" API, ts_str("\"%s\"", etag), NULL), 412, "PreconditionFailed");
    /* missing device: 404 for update and delete */
    expect_hub_error(reg(HUB_A, "PUT", "/devices/nobody" API, "*", "{\"deviceId\":\"nobody\"}"), 404, "DeviceNotFound");
    expect_hub_error(reg(HUB_A, "DELETE", "/devices/nobody" API, "\"*\"", NULL), 404, "DeviceNotFound");
    /* the current etag deletes */
    r = reg(HUB_A, "GET", "/devices/cond-1" API, NULL, NULL);
    TS_EXPECT_STATUS(reg(HUB_A, "DELETE", "/devices/cond-1" API, ts_str("\"%s\"", ts_jstr(r->json, "etag")), NULL), 204);
}

/* ---- authentication and routing ---- */

static void test_auth(void **state)
{
    const char *path = "/devices/dev-1" API;
    (void)state;
    expect_hub_error(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_A, ts_random_key(32)), "GET", path, NULL, NULL), 401,
                     "IotHubUnauthorizedAccess");
    expect_hub_error(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_B, NULL), "GET", path, NULL, NULL), 401,
                     "IotHubUnauthorizedAccess");
    expect_hub_error(ts_hub_registry(st, HUB_A, ts_stamp_service_sas(st, NULL), "GET", path, NULL, NULL), 401,
                     "IotHubUnauthorizedAccess");
    expect_hub_error(ts_hub_registry(st, HUB_A, NULL, "GET", path, NULL, NULL), 401, "IotHubUnauthorizedAccess");
    expect_hub_error(ts_hub_registry(st, HUB_A, NULL, "PUT", "/devices/x" API, NULL, "{\"deviceId\":\"x\"}"), 401,
                     "IotHubUnauthorizedAccess");
    /* sr below the hub, and the Host in another case with a port: accepted */
    TS_EXPECT_STATUS(ts_hub_registry(st, "HUB-A.reg.test.net:443", ts_hub_sas(st, HUB_A "/devices/dev-1", NULL), "GET",
                                     path, NULL, NULL),
                     200);
    /* a token scoped to one device opens that device only, segment by segment */
    TS_EXPECT_STATUS(reg(HUB_A, "PUT", "/devices/dev-10" API, NULL, "{\"deviceId\":\"dev-10\"}"), 200);
    expect_hub_error(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_A "/devices/dev-1", NULL), "GET",
                                     "/devices/dev-10" API, NULL, NULL),
                     401, "IotHubUnauthorizedAccess");
    expect_hub_error(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_A "/devices/dev-1", NULL), "DELETE",
                                     "/devices/dev-10" API, "*", NULL),
                     401, "IotHubUnauthorizedAccess");
    expect_hub_error(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_A "/devices/DEV-1", NULL), "GET", path, NULL,
                                     NULL),
                     401, "IotHubUnauthorizedAccess");
    expect_hub_error(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_A "/twins", NULL), "GET", path, NULL, NULL), 401,
                     "IotHubUnauthorizedAccess");
    TS_EXPECT_STATUS(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_A "/devices", NULL), "GET", "/devices/dev-10" API,
                                     NULL, NULL),
                     200);
    TS_EXPECT_STATUS(ts_hub_registry(st, HUB_A, ts_hub_sas(st, HUB_A "/", NULL), "GET", path, NULL, NULL), 200);
    TS_EXPECT_STATUS(reg(HUB_A, "DELETE", "/devices/dev-10" API, "*", NULL), 204);
    /* the SDK with a wrong key */
    {
        int rc = 0;
        struct ts_stamp other = *st;
        json_t *j;
        other.policy_key = ts_random_key(32);
        j = ts_sdk_registry(&other, HUB_A, "get", "{\"id\":\"dev-1\"}", &rc);
        assert_int_equal(rc, 1);
        assert_int_equal(ts_jint(j, "statusCode", 0), 401);
    }
}

/* A Host that names no hub: the DPS routes, as before. */
static void test_unknown_host_is_dps(void **state)
{
    struct ts_resp *r;
    (void)state;
    r = ts_hub_registry(st, "hub-z.reg.test.net", ts_hub_sas(st, "hub-z.reg.test.net", NULL), "GET",
                        "/devices/dev-1" API, NULL, NULL);
    if (!ts_is_dps_error(r, 404) || ts_header(r, "iothub-errorcode"))
        ts_fail("a Host of no hub should get the DPS 404: %s", ts_resp_str(r));
    r = ts_hub_registry(st, "127.0.0.1", ts_stamp_service_sas(st, NULL), "GET",
                        "/registrations/dev-1?api-version=2021-10-01", NULL, NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "assignedHub"), HUB_A);
}

static void test_bad_input(void **state)
{
    static const char *const bodies[] = {
        "not json",
        "[1]",
        "{\"deviceId\":\"other\"}",
        "{}",
        "{\"deviceId\":\"bad-1\",\"color\":\"red\"}",
        "{\"deviceId\":\"bad-1\",\"status\":\"paused\"}",
        "{\"deviceId\":\"bad-1\",\"status\":1}",
        "{\"deviceId\":\"bad-1\",\"statusReason\":5}",
        "{\"deviceId\":\"bad-1\",\"authentication\":\"sas\"}",
        "{\"deviceId\":\"bad-1\",\"authentication\":{\"type\":\"magic\"}}",
        "{\"deviceId\":\"bad-1\",\"authentication\":{\"type\":\"sas\",\"extra\":1}}",
        "{\"deviceId\":\"bad-1\",\"authentication\":{\"type\":\"sas\",\"symmetricKey\":{\"primaryKey\":\"c2hvcnQ=\"}}}",
        "{\"deviceId\":\"bad-1\",\"authentication\":{\"type\":\"sas\",\"symmetricKey\":{\"primaryKey\":7}}}",
        "{\"deviceId\":\"bad-1\",\"authentication\":{\"type\":\"selfSigned\"}}",
        "{\"deviceId\":\"bad-1\",\"authentication\":{\"type\":\"selfSigned\",\"x509Thumbprint\":{\"primaryThumbprint\":\"xyz\"}}}",
        "{\"deviceId\":\"bad-1\",\"capabilities\":{\"iotEdge\":\"yes\"}}",
        NULL,
    };
    char longid[140];
    (void)state;
    for (int i = 0; bodies[i]; i++)
        expect_hub_error(reg(HUB_A, "PUT", "/devices/bad-1" API, NULL, bodies[i]), 400, "ArgumentInvalid");
    memset(longid, 'x', 129);
    longid[129] = '\0';
    expect_hub_error(reg(HUB_A, "GET", ts_str("/devices/%s" API, longid), NULL, NULL), 400, "ArgumentInvalid");
    expect_hub_error(reg(HUB_A, "GET", "/devices/a%20b" API, NULL, NULL), 400, "ArgumentInvalid");
    expect_hub_error(reg(HUB_A, "GET", "/devices/a%2Fb" API, NULL, NULL), 400, "ArgumentInvalid");
    expect_hub_error(reg(HUB_A, "GET", "/devices/dev-1", NULL, NULL), 400, "InvalidProtocolVersion");
    expect_hub_error(reg(HUB_A, "POST", "/devices/dev-1" API, NULL, "{}"), 405, "MethodNotAllowed");
    expect_hub_error(reg(HUB_A, "GET", "/twins/dev-1" API, NULL, NULL), 404, "NotFound");
    /* nothing was written */
    TS_EXPECT_STREQ(ts_pg_scalar(st->db, "SELECT count(*) FROM hub_devices WHERE device_id = 'bad-1'"), "0");
    /* a 128-character id of every allowed character class is fine */
    memset(longid, 'y', 128);
    memcpy(longid, "a-:.+_#*!(),=@$'", 16);
    longid[128] = '\0';
    TS_EXPECT_STATUS(reg(HUB_A, "PUT", ts_str("/devices/%s" API, ts_urlencode(longid)), NULL,
                         ts_str("{\"deviceId\":\"%s\"}", longid)),
                     200);
    TS_EXPECT_STATUS(reg(HUB_A, "DELETE", ts_str("/devices/%s" API, ts_urlencode(longid)), "*", NULL), 204);
}

/* ---- counts and maxDevices from the registry ---- */

static long long hub_devices_reported(const char *hub_id)
{
    const char *load = ts_redis_cmd(st->redis->addr, "HGET stamp:hubreg-%ld:load load", (long)getpid());
    json_t *j = load ? json_loads(load, 0, NULL) : NULL;
    json_t *hubs = json_object_get(j, "hubs"), *h;
    size_t i;
    long long n = -1;
    json_array_foreach(hubs, i, h)
        if (ts_jstr(h, "id") && strcmp(ts_jstr(h, "id"), hub_id) == 0)
            n = (long long)json_integer_value(json_object_get(h, "devices"));
    json_decref(j);
    return n;
}

struct want { const char *hub; long long n; };

static bool reports(void *arg)
{
    const struct want *w = arg;
    return hub_devices_reported(w->hub) == w->n;
}

static void wait_reported(const char *hub_id, long long n)
{
    struct want w = {hub_id, n};
    if (!ts_wait_until(reports, &w, 12000))
        ts_fail("the load report says %lld devices on %s, not %lld (%s)", hub_devices_reported(hub_id), hub_id, n,
                ts_redis_cmd(st->redis->addr, "HGET stamp:hubreg-%ld:load load", (long)getpid()));
}

static void test_counts_follow_registry(void **state)
{
    long long a;
    (void)state;
    a = atoll(ts_pg_scalar(st->db, "SELECT count(*) FROM hub_devices WHERE hub_host = '" HUB_A "'"));
    wait_reported("hub-a", a);
    TS_EXPECT_STATUS(reg(HUB_A, "PUT", "/devices/cnt-1" API, NULL, "{\"deviceId\":\"cnt-1\"}"), 200);
    wait_reported("hub-a", a + 1);
    /* an identity made by assignment, deleted through the registry: the count goes down */
    TS_EXPECT_STATUS(reg(HUB_A, "DELETE", "/devices/cnt-1" API, "*", NULL), 204);
    TS_EXPECT_STATUS(reg(HUB_A, "DELETE", "/devices/dev-1" API, "*", NULL), 204);
    wait_reported("hub-a", a - 1);
    ts_log("hub-a: %lld identities, then %lld, then %lld", a, a + 1, a - 1);
}

static void test_max_devices_from_registry(void **state)
{
    const char *ckey = ts_random_key(64);
    struct ts_resp *r;
    const char *id;
    (void)state;
    put_group("grp-c", ckey, HUB_C, NULL);
    /* two identities made through the registry fill hub-c (maxDevices 2) */
    TS_EXPECT_STATUS(reg(HUB_C, "PUT", "/devices/fill-1" API, NULL, "{\"deviceId\":\"fill-1\"}"), 200);
    TS_EXPECT_STATUS(reg(HUB_C, "PUT", "/devices/fill-2" API, NULL, "{\"deviceId\":\"fill-2\"}"), 200);
    wait_reported("hub-c", 2);
    id = "c-dev-1";
    r = ts_stamp_provision(st, SCOPE, id, ts_device_sas(SCOPE, id, ts_derive_key(ckey, id), 0), 15000);
    if (!ts_jstr(r->json, "status") || strcmp(ts_jstr(r->json, "status"), "failed") != 0 ||
        json_integer_value(json_object_get(json_object_get(r->json, "registrationState"), "errorCode")) != 503201)
        ts_fail("a full hub-c should fail the registration with 503201: %s", ts_resp_str(r));
    /* room again */
    TS_EXPECT_STATUS(reg(HUB_C, "DELETE", "/devices/fill-2" API, "*", NULL), 204);
    wait_reported("hub-c", 1);
    TS_EXPECT_STREQ(provision(ckey, id), HUB_C);
    wait_reported("hub-c", 2);
}

/* ---- the drift routes ---- */

static json_t *owner_row(json_t *summary, const char *owner)
{
    json_t *o;
    size_t i;
    json_array_foreach(json_object_get(summary, "owners"), i, o)
        if (ts_jstr(o, "owner") && strcmp(ts_jstr(o, "owner"), owner) == 0)
            return o;
    return NULL;
}

static void test_drift_routes(void **state)
{
    struct ts_resp *r;
    json_t *o;
    const char *after = NULL;
    long long total, seen = 0;
    int pages = 0;
    char prev[200] = "";
    const char *walked = "";
    (void)state;
    provision(tkey, "t-1");
    provision(tkey, "t-2");
    r = ts_stamp_service(st, NULL, "GET", "/registrationSummary?dpsInstance=" DPS, NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "dpsInstance"), DPS);
    o = owner_row(r->json, "tenant:acme");
    assert_non_null(o);
    assert_int_equal(ts_jint(o, "assigned", -1), 2);
    assert_int_equal(ts_jint(o, "assigning", -1), 0);
    assert_int_equal(ts_jint(o, "failed", -1), 0);
    assert_int_equal(ts_jint(o, "disabled", -1), 0);
    o = owner_row(r->json, "enrollment:group:grp-c");
    assert_non_null(o);
    assert_int_equal(ts_jint(o, "assigned", -1), 1);   /* c-dev-1 (it failed once, then was assigned) */
    /* pages of 2 walk every registration in id order */
    total = atoll(ts_pg_scalar(st->db, "SELECT count(*) FROM dps_registrations WHERE dps_id = '" DPS "'"));
    for (;;) {
        json_t *items, *it;
        size_t i;
        r = ts_stamp_service(st, NULL, "GET",
                             ts_str("/registrationIds?dpsInstance=" DPS "&limit=2%s%s", after ? "&after=" : "",
                                    after ? ts_urlencode(after) : ""),
                             NULL);
        TS_EXPECT_STATUS(r, 200);
        items = json_object_get(r->json, "items");
        assert_true(json_array_size(items) <= 2);
        json_array_foreach(items, i, it) {
            const char *id = ts_jstr(it, "registrationId");
            snprintf(prev, sizeof prev, "%s", id);
            walked = ts_str("%s%s%s", walked, *walked ? "," : "", id);
            assert_non_null(ts_jstr(it, "owner"));
            assert_non_null(ts_jstr(it, "status"));
            assert_non_null(ts_jstr(it, "lastUpdatedDateTimeUtc"));
            if (strcmp(id, "t-1") == 0) {
                TS_EXPECT_STREQ(ts_jstr(it, "owner"), "tenant:acme");
                TS_EXPECT_STREQ(ts_jstr(it, "assignedHub"), HUB_B);
                TS_EXPECT_STREQ(ts_jstr(it, "deviceId"), "t-1");
            }
            seen++;
        }
        pages++;
        if (json_is_null(json_object_get(r->json, "next")))
            break;
        after = ts_jstr(r->json, "next");
        TS_EXPECT_STREQ(after, prev);
        if (pages > 100)
            ts_fail("registrationIds did not end");
    }
    assert_int_equal(seen, total);
    /* every id once, in the primary key's order */
    TS_EXPECT_STREQ(walked, ts_pg_scalar(st->db, "SELECT string_agg(registration_id, ',' ORDER BY registration_id) "
                                                 "FROM dps_registrations WHERE dps_id = '" DPS "'"));
    ts_log("registrationIds: %lld registrations in %d pages of 2", seen, pages);
    /* default limit: everything in one page */
    r = ts_stamp_service(st, NULL, "GET", "/registrationIds?dpsInstance=" DPS, NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal((long long)json_array_size(json_object_get(r->json, "items")), total);
    assert_true(json_is_null(json_object_get(r->json, "next")));
    /* bad input */
    static const char *const bad[] = {"limit=0", "limit=1001", "limit=x", "limit=", "limit=-1", "after=",
                                      "after=%FF%FE", "after=a%C3", NULL};
    for (int i = 0; bad[i]; i++) {
        r = ts_stamp_service(st, NULL, "GET", ts_str("/registrationIds?dpsInstance=" DPS "&%s", bad[i]), NULL);
        if (!ts_is_dps_error(r, 400))
            ts_fail("%s: %s", bad[i], ts_resp_str(r));
    }
    r = ts_stamp_service(st, NULL, "GET", "/registrationSummary?dpsInstance=nope", NULL);
    if (!ts_is_dps_error(r, 404))
        ts_fail("unknown instance: %s", ts_resp_str(r));
    r = ts_stamp_service(st, ts_random_key(32), "GET", "/registrationSummary?dpsInstance=" DPS, NULL);
    if (!ts_is_dps_error(r, 401))
        ts_fail("wrong key: %s", ts_resp_str(r));
    r = ts_stamp_service(st, NULL, "POST", "/registrationSummary?dpsInstance=" DPS, "{}");
    if (!ts_is_dps_error(r, 405))
        ts_fail("POST: %s", ts_resp_str(r));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_assignment_creates_identity),
        cmocka_unit_test(test_move_removes_old_identity),
        cmocka_unit_test(test_sdk_round_trip),
        cmocka_unit_test(test_etags),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_unknown_host_is_dps),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_counts_follow_registry),
        cmocka_unit_test(test_max_devices_from_registry),
        cmocka_unit_test(test_drift_routes),
    };
    ts_init("test_hub_registry");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
