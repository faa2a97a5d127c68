/*
 * test_secrets_at_rest - enrollment keys, DPS service keys and the stamps'
 * enrollment keys are stored sealed (common/envelope.h); a KEK rotation
 * re-wraps them while devices keep authenticating; a dump of every database
 * holds none of them.
 *
 *  - the catalog holds only sealed values, bound to their row: a tenant's
 *    sealed key copied into another tenant's row does not open there
 *    (refused, never verified with the copied key);
 *  - KEK rotation under load: two control planes on one catalog, a short
 *    tenant cache (every few requests re-read and open the keys), cpload
 *    locating devices of two tenants against both; meanwhile a new KEK is
 *    added to the file, POST /v1/admin/kek/rotate re-wraps the catalog, the
 *    old KEK is removed from the file: 0 answers other than 200;
 *  - the admin routes' bad cases (token, methods, body, a refused KEK file);
 *  - the stamp's service API stores keys sealed and returns them in clear
 *    (get, query, attestationmechanism, bulk) as Azure DPS does;
 *  - pg_dump of the global catalog, the geography database and the stamp's
 *    database contains no key (base64 nor the hex of its bytes).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <glob.h>

#include "envelope.h"
#include "sas.h"
#include "ts.h"
#include "ts_stamp.h"

#define DPS_ID "eu-west-1-dps"
#define NDEV 16

static struct ts_rt *rt;
static struct ts_tenant *acme, *beta;
static const char *global_db, *eu_db;
static char service_key[64];

/* every key the databases must not show */
static const char *secrets[64];
static int nsecrets;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { DPS_ID } }, .hubs = { { "eu-west-1-hub1" } } },
    },
};

static void remember(const char *key_b64)
{
    assert_true(nsecrets < (int)(sizeof secrets / sizeof secrets[0]));
    secrets[nsecrets++] = ts_str("%s", key_b64);
}

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 2, .geos = { "eu", NULL }, .extra_json = "\"tenantCacheTtlMs\":100" };
    struct ts_resp *r;
    (void)state;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    global_db = rt->cp[0]->global_db;
    eu_db = ts_rt_geo_db(rt, "eu");
    acme = ts_rt_tenant_acme(rt->cp[0]);
    beta = ts_rt_tenant(rt->cp[0], "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"eu\"]}}");
    remember(acme->key_b64);
    remember(beta->key_b64);
    /* acme rotates once: its previous key stays valid (and stored) */
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/enrollment-key/rotate", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (!ts_jstr(r->json, "enrollmentKey"))
        ts_fail("rotate answered no key: %s", ts_resp_str(r));
    snprintf(acme->key_b64, sizeof acme->key_b64, "%s", ts_jstr(r->json, "enrollmentKey"));
    acme->keylen = sas_b64_decode(acme->key_b64, acme->key, sizeof acme->key);
    remember(acme->key_b64);
    /* a service key for the DPS instance */
    snprintf(service_key, sizeof service_key, "%s", ts_random_key(32));
    remember(service_key);
    r = ts_admin(rt->cp[0], "PATCH", "/v1/dps-instances/" DPS_ID,
                 ts_json("{'serviceKeyName':'provisioningserviceowner','serviceKey':'%s'}", service_key));
    TS_EXPECT_STATUS(r, 200);
    if (strstr(r->body, service_key) || !json_is_true(json_object_get(r->json, "serviceKeyConfigured")))
        ts_fail("PATCH answer shows the key or does not say it is configured: %s", ts_resp_str(r));
    return 0;
}

/* ---- the catalog holds sealed values only ---- */

