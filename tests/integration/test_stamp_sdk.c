/*
 * test_stamp_sdk - the stamp's provisioning service driven by the official
 * Azure IoT Node SDK (tests/sdk, dps-wire.md §2, §4, §5, §8, §9): enrollments
 * made with the service SDK, devices registered with the device SDK through
 * the port shim (§7.1), over TLS to a certificate from a throwaway CA (§7.2).
 *
 *   - symmetric key individual enrollment -> assigned, initialAssignment
 *   - symmetric key group (keys generated, read back) -> derived device key ->
 *     assigned with symmetricKey.enrollmentGroupId; registering again ->
 *     deviceDataMigrated on the same hub, still one registration row
 *   - X.509 group (signing CA) -> leaf with CN = registration id -> assigned
 *     with x509.enrollmentGroupId; a leaf of another CA and a CN that is not
 *     the registration id -> 401
 *   - custom allocation: webhook (tests/sdk/webhook.js) picks the hub and
 *     echoes the device payload; it received linkedHubs and the payload
 *   - X.509 individual (clientCertificates.primary = the leaf) -> assigned;
 *     another leaf of the same CA with the same CN -> 401
 *   - reprovisionPolicy never (updateHubAssignment false): registering again,
 *     also after the enrollment's iotHubs moved to the other hub, keeps the
 *     hub; the default policy under the same change moves the device
 */
#include <ctype.h>
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

#define SCOPE "0ne000SDK01"
#define HUB_A "hub-a.sdk.test.net"
#define HUB_B "hub-b.sdk.test.net"

static struct ts_stamp *st;

static int group_setup(void **state)
{
    (void)state;
    struct ts_stamp_opts o = {
        .name = "sdk",
        .inst = { { .id = "sdk-dps", .scope = SCOPE } },
        .hubs = { { .id = "hub-a", .host = HUB_A, .weight = 1 }, { .id = "hub-b", .host = HUB_B, .weight = 1 } },
    };
    ts_sdk_modules();
    st = ts_stamp_start(&o);
    return 0;
}

/* --- assertion helpers ------------------------------------------------ */

static void expect_ok(json_t *j, int rc, const char *what)
{
    if (rc != 0 || !json_is_object(j))
        ts_fail("%s: expected success, got exit %d: %s", what, rc, ts_jdump(j));
}

static void expect_str(const json_t *obj, const char *key, const char *want, const char *what)
{
    const char *got = ts_jstr(obj, key);
    if (!got || strcmp(got, want) != 0)
        ts_fail("%s: %s is %s%s%s, expected \"%s\" in %s", what, key, got ? "\"" : "", got ? got : "(absent)",
                got ? "\"" : "", want, ts_jdump(obj));
}

static void expect_timestamp(const json_t *obj, const char *key, const char *what)
{
    const char *v = ts_jstr(obj, key);
    if (!v || ts_parse_rfc3339(v) < 0)
        ts_fail("%s: %s is not an RFC 3339 timestamp in %s", what, key, ts_jdump(obj));
}

static bool is_stamp_hub(const char *h)
{
    return h && (strcmp(h, HUB_A) == 0 || strcmp(h, HUB_B) == 0);
}

/* The registrationState of a first assignment. */
static void expect_assigned(const json_t *rs, const char *regid, const char *substatus, const char *what)
{
    expect_str(rs, "registrationId", regid, what);
    expect_str(rs, "status", "assigned", what);
    expect_str(rs, "substatus", substatus, what);
    expect_str(rs, "deviceId", regid, what);
    if (!is_stamp_hub(ts_jstr(rs, "assignedHub")))
        ts_fail("%s: assignedHub is not one of the stamp's hubs: %s", what, ts_jdump(rs));
    expect_timestamp(rs, "createdDateTimeUtc", what);
    expect_timestamp(rs, "lastUpdatedDateTimeUtc", what);
    if (!ts_jstr(rs, "etag"))
        ts_fail("%s: no etag in %s", what, ts_jdump(rs));
    if (json_object_get(rs, "errorCode"))
        ts_fail("%s: errorCode in an assigned state: %s", what, ts_jdump(rs));
}

