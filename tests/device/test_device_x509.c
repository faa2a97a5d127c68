/*
 * test_device_x509 - libstampdevice's X.509 path (sd_tls client certificate,
 * sd_posix, the machine with SD_AUTH_X509) through sd-provision-one against
 * the real control plane and a real stamp agent serving its DPS endpoint
 * over TLS.
 *
 * Layout: geography eu, region eu-west, stamp eu-west-1 with one DPS
 * instance (TLS on 127.0.0.1, server certificate from the test PKI of
 * ts_stamp.h so that the service API can be called with curl) and two hubs;
 * tenant acme resident in eu. A throwaway device CA is put on the instance
 * as an X.509 enrollment group through the stamp's service API. Its id is
 * not the tenant id: the control plane's enrollment reconciler owns the
 * group named after the tenant (a symmetric-key group, PUT over whatever
 * has that id and keys that differ), so the X.509 group lives next to it as
 * an unmanaged group, which the reconciler leaves alone (checked below).
 *
 * Covered:
 *  - DPS only (--dps/--scope, no --cp), certificate CN = registration id
 *    signed by the group's CA: exit 0, a hub of the stamp, the stamp's row
 *    assigned through the X.509 group with certificate info; a warm boot with
 *    the state file is READY after one DPS status lookup (authenticated by
 *    the certificate) and leaves the row and the state file untouched;
 *  - a certificate of another CA, and a good certificate under another
 *    registration id: 401 from the DPS, the device re-registers with backoff
 *    and never exits 0; SIGTERM ends it; no registration row;
 *  - a device certificate from an intermediate CA: the certificate file with
 *    leaf + intermediate is READY (the driver sends the chain); the leaf
 *    alone gets 401;
 *  - a key that does not match the certificate, or one encrypted with a pass
 *    phrase: exit 1 at setup, no request, no prompt;
 *  - the control plane path: an installer token (Bearer cpi_...) at the
 *    control plane's locate, then the client certificate at the stamp's DPS:
 *    exit 0, assigned through the X.509 group; a warm boot is one control
 *    plane lookup; the reconciler keeps both groups as they are.
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
#include "ts_device.h"
#include "ts_devrun.h"
#include "ts_stamp.h"

#define TENANT "acme"      /* the standard tenant (ts_rt_tenant_acme) */
#define X509_GROUP "acme-devices-x509" /* not the tenant id: that one is the reconciler's */
#define STAMP TS_SD_STAMP
#define DPS TS_SD_DPS
#define API "?api-version=2021-10-01"

static struct ts_rt *rt;
static struct ts_stamp stamp; /* the agent below, as ts_stamp_service wants it */
static const char *dps_endpoint, *ca_crt;
static const char *dev_ca_crt, *dev_ca_key;


/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */

/* A reconciler pass that started after the tenant existed finished in sync, with the tenant's group there. */
static bool group_synced(void *arg)
{
    return ts_rt_group_synced(rt, DPS, stamp.db, TENANT, *(const int64_t *)arg);
}


/* argv of sd-provision-one with a certificate: DPS only (cp NULL) or the control plane (with bearer unless NULL). */
static char **x509_argv(const char *regid, const char *crt, const char *key, const char *cp, const char *bearer)
{
    char **argv = ts_keep(calloc(32, sizeof(char *)));
    int n = 0;

    argv[n++] = (char *)ts_bin("sd-provision-one");
    if (cp) {
        argv[n++] = "--cp";
        argv[n++] = (char *)cp;
        argv[n++] = "--tenant";
        argv[n++] = TENANT;
        if (bearer) {
            argv[n++] = "--bearer";
            argv[n++] = (char *)bearer;
        }
    } else {
        argv[n++] = "--dps";
        argv[n++] = (char *)dps_endpoint;
        argv[n++] = "--scope";
        argv[n++] = (char *)ts_rt_id_scope(DPS);
    }
    argv[n++] = "--registration-id";
    argv[n++] = (char *)regid;
    argv[n++] = "--cert";
    argv[n++] = (char *)crt;
    argv[n++] = "--key";
    argv[n++] = (char *)key;
    argv[n++] = "--ca";
    argv[n++] = (char *)ca_crt;
    argv[n++] = "--state";
    argv[n++] = (char *)ts_sd_state_path(regid);
    argv[n++] = "-v";
    argv[n] = NULL;
    return argv;
}

static struct ts_sd_run example(char **argv, const char *regid)
{
    return ts_sd_run(argv, regid, true);
}

static bool is_hub(const char *host)
{
    return ts_sd_stack_hub(rt, host);
}

