/*
 * test_router_proxy - proxy provisioning (approach 2, docs/api.md "Devices:
 * where do I belong?", route `provision`): the router registers the device at
 * its stamp's DPS itself, over TLS verified against dps.caFile, and answers
 * with the hub.
 *
 * The stamp's DPS is tests/mockdps (mock-dps) with the test PKI's server
 * certificate for 127.0.0.1 (ts_pki_server(), ts_stamp.h); the
 * mock verifies every SAS token like DPS does for a group enrollment, so a
 * 200 proves the router derived the device key from the tenant's enrollment
 * key and signed sr "{idScope}/registrations/{regid}". Its log (one line per
 * request: "METHOD uri -> status") shows what the router sent.
 *
 * Covered: the happy path (locate fields + hub, DPS payload echoed, polls
 * honouring Retry-After, the hub recorded in the geography database), a
 * repeated provision (answered from the record, nothing sent to the DPS),
 * every mock mode mapped to the documented error codes, a DPS that is down
 * or presents an untrusted certificate, bad inputs, and a missing
 * dps.caFile at startup (exit 2).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

#define SCOPE "0neMOCK1"
#define HUB_HOST "hub-1.example.net"
#define TENANT "acme"
#define GEO "eu"
#define REGION "eu-west"
#define STAMP "eu-west-1"
#define DPS_ID "eu-west-1-dps"
#define HUB_ID "eu-west-1-hub-1"

static struct ts_redis *redis;
static struct ts_cp *cp;
static struct ts_proc *agent;
static struct ts_proc *mock;          /* the running mock-dps, NULL when none */
static const char *mock_log;          /* its --log file */
static int mock_port;
static const char *srv_crt, *srv_key, *bad_crt, *bad_key;
static struct ts_tenant *tenant;      /* its enrollment key is the mock's group key */

/* Devices that got a 200 from provision (checked in the geography DB at the end). */
static const char *provisioned[16];
static int nprovisioned;

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */

/* The test PKI's server certificate, and a self-signed one the router must not trust. */
static void make_certs(void)
{
    ts_pki_server(&srv_crt, &srv_key);
    ts_pki_make_untrusted_server("untrusted", &bad_crt, &bad_key);
}

static bool mock_listening(void *arg)
{
    struct ts_proc *p = arg;
    return !ts_proc_alive(p) || ts_proc_log_contains(p, "listening on");
}

/* Start mock-dps on mock_port; its own --log file per start. */
static void mock_start(const char *mode, bool untrusted)
{
    static int seq;
    const char *name = ts_str("mock-dps-%s-%d", mode, seq++);
    const char *polls = "2";
    mock_log = ts_str("%s/%s.requests", ts_tmp(), name);
    char *argv[] = { (char *)ts_bin("mock-dps"), "--listen", (char *)ts_str("127.0.0.1:%d", mock_port),
                     "--cert", (char *)(untrusted ? bad_crt : srv_crt), "--key", (char *)(untrusted ? bad_key : srv_key),
                     "--scope", SCOPE, "--group-key", tenant->key_b64, "--hub", HUB_HOST, "--mode", (char *)mode,
                     "--polls", (char *)polls, "--log", (char *)mock_log, NULL };
    mock = ts_proc_spawn(name, argv, NULL, NULL);
    if (!ts_wait_until(mock_listening, mock, 10000) || !ts_proc_alive(mock)) {
        ts_proc_dump_log(mock, 4000);
        ts_fail("mock-dps (%s) did not start listening on 127.0.0.1:%d", mode, mock_port);
    }
    ts_log("mock-dps mode %s%s listening on %d", mode, untrusted ? " (untrusted cert)" : "", mock_port);
}

static void mock_stop(void)
{
    if (!mock)
        return;
    ts_proc_kill(mock, SIGTERM);
    if (!ts_proc_wait(mock, 5000)) {
        ts_proc_kill(mock, SIGKILL);
        (void)ts_proc_wait(mock, 5000);
        ts_fail("mock-dps did not stop on SIGTERM");
    }
    if (ts_proc_exit_code(mock) != 0)
        ts_fail("mock-dps exited with %d (signal %d)", ts_proc_exit_code(mock), ts_proc_term_signal(mock));
    mock = NULL;
}

/* The mock's request lines ("METHOD uri -> status"), as a NULL-terminated array (library-owned). */
static char **mock_lines(int *n)
{
    size_t len;
    char *txt = ts_read_file(mock_log, &len);
    char **lines = ts_keep(calloc(256, sizeof *lines));
    int k = 0;
    if (txt) {
        char *copy = ts_str("%s", txt);
        for (char *save = NULL, *l = strtok_r(copy, "\n", &save); l && k < 255; l = strtok_r(NULL, "\n", &save))
            lines[k++] = l;
    }
    *n = k;
    return lines;
}

