/*
 * test_stamp_badinput - the stamp's DPS device and service API answer bad
 * requests with the documented status and a DPS error body
 * ({"errorCode":<status*1000+n>,"trackingId","message","timestampUtc"},
 * stamp-agent/dps_device.c error codes), over TLS with raw requests (curl):
 * wrong ID scope 404, a token for another device 401, an expired token 401,
 * a malformed Authorization 401, no credential 401, a wrong key 401, a body
 * that is not JSON 400, another registrationId in the body 400, a body over
 * 96 KB 413, a poll before registering 401, an unknown operation id 404, a service call signed with a wrong
 * policy key 401. Afterwards the agent is alive (/healthz), a good device
 * still provisions, and ts_finish finds no sanitizer report in its log.
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

#include "ts.h"
#include "ts_stamp.h"

#define SCOPE "0ne000BAD01"
#define HUB_A "hub-a.bad.test.net"

static struct ts_stamp *st;
static const char *key;

static int group_setup(void **state)
{
    (void)state;
    struct ts_stamp_opts o = {
        .name = "badinput",
        .inst = { { .id = "bad-dps", .scope = SCOPE } },
        .hubs = { { .id = "hub-a", .host = HUB_A } },
    };
    st = ts_stamp_start(&o);
    key = ts_random_key(32);
    struct ts_resp *r = ts_stamp_service(st, NULL, "PUT", "/enrollments/dev-b-1?api-version=2021-10-01",
                                         ts_json("{'registrationId':'dev-b-1','attestation':{'type':'symmetricKey',"
                                                 "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}}}",
                                                 key, ts_random_key(32)));
    TS_EXPECT_STATUS(r, 200);
    return 0;
}

static long long now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec;
}

static void expect_dps_error(const struct ts_resp *r, int status, long code, const char *what)
{
    if (!ts_is_dps_error(r, status))
        ts_fail("%s: expected %d with a DPS error body, got %s (%s)", what, status, ts_resp_str(r), r->err);
    if (code && ts_jint(r->json, "errorCode", 0) != code)
        ts_fail("%s: errorCode %lld, expected %ld: %s", what, (long long)ts_jint(r->json, "errorCode", 0), code,
                ts_resp_str(r));
    const char *ct = ts_header(r, "Content-Type");
    if (!ct || !strstr(ct, "application/json"))
        ts_fail("%s: Content-Type %s is not JSON", what, ct ? ct : "(none)");
}

static const char *good_sas(const char *regid)
{
    return ts_device_sas(SCOPE, regid, key, 0);
}

static void test_device_auth(void **state)
{
    (void)state;
    /* wrong ID scope (token signed for it, so only the scope is wrong) */
    expect_dps_error(ts_stamp_register(st, "0neNOSUCH01", "dev-b-1", ts_device_sas("0neNOSUCH01", "dev-b-1", key, 0),
                                       NULL),
                     404, 404001, "unknown ID scope");
    /* a token for another device */
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", good_sas("dev-b-2"), NULL), 401, 0,
                     "token for another device");
    /* expired */
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", ts_device_sas(SCOPE, "dev-b-1", key, now_s() - 60),
                                       NULL),
                     401, 0, "expired token");
    /* malformed Authorization values */
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", "SharedAccessSignature garbage", NULL), 401, 0,
                     "malformed SAS");
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", "Bearer abc.def.ghi", NULL), 401, 0, "Bearer token");
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1",
                                       ts_str("SharedAccessSignature sr=%s/registrations/dev-b-1&sig=%%%%zz&se=%lld"
                                              "&skn=registration", SCOPE, now_s() + 600), NULL),
                     401, 0, "SAS with a broken sig");
    /* no credential at all */
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", NULL, NULL), 401, 401001, "no credential");
    /* the wrong key */
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", ts_device_sas(SCOPE, "dev-b-1", ts_random_key(32), 0),
                                       NULL),
                     401, 401002, "wrong key");
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations"), 0);
}

