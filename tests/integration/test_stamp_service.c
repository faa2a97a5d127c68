/*
 * test_stamp_service - the stamp's DPS service API driven by the official
 * azure-iot-provisioning-service SDK (tests/sdk/service.js, dps-wire.md §8):
 * enrollment group and individual enrollment create / get / update with the
 * etag / update with a stale etag (InvalidEtagError, 412) / delete (then 404),
 * a paged group query (page size 2 over 5 groups: every group exactly once,
 * no page over 2), getDeviceRegistrationState after a device registered with
 * the device SDK, and a connection string with a wrong key (401).
 */
#include <setjmp.h>
#include <signal.h>
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

#define SCOPE "0ne000SVC01"
#define HUB_A "hub-a.svc.test.net"

static struct ts_stamp *st;

static int group_setup(void **state)
{
    (void)state;
    struct ts_stamp_opts o = {
        .name = "service",
        .inst = { { .id = "svc-dps", .scope = SCOPE } },
        .hubs = { { .id = "hub-a", .host = HUB_A } },
    };
    ts_sdk_modules();
    st = ts_stamp_start(&o);
    return 0;
}

static json_t *ok(const char *cmd, const char *args)
{
    int rc;
    json_t *r = ts_sdk_service(st, cmd, args, &rc);
    if (rc != 0 || !json_is_object(r))
        ts_fail("%s %s: expected success, got exit %d: %s", cmd, args, rc, ts_jdump(r));
    return json_object_get(r, "body");
}

static void fails(const char *cmd, const char *args, int status, const char *cls)
{
    int rc;
    json_t *r = ts_sdk_service(st, cmd, args, &rc);
    if (rc != 1 || ts_jint(r, "statusCode", 0) != status || (cls && (!ts_jstr(r, "error") || strcmp(ts_jstr(r, "error"), cls) != 0)))
        ts_fail("%s %s: expected %s %d, got exit %d: %s", cmd, args, cls ? cls : "an error", status, rc, ts_jdump(r));
    json_t *b = json_object_get(r, "responseBody");
    if (ts_jint(b, "errorCode", 0) / 1000 != status)
        ts_fail("%s: no DPS error body for %d: %s", cmd, status, ts_jdump(r));
}

static void expect_str(const json_t *obj, const char *key, const char *want, const char *what)
{
    const char *got = ts_jstr(obj, key);
    if (!got || strcmp(got, want) != 0)
        ts_fail("%s: %s is %s, expected %s in %s", what, key, got ? got : "(absent)", want, ts_jdump(obj));
}

static void test_group_crud(void **state)
{
    (void)state;
    json_t *g = ok("createOrUpdateEnrollmentGroup",
                   "{\"enrollmentGroupId\":\"grp-1\",\"attestation\":{\"type\":\"symmetricKey\"},"
                   "\"iotHubs\":[\"" HUB_A "\"],\"allocationPolicy\":\"hashed\"}");
    expect_str(g, "enrollmentGroupId", "grp-1", "create");
    expect_str(g, "provisioningStatus", "enabled", "create");
    const char *etag1 = ts_jstr(g, "etag");
    const char *created = ts_jstr(g, "createdDateTimeUtc");
    if (!etag1 || !created || ts_parse_rfc3339(created) < 0 || ts_parse_rfc3339(ts_jstr(g, "lastUpdatedDateTimeUtc")) < 0)
        ts_fail("create: etag/timestamps missing: %s", ts_jdump(g));

    json_t *g2 = ok("getEnrollmentGroup", "{\"id\":\"grp-1\"}");
    expect_str(g2, "etag", etag1, "get");
    if (!json_equal(json_object_get(g2, "attestation"), json_object_get(g, "attestation")))
        ts_fail("get: attestation differs from create: %s vs %s", ts_jdump(g2), ts_jdump(g));

    /* update with the current etag */
    json_t *upd = json_deep_copy(g2);
    json_object_set_new(upd, "provisioningStatus", json_string("disabled"));
    json_t *g3 = ok("createOrUpdateEnrollmentGroup", ts_jdump(ts_jkeep(upd)));
    expect_str(g3, "provisioningStatus", "disabled", "update");
    expect_str(g3, "createdDateTimeUtc", created, "update");
    const char *etag2 = ts_jstr(g3, "etag");
    if (!etag2 || strcmp(etag2, etag1) == 0)
        ts_fail("update: the etag did not change: %s", ts_jdump(g3));

    /* the same update with the old etag */
    fails("createOrUpdateEnrollmentGroup", ts_jdump(upd), 412, "InvalidEtagError");
    /* delete with the stale etag, then with the current one */
    fails("deleteEnrollmentGroup", ts_str("{\"id\":\"grp-1\",\"etag\":%s}", ts_jdump(ts_jkeep(json_string(etag1)))), 412,
          "InvalidEtagError");
    expect_str(ok("getEnrollmentGroup", "{\"id\":\"grp-1\"}"), "etag", etag2, "get after a refused delete");
    ok("deleteEnrollmentGroup", ts_str("{\"id\":\"grp-1\",\"etag\":%s}", ts_jdump(ts_jkeep(json_string(etag2)))));
    fails("getEnrollmentGroup", "{\"id\":\"grp-1\"}", 404, NULL);
    fails("deleteEnrollmentGroup", "{\"id\":\"grp-1\"}", 404, NULL);
}

