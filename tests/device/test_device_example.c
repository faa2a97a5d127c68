/*
 * test_device_example - sd-provision-one (device/examples: libstampdevice's
 * state machine run by the blocking POSIX driver) against the real control
 * plane and a real stamp agent serving its DPS endpoint over TLS.
 *
 * Layout: geography eu, region eu-west, stamp eu-west-1 with one DPS
 * instance (TLS endpoint on 127.0.0.1, certificate from a throwaway CA made
 * here) and two hubs; tenant acme resident in eu, its enrollment group kept
 * on the instance by the control plane's reconciler.
 *
 * Covered:
 *  - approach 1 (locate, then PUT register + polls at the stamp): exit 0, a
 *    hub of eu-west-1 in the JSON line, the same hub in the stamp's
 *    dps_registrations row, a valid state file holding it;
 *  - a warm boot with that state file: READY from one status lookup; the
 *    stamp's registration row (operation id, etag, updated_at) is untouched,
 *    so no DPS registration happened;
 *  - approach 2 (the control plane's /provision): exit 0 with a hub;
 *  - a corrupt state file: reported, ignored, the device provisions afresh
 *    and the file is valid again;
 *  - retire through the admin API: exit 3, the state file says retired, and
 *    the next boot stops at once without a request;
 *  - the control plane down: the example keeps retrying with backoff (a
 *    handful of attempts in 8 s, not a spin) and never exits 0; SIGTERM ends
 *    it promptly with its JSON line.
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
#define STAMP TS_SD_STAMP
#define DPS TS_SD_DPS

static struct ts_rt *rt;
static struct ts_stamp stamp; /* the agent serving the DPS instance */
static const char *dps_endpoint, *ca_crt;
static struct ts_tenant *tenant;


/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */


/* Run sd-provision-one for regid with the given extra options (NULL-terminated). */
static struct ts_sd_run example(const char *regid, const char *cp, const char *const *extra)
{
    char *argv[40];
    int n = 0;

    argv[n++] = (char *)ts_bin("sd-provision-one");
    argv[n++] = "--cp";
    argv[n++] = (char *)cp;
    argv[n++] = "--tenant";
    argv[n++] = TENANT;
    argv[n++] = "--registration-id";
    argv[n++] = (char *)regid;
    argv[n++] = "--group-key";
    argv[n++] = tenant->key_b64;
    argv[n++] = "--ca";
    argv[n++] = (char *)ca_crt;
    argv[n++] = "--state";
    argv[n++] = (char *)ts_sd_state_path(regid);
    argv[n++] = "-v";
    for (int i = 0; extra && extra[i] && n < 38; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    return ts_sd_run(argv, regid, false);
}

static const char *cp_addr(void)
{
    return ts_str("https://127.0.0.1:%d", rt->cp[0]->port);
}

static bool is_hub(const char *host)
{
    return ts_sd_stack_hub(rt, host);
}

/* The stamp's registration row: status, hub, operation id, etag and last update, as one string. */
static const char *dps_row(const char *regid)
{
    return ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                        ts_str("SELECT status || ' ' || coalesce(assigned_hub, '-') || ' ' || operation_id || ' ' || "
                               "etag || ' ' || updated_at FROM dps_registrations WHERE dps_id = '%s' AND "
                               "registration_id = '%s'", DPS, regid));
}

static void expect_ready(const struct ts_sd_run *r, const char *regid)
{
    if (r->rc != 0)
        ts_fail("%s: expected exit 0 (ready), got %d: %s", regid, r->rc, ts_jdump(r->json));
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "ready");
    TS_EXPECT_STREQ(ts_jstr(r->json, "registrationId"), regid);
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), STAMP);
    TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    TS_EXPECT_STREQ(ts_jstr(r->json, "deviceId"), regid);
    if (!is_hub(ts_jstr(r->json, "assignedHub")))
        ts_fail("%s: assignedHub is not a hub of %s: %s", regid, STAMP, ts_jdump(r->json));
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;

    /* the control plane serves HTTPS with the DPS's certificate (the test PKI's): one --ca for both hops */
    ca_crt = ts_pki_ca();
    rt = ts_sd_stack_start(&stamp, &tenant);
    dps_endpoint = stamp.hostport;
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