static void expect_sdk_error(json_t *j, int rc, int status, const char *cls, const char *what)
{
    if (rc != 1 || !json_is_object(j))
        ts_fail("%s: expected the SDK to fail with %d, got exit %d: %s", what, status, rc, ts_jdump(j));
    if (ts_jint(j, "statusCode", 0) != status)
        ts_fail("%s: statusCode %lld, expected %d: %s", what, (long long)ts_jint(j, "statusCode", 0), status,
                ts_jdump(j));
    if (cls)
        expect_str(j, "error", cls, what);
    /* the DPS error body: {"errorCode":<status*1000+n>,"trackingId","message","timestampUtc"} */
    json_t *b = json_object_get(j, "responseBody");
    json_int_t code = ts_jint(b, "errorCode", 0);
    if (code / 1000 != status || !ts_jstr(b, "trackingId") || !ts_jstr(b, "message"))
        ts_fail("%s: the error body is not a DPS error for %d: %s", what, status, ts_jdump(j));
}

static long reg_rows(const char *regid, const char *extra)
{
    return ts_pg_count(st->db, ts_str("SELECT count(*) FROM dps_registrations WHERE registration_id = '%s'%s",
                                      regid, extra ? extra : ""));
}

/* --- tests ------------------------------------------------------------ */

static void test_symkey_individual(void **state)
{
    (void)state;
    int rc;
    const char *k1 = ts_random_key(32), *k2 = ts_random_key(32);
    json_t *r = ts_sdk_service(st, "createOrUpdateIndividualEnrollment",
                               ts_json("{'registrationId':'dev-ind-1','attestation':{'type':'symmetricKey',"
                                       "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}}}", k1, k2),
                               &rc);
    expect_ok(r, rc, "create individual enrollment");
    expect_str(json_object_get(r, "body"), "registrationId", "dev-ind-1", "create individual enrollment");

    json_t *rs = ts_sdk_symkey(st, SCOPE, "dev-ind-1", k1, false, NULL, &rc);
    expect_ok(rs, rc, "provision dev-ind-1 (primary key)");
    expect_assigned(rs, "dev-ind-1", "initialAssignment", "provision dev-ind-1");
    if (json_object_get(rs, "symmetricKey") && json_object_get(json_object_get(rs, "symmetricKey"), "enrollmentGroupId"))
        ts_fail("individual enrollment reported an enrollmentGroupId: %s", ts_jdump(rs));
    assert_int_equal(reg_rows("dev-ind-1", " AND status = 'assigned'"), 1);

    /* the secondary key also authenticates; a random key does not */
    json_t *rs2 = ts_sdk_symkey(st, SCOPE, "dev-ind-1", k2, false, NULL, &rc);
    expect_ok(rs2, rc, "provision dev-ind-1 (secondary key)");
    expect_str(rs2, "status", "assigned", "secondary key");
    json_t *bad = ts_sdk_symkey(st, SCOPE, "dev-ind-1", ts_random_key(32), false, NULL, &rc);
    expect_sdk_error(bad, rc, 401, "UnauthorizedError", "provision dev-ind-1 with a wrong key");
    /* an unknown device with a key of nothing */
    bad = ts_sdk_symkey(st, SCOPE, "dev-nobody", ts_random_key(32), false, NULL, &rc);
    if (rc != 1 || (ts_jint(bad, "statusCode", 0) != 401 && ts_jint(bad, "statusCode", 0) != 404))
        ts_fail("unenrolled device: expected 401 or 404, got exit %d: %s", rc, ts_jdump(bad));
    assert_int_equal(reg_rows("dev-nobody", NULL), 0);
}