/* The stamp's registration row: status, hub, enrollment, operation id, etag and last update, as one string. */
static const char *dps_row(const char *regid)
{
    return ts_pg_scalar(stamp.db, ts_str("SELECT status || ' ' || coalesce(assigned_hub, '-') || ' ' || "
                                         "enrollment_kind || '/' || enrollment_id || ' ' || operation_id || ' ' || "
                                         "etag || ' ' || updated_at FROM dps_registrations WHERE dps_id = '%s' AND "
                                         "registration_id = '%s'", DPS, regid));
}

/* The row says: assigned to hub through the X.509 group, with the device certificate's info. */
static void expect_x509_row(const char *regid, const char *hub)
{
    TS_EXPECT_STREQ(ts_pg_scalar(stamp.db, ts_str("SELECT status || ' ' || assigned_hub || ' ' || enrollment_kind || "
                                                  "'/' || enrollment_id FROM dps_registrations WHERE dps_id = '%s' "
                                                  "AND registration_id = '%s'", DPS, regid)),
                    ts_str("assigned %s group/%s", hub, X509_GROUP));
    /* x509 attestation: the certificate info of the leaf (CN = regid) and of the group's CA */
    TS_EXPECT_STREQ(ts_pg_scalar(stamp.db, ts_str("SELECT (attestation_info #>> '{certificateInfo,subjectName}') || "
                                                  "' | ' || (attestation_info #>> '{signingCertificateInfo,subjectName}') "
                                                  "FROM dps_registrations WHERE dps_id = '%s' AND registration_id = '%s'",
                                                  DPS, regid)),
                    ts_str("CN=%s | CN=stampcp x509 device CA", regid));
}

static void expect_ready(const struct ts_sd_run *r, const char *regid)
{
    if (r->rc != 0)
        ts_fail("%s: expected exit 0 (ready), got %d: %s", regid, r->rc, ts_jdump(r->json));
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "ready");
    TS_EXPECT_STREQ(ts_jstr(r->json, "registrationId"), regid);
    TS_EXPECT_STREQ(ts_jstr(r->json, "deviceId"), regid);
    TS_EXPECT_STREQ(ts_jstr(r->json, "dpsEndpoint"), dps_endpoint);
    TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_rt_id_scope(DPS));
    if (!is_hub(ts_jstr(r->json, "assignedHub")))
        ts_fail("%s: assignedHub is not a hub of %s: %s", regid, STAMP, ts_jdump(r->json));
}

/* The X.509 group's document at the stamp (service API), or fail. */
static json_t *x509_group(void)
{
    struct ts_resp *r = ts_stamp_service(&stamp, NULL, "GET", "/enrollmentGroups/" X509_GROUP API, NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "attestation"), "type"), "x509");
    return r->json;
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    struct ts_resp *r;
    const char *pem;
    json_t *body;
    (void)state;

    /* the stamp's server certificate from the test PKI: ts_https (the service API) trusts it too */
    ca_crt = ts_pki_ca();
    rt = ts_sd_stack_start(&stamp, NULL);
    dps_endpoint = stamp.hostport;

    /* the device CA as an X.509 enrollment group, through the stamp's service API */
    ts_pki_make_ca("x509-dev-ca", "stampcp x509 device CA", &dev_ca_crt, &dev_ca_key);
    pem = ts_read_file(dev_ca_crt, NULL);
    if (!pem)
        ts_fail("cannot read %s", dev_ca_crt);
    body = json_pack("{s:s, s:{s:s, s:{s:{s:{s:s}}}}, s:s}", "enrollmentGroupId", X509_GROUP, "attestation", "type",
                     "x509", "x509", "signingCertificates", "primary", "certificate", pem, "provisioningStatus",
                     "enabled");
    r = ts_stamp_service(&stamp, NULL, "PUT", "/enrollmentGroups/" X509_GROUP API, ts_jdump(body));
    json_decref(body);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "enrollmentGroupId"), X509_GROUP);
    x509_group();
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