static const char *mock_log_text(void)
{
    size_t len;
    const char *t = ts_read_file(mock_log, &len);
    return t && *t ? t : "(empty)";
}

static bool line_is(const char *line, const char *method, const char *path_prefix, int status)
{
    const char *want = ts_str("%s %s", method, path_prefix);
    const char *tail = ts_str(" -> %d", status);
    size_t ll = strlen(line), tl = strlen(tail);
    if (strncmp(line, want, strlen(want)) != 0)
        return false;
    /* the path must end there or continue with the query string */
    if (line[strlen(want)] != '?' && line[strlen(want)] != ' ')
        return false;
    return ll >= tl && strcmp(line + ll - tl, tail) == 0;
}

/* How many request lines of the current mock log start with "METHOD path" (path then ? or space). */
static int mock_count(const char *method, const char *path)
{
    int n, c = 0;
    char **l = mock_lines(&n);
    const char *want = ts_str("%s %s", method, path);
    for (int i = 0; i < n; i++)
        if (strncmp(l[i], want, strlen(want)) == 0 && (l[i][strlen(want)] == '?' || l[i][strlen(want)] == ' '))
            c++;
    return c;
}

/* How many request lines use this method at all. */
static int mock_count_method(const char *method)
{
    int n, c = 0;
    char **l = mock_lines(&n);
    const char *want = ts_str("%s ", method);
    for (int i = 0; i < n; i++)
        if (strncmp(l[i], want, strlen(want)) == 0)
            c++;
    return c;
}

static const char *put_path(const char *regid)
{
    return ts_str("/" SCOPE "/registrations/%s/register", regid);
}

static const char *get_path(const char *regid)
{
    return ts_str("/" SCOPE "/registrations/%s/operations/op.%s", regid, regid);
}

/* Device SAS token: key = HMAC(enrollment key, key_regid), sr = "{tenant}/registrations/{sr_regid}". */
static const char *device_sas(const char *key_regid, const char *sr_regid)
{
    return ts_rt_sas_custom(tenant->key, (size_t)tenant->keylen, key_regid,
                            ts_str(TENANT "/registrations/%s", sr_regid), 0, "registration");
}

static struct ts_resp *provision_raw(const char *regid, const char *sas, const char *body)
{
    const char *auth = ts_str("Authorization: %s", sas);
    const char *h_body[] = { auth, "Content-Type: application/json", NULL };
    const char *h_nobody[] = { auth, NULL };
    const char *path = ts_str("/v1/tenants/" TENANT "/registrations/%s/provision", regid);
    struct ts_resp *r = body ? ts_http(cp->port, "POST", path, h_body, body, strlen(body))
                             : ts_http(cp->port, "POST", path, h_nobody, NULL, 0);
    ts_log("provision %s -> %s (%lld ms)", regid, ts_resp_str(r), (long long)r->elapsed_ms);
    return r;
}

static struct ts_resp *provision(const char *regid, const char *body)
{
    return provision_raw(regid, device_sas(regid, regid), body);
}

static void remember_provisioned(const char *regid)
{
    for (int i = 0; i < nprovisioned; i++)
        if (strcmp(provisioned[i], regid) == 0)
            return;
    if (nprovisioned < 16)
        provisioned[nprovisioned++] = regid;
}