static void test_symkey_group(void **state)
{
    (void)state;
    int rc;
    json_t *r = ts_sdk_service(st, "createOrUpdateEnrollmentGroup",
                               "{\"enrollmentGroupId\":\"grp-sym\",\"attestation\":{\"type\":\"symmetricKey\"}}", &rc);
    expect_ok(r, rc, "create group grp-sym");
    const char *pk = ts_jstr(json_object_get(json_object_get(json_object_get(r, "body"), "attestation"),
                                             "symmetricKey"), "primaryKey");
    if (!pk)
        ts_fail("group created without a generated primaryKey: %s", ts_jdump(r));

    json_t *g = ts_sdk_service(st, "getEnrollmentGroup", "{\"id\":\"grp-sym\"}", &rc);
    expect_ok(g, rc, "get group grp-sym");
    json_t *sk = json_object_get(json_object_get(json_object_get(g, "body"), "attestation"), "symmetricKey");
    expect_str(sk, "primaryKey", pk, "getEnrollmentGroup primaryKey");
    if (!ts_jstr(sk, "secondaryKey") || strcmp(ts_jstr(sk, "secondaryKey"), pk) == 0)
        ts_fail("generated secondaryKey missing or equal to the primary: %s", ts_jdump(g));

    json_t *rs = ts_sdk_symkey(st, SCOPE, "dev-g-1", pk, true, NULL, &rc);
    expect_ok(rs, rc, "provision dev-g-1 (derived key)");
    expect_assigned(rs, "dev-g-1", "initialAssignment", "provision dev-g-1");
    expect_str(json_object_get(rs, "symmetricKey"), "enrollmentGroupId", "grp-sym", "provision dev-g-1");
    const char *hub1 = ts_jstr(rs, "assignedHub");
    const char *created = ts_jstr(rs, "createdDateTimeUtc");

    /* registering again: reprovisionPolicy defaults (update hub, migrate data) */
    json_t *rs2 = ts_sdk_symkey(st, SCOPE, "dev-g-1", pk, true, NULL, &rc);
    expect_ok(rs2, rc, "provision dev-g-1 again");
    expect_assigned(rs2, "dev-g-1", "deviceDataMigrated", "provision dev-g-1 again");
    expect_str(json_object_get(rs2, "symmetricKey"), "enrollmentGroupId", "grp-sym", "provision dev-g-1 again");
    /* hashed over unchanged hubs: the same hub */
    expect_str(rs2, "assignedHub", hub1, "provision dev-g-1 again (same hashed hub)");
    expect_str(rs2, "createdDateTimeUtc", created, "provision dev-g-1 again (created kept)");
    assert_int_equal(reg_rows("dev-g-1", NULL), 1);
    assert_int_equal(reg_rows("dev-g-1", " AND status = 'assigned' AND enrollment_kind = 'group'"), 1);

    /* the group key itself (not derived) is not a device key */
    json_t *bad = ts_sdk_symkey(st, SCOPE, "dev-g-2", pk, false, NULL, &rc);
    expect_sdk_error(bad, rc, 401, "UnauthorizedError", "group key used as a device key");

    /* the service view of the registration */
    json_t *drs = ts_sdk_service(st, "getDeviceRegistrationState", "{\"id\":\"dev-g-1\"}", &rc);
    expect_ok(drs, rc, "getDeviceRegistrationState dev-g-1");
    json_t *b = json_object_get(drs, "body");
    expect_str(b, "registrationId", "dev-g-1", "registration state");
    expect_str(b, "status", "assigned", "registration state");
    expect_str(b, "assignedHub", hub1, "registration state");
    expect_str(b, "deviceId", "dev-g-1", "registration state");
}

static const char *x_ca_crt, *x_ca_key;