/* DPS only: register with the certificate, then a warm boot that is one status lookup. */
static void test_dps_only(void **state)
{
    const char *crt, *key, *before, *file_before;
    struct ts_sd_run r;
    struct sd_state st;
    (void)state;

    ts_pki_make_leaf("dev-x1", "dev-x1", dev_ca_crt, dev_ca_key, &crt, &key);
    r = example(x509_argv("dev-x1", crt, key, NULL, NULL), "dev-x1");
    expect_ready(&r, "dev-x1");
    TS_EXPECT_STREQ(ts_jstr(r.json, "stateFile"), "absent");
    assert_int_equal(ts_sd_requests(&r, "dps_register"), 1);
    assert_true(ts_sd_requests(&r, "dps_poll") >= 1);
    assert_int_equal(ts_sd_requests(&r, "dps_lookup"), 0);
    assert_int_equal(ts_sd_requests(&r, "locate") + ts_sd_requests(&r, "lookup") + ts_sd_requests(&r, "provision"), 0);
    assert_int_equal(ts_jint(r.json, "ioErrors", -1), 0);
    expect_x509_row("dev-x1", ts_jstr(r.json, "assignedHub"));
    st = ts_sd_load_state("dev-x1", SD_STORE_OK);
    assert_true(st.flags & SD_STATE_ASSIGNED);
    assert_true(st.flags & SD_STATE_HUB);
    TS_EXPECT_STREQ(st.assigned_hub, ts_jstr(r.json, "assignedHub"));
    TS_EXPECT_STREQ(st.dps_endpoint, dps_endpoint);
    TS_EXPECT_STREQ(st.id_scope, ts_rt_id_scope(DPS));

    /* warm boot: one DPS status lookup, no registration, no write */
    before = dps_row("dev-x1");
    file_before = ts_read_file(ts_sd_state_path("dev-x1"), NULL);
    assert_non_null(before);
    assert_non_null(file_before);
    ts_sleep_ms(20); /* a write now would show in updated_at */
    r = example(x509_argv("dev-x1", crt, key, NULL, NULL), "dev-x1");
    expect_ready(&r, "dev-x1");
    TS_EXPECT_STREQ(ts_jstr(r.json, "stateFile"), "ok");
    assert_int_equal(ts_sd_requests(&r, "dps_lookup"), 1);
    assert_int_equal(ts_sd_requests(&r, "dps_register"), 0);
    assert_int_equal(ts_sd_requests(&r, "dps_poll"), 0);
    if (!strstr(r.out, " send dps_lookup: POST https://") || !strstr(r.out, "-> 200"))
        ts_fail("the warm boot's lookup is not in the verbose log: %s", r.out);
    TS_EXPECT_STREQ(dps_row("dev-x1"), before);
    TS_EXPECT_STREQ(ts_read_file(ts_sd_state_path("dev-x1"), NULL), file_before);
}

/* A certificate the group does not accept: 401, registered again after a backoff, never ready. */
static void test_wrong_ca_401(void **state)
{
    const char *o_ca, *o_ca_key, *crt, *key, *good_crt, *good_key, *out;
    json_t *j;
    int sends;
    (void)state;

    ts_pki_make_ca("x509-other-ca", "stampcp other CA", &o_ca, &o_ca_key);
    ts_pki_make_leaf("dev-x2", "dev-x2", o_ca, o_ca_key, &crt, &key);
    j = ts_sd_run_until_stopped("example-wrong-ca", x509_argv("dev-x2", crt, key, NULL, NULL), 4000, 2, &out);
    sends = ts_count_lines(out, " send dps_register:");
    /* backoff 1 s base with full jitter, the breaker open for 60 s after 5 failures: a retry, not a spin */
    if (sends < 2 || sends > 6 || ts_count_lines(out, "-> 401") < sends - 1 || ts_count_lines(out, "-> 401") > sends)
        ts_fail("expected 2..6 registrations answered 401 (the last may be cut short by SIGTERM), got %d "
                "registrations, %d 401s", sends, ts_count_lines(out, "-> 401"));
    /* every answer was a 401 (a request cut short by SIGTERM counts as an I/O error) */
    assert_int_equal(ts_jint(j, "ioErrors", -1), sends - ts_count_lines(out, "-> 401"));
    assert_int_equal(ts_jint(json_object_get(j, "requests"), "dps_register", -1), sends);
    assert_int_equal(ts_pg_count(stamp.db, ts_str("SELECT count(*) FROM dps_registrations WHERE registration_id = "
                                                  "'dev-x2'")), 0);
    ts_sd_load_state("dev-x2", SD_STORE_ABSENT);

    /* a good certificate, but not this registration id (CN dev-x1 for dev-x9): 401 too */
    ts_pki_make_leaf("dev-x9-wrong-cn", "dev-x1", dev_ca_crt, dev_ca_key, &good_crt, &good_key);
    ts_sd_run_until_stopped("example-wrong-cn", x509_argv("dev-x9", good_crt, good_key, NULL, NULL), 1000, 1, &out);
    if (ts_count_lines(out, " send dps_register:") < 1 || ts_count_lines(out, "-> 401") < 1)
        ts_fail("expected registrations of dev-x9 answered 401: %s", out);
    assert_int_equal(ts_pg_count(stamp.db, ts_str("SELECT count(*) FROM dps_registrations WHERE registration_id = "
                                                  "'dev-x9'")), 0);
}