static void test_device_bodies(void **state)
{
    (void)state;
    const char *sas = good_sas("dev-b-1");
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", sas, "this is not json"), 400, 400002, "non-JSON body");
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", sas, "{\"registrationId\":\"dev-b-9\"}"), 400, 400002,
                     "another registrationId in the body");
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", sas, "[1,2,3]"), 400, 400002, "JSON array body");
    /* > 96 KB: a valid JSON document with a big payload */
    size_t n = 100 * 1024;
    char *big = ts_keep(malloc(n + 100));
    int off = snprintf(big, n + 100, "{\"registrationId\":\"dev-b-1\",\"payload\":{\"pad\":\"");
    memset(big + off, 'x', n);
    strcpy(big + off + n, "\"}}");
    expect_dps_error(ts_stamp_register(st, SCOPE, "dev-b-1", sas, big), 413, 0, "body over 96 KB");
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations"), 0);
    /* a poll of a device that never registered: the answer of a wrong key, so
     * that no answer tells whether an id exists (docs/stamp-dps.md) */
    expect_dps_error(ts_stamp_operation(st, SCOPE, "dev-b-1", "5.0000000000000000.nosuchop", sas), 401, 401002,
                     "poll of a device that never registered");
    /* registered: an unknown operation id of the authenticated device is 404 */
    {
        struct ts_resp *r = ts_stamp_register(st, SCOPE, "dev-b-1", sas, NULL);
        if (r->status != 202)
            ts_fail("register dev-b-1: expected 202, got %s", ts_resp_str(r));
    }
    expect_dps_error(ts_stamp_operation(st, SCOPE, "dev-b-1", "5.0000000000000000.nosuchop", sas), 404, 404003,
                     "unknown operation id");
    /* gone again (service API), so the last test sees a first assignment */
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "DELETE", "/registrations/dev-b-1?api-version=2021-10-01", NULL), 204);
}

static void test_service_auth(void **state)
{
    (void)state;
    expect_dps_error(ts_stamp_service(st, ts_random_key(32), "GET", "/enrollments/dev-b-1?api-version=2021-10-01",
                                      NULL),
                     401, 0, "service API with a wrong policy key");
    const char *h[] = { "Authorization: SharedAccessSignature sr=x&sig=y&se=1&skn=provisioningserviceowner", NULL };
    expect_dps_error(ts_https(st->port, "GET", "/enrollments/dev-b-1?api-version=2021-10-01", h, NULL, 0, NULL, NULL),
                     401, 0, "service API with a malformed token");
    expect_dps_error(ts_https(st->port, "GET", "/enrollments/dev-b-1?api-version=2021-10-01", NULL, NULL, 0, NULL,
                              NULL),
                     401, 0, "service API without Authorization");
    /* a device token is not a service token */
    const char *h2[] = { ts_str("Authorization: %s", good_sas("dev-b-1")), NULL };
    expect_dps_error(ts_https(st->port, "GET", "/enrollments/dev-b-1?api-version=2021-10-01", h2, NULL, 0, NULL, NULL),
                     401, 0, "service API with a device token");
    /* the right key works */
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "GET", "/enrollments/dev-b-1?api-version=2021-10-01", NULL), 200);
}

static void test_still_alive(void **state)
{
    (void)state;
    if (!ts_proc_alive(st->proc))
        ts_fail("the stamp-agent died");
    assert_true(ts_stamp_healthy(st));
    struct ts_resp *r = ts_stamp_provision(st, SCOPE, "dev-b-1", good_sas("dev-b-1"), 20000);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    json_t *rs = json_object_get(r->json, "registrationState");
    TS_EXPECT_STREQ(ts_jstr(rs, "assignedHub"), HUB_A);
    TS_EXPECT_STREQ(ts_jstr(rs, "deviceId"), "dev-b-1");
    TS_EXPECT_STREQ(ts_jstr(rs, "substatus"), "initialAssignment");
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE status = 'assigned'"), 1);
}

int main(void)
{
    ts_init("test_stamp_badinput");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_auth),
        cmocka_unit_test(test_device_bodies),
        cmocka_unit_test(test_service_auth),
        cmocka_unit_test(test_still_alive),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