/* The documented 200 of provision: locate fields + hub, device id, status, substatus. */
static void expect_provisioned(const struct ts_resp *r, const char *regid)
{
    json_t *j = r->json;
    const char *txt = ts_resp_str(r);
    TS_EXPECT_STATUS(r, 200);
    if (!json_is_object(j))
        ts_fail("provision answer is not a JSON object: %s", txt);
    TS_EXPECT_STREQ(ts_jstr(j, "registrationId"), regid);
    TS_EXPECT_STREQ(ts_jstr(j, "tenantId"), TENANT);
    TS_EXPECT_STREQ(ts_jstr(j, "geography"), GEO);
    TS_EXPECT_STREQ(ts_jstr(j, "region"), REGION);
    TS_EXPECT_STREQ(ts_jstr(j, "stamp"), STAMP);
    TS_EXPECT_STREQ(ts_jstr(j, "idScope"), SCOPE);
    TS_EXPECT_STREQ(ts_jstr(j, "dpsEndpoint"), ts_str("127.0.0.1:%d", mock_port));
    if (!ts_jstr(j, "assignedAt") || ts_parse_rfc3339(ts_jstr(j, "assignedAt")) < 0)
        ts_fail("assignedAt is not an RFC 3339 UTC time: %s", txt);
    if (!ts_jstr(j, "etag") || !*ts_jstr(j, "etag"))
        ts_fail("etag missing or not a string: %s", txt);
    TS_EXPECT_STREQ(ts_jstr(j, "assignedHub"), HUB_HOST);
    TS_EXPECT_STREQ(ts_jstr(j, "deviceId"), regid);
    TS_EXPECT_STREQ(ts_jstr(j, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(j, "substatus"), "initialAssignment");
    remember_provisioned(regid);
}

static void expect_payload_echo(const struct ts_resp *r)
{
    json_t *want = json_pack("{s:{s:s, s:i}}", "echo", "model", "m1", "rev", 2);
    bool ok = json_equal(json_object_get(r->json, "payload"), want);
    json_decref(want);
    if (!ok)
        ts_fail("payload should be {\"echo\":{\"model\":\"m1\",\"rev\":2}}: %s", ts_resp_str(r));
}

static void expect_retry_after_int(const struct ts_resp *r, long min)
{
    const char *ra = ts_header(r, "Retry-After");
    char *end = NULL;
    long v;
    if (!ra || !*ra)
        ts_fail("no Retry-After on %s", ts_resp_str(r));
    v = strtol(ra, &end, 10);
    if (*end != '\0' || v < min)
        ts_fail("Retry-After \"%s\" should be an integer >= %ld (%s)", ra, min, ts_resp_str(r));
    ts_log("Retry-After: %s", ra);
}

static bool stamp_healthy(void *arg)
{
    struct ts_resp *r = ts_admin(cp, "GET", "/v1/stamps/" STAMP, NULL);
    const char *h = ts_jstr(r->json, "health");
    (void)arg;
    return r->status == 200 && h && strcmp(h, "healthy") == 0;
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { GEO, NULL }, .stale_after = 3, .down_after = 10 };
    (void)state;

    make_certs();
    mock_port = ts_free_port();
    redis = ts_redis_start("redis");
    o.redis = redis->addr;
    o.extra_json = ts_str("\"layoutRefreshMs\": 200,\n  \"dps\": {\"caFile\": \"%s\", \"timeoutMs\": 5000}",
                          ts_pki_ca());
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000))
        ts_fail("controlplane not ready: %s", ts_resp_str(ts_get(cp, "/readyz")));

    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"" GEO "\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", ts_json("{'id':'" REGION "','geography':'" GEO "'}")), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/stamps", ts_json("{'id':'" STAMP "','region':'" REGION "'}")), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/dps-instances",
                              ts_json("{'id':'" DPS_ID "','stamp':'" STAMP "','idScope':'" SCOPE
                                      "','endpoint':'127.0.0.1:%d'}", mock_port)),
                     201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/hubs",
                              ts_json("{'id':'" HUB_ID "','stamp':'" STAMP "','hostName':'" HUB_HOST "'}")),
                     201);
    {
        struct ts_agent_opts a = { .stamp_id = STAMP, .region = REGION, .redis = redis->addr, .interval_ms = 200,
                                   .dps = { DPS_ID, NULL }, .hubs = { HUB_ID, NULL } };
        agent = ts_agent_start(&a);
    }
    if (!ts_wait_until(stamp_healthy, NULL, 5000))
        ts_fail("stamp not healthy 5 s after its agent started: %s",
                ts_resp_str(ts_admin(cp, "GET", "/v1/stamps/" STAMP, NULL)));
    /* let the layout snapshot (layoutRefreshMs 200) pick up the stamp, its DPS and hub */
    ts_sleep_ms(800);

    /* 201 with an enrollment key of 32 bytes (ts_rt_tenant fails the test otherwise) */
    tenant = ts_rt_tenant(cp, ts_json("{'id':'" TENANT "','name':'Acme','residency':{'geographies':['" GEO "']}}"));

    mock_start("ok", false);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