static void expect_all_sealed_under(const char *kek)
{
    const char *prefix = ts_str("enc:v1:%s:", kek);
    long bad = ts_pg_count(global_db, ts_str(
        "SELECT count(*) FROM (SELECT enrollment_key v FROM tenants UNION ALL SELECT enrollment_key_previous FROM"
        " tenants UNION ALL SELECT service_key FROM dps_instances) s WHERE v IS NOT NULL AND NOT starts_with(v, '%s')",
        prefix));
    long good = ts_pg_count(global_db, ts_str(
        "SELECT count(*) FROM (SELECT enrollment_key v FROM tenants UNION ALL SELECT enrollment_key_previous FROM"
        " tenants UNION ALL SELECT service_key FROM dps_instances) s WHERE starts_with(v, '%s')", prefix));
    if (bad != 0 || good < 4)
        ts_fail("catalog: %ld secrets not sealed under %s, %ld are (want 0 and >= 4)", bad, kek, good);
}

static void test_catalog_sealed_and_bound(void **state)
{
    struct ts_resp *r;
    const char *saved, *saved_prev;
    (void)state;
    expect_all_sealed_under("test-kek-1");
    /* the previous key (acme) still verifies, as before encryption */
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "bound-1"), 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], beta, "bound-2"), 200);

    /* beta's sealed key copied into acme's row: it does not open there, so
     * neither acme's devices nor a device signed with beta's key get in */
    saved = ts_pg_scalar(global_db, "SELECT enrollment_key FROM tenants WHERE id = 'acme'");
    saved_prev = ts_pg_scalar(global_db, "SELECT enrollment_key_previous FROM tenants WHERE id = 'acme'");
    ts_pg_scalar(global_db, "UPDATE tenants SET enrollment_key = (SELECT enrollment_key FROM tenants WHERE id = 'beta'),"
                            " enrollment_key_previous = NULL WHERE id = 'acme' RETURNING 1");
    ts_sleep_ms(300);   /* the 100 ms tenant cache expires */
    {
        struct ts_tenant forged = *beta;
        snprintf(forged.id, sizeof forged.id, "acme");
        r = ts_rt_locate(rt->cp[0], &forged, "bound-1");
        if (r->status == 200)
            ts_fail("a device signed with beta's key got into acme after the ciphertext swap: %s", ts_resp_str(r));
        r = ts_rt_locate(rt->cp[1], acme, "bound-1");
        if (r->status == 200)
            ts_fail("acme verified with a key that does not open: %s", ts_resp_str(r));
    }
    ts_pg_scalar(global_db, ts_str("UPDATE tenants SET enrollment_key = '%s', enrollment_key_previous = '%s' "
                                   "WHERE id = 'acme' RETURNING 1", saved, saved_prev));
    ts_sleep_ms(300);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "bound-1"), 200);
    /* the database refuses a clear key (005_sealed_secrets) */
    {
        long n = 0;
        const char *err = ts_pg_try(global_db, "UPDATE tenants SET enrollment_key = 'AAAAAAAAAAAAAAAAAAAAAA==' "
                                               "WHERE id = 'beta'", &n);
        if (!err || strcmp(err, "23514") != 0)   /* check_violation: tenants_keys_sealed */
            ts_fail("a clear enrollment key was accepted by the catalog (%s)", err ? err : "no error");
    }
    /* a service key that is not base64 of 16-64 bytes is refused before it is sealed */
    r = ts_admin(rt->cp[0], "PATCH", "/v1/dps-instances/" DPS_ID, "{\"serviceKey\":\"AAAAAAAAAAAAAAAAAAA\"}");
    TS_EXPECT_ERROR(r, 400, "invalid_value");
}

/* ---- the admin routes ---- */