/*
 * A device certificate issued by an intermediate CA under the group's CA:
 * the certificate file holds the leaf and the intermediate, and the driver
 * must present both (the stamp trusts only the group's CA). The leaf alone
 * does not chain up: 401.
 */
static void test_intermediate_chain(void **state)
{
    const char *ica_csr = ts_str("%s/x509-ica.csr", ts_tmp()), *ica_key = ts_str("%s/x509-ica.key", ts_tmp());
    const char *ica_crt = ts_str("%s/x509-ica.crt", ts_tmp()), *ica_ext = ts_str("%s/x509-ica.ext", ts_tmp());
    const char *crt, *key, *chain = ts_str("%s/dev-x5-chain.pem", ts_tmp()), *out;
    struct ts_sd_run r;
    (void)state;

    {
        char *argv[] = { "/usr/bin/env", "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
                         (char *)ica_key, "-out", (char *)ica_csr, "-subj", "/CN=stampcp x509 intermediate CA", NULL };
        ts_openssl("intermediate CSR", argv);
    }
    ts_write_file(ica_ext, "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n");
    {
        char *argv[] = { "/usr/bin/env", "openssl", "x509", "-req", "-in", (char *)ica_csr, "-CA", (char *)dev_ca_crt,
                         "-CAkey", (char *)dev_ca_key, "-CAcreateserial", "-CAserial",
                         (char *)ts_str("%s/x509-ica.srl", ts_tmp()), "-out", (char *)ica_crt, "-days", "2", "-sha256",
                         "-extfile", (char *)ica_ext, NULL };
        ts_openssl("intermediate certificate", argv);
    }
    ts_pki_make_leaf("dev-x5", "dev-x5", ica_crt, ica_key, &crt, &key);
    ts_write_file(chain, ts_str("%s%s", ts_read_file(crt, NULL), ts_read_file(ica_crt, NULL)));

    /* the leaf alone: the stamp cannot build the chain to the group's CA */
    ts_sd_run_until_stopped("example-no-chain", x509_argv("dev-x5", crt, key, NULL, NULL), 0, 1, &out);
    if (ts_count_lines(out, "-> 401") < 1)
        ts_fail("expected the leaf without its intermediate to be refused with 401: %s", out);

    r = example(x509_argv("dev-x5", chain, key, NULL, NULL), "dev-x5");
    expect_ready(&r, "dev-x5");
    expect_x509_row("dev-x5", ts_jstr(r.json, "assignedHub"));
}

/*
 * Credentials that cannot work fail at setup, before any request: a key of
 * another certificate, and a key encrypted with a pass phrase (refused, never
 * prompted for: OpenSSL's default would read the terminal and block).
 */
static void test_unusable_key(void **state)
{
    const char *crt, *key, *crt2, *key2, *enc = ts_str("%s/dev-x6-enc.key", ts_tmp());
    char *out = NULL;
    json_t *j;
    int64_t t0;
    (void)state;

    ts_pki_make_leaf("dev-x6", "dev-x6", dev_ca_crt, dev_ca_key, &crt, &key);
    ts_pki_make_leaf("dev-x6-other", "dev-x6", dev_ca_crt, dev_ca_key, &crt2, &key2);
    assert_int_equal(ts_run(x509_argv("dev-x6", crt, key2, NULL, NULL), 10000, &out), 1);
    ts_expect_no_sanitizer_report("mismatched key", out);
    j = ts_last_json(out);
    assert_non_null(j);
    if (!ts_jstr(j, "error") || !strstr(ts_jstr(j, "error"), "mismatch"))
        ts_fail("a key of another certificate: expected a key mismatch: %s", out);
    assert_int_equal(ts_jint(json_object_get(j, "requests"), "dps_register", -1), 0);

    {
        char *argv[] = { "/usr/bin/env", "openssl", "pkey", "-in", (char *)key, "-aes256", "-passout", "pass:secret",
                         "-out", (char *)enc, NULL };
        ts_openssl("encrypted key", argv);
    }
    t0 = ts_now_ms();
    assert_int_equal(ts_run(x509_argv("dev-x6", crt, enc, NULL, NULL), 10000, &out), 1);
    ts_log("encrypted key refused after %lld ms: %s", (long long)(ts_now_ms() - t0), out);
    ts_expect_no_sanitizer_report("encrypted key", out);
    j = ts_last_json(out);
    assert_non_null(j);
    if (!ts_jstr(j, "error") || !strstr(ts_jstr(j, "error"), "encrypted with a pass phrase (not supported)"))
        ts_fail("an encrypted key: expected a setup failure naming the pass phrase: %s", out);
    if (strstr(out, "Enter PEM pass phrase"))
        ts_fail("an encrypted key: the example prompted for a pass phrase: %s", out);
    assert_int_equal(ts_jint(json_object_get(j, "requests"), "dps_register", -1), 0);
    ts_sd_load_state("dev-x6", SD_STORE_ABSENT);
}