/* 1-3: provision through the DPS, the hub in the admin view, provision again. */
static void test_provision_ok(void **state)
{
    struct ts_resp *r;
    json_t *dev;
    int n;
    char **l;
    (void)state;

    r = provision("dev-1", "{\"payload\":{\"model\":\"m1\",\"rev\":2}}");
    expect_provisioned(r, "dev-1");
    expect_payload_echo(r);
    /* PUT -> 202 (Retry-After 1), GET -> 202 (Retry-After 1), GET -> 200: two waits of 1 s */
    if (r->elapsed_ms < 1900 || r->elapsed_ms >= 5000)
        ts_fail("provision took %lld ms; expected >= ~2 s (two polls honouring Retry-After: 1) and < 5 s",
                (long long)r->elapsed_ms);

    l = mock_lines(&n);
    if (n != 3 || !line_is(l[0], "PUT", put_path("dev-1"), 202) || !line_is(l[1], "GET", get_path("dev-1"), 202) ||
        !line_is(l[2], "GET", get_path("dev-1"), 200))
        ts_fail("the mock should have seen exactly PUT %s -> 202, GET %s -> 202, GET ... -> 200; its log:\n%s",
                put_path("dev-1"), get_path("dev-1"), mock_log_text());

    /* 2: the hub is recorded in the device's row */
    r = ts_admin(cp, "GET", "/v1/tenants/" TENANT "/devices/dev-1", NULL);
    TS_EXPECT_STATUS(r, 200);
    dev = r->json;
    TS_EXPECT_STREQ(ts_jstr(dev, "assignedHub"), HUB_HOST);
    TS_EXPECT_STREQ(ts_jstr(dev, "deviceId"), "dev-1");
    TS_EXPECT_STREQ(ts_jstr(dev, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(dev, "stamp"), STAMP);

    /* 3: again -> answered from the record (docs/api.md "Quotas"): nothing
     * reaches the DPS (no token spent), the same hub; the DPS's answer
     * payload is not kept, so the answer has none */
    r = provision("dev-1", "{\"payload\":{\"model\":\"m1\",\"rev\":2}}");
    expect_provisioned(r, "dev-1");
    if (json_object_get(r->json, "payload"))
        ts_fail("a provision answered from the record has no payload: %s", ts_resp_str(r));
    if (mock_count("PUT", put_path("dev-1")) != 1 || mock_count("GET", get_path("dev-1")) != 2)
        ts_fail("a second provision of a registered device should not reach the DPS (1 PUT, 2 GETs in total); "
                "the mock's log:\n%s", mock_log_text());

    /* without a body: no payload in the answer */
    r = provision("dev-nobody", NULL);
    expect_provisioned(r, "dev-nobody");
    if (json_object_get(r->json, "payload"))
        ts_fail("no payload was sent and the DPS returned none, yet the answer has one: %s", ts_resp_str(r));
}

/* 5: bad inputs are refused before anything reaches the DPS. */
static void test_bad_inputs(void **state)
{
    int before, n;
    (void)state;
    (void)mock_lines(&before);

    TS_EXPECT_ERROR(provision("dev-bad", "{\"payload\":{\"model\":\"m1\"},\"colour\":\"red\"}"), 400, "unknown_field");
    TS_EXPECT_ERROR(provision("dev-bad", "{\"payload\":{\"model\":\"m1\""), 400, "invalid_json");
    TS_EXPECT_ERROR(provision("dev-bad", "payload=1"), 400, "invalid_json");
    /* dev-2's valid token (its key, its sr) used for dev-1 */
    TS_EXPECT_ERROR(provision_raw("dev-1", device_sas("dev-2", "dev-2"), "{\"payload\":{\"model\":\"m1\"}}"), 401,
                    "wrong_resource");

    (void)mock_lines(&n);
    if (n != before)
        ts_fail("refused requests reached the DPS; the mock's log:\n%s", mock_log_text());
}

/* 4: what the DPS answers, as the router maps it. */
static void test_dps_outcomes(void **state)
{
    struct ts_resp *r;
    int n;
    int64_t t0;
    (void)state;

    mock_stop();
    mock_start("throttle", false);
    r = provision("dev-thr", "{\"payload\":{\"model\":\"m1\"}}");
    TS_EXPECT_ERROR(r, 429, "throttled");
    expect_retry_after_int(r, 3);
    if (mock_count("PUT", put_path("dev-thr")) != 1)
        ts_fail("throttle: expected one PUT; the mock's log:\n%s", mock_log_text());

    mock_stop();
    mock_start("failed", false);
    TS_EXPECT_ERROR(provision("dev-fail", "{\"payload\":{\"model\":\"m1\"}}"), 502, "dps_assignment_failed");

    mock_stop();
    mock_start("disabled", false);
    TS_EXPECT_ERROR(provision("dev-dis", NULL), 403, "device_disabled");

    mock_stop();
    mock_start("unauthorized", false);
    TS_EXPECT_ERROR(provision("dev-unauth", NULL), 502, "dps_rejected");
    if (mock_count("PUT", put_path("dev-unauth")) != 1)
        ts_fail("unauthorized: expected one PUT (401); the mock's log:\n%s", mock_log_text());

    mock_stop();
    mock_start("immediate", false);
    r = provision("dev-imm", "{\"payload\":{\"model\":\"m1\",\"rev\":2}}");
    expect_provisioned(r, "dev-imm");
    expect_payload_echo(r);
    if (mock_count("PUT", put_path("dev-imm")) != 1 || mock_count_method("GET") != 0)
        ts_fail("immediate: expected one PUT and no GET; the mock's log:\n%s", mock_log_text());
    (void)mock_lines(&n);
    if (n != 1)
        ts_fail("immediate: expected exactly one request; the mock's log:\n%s", mock_log_text());

    /* nothing listening */
    mock_stop();
    t0 = ts_now_ms();
    r = provision("dev-down", NULL);
    TS_EXPECT_ERROR(r, 503, "dps_unavailable");
    ts_expect_retry_after(r, 5);   /* docs/api.md: Retry-After: 5, jittered */
    if (ts_now_ms() - t0 >= 6000)
        ts_fail("dps_unavailable for a DPS with nothing listening took %lld ms (expected < 6 s)",
                (long long)(ts_now_ms() - t0));

    /* a certificate the CA did not sign: TLS fails before any HTTP */
    mock_start("ok", true);
    r = provision("dev-untrusted", "{\"payload\":{\"model\":\"m1\"}}");
    TS_EXPECT_ERROR(r, 503, "dps_unavailable");
    ts_expect_retry_after(r, 5);   /* docs/api.md: Retry-After: 5, jittered */
    (void)mock_lines(&n);
    if (n != 0)
        ts_fail("untrusted certificate: the mock must see no request (TLS verification fails first); its log:\n%s",
                mock_log_text());
    mock_stop();

    /* the trusted one again: the same device now provisions (the failure left nothing broken) */
    mock_start("immediate", false);
    expect_provisioned(provision("dev-untrusted", NULL), "dev-untrusted");
    mock_stop();
}

/* Every device that got a 200 is in the geography database with its hub. */
static void test_geo_db(void **state)
{
    const char *db = cp->geo_dbs[0];
    (void)state;
    assert_true(nprovisioned >= 3);
    for (int i = 0; i < nprovisioned; i++) {
        long c = ts_pg_count(db, ts_str("SELECT count(*) FROM devices WHERE tenant_id = '" TENANT
                                        "' AND registration_id = '%s' AND status = 'assigned' AND stamp_id = '" STAMP
                                        "' AND hub_host_name = '" HUB_HOST "' AND device_id = '%s'",
                                        provisioned[i], provisioned[i]));
        if (c != 1)
            ts_fail("device %s got 200 from provision but is not in the geography DB with hub %s (count %ld): %s",
                    provisioned[i], HUB_HOST, c,
                    ts_resp_str(ts_admin(cp, "GET", ts_str("/v1/tenants/" TENANT "/devices/%s", provisioned[i]), NULL)));
    }
}

/* 6: dps.caFile that cannot be read: exit 2, stderr names the setting. */
static void test_missing_ca_file(void **state)
{
    struct ts_cp_opts o = { .name = "cp-badca", .global_db = cp->global_db, .geo_ids = { GEO, NULL },
                            .geo_dbs = { cp->geo_dbs[0], NULL }, .redis = redis->addr };
    struct ts_cp *bad;
    struct ts_proc *p;
    const char *err_path;
    (void)state;

    o.extra_json = ts_str("\"layoutRefreshMs\": 200,\n  \"dps\": {\"caFile\": \"%s/no-such-ca.crt\", \"timeoutMs\": 5000}",
                          ts_tmp());
    bad = ts_controlplane_prepare(&o);
    err_path = ts_str("%s/%s.stderr", ts_tmp(), bad->name);
    {
        char *argv[] = { (char *)ts_bin("controlplane"), "--config", bad->config_path, NULL };
        p = ts_proc_spawn(bad->name, argv, NULL, err_path);
    }
    if (!ts_proc_wait(p, 15000))
        ts_fail("controlplane with a missing dps.caFile still runs after 15 s");
    if (ts_proc_exit_code(p) != 2) {
        ts_proc_dump_log(p, 4000);
        ts_fail("controlplane with a missing dps.caFile exited with %d (signal %d), expected 2",
                ts_proc_exit_code(p), ts_proc_term_signal(p));
    }
    if (!ts_file_contains(err_path, "dps.caFile")) {
        ts_proc_dump_log(p, 4000);
        ts_fail("stderr of the controlplane does not mention dps.caFile");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provision_ok),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_dps_outcomes),
        cmocka_unit_test(test_geo_db),
        cmocka_unit_test(test_missing_ca_file),
    };
    ts_init("test_router_proxy");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