static void test_x509_group(void **state)
{
    (void)state;
    int rc;
    const char *leaf, *leaf_key, *o_ca, *o_ca_key, *o_leaf, *o_leaf_key;
    ts_pki_make_ca("x509-group-ca", "stampcp device CA", &x_ca_crt, &x_ca_key);
    ts_pki_make_leaf("dev-x-1", "dev-x-1", x_ca_crt, x_ca_key, &leaf, &leaf_key);
    size_t pem_len;
    const char *pem = ts_read_file(x_ca_crt, &pem_len);
    json_t *args = json_pack("{s:s, s:{s:s, s:{s:{s:{s:s}}}}}", "enrollmentGroupId", "grp-x509", "attestation",
                             "type", "x509", "x509", "signingCertificates", "primary", "certificate", pem);
    json_t *r = ts_sdk_service(st, "createOrUpdateEnrollmentGroup", ts_jdump(args), &rc);
    json_decref(args);
    expect_ok(r, rc, "create x509 group");
    json_t *info = json_object_get(json_object_get(json_object_get(json_object_get(json_object_get(json_object_get(
        json_object_get(r, "body"), "attestation"), "x509"), "signingCertificates"), "primary"), "info"), "subjectName");
    if (!json_is_string(info) || !strstr(json_string_value(info), "stampcp device CA"))
        ts_fail("x509 group: signingCertificates.primary.info.subjectName missing: %s", ts_jdump(r));

    json_t *rs = ts_sdk_x509(st, SCOPE, "dev-x-1", leaf, leaf_key, NULL, &rc);
    expect_ok(rs, rc, "provision dev-x-1 (X.509)");
    expect_assigned(rs, "dev-x-1", "initialAssignment", "provision dev-x-1");
    json_t *x = json_object_get(rs, "x509");
    expect_str(x, "enrollmentGroupId", "grp-x509", "provision dev-x-1");
    json_t *ci = json_object_get(x, "certificateInfo");
    if (ci) {
        const char *subj = ts_jstr(ci, "subjectName");
        if (!subj || !strstr(subj, "dev-x-1"))
            ts_fail("x509.certificateInfo.subjectName does not name dev-x-1: %s", ts_jdump(rs));
        if (!ts_jstr(ci, "sha256Thumbprint") || !ts_jstr(ci, "issuerName") ||
            !strstr(ts_jstr(ci, "issuerName"), "stampcp device CA"))
            ts_fail("x509.certificateInfo incomplete: %s", ts_jdump(rs));
    }
    assert_int_equal(reg_rows("dev-x-1", " AND status = 'assigned' AND enrollment_id = 'grp-x509'"), 1);
    /* its hub identity (docs/stamp-dps.md "Hub registry"): a CA-signed device */
    TS_EXPECT_STREQ(ts_pg_scalar(st->db, "SELECT auth_type || '/' || coalesce(primary_thumbprint, '-') FROM hub_devices"
                                         " WHERE device_id = 'dev-x-1'"),
                    "certificateAuthority/-");

    /* a leaf of another CA */
    ts_pki_make_ca("x509-other-ca", "stampcp other CA", &o_ca, &o_ca_key);
    ts_pki_make_leaf("dev-x-2", "dev-x-2", o_ca, o_ca_key, &o_leaf, &o_leaf_key);
    json_t *bad = ts_sdk_x509(st, SCOPE, "dev-x-2", o_leaf, o_leaf_key, NULL, &rc);
    expect_sdk_error(bad, rc, 401, "UnauthorizedError", "X.509 leaf of another CA");
    assert_int_equal(reg_rows("dev-x-2", NULL), 0);

    /* a good leaf, but registered under another registration id than its CN */
    bad = ts_sdk_x509(st, SCOPE, "dev-x-9", leaf, leaf_key, NULL, &rc);
    expect_sdk_error(bad, rc, 401, "UnauthorizedError", "X.509 CN is not the registration id");
    assert_int_equal(reg_rows("dev-x-9", NULL), 0);
}