static void test_admin_routes(void **state)
{
    struct ts_resp *r;
    json_t *secrets_j;
    (void)state;
    r = ts_admin(rt->cp[1], "GET", "/v1/admin/kek", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "currentKekId"), "test-kek-1");
    secrets_j = json_object_get(r->json, "secrets");
    assert_int_equal(ts_jint(json_object_get(secrets_j, "enrollmentKeys"), "test-kek-1", -1), 3);
    assert_int_equal(ts_jint(json_object_get(secrets_j, "dpsServiceKeys"), "test-kek-1", -1), 1);
    assert_true(json_is_true(json_object_get(r->json, "complete")));
    if (strstr(r->body, acme->key_b64) || strstr(r->body, "\"keys\""))
        ts_fail("the status shows key material: %s", ts_resp_str(r));

    r = ts_http(rt->cp[0]->port, "GET", "/v1/admin/kek", NULL, NULL, 0);
    TS_EXPECT_ERROR(r, 401, "unauthorized");
    r = ts_admin(rt->cp[0], "POST", "/v1/admin/kek", "{}");
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    r = ts_admin(rt->cp[0], "GET", "/v1/admin/kek/rotate", NULL);
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    r = ts_admin(rt->cp[0], "POST", "/v1/admin/kek/rotate", "{\"kekId\":\"x\"}");
    TS_EXPECT_ERROR(r, 400, "unknown_field");
    r = ts_admin(rt->cp[0], "POST", "/v1/admin/kek/rotate", "not json");
    if (r->status != 400)
        ts_fail("a body that is not JSON: %s", ts_resp_str(r));
    r = ts_admin(rt->cp[0], "GET", "/v1/admin/nothing", NULL);
    TS_EXPECT_ERROR(r, 404, "route_not_found");
    /* a KEK file others may read is refused: nothing is re-wrapped */
    assert_int_equal(chmod(ts_kek_file(), 0644), 0);
    r = ts_admin(rt->cp[0], "POST", "/v1/admin/kek/rotate", NULL);
    assert_int_equal(chmod(ts_kek_file(), 0600), 0);
    TS_EXPECT_ERROR(r, 409, "kek_file_invalid");
    if (!strstr(r->body, "0644"))
        ts_fail("the refusal does not say why: %s", ts_resp_str(r));
    /* a rotation with nothing to do */
    r = ts_admin(rt->cp[0], "POST", "/v1/admin/kek/rotate", NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(ts_jint(r->json, "rewrapped", -1), 0);
    assert_int_equal(ts_jint(r->json, "failed", -1), 0);
}

/* ---- rotation under load ---- */

static struct ts_proc *start_cpload(struct ts_cp *cp, const struct ts_tenant *t, const char *prefix, int seconds)
{
    const char *out = ts_str("%s/cpload-%s.json", ts_tmp(), prefix);
    char *argv[] = { (char *)ts_bin("cpload"), "--url", ts_str("https://127.0.0.1:%d", cp->port),
                     "--ca", (char *)ts_pki_ca(), "--tenant", (char *)t->id, "--key", (char *)t->key_b64,
                     "--devices", ts_str("%d", NDEV), "--prefix", (char *)prefix, "--concurrency", "4",
                     "--duration", ts_str("%d", seconds), "--max-seconds", "60", "--json", NULL };
    return ts_proc_spawn(ts_str("cpload-%s", prefix), argv, out, ts_str("%s/cpload-%s.err", ts_tmp(), prefix));
}

/* The report as one line (library-owned). */
static const char *line_of(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    return s ? ts_keep(s) : "";
}

/* Decref'd at the end of the test program. */
static json_t *kept_json[8];
static json_t *keep_json(json_t *j)
{
    for (size_t i = 0; i < sizeof kept_json / sizeof kept_json[0]; i++)
        if (!kept_json[i]) {
            kept_json[i] = j;
            break;
        }
    return j;
}

static json_t *cpload_result(struct ts_proc *p, const char *prefix)
{
    const char *out = ts_str("%s/cpload-%s.json", ts_tmp(), prefix);
    char *text;
    json_t *j = NULL;
    if (!ts_proc_wait(p, 90000)) {
        ts_proc_kill(p, 9);
        ts_fail("cpload %s did not finish", prefix);
    }
    text = ts_read_file(out, NULL);
    /* the JSON report is one line of the log */
    {
        char *line = text ? strstr(text, "{\"mode\"") : NULL, *end = line ? strchr(line, '\n') : NULL;
        if (end)
            *end = '\0';
        if (line)
            j = json_loads(line, 0, NULL);
    }
    if (!j) {
        ts_proc_dump_log(p, 3000);
        ts_fail("cpload %s printed no JSON report (exit %d)", prefix, ts_proc_exit_code(p));
    }
    ts_log("cpload %s: exit %d %s", prefix, ts_proc_exit_code(p), line_of(j));
    return keep_json(j);
}