static void test_approach1(void **state)
{
    struct ts_sd_run r;
    struct sd_state st;
    (void)state;

    r = example("dev-a1", cp_addr(), NULL);
    expect_ready(&r, "dev-a1");
    TS_EXPECT_STREQ(ts_jstr(r.json, "stateFile"), "absent");
    TS_EXPECT_STREQ(ts_jstr(r.json, "dpsEndpoint"), dps_endpoint);
    TS_EXPECT_STREQ(ts_jstr(r.json, "idScope"), ts_rt_id_scope(DPS));
    assert_int_equal(ts_sd_requests(&r, "locate"), 1);
    assert_int_equal(ts_sd_requests(&r, "dps_register"), 1);
    assert_int_equal(ts_sd_requests(&r, "provision"), 0);
    TS_EXPECT_STREQ(ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                 ts_str("SELECT status || ' ' || assigned_hub FROM dps_registrations "
                                        "WHERE dps_id = '%s' AND registration_id = 'dev-a1'", DPS)),
                    ts_str("assigned %s", ts_jstr(r.json, "assignedHub")));
    st = ts_sd_load_state("dev-a1", SD_STORE_OK);
    assert_true(st.flags & SD_STATE_ASSIGNED);
    assert_true(st.flags & SD_STATE_HUB);
    assert_false(st.flags & SD_STATE_RETIRED);
    TS_EXPECT_STREQ(st.assigned_hub, ts_jstr(r.json, "assignedHub"));
    TS_EXPECT_STREQ(st.tenant_id, TENANT);
    TS_EXPECT_STREQ(st.dps_endpoint, dps_endpoint);
}

/* Warm boot: one status lookup at the control plane, nothing at the DPS, no write. */
static void test_warm_boot_lookup_only(void **state)
{
    const char *before = dps_row("dev-a1");
    const char *file_before;
    struct ts_sd_run r;
    (void)state;

    assert_non_null(before);
    file_before = ts_read_file(ts_sd_state_path("dev-a1"), NULL);
    assert_non_null(file_before);
    ts_sleep_ms(20); /* a write now would show in updated_at */
    r = example("dev-a1", cp_addr(), NULL);
    expect_ready(&r, "dev-a1");
    TS_EXPECT_STREQ(ts_jstr(r.json, "stateFile"), "ok");
    assert_int_equal(ts_sd_requests(&r, "lookup"), 1);
    assert_int_equal(ts_sd_requests(&r, "locate"), 0);
    assert_int_equal(ts_sd_requests(&r, "dps_register"), 0);
    assert_int_equal(ts_sd_requests(&r, "dps_poll"), 0);
    assert_int_equal(ts_sd_requests(&r, "provision"), 0);
    TS_EXPECT_STREQ(dps_row("dev-a1"), before);
    TS_EXPECT_STREQ(ts_read_file(ts_sd_state_path("dev-a1"), NULL), file_before);
}

static void test_approach2(void **state)
{
    struct ts_sd_run r;
    struct sd_state st;
    const char *const extra[] = { "--approach", "2", NULL };
    (void)state;

    r = example("dev-a2", cp_addr(), extra);
    expect_ready(&r, "dev-a2");
    assert_int_equal(ts_sd_requests(&r, "provision"), 1);
    assert_int_equal(ts_sd_requests(&r, "dps_register"), 0);
    TS_EXPECT_STREQ(ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                 ts_str("SELECT status || ' ' || assigned_hub FROM dps_registrations "
                                        "WHERE dps_id = '%s' AND registration_id = 'dev-a2'", DPS)),
                    ts_str("assigned %s", ts_jstr(r.json, "assignedHub")));
    st = ts_sd_load_state("dev-a2", SD_STORE_OK);
    TS_EXPECT_STREQ(st.assigned_hub, ts_jstr(r.json, "assignedHub"));
}

/* A damaged state file is reported and ignored; the device provisions afresh and the file is whole again. */
static void test_corrupt_state_reprovisions(void **state)
{
    const char *path = ts_sd_state_path("dev-a1");
    size_t len = 0;
    char *text = ts_read_file(path, &len);
    struct ts_sd_run r;
    struct sd_state st;
    (void)state;

    assert_non_null(text);
    assert_true(len > 40);
    text[len / 2] ^= 0x01; /* one bit in the middle */
    ts_write_file(path, text);
    ts_sd_load_state("dev-a1", SD_STORE_CORRUPT);

    r = example("dev-a1", cp_addr(), NULL);
    expect_ready(&r, "dev-a1");
    TS_EXPECT_STREQ(ts_jstr(r.json, "stateFile"), "corrupt");
    assert_int_equal(ts_sd_requests(&r, "lookup"), 0);
    assert_int_equal(ts_sd_requests(&r, "locate"), 1);
    assert_int_equal(ts_sd_requests(&r, "dps_register"), 1);
    if (!strstr(r.out, "ignoring the state file"))
        ts_fail("the corrupt state file was not reported: %s", r.out);
    st = ts_sd_load_state("dev-a1", SD_STORE_OK);
    TS_EXPECT_STREQ(st.assigned_hub, ts_jstr(r.json, "assignedHub"));

    /* garbage and an empty file: the same */
    ts_write_file(path, "\x01\x02 not a state file\n");
    r = example("dev-a1", cp_addr(), NULL);
    expect_ready(&r, "dev-a1");
    TS_EXPECT_STREQ(ts_jstr(r.json, "stateFile"), "corrupt");
    ts_write_file(path, "");
    r = example("dev-a1", cp_addr(), NULL);
    expect_ready(&r, "dev-a1");
    TS_EXPECT_STREQ(ts_jstr(r.json, "stateFile"), "corrupt");
    ts_sd_load_state("dev-a1", SD_STORE_OK);
}