/* Control plane with an installer token, then the certificate at the stamp's DPS. */
static void test_cp_bearer(void **state)
{
    const char *token = ts_rt_installer_token(rt->cp[0], TENANT);
    const char *cp = ts_str("https://127.0.0.1:%d", rt->cp[0]->port);
    const char *crt, *key, *before;
    struct ts_sd_run r;
    struct sd_state st;
    struct ts_resp *dev;
    int64_t t0;
    (void)state;

    ts_pki_make_leaf("dev-x3", "dev-x3", dev_ca_crt, dev_ca_key, &crt, &key);
    r = example(x509_argv("dev-x3", crt, key, cp, token), "dev-x3");
    expect_ready(&r, "dev-x3");
    TS_EXPECT_STREQ(ts_jstr(r.json, "tenantId"), TENANT);
    TS_EXPECT_STREQ(ts_jstr(r.json, "stamp"), STAMP);
    TS_EXPECT_STREQ(ts_jstr(r.json, "geography"), "eu");
    assert_int_equal(ts_sd_requests(&r, "locate"), 1);
    assert_int_equal(ts_sd_requests(&r, "dps_register"), 1);
    assert_int_equal(ts_sd_requests(&r, "provision"), 0);
    expect_x509_row("dev-x3", ts_jstr(r.json, "assignedHub"));
    st = ts_sd_load_state("dev-x3", SD_STORE_OK);
    TS_EXPECT_STREQ(st.stamp, STAMP);
    TS_EXPECT_STREQ(st.tenant_id, TENANT);
    TS_EXPECT_STREQ(st.assigned_hub, ts_jstr(r.json, "assignedHub"));
    /* the control plane placed it (the installer token acted for the device) */
    dev = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/%s/devices/dev-x3", TENANT), NULL);
    TS_EXPECT_STATUS(dev, 200);
    TS_EXPECT_STREQ(ts_jstr(dev->json, "status"), "assigned");

    /* warm boot: one control plane lookup, nothing at the DPS */
    before = dps_row("dev-x3");
    ts_sleep_ms(20);
    r = example(x509_argv("dev-x3", crt, key, cp, token), "dev-x3");
    expect_ready(&r, "dev-x3");
    assert_int_equal(ts_sd_requests(&r, "lookup"), 1);
    assert_int_equal(ts_sd_requests(&r, "locate") + ts_sd_requests(&r, "dps_register") + ts_sd_requests(&r, "dps_lookup"), 0);
    TS_EXPECT_STREQ(dps_row("dev-x3"), before);

    /* without the bearer the control plane cannot be used by an X.509 device: a usage error */
    {
        char *out = NULL;
        char **argv = x509_argv("dev-x4", crt, key, cp, NULL);
        assert_int_equal(ts_run(argv, 10000, &out), 2);
        if (!out || !strstr(out, "bearer"))
            ts_fail("expected a usage error naming the bearer token: %s", out ? out : "");
    }

    /* a reconciler pass after all this leaves the X.509 group alone and keeps the tenant's group */
    t0 = ts_now_ms();
    if (!ts_wait_until(group_synced, &t0, 15000))
        ts_fail("no in-sync reconciler pass within 15 s");
    x509_group();
    assert_int_equal(ts_pg_count(stamp.db, ts_str("SELECT count(*) FROM dps_enrollments WHERE dps_id = '%s' AND "
                                                  "kind = 'group' AND enrollment_id = '%s' AND attestation = 'x509'",
                                                  DPS, X509_GROUP)), 1);
    assert_int_equal(ts_pg_count(stamp.db, ts_str("SELECT count(*) FROM dps_enrollments WHERE dps_id = '%s' AND "
                                                  "kind = 'group' AND enrollment_id = '%s' AND "
                                                  "attestation = 'symmetricKey'", DPS, TENANT)), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dps_only),
        cmocka_unit_test(test_wrong_ca_401),
        cmocka_unit_test(test_intermediate_chain),
        cmocka_unit_test(test_unusable_key),
        cmocka_unit_test(test_cp_bearer),
    };
    ts_init("test_device_x509");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