static void test_custom_allocation(void **state)
{
    (void)state;
    int rc;
    int wport = ts_free_port();
    const char *wlog = ts_str("%s/webhook.requests", ts_tmp());
    const char *args[] = { ts_str("%d", wport), wlog, HUB_B, NULL };
    struct ts_proc *wh = ts_node_spawn("webhook", "webhook.js", args);
    for (int64_t dl = ts_now_ms() + 15000; !ts_proc_log_contains(wh, "listening on");) {
        if (!ts_proc_alive(wh) || ts_now_ms() > dl) {
            ts_proc_dump_log(wh, 3000);
            ts_fail("webhook.js did not start");
        }
        ts_sleep_ms(50);
    }
    json_t *r = ts_sdk_service(st, "createOrUpdateEnrollmentGroup",
                               ts_json("{'enrollmentGroupId':'grp-custom','attestation':{'type':'symmetricKey'},"
                                       "'allocationPolicy':'custom','customAllocationDefinition':"
                                       "{'webhookUrl':'http://127.0.0.1:%d/alloc','apiVersion':'2021-10-01'}}",
                                       wport),
                               &rc);
    expect_ok(r, rc, "create custom group");
    json_t *body = json_object_get(r, "body");
    expect_str(body, "allocationPolicy", "custom", "custom group");
    const char *pk = ts_jstr(json_object_get(json_object_get(body, "attestation"), "symmetricKey"), "primaryKey");
    if (!pk)
        ts_fail("custom group without a primaryKey: %s", ts_jdump(r));

    json_t *rs = ts_sdk_symkey(st, SCOPE, "dev-c-1", pk, true, "{\"modelId\":\"dtmi:x;1\"}", &rc);
    expect_ok(rs, rc, "provision dev-c-1 (custom allocation)");
    expect_assigned(rs, "dev-c-1", "initialAssignment", "provision dev-c-1");
    expect_str(rs, "assignedHub", HUB_B, "provision dev-c-1 (the webhook's hub)");
    json_t *want = json_loads("{\"echo\":{\"modelId\":\"dtmi:x;1\"}}", 0, NULL);
    bool same = json_equal(json_object_get(rs, "payload"), want);
    json_decref(want);
    if (!same)
        ts_fail("payload is not the webhook's echo: %s", ts_jdump(rs));

    /* what the webhook received */
    size_t len;
    const char *txt = ts_read_file(wlog, &len);
    if (!txt)
        ts_fail("the webhook received nothing");
    json_t *req = ts_jkeep(json_loads(txt, JSON_DISABLE_EOF_CHECK, NULL));
    json_t *rb = json_object_get(req, "body");
    expect_str(req, "method", "POST", "webhook request");
    json_t *linked = json_object_get(rb, "linkedHubs");
    bool has_a = false, has_b = false;
    size_t i;
    json_t *v;
    json_array_foreach(linked, i, v) {
        has_a |= json_is_string(v) && strcmp(json_string_value(v), HUB_A) == 0;
        has_b |= json_is_string(v) && strcmp(json_string_value(v), HUB_B) == 0;
    }
    if (!has_a || !has_b || json_array_size(linked) != 2)
        ts_fail("webhook linkedHubs is not [%s, %s]: %s", HUB_A, HUB_B, ts_jdump(rb));
    json_t *ctx = json_object_get(rb, "deviceRuntimeContext");
    expect_str(ctx, "registrationId", "dev-c-1", "webhook deviceRuntimeContext");
    expect_str(json_object_get(ctx, "payload"), "modelId", "dtmi:x;1", "webhook deviceRuntimeContext.payload");
    expect_str(json_object_get(rb, "enrollmentGroup"), "enrollmentGroupId", "grp-custom", "webhook enrollmentGroup");
    if (strstr(txt, pk))
        ts_fail("the webhook was sent the group's symmetric key: %s", txt);
    ts_proc_kill(wh, SIGTERM);
    (void)ts_proc_wait(wh, 5000);
}

/* X.509 individual enrollment (dps_device.c: the presented leaf is the
 * enrollment's primary or secondary clientCertificate, compared by the
 * SHA-256 of its DER): the enrolled leaf is assigned; another leaf of the
 * same CA with the same CN is not. */