static void test_individual_crud(void **state)
{
    (void)state;
    const char *k1 = ts_random_key(32), *k2 = ts_random_key(32);
    json_t *e = ok("createOrUpdateIndividualEnrollment",
                   ts_json("{'registrationId':'dev-s-1','deviceId':'Device-S-1','attestation':{'type':'symmetricKey',"
                           "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}},'capabilities':{'iotEdge':true}}",
                           k1, k2));
    expect_str(e, "registrationId", "dev-s-1", "create");
    expect_str(e, "deviceId", "Device-S-1", "create");
    const char *etag1 = ts_jstr(e, "etag");
    assert_non_null(etag1);
    json_t *g = ok("getIndividualEnrollment", "{\"id\":\"dev-s-1\"}");
    expect_str(g, "etag", etag1, "get");
    expect_str(json_object_get(json_object_get(g, "attestation"), "symmetricKey"), "primaryKey", k1, "get");
    if (!json_is_true(json_object_get(json_object_get(g, "capabilities"), "iotEdge")))
        ts_fail("get: capabilities.iotEdge not true: %s", ts_jdump(g));

    json_t *upd = ts_jkeep(json_deep_copy(g));
    json_object_set_new(upd, "iotHubs", json_pack("[s]", HUB_A));
    json_t *u = ok("createOrUpdateIndividualEnrollment", ts_jdump(upd));
    const char *etag2 = ts_jstr(u, "etag");
    if (!etag2 || strcmp(etag1, etag2) == 0)
        ts_fail("update: etag unchanged: %s", ts_jdump(u));
    fails("createOrUpdateIndividualEnrollment", ts_jdump(upd), 412, "InvalidEtagError");

    /* a device registers with the device SDK; the service sees its registration state */
    int rc;
    json_t *rs = ts_sdk_symkey(st, SCOPE, "dev-s-1", k1, false, NULL, &rc);
    if (rc != 0)
        ts_fail("provision dev-s-1: %s", ts_jdump(rs));
    expect_str(rs, "deviceId", "Device-S-1", "provision (enrollment deviceId)");
    json_t *drs = ok("getDeviceRegistrationState", "{\"id\":\"dev-s-1\"}");
    expect_str(drs, "registrationId", "dev-s-1", "registration state");
    expect_str(drs, "status", "assigned", "registration state");
    expect_str(drs, "assignedHub", HUB_A, "registration state");
    expect_str(drs, "deviceId", "Device-S-1", "registration state");
    expect_str(drs, "substatus", "initialAssignment", "registration state");
    if (!ts_jstr(drs, "etag") || ts_parse_rfc3339(ts_jstr(drs, "createdDateTimeUtc")) < 0)
        ts_fail("registration state without etag/createdDateTimeUtc: %s", ts_jdump(drs));
    fails("getDeviceRegistrationState", "{\"id\":\"dev-nobody\"}", 404, NULL);

    /* delete: stale etag refused, current accepted, then 404 */
    fails("deleteIndividualEnrollment", ts_str("{\"id\":\"dev-s-1\",\"etag\":%s}", ts_jdump(ts_jkeep(json_string(etag1)))),
          412, "InvalidEtagError");
    ok("deleteIndividualEnrollment", ts_str("{\"id\":\"dev-s-1\",\"etag\":%s}", ts_jdump(ts_jkeep(json_string(etag2)))));
    fails("getIndividualEnrollment", "{\"id\":\"dev-s-1\"}", 404, NULL);
    ok("deleteDeviceRegistrationState", "{\"id\":\"dev-s-1\"}");
    fails("getDeviceRegistrationState", "{\"id\":\"dev-s-1\"}", 404, NULL);
}

static void test_group_query_paging(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++)
        ok("createOrUpdateEnrollmentGroup",
           ts_str("{\"enrollmentGroupId\":\"grp-q-%d\",\"attestation\":{\"type\":\"symmetricKey\"}}", i));
    json_t *q = ok("queryEnrollmentGroups", "{\"pageSize\":2}");
    json_t *pages = json_object_get(q, "pages");
    size_t i, j;
    json_t *page, *id;
    int seen[5] = { 0 }, total = 0;
    json_array_foreach(pages, i, page) {
        if (json_array_size(page) > 2 || json_array_size(page) == 0)
            ts_fail("query page %zu has %zu items (page size 2): %s", i, json_array_size(page), ts_jdump(q));
        json_array_foreach(page, j, id) {
            int n;
            total++;
            if (json_is_string(id) && sscanf(json_string_value(id), "grp-q-%d", &n) == 1 && n >= 0 && n < 5)
                seen[n]++;
            else
                ts_fail("query returned an unexpected group %s", ts_jdump(id));
        }
    }
    for (int k = 0; k < 5; k++)
        if (seen[k] != 1)
            ts_fail("query saw grp-q-%d %d times: %s", k, seen[k], ts_jdump(pages));
    assert_int_equal(total, 5);
    assert_int_equal(json_array_size(pages), 3);
}

static void test_wrong_key(void **state)
{
    (void)state;
    int rc;
    const char *args[] = { ts_stamp_connstr(st, ts_random_key(32)), "getEnrollmentGroup", "{\"id\":\"grp-q-0\"}", NULL };
    json_t *r = ts_node("service.js", args, 40000, &rc);
    if (rc != 1 || ts_jint(r, "statusCode", 0) != 401 || !ts_jstr(r, "error") ||
        strcmp(ts_jstr(r, "error"), "UnauthorizedError") != 0)
        ts_fail("wrong policy key: expected UnauthorizedError 401, got exit %d: %s", rc, ts_jdump(r));
}

int main(void)
{
    ts_init("test_stamp_service");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_crud),
        cmocka_unit_test(test_individual_crud),
        cmocka_unit_test(test_group_query_paging),
        cmocka_unit_test(test_wrong_key),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