static void kek_tool(const char *cmd, const char *id)
{
    char *out = NULL;
    char *argv[] = { (char *)ts_bin("stampcp-kek"), (char *)cmd, "--file", (char *)ts_kek_file(), "--id", (char *)id,
                     NULL };
    int rc = ts_run(argv, 10000, &out);
    if (rc != 0)
        ts_fail("stampcp-kek %s --id %s: exit %d: %s", cmd, id, rc, out ? out : "");
    ts_log("stampcp-kek %s %s: %s", cmd, id, out ? out : "");
}

static void test_rotation_under_load(void **state)
{
    struct ts_proc *la, *lb;
    struct ts_resp *r;
    json_t *ja, *jb;
    int64_t t0;
    (void)state;
    /* place the devices first, so that the load is what devices do all day:
     * status lookups, each one authenticated with the tenant's key */
    for (int i = 0; i < NDEV; i++) {
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[i % 2], acme, ts_str("ra-%d", i)), 200);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[i % 2], beta, ts_str("rb-%d", i)), 200);
    }
    la = start_cpload(rt->cp[1], acme, "ra-", 9);
    lb = start_cpload(rt->cp[0], beta, "rb-", 9);
    t0 = ts_now_ms();
    ts_sleep_ms(1500);

    /* 1. a new KEK, current from now on (every daemon reads the file) */
    kek_tool("add", "test-kek-2");
    ts_sleep_ms(500);
    /* 2. re-wrap the catalog through one control plane */
    r = ts_admin(rt->cp[0], "POST", "/v1/admin/kek/rotate", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "currentKekId"), "test-kek-2");
    assert_int_equal(ts_jint(r->json, "rewrapped", -1), 4);   /* acme x2, beta, the service key */
    assert_int_equal(ts_jint(r->json, "failed", -1), 0);
    assert_true(json_is_true(json_object_get(r->json, "complete")));
    expect_all_sealed_under("test-kek-2");
    ts_sleep_ms(1500);
    /* 3. the old KEK leaves the file: nothing needs it any more */
    kek_tool("retire", "test-kek-1");
    ts_log("rotation steps done %lld ms into the load", (long long)(ts_now_ms() - t0));

    ja = cpload_result(la, "ra-");
    jb = cpload_result(lb, "rb-");
    assert_int_equal(ts_proc_exit_code(la), 0);
    assert_int_equal(ts_proc_exit_code(lb), 0);
    assert_int_equal(ts_jint(ja, "non200", -1), 0);
    assert_int_equal(ts_jint(jb, "non200", -1), 0);
    if (ts_jint(ja, "requests", 0) < 100 || ts_jint(jb, "requests", 0) < 100)
        ts_fail("too little load to say anything: %lld and %lld requests", (long long)ts_jint(ja, "requests", 0),
                (long long)ts_jint(jb, "requests", 0));

    /* the other control plane took the new KEK too, and everything is under it */
    r = ts_admin(rt->cp[1], "GET", "/v1/admin/kek", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "currentKekId"), "test-kek-2");
    assert_int_equal((int)json_array_size(json_object_get(r->json, "kekIds")), 1);
    assert_true(json_is_true(json_object_get(r->json, "complete")));
    /* with only the new KEK: old and new tenants verify, keys still rotate */
    ts_sleep_ms(300);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], acme, "after-1"), 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], beta, "after-2"), 200);
    {
        struct ts_tenant *gamma = ts_rt_tenant(rt->cp[1], "{\"id\":\"gamma\",\"name\":\"Gamma\","
                                                          "\"residency\":{\"geographies\":[\"eu\"]}}");
        remember(gamma->key_b64);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], gamma, "after-3"), 200);
    }
    expect_all_sealed_under("test-kek-2");
}