static void test_x509_individual(void **state)
{
    (void)state;
    int rc;
    const char *ca, *ca_key, *leaf, *leaf_key, *other, *other_key;
    ts_pki_make_ca("x509-ind-ca", "stampcp individual CA", &ca, &ca_key);
    ts_pki_make_leaf("dev-xi-1", "dev-xi-1", ca, ca_key, &leaf, &leaf_key);
    ts_pki_make_leaf("dev-xi-1-other", "dev-xi-1", ca, ca_key, &other, &other_key);
    size_t pem_len;
    const char *pem = ts_read_file(leaf, &pem_len);
    if (!pem)
        ts_fail("cannot read %s", leaf);
    json_t *args = json_pack("{s:s, s:{s:s, s:{s:{s:{s:s}}}}}", "registrationId", "dev-xi-1", "attestation", "type",
                             "x509", "x509", "clientCertificates", "primary", "certificate", pem);
    json_t *r = ts_sdk_service(st, "createOrUpdateIndividualEnrollment", ts_jdump(args), &rc);
    json_decref(args);
    expect_ok(r, rc, "create x509 individual enrollment");
    expect_str(json_object_get(r, "body"), "registrationId", "dev-xi-1", "create x509 individual enrollment");

    json_t *rs = ts_sdk_x509(st, SCOPE, "dev-xi-1", leaf, leaf_key, NULL, &rc);
    expect_ok(rs, rc, "provision dev-xi-1 (X.509 individual)");
    expect_assigned(rs, "dev-xi-1", "initialAssignment", "provision dev-xi-1");
    json_t *x = json_object_get(rs, "x509");
    if (x && json_object_get(x, "enrollmentGroupId"))
        ts_fail("individual X.509 enrollment reported an enrollmentGroupId: %s", ts_jdump(rs));
    json_t *ci = json_object_get(x, "certificateInfo");
    if (ci) {
        const char *subj = ts_jstr(ci, "subjectName");
        if (!subj || !strstr(subj, "dev-xi-1"))
            ts_fail("x509.certificateInfo.subjectName does not name dev-xi-1: %s", ts_jdump(rs));
    }
    assert_int_equal(reg_rows("dev-xi-1", " AND status = 'assigned' AND enrollment_kind = 'individual'"), 1);
    /* its hub identity: selfSigned with the SHA-1 thumbprint of its certificate (openssl's, colons dropped) */
    {
        char line[256], want[64] = "";
        size_t n = 0;
        FILE *f = popen(ts_str("openssl x509 -in '%s' -noout -fingerprint -sha1", leaf), "r");
        if (!f || !fgets(line, sizeof line, f))
            ts_fail("openssl x509 -fingerprint failed for %s", leaf);
        pclose(f);
        for (const char *p = strchr(line, '=') ? strchr(line, '=') + 1 : ""; *p && n + 1 < sizeof want; p++)
            if (isxdigit((unsigned char)*p))
                want[n++] = (char)toupper((unsigned char)*p);
        want[n] = '\0';
        assert_int_equal(n, 40);
        TS_EXPECT_STREQ(ts_pg_scalar(st->db, "SELECT auth_type || '/' || upper(primary_thumbprint) FROM hub_devices"
                                             " WHERE device_id = 'dev-xi-1'"),
                        ts_str("selfSigned/%s", want));
    }

    /* same CA, same CN, but not the enrolled certificate */
    json_t *bad = ts_sdk_x509(st, SCOPE, "dev-xi-1", other, other_key, NULL, &rc);
    expect_sdk_error(bad, rc, 401, "UnauthorizedError", "X.509 leaf with the enrolled CN but not enrolled");
    assert_int_equal(reg_rows("dev-xi-1", NULL), 1);
    /* the enrolled device is still assigned, untouched */
    assert_int_equal(reg_rows("dev-xi-1", " AND status = 'assigned'"), 1);
}

/* Create or replace a symmetric-key individual enrollment limited to one hub;
 * never: reprovisionPolicy {updateHubAssignment:false, migrateDeviceData:false},
 * otherwise the default policy. */
static void put_rp_enrollment(const char *regid, const char *key, const char *hub, bool never)
{
    int rc;
    json_t *r = ts_sdk_service(
        st, "createOrUpdateIndividualEnrollment",
        ts_json("{'registrationId':'%s','attestation':{'type':'symmetricKey','symmetricKey':{'primaryKey':'%s',"
                "'secondaryKey':'%s'}},'allocationPolicy':'hashed','iotHubs':['%s']%s}",
                regid, key, key, hub,
                never ? ",'reprovisionPolicy':{'updateHubAssignment':false,'migrateDeviceData':false}" : ""),
        &rc);
    expect_ok(r, rc, ts_str("create/update enrollment %s (iotHubs [%s])", regid, hub));
    json_t *body = json_object_get(r, "body");
    if (never) {
        json_t *rp = json_object_get(body, "reprovisionPolicy");
        if (!json_is_false(json_object_get(rp, "updateHubAssignment")) ||
            !json_is_false(json_object_get(rp, "migrateDeviceData")))
            ts_fail("enrollment %s: reprovisionPolicy not kept as never: %s", regid, ts_jdump(r));
    }
}

/* reprovisionPolicy "never" (updateHubAssignment false): a device registering
 * again keeps its hub even when the enrollment now names another one. The
 * same change under the default policy moves the device (contrast: the
 * enrollment change is effective). */