/* Retired through the admin API: 410 at the next lookup -> exit 3, and the state remembers. */
static void test_retired(void **state)
{
    struct ts_resp *resp;
    struct ts_sd_run r;
    struct sd_state st;
    (void)state;

    resp = ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/%s/devices/dev-a2/retire", TENANT), NULL);
    TS_EXPECT_STATUS(resp, 200);
    r = example("dev-a2", cp_addr(), NULL);
    if (r.rc != 3)
        ts_fail("retired dev-a2: expected exit 3, got %d: %s", r.rc, ts_jdump(r.json));
    TS_EXPECT_STREQ(ts_jstr(r.json, "status"), "retired");
    st = ts_sd_load_state("dev-a2", SD_STORE_OK);
    assert_true(st.flags & SD_STATE_RETIRED);

    /* the next boot stops at once: no request at all */
    r = example("dev-a2", cp_addr(), NULL);
    assert_int_equal(r.rc, 3);
    assert_int_equal(ts_sd_requests(&r, "lookup") + ts_sd_requests(&r, "locate") + ts_sd_requests(&r, "provision") +
                         ts_sd_requests(&r, "reprovision") + ts_sd_requests(&r, "dps_register") + ts_sd_requests(&r, "dps_lookup"),
                     0);
}

/* The control plane down: retries with backoff, no exit 0, no spin; SIGTERM ends it with its JSON line. */
static void test_cp_down_backoff(void **state)
{
    const char *log = ts_str("%s/example-down.log", ts_tmp());
    char *argv[] = { (char *)ts_bin("sd-provision-one"), "--cp", (char *)cp_addr(), "--tenant", TENANT,
                     "--registration-id", "dev-down", "--group-key", tenant->key_b64, "--ca", (char *)ca_crt,
                     "--state", (char *)ts_sd_state_path("dev-down"), "-v", NULL };
    struct ts_proc *p;
    const char *out;
    json_t *j;
    int64_t t0;
    int sends;
    (void)state;

    assert_int_equal(ts_controlplane_stop(rt->cp[0], 10000), 0);
    p = ts_proc_spawn("example-down", argv, log, NULL);
    ts_sleep_ms(8000);
    if (!ts_proc_alive(p))
        ts_fail("the example exited (code %d) while the control plane was down", ts_proc_exit_code(p));
    t0 = ts_now_ms();
    ts_proc_kill(p, SIGTERM);
    if (!ts_proc_wait(p, 3000))
        ts_fail("the example did not stop within 3 s of SIGTERM");
    ts_log("stopped %lld ms after SIGTERM", (long long)(ts_now_ms() - t0));
    assert_int_equal(ts_proc_exit_code(p), 1);
    out = ts_read_file(log, NULL);
    assert_non_null(out);
    ts_log("example with the control plane down:\n%s", out);
    j = ts_last_json(out);
    assert_non_null(j);
    TS_EXPECT_STREQ(ts_jstr(j, "status"), "failed");
    sends = ts_count_lines(out, " send locate:");
    /* backoff 1 s base with full jitter, breaker open after 5 failures (60 s): 2..6 attempts in 8 s */
    if (sends < 2 || sends > 6 || ts_jint(j, "ioErrors", -1) != sends)
        ts_fail("expected 2..6 locate attempts in 8 s with the control plane down, got %d (ioErrors %lld)", sends,
                (long long)ts_jint(j, "ioErrors", -1));
    assert_true(ts_jint(j, "sleptMs", 0) > 1000);
    assert_int_equal(ts_jint(json_object_get(j, "requests"), "dps_register", -1), 0);
    ts_sd_load_state("dev-down", SD_STORE_ABSENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_approach1),
        cmocka_unit_test(test_warm_boot_lookup_only),
        cmocka_unit_test(test_approach2),
        cmocka_unit_test(test_corrupt_state_reprovisions),
        cmocka_unit_test(test_retired),
        cmocka_unit_test(test_cp_down_backoff), /* last: stops the control plane */
    };
    ts_init("test_device_example");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