/* ---- the stamp: sealed at rest, clear through the service API ---- */

static struct ts_stamp *stamp;
static const char *grp1_keys[2];   /* grp1's primary and secondary key as given */

static void expect_keys(json_t *sk, const char *pk, const char *sk2, const char *what)
{
    if (!json_is_object(sk) || !ts_jstr(sk, "primaryKey") || strcmp(ts_jstr(sk, "primaryKey"), pk) != 0 ||
        !ts_jstr(sk, "secondaryKey") || strcmp(ts_jstr(sk, "secondaryKey"), sk2) != 0)
        ts_fail("%s: the keys do not come back as given", what);
}

static void test_stamp_keys(void **state)
{
    struct ts_stamp_opts o = { .name = "sealed",
                               .inst = { { .id = "sealed-dps", .scope = "0ne00000SEA" } },
                               .hubs = { { .id = "sealed-hub", .host = "sealed-hub.test" } } };
    const char *gk1 = ts_random_key(32), *gk2 = ts_random_key(32), *ik1 = ts_random_key(32),
               *ik2 = ts_random_key(64), *gen_pk, *gen_sk;
    struct ts_resp *r;
    (void)state;
    stamp = ts_stamp_start(&o);
    grp1_keys[0] = gk1;
    grp1_keys[1] = gk2;
    remember(gk1);
    remember(gk2);
    remember(ik1);
    remember(ik2);
    r = ts_stamp_service(stamp, NULL, "PUT", "/enrollmentGroups/grp1?api-version=2021-10-01",
                         ts_json("{'enrollmentGroupId':'grp1','attestation':{'type':'symmetricKey',"
                                 "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}}}", gk1, gk2));
    TS_EXPECT_STATUS(r, 200);
    expect_keys(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"), gk1, gk2, "PUT group");
    r = ts_stamp_service(stamp, NULL, "PUT", "/enrollments/dev-1?api-version=2021-10-01",
                         ts_json("{'registrationId':'dev-1','attestation':{'type':'symmetricKey',"
                                 "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}}}", ik1, ik2));
    TS_EXPECT_STATUS(r, 200);
    /* generated keys are sealed too */
    r = ts_stamp_service(stamp, NULL, "PUT", "/enrollmentGroups/grp2?api-version=2021-10-01",
                         "{\"enrollmentGroupId\":\"grp2\",\"attestation\":{\"type\":\"symmetricKey\"}}");
    TS_EXPECT_STATUS(r, 200);
    gen_pk = ts_str("%s", ts_jstr(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"),
                                  "primaryKey"));
    gen_sk = ts_str("%s", ts_jstr(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"),
                                  "secondaryKey"));
    remember(gen_pk);
    remember(gen_sk);

    /* read back in clear: get, attestation mechanism, query */
    r = ts_stamp_service(stamp, NULL, "GET", "/enrollmentGroups/grp1?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(r, 200);
    expect_keys(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"), gk1, gk2, "GET group");
    r = ts_stamp_service(stamp, NULL, "GET", "/enrollments/dev-1?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(r, 200);
    expect_keys(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"), ik1, ik2, "GET enrollment");
    r = ts_stamp_service(stamp, NULL, "POST", "/enrollmentGroups/grp2/attestationmechanism?api-version=2021-10-01",
                         NULL);
    TS_EXPECT_STATUS(r, 200);
    expect_keys(json_object_get(r->json, "symmetricKey"), gen_pk, gen_sk, "attestationmechanism");
    r = ts_stamp_service(stamp, NULL, "POST", "/enrollmentGroups/query?api-version=2021-10-01",
                         "{\"query\":\"SELECT * FROM enrollmentGroups\"}");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal((int)json_array_size(r->json), 2);
    expect_keys(json_object_get(json_object_get(json_array_get(r->json, 0), "attestation"), "symmetricKey"), gk1, gk2,
                "query");

    /* at rest: every key sealed, bound to its enrollment */
    assert_int_equal(ts_pg_count(stamp->db, "SELECT count(*) FROM dps_enrollments WHERE NOT starts_with("
                                            "doc #>> '{attestation,symmetricKey,primaryKey}', 'enc:v1:test-kek-') OR "
                                            "NOT starts_with(doc #>> '{attestation,symmetricKey,secondaryKey}', "
                                            "'enc:v1:test-kek-')"), 0);
    /* grp1's sealed keys copied onto grp2: grp2 no longer reads (not grp1's keys) */
    ts_pg_scalar(stamp->db, "UPDATE dps_enrollments SET doc = jsonb_set(doc, '{attestation,symmetricKey}', "
                            "(SELECT doc #> '{attestation,symmetricKey}' FROM dps_enrollments WHERE enrollment_id = 'grp1'))"
                            " WHERE enrollment_id = 'grp2' RETURNING 1");
    r = ts_stamp_service(stamp, NULL, "GET", "/enrollmentGroups/grp2?api-version=2021-10-01", NULL);
    if (r->status == 200 || strstr(r->body, gk1))
        ts_fail("grp2 answered with grp1's keys after a ciphertext swap: %s", ts_resp_str(r));
    r = ts_stamp_service(stamp, NULL, "DELETE", "/enrollmentGroups/grp2?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(r, 204);
}

/* ---- the stamp re-wraps its own rows; clear rows are sealed at start; the tool ---- */

struct sealed_under {
    const char *db, *prefix;
};

static long values_not_under(const char *db, const char *prefix)
{
    return ts_pg_count(db, ts_str("SELECT count(*) FROM dps_enrollments WHERE attestation = 'symmetricKey' AND ("
                                  "NOT starts_with(doc #>> '{attestation,symmetricKey,primaryKey}', '%s') OR "
                                  "NOT starts_with(doc #>> '{attestation,symmetricKey,secondaryKey}', '%s'))",
                                  prefix, prefix));
}

static bool all_under(void *arg)
{
    struct sealed_under *w = arg;
    return values_not_under(w->db, w->prefix) == 0;
}

static void test_stamp_rewrap_and_tool(void **state)
{
    const char *l1 = ts_random_key(32), *l2 = ts_random_key(32);
    struct sealed_under w = { NULL, "enc:v1:test-kek-3:" };
    struct ts_resp *r;
    char *out = NULL;
    (void)state;
    w.db = stamp->db;
    /* a new current KEK: the agent sees it (file watch) and re-wraps its rows by itself */
    kek_tool("add", "test-kek-3");
    if (!ts_wait_until(all_under, &w, 15000))
        ts_fail("the stamp did not re-wrap its rows under test-kek-3 in 15 s (%ld left)",
                values_not_under(stamp->db, w.prefix));
    r = ts_stamp_service(stamp, NULL, "GET", "/enrollmentGroups/grp1?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(r, 200);
    expect_keys(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"), grp1_keys[0],
                grp1_keys[1], "grp1 after the re-wrap");

    /* migration: a row written before encryption (clear keys, no constraint yet) is sealed at start */
    ts_pg_scalar(stamp->db, "ALTER TABLE dps_enrollments DROP CONSTRAINT dps_enrollments_keys_sealed; SELECT 1");
    ts_pg_scalar(stamp->db, ts_str("INSERT INTO dps_enrollments (dps_id, kind, enrollment_id, attestation, doc)"
                                   " SELECT dps_id, kind, 'legacy-1', attestation, jsonb_set(jsonb_set(doc,"
                                   " '{registrationId}', '\"legacy-1\"'), '{attestation,symmetricKey}',"
                                   " jsonb_build_object('primaryKey', '%s'::text, 'secondaryKey', '%s'::text))"
                                   " FROM dps_enrollments WHERE enrollment_id = 'dev-1' RETURNING 1", l1, l2));
    ts_pg_scalar(stamp->db, "ALTER TABLE dps_enrollments ADD CONSTRAINT dps_enrollments_keys_sealed CHECK ("
                            "attestation <> 'symmetricKey' OR ("
                            "coalesce(doc #>> '{attestation,symmetricKey,primaryKey}', 'enc:') LIKE 'enc:%' AND "
                            "coalesce(doc #>> '{attestation,symmetricKey,secondaryKey}', 'enc:') LIKE 'enc:%'))"
                            " NOT VALID; SELECT 1");
    remember(l1);
    remember(l2);
    r = ts_stamp_service(stamp, NULL, "GET", "/enrollments/legacy-1?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(r, 200);   /* a clear row still reads */
    expect_keys(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"), l1, l2, "legacy, clear");
    ts_stamp_kill(stamp, SIGTERM);
    ts_stamp_restart(stamp);
    if (!ts_wait_until(all_under, &w, 15000))
        ts_fail("the restarted stamp did not seal the clear row in 15 s");
    r = ts_stamp_service(stamp, NULL, "GET", "/enrollments/legacy-1?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(r, 200);
    expect_keys(json_object_get(json_object_get(r->json, "attestation"), "symmetricKey"), l1, l2, "legacy, sealed");

    /* the tool: a fourth KEK, kept as not current, then made current by hand; rewrap does every database */
    {
        char *argv[] = { (char *)ts_bin("stampcp-kek"), "add", "--file", (char *)ts_kek_file(), "--id", "test-kek-4",
                         "--keep-current", NULL };
        assert_int_equal(ts_run(argv, 10000, NULL), 0);
    }
    {
        char *argv[] = { (char *)ts_bin("stampcp-kek"), "list", "--file", (char *)ts_kek_file(), NULL };
        assert_int_equal(ts_run(argv, 10000, &out), 0);
        if (!out || strncmp(out, "test-kek-3 current", 18) != 0 || !strstr(out, "test-kek-4") ||
            strstr(out, "\"keys\""))
            ts_fail("stampcp-kek list: %s", out ? out : "");
    }
    {
        char *argv[] = { (char *)ts_bin("stampcp-kek"), "rewrap", "--file", (char *)ts_kek_file(), "--db",
                         (char *)global_db, "--db", (char *)stamp->db, "--db", (char *)eu_db, NULL };
        assert_int_equal(ts_run(argv, 30000, &out), 0);
        ts_log("stampcp-kek rewrap: %s", out);
        /* the control planes were not told to re-wrap: the tool moved the catalog to test-kek-3 */
        if (!strstr(out, "kek=test-kek-3") || !strstr(out, "failed=0"))
            ts_fail("stampcp-kek rewrap: %s", out);
    }
    expect_all_sealed_under("test-kek-3");
    {
        char *argv[] = { (char *)ts_bin("stampcp-kek"), "status", "--file", (char *)ts_kek_file(), "--db",
                         (char *)global_db, "--db", (char *)stamp->db, NULL };
        assert_int_equal(ts_run(argv, 30000, &out), 0);
        ts_log("stampcp-kek status: %s", out);
        if (strstr(out, "test-kek-2") || strstr(out, "clear") || !strstr(out, "enrollmentKeys test-kek-3") ||
            !strstr(out, "stampEnrollmentKeys test-kek-3"))
            ts_fail("stampcp-kek status: %s", out);
    }
    /* devices still verify at the control plane after the tool's re-wrap */
    ts_sleep_ms(300);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "after-tool"), 200);
    /* bad usage */
    {
        char *argv[] = { (char *)ts_bin("stampcp-kek"), "retire", "--file", (char *)ts_kek_file(), "--id", "test-kek-3",
                         NULL };
        assert_int_equal(ts_run(argv, 10000, &out), 2);   /* the current one */
    }
    {
        char *argv[] = { (char *)ts_bin("stampcp-kek"), "new", "--file", (char *)ts_kek_file(), NULL };
        assert_int_equal(ts_run(argv, 10000, &out), 1);   /* never overwrites */
    }
}

/* ---- no key in any dump ---- */

static const char *pg_dump_bin(void)
{
    glob_t g;
    const char *p = NULL;
    if (access("/usr/bin/pg_dump", X_OK) == 0)
        return "/usr/bin/pg_dump";
    if (glob("/usr/lib/postgresql/*/bin/pg_dump", 0, NULL, &g) == 0 && g.gl_pathc > 0)
        p = ts_str("%s", g.gl_pathv[g.gl_pathc - 1]);
    globfree(&g);
    if (!p)
        ts_fail("pg_dump not found");
    return p;
}

static void dump_has_no_secret(const char *conninfo, const char *name)
{
    const char *path = ts_str("%s/dump-%s.sql", ts_tmp(), name);
    char *argv[] = { (char *)pg_dump_bin(), "--no-owner", "-f", (char *)path, "-d", (char *)conninfo, NULL };
    char *out = NULL;
    size_t len = 0;
    int rc = ts_run(argv, 60000, &out);
    char *dump;
    if (rc != 0)
        ts_fail("pg_dump %s: exit %d: %s", name, rc, out ? out : "");
    dump = ts_read_file(path, &len);
    if (!dump || len < 100)
        ts_fail("pg_dump %s wrote nothing", name);
    for (int i = 0; i < nsecrets; i++) {
        unsigned char raw[128];
        char hex[260];
        int n = sas_b64_decode(secrets[i], raw, sizeof raw);
        assert_true(n >= 16);
        for (int k = 0; k < n; k++)
            snprintf(hex + 2 * k, 3, "%02x", raw[k]);
        if (ts_file_contains(path, secrets[i]))
            ts_fail("the dump of %s contains secret %d in base64", name, i);
        if (ts_file_contains(path, hex))
            ts_fail("the dump of %s contains secret %d in hex", name, i);
        for (int k = 0; hex[k]; k++)
            if (hex[k] >= 'a' && hex[k] <= 'f')
                hex[k] = (char)(hex[k] - 'a' + 'A');
        if (ts_file_contains(path, hex))
            ts_fail("the dump of %s contains secret %d in HEX", name, i);
    }
    /* and it does hold the sealed form */
    if (!ts_file_contains(path, "enc:v1:"))
        ts_fail("the dump of %s has no sealed value at all: wrong database?", name);
    ts_log("dump of %s: %zu bytes, none of %d keys", name, len, nsecrets);
}

static void test_dumps_hold_no_key(void **state)
{
    (void)state;
    assert_true(nsecrets >= 13);
    dump_has_no_secret(global_db, "global");
    dump_has_no_secret(stamp->db, "stamp");
    /* the router's geography database holds devices, and no key of any kind */
    {
        const char *path = ts_str("%s/dump-eu.sql", ts_tmp());
        char *argv[] = { (char *)pg_dump_bin(), "--no-owner", "-f", (char *)path, "-d", (char *)eu_db, NULL };
        assert_int_equal(ts_run(argv, 60000, NULL), 0);
        for (int i = 0; i < nsecrets; i++)
            if (ts_file_contains(path, secrets[i]))
                ts_fail("the dump of eu contains secret %d", i);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalog_sealed_and_bound),
        cmocka_unit_test(test_admin_routes),
        cmocka_unit_test(test_rotation_under_load),
        cmocka_unit_test(test_stamp_keys),
        cmocka_unit_test(test_stamp_rewrap_and_tool),
        cmocka_unit_test(test_dumps_hold_no_key),
    };
    int failed;
    ts_init("test_secrets_at_rest");
    failed = cmocka_run_group_tests(tests, group_setup, NULL);
    for (size_t i = 0; i < sizeof kept_json / sizeof kept_json[0]; i++)
        json_decref(kept_json[i]);
    return ts_finish(failed);
}