static void test_reprovision_never(void **state)
{
    (void)state;
    int rc;
    const char *k = ts_random_key(32);

    put_rp_enrollment("dev-rp-never", k, HUB_A, true);
    json_t *rs = ts_sdk_symkey(st, SCOPE, "dev-rp-never", k, false, NULL, &rc);
    expect_ok(rs, rc, "provision dev-rp-never");
    expect_assigned(rs, "dev-rp-never", "initialAssignment", "provision dev-rp-never");
    expect_str(rs, "assignedHub", HUB_A, "provision dev-rp-never (the enrollment's only hub)");
    const char *created = ts_jstr(rs, "createdDateTimeUtc");

    /* registering again with nothing changed */
    json_t *rs2 = ts_sdk_symkey(st, SCOPE, "dev-rp-never", k, false, NULL, &rc);
    expect_ok(rs2, rc, "provision dev-rp-never again");
    expect_str(rs2, "status", "assigned", "provision dev-rp-never again");
    expect_str(rs2, "deviceId", "dev-rp-never", "provision dev-rp-never again");
    expect_str(rs2, "assignedHub", HUB_A, "provision dev-rp-never again (hub kept)");

    /* the enrollment now names only hub B: updateHubAssignment false keeps hub A */
    put_rp_enrollment("dev-rp-never", k, HUB_B, true);
    json_t *rs3 = ts_sdk_symkey(st, SCOPE, "dev-rp-never", k, false, NULL, &rc);
    expect_ok(rs3, rc, "provision dev-rp-never after the hub change");
    expect_str(rs3, "status", "assigned", "provision dev-rp-never after the hub change");
    expect_str(rs3, "deviceId", "dev-rp-never", "provision dev-rp-never after the hub change");
    expect_str(rs3, "assignedHub", HUB_A, "provision dev-rp-never after the hub change (hub kept)");
    expect_str(rs3, "createdDateTimeUtc", created, "provision dev-rp-never after the hub change (created kept)");
    if (json_object_get(rs3, "errorCode"))
        ts_fail("errorCode in an assigned state: %s", ts_jdump(rs3));
    assert_int_equal(reg_rows("dev-rp-never", NULL), 1);
    assert_int_equal(reg_rows("dev-rp-never", " AND status = 'assigned' AND assigned_hub = '" HUB_A "'"), 1);

    json_t *drs = ts_sdk_service(st, "getDeviceRegistrationState", "{\"id\":\"dev-rp-never\"}", &rc);
    expect_ok(drs, rc, "getDeviceRegistrationState dev-rp-never");
    expect_str(json_object_get(drs, "body"), "assignedHub", HUB_A, "registration state of dev-rp-never");

    /* contrast: the default policy follows the enrollment to hub B */
    const char *k2 = ts_random_key(32);
    put_rp_enrollment("dev-rp-default", k2, HUB_A, false);
    json_t *d1 = ts_sdk_symkey(st, SCOPE, "dev-rp-default", k2, false, NULL, &rc);
    expect_ok(d1, rc, "provision dev-rp-default");
    expect_assigned(d1, "dev-rp-default", "initialAssignment", "provision dev-rp-default");
    expect_str(d1, "assignedHub", HUB_A, "provision dev-rp-default (the enrollment's only hub)");
    put_rp_enrollment("dev-rp-default", k2, HUB_B, false);
    json_t *d2 = ts_sdk_symkey(st, SCOPE, "dev-rp-default", k2, false, NULL, &rc);
    expect_ok(d2, rc, "provision dev-rp-default after the hub change");
    expect_str(d2, "status", "assigned", "provision dev-rp-default after the hub change");
    expect_str(d2, "assignedHub", HUB_B, "provision dev-rp-default after the hub change (moved)");
    assert_int_equal(reg_rows("dev-rp-default", NULL), 1);
}

int main(void)
{
    ts_init("test_stamp_sdk");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_symkey_individual),
        cmocka_unit_test(test_symkey_group),
        cmocka_unit_test(test_x509_group),
        cmocka_unit_test(test_custom_allocation),
        cmocka_unit_test(test_x509_individual),
        cmocka_unit_test(test_reprovision_never),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
