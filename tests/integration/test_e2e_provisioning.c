/*
 * test_e2e_provisioning - end to end: tenant onboarding to a device on a hub,
 * with the real stamp agents' provisioning service (no mock DPS) and the
 * official Azure IoT device SDK (Node.js).
 *
 * Layout: geographies eu and us; stamp eu-west-1 (region eu-west) and
 * us-east-1 (region us-east), each with one DPS instance and two hubs. Every
 * stamp agent runs its `provisioning` section: a TLS endpoint on 127.0.0.1
 * (certificate from a throwaway CA made here with the openssl CLI), the
 * geography's database (the one the control plane uses), one service policy
 * "provisioningserviceowner" with a random key. The DPS instances are
 * registered with that endpoint and service credentials, so the control
 * plane's enrollment reconciler (dps.enrollmentSyncMs 500) keeps every
 * tenant's enrollment group on the instances its residency admits.
 *
 * Covered:
 *  - tenant acme (residency eu): its group appears on the eu instance only
 *    (GET /v1/dps-instances/{id}/enrollment-sync and dps_enrollments);
 *  - approach 1: locate with a device SAS token -> eu stamp's endpoint and
 *    idScope; the official SDK registers there with the derived device key ->
 *    assigned to an eu hub through group "acme"; the same device at the us
 *    stamp -> UnauthorizedError (no group there);
 *  - approach 2: provision through the router -> an eu hub, recorded in the
 *    stamp's dps_registrations and in the admin view;
 *  - every device that got a 200 is in the eu geography database only.
 *
 * The SDK: tests/sdk/provision-symkey.js (with its port shim) on the
 * packages ts_sdk_modules() installs once per build directory (ts_stamp.h);
 * it is run with NODE_EXTRA_CA_CERTS = this test's CA, so the stamps' TLS is
 * verified by the SDK as by the router (dps.caFile).
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

#include "envelope.h"
#include "sas.h"
#include "ts.h"
#include "ts_stamp.h"

#define TENANT "acme"
#define KEY_NAME "provisioningserviceowner"
#define EU_STAMP "eu-west-1"
#define US_STAMP "us-east-1"
#define EU_DPS "eu-west-1-dps"
#define US_DPS "us-east-1-dps"

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" }, { NULL, NULL } },
    .stamps = {
        { .id = EU_STAMP, .region = "eu-west", .dps = { { EU_DPS, 0, 0 } },
          .hubs = { { "eu-west-1-hub-1", 0 }, { "eu-west-1-hub-2", 0 } } },
        { .id = US_STAMP, .region = "us-east", .dps = { { US_DPS, 0, 0 } },
          .hubs = { { "us-east-1-hub-1", 0 }, { "us-east-1-hub-2", 0 } } },
        { .id = NULL },
    },
};

/* Per stamp: its provisioning endpoint and service key. */
struct stamp_prov {
    const char *stamp, *geo, *dps;
    int port;
    const char *endpoint;       /* 127.0.0.1:port */
    char service_key[64];       /* base64 of 32 random bytes */
};
static struct stamp_prov prov[2] = {
    { EU_STAMP, "eu", EU_DPS, 0, NULL, "" },
    { US_STAMP, "us", US_DPS, 0, NULL, "" },
};

static const char *ca_crt, *srv_crt, *srv_key;
static const char *node_bin, *node_path, *sdk_script;
static struct ts_tenant *tenant;
static int64_t tenant_created_ms;

/* Devices that got a 200 from the router (checked in the geography databases at the end). */
static const char *answered[8];
static int nanswered;

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */

static const char *find_in_path(const char *prog)
{
    const char *path = getenv("PATH");
    char *copy = ts_str("%s", path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        const char *p = ts_str("%s/%s", dir, prog);
        if (access(p, X_OK) == 0)
            return p;
    }
    ts_fail("%s not found in PATH", prog);
}

static void run_checked(const char *what, char *const argv[], int timeout_ms)
{
    char *out = NULL;
    int rc = ts_run(argv, timeout_ms, &out);
    if (rc != 0)
        ts_fail("%s failed with %d: %s", what, rc, out ? out : "");
}

/* A throwaway CA and a server certificate for IP 127.0.0.1 signed by it. */
static void make_certs(void)
{
    const char *ossl = find_in_path("openssl");
    const char *dir = ts_tmp();
    const char *ca_key = ts_str("%s/ca.key", dir);
    const char *csr = ts_str("%s/srv.csr", dir);
    const char *ext = ts_str("%s/srv.ext", dir);
    const char *srl = ts_str("%s/ca.srl", dir);

    ca_crt = ts_str("%s/ca.crt", dir);
    srv_crt = ts_str("%s/srv.crt", dir);
    srv_key = ts_str("%s/srv.key", dir);
    {
        char *argv[] = { (char *)ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", (char *)ca_key,
                         "-out", (char *)ca_crt, "-days", "2", "-subj", "/CN=stampcp e2e test CA", "-addext",
                         "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                         NULL };
        run_checked("openssl (CA)", argv, 60000);
    }
    {
        char *argv[] = { (char *)ossl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", (char *)srv_key,
                         "-out", (char *)csr, "-subj", "/CN=127.0.0.1", NULL };
        run_checked("openssl (server CSR)", argv, 60000);
    }
    ts_write_file(ext, "subjectAltName=IP:127.0.0.1\n"
                       "basicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n");
    {
        char *argv[] = { (char *)ossl, "x509", "-req", "-in", (char *)csr, "-CA", (char *)ca_crt, "-CAkey",
                         (char *)ca_key, "-CAserial", (char *)srl, "-CAcreateserial", "-out", (char *)srv_crt,
                         "-days", "2", "-sha256", "-extfile", (char *)ext, NULL };
        run_checked("openssl (server certificate)", argv, 60000);
    }
}

static void random_key_b64(char *out, size_t outlen)
{
    unsigned char raw[32];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(raw, 1, sizeof raw, f) != sizeof raw)
        ts_fail("cannot read /dev/urandom");
    fclose(f);
    sas_b64_encode(raw, sizeof raw, out, outlen);
}

/* The SDK packages (tests/sdk, installed once per build dir) and the device script. */
static void sdk_setup(void)
{
    node_bin = find_in_path("node");
    node_path = ts_sdk_modules();
    sdk_script = ts_str("%s/tests/sdk/provision-symkey.js", ts_env("STAMPCP_SOURCE_DIR"));
    if (access(sdk_script, R_OK) != 0)
        ts_fail("%s is missing", sdk_script);
    ts_log("device SDK from %s", node_path);
}

/* Run the SDK device script; returns its JSON line (library-owned) and the exit code. */
static json_t *sdk_register(const char *endpoint, const char *scope, const char *regid, const char *device_key,
                            int *rc)
{
    char *out = NULL;
    char *argv[] = { "/usr/bin/env", (char *)ts_str("NODE_PATH=%s", node_path),
                     (char *)ts_str("NODE_EXTRA_CA_CERTS=%s", ca_crt), (char *)node_bin, (char *)sdk_script,
                     (char *)endpoint, (char *)scope, (char *)regid, (char *)device_key, "individual", NULL };
    json_t *last = NULL;
    *rc = ts_run(argv, 60000, &out);
    if (out) {
        char *copy = ts_str("%s", out);
        for (char *save = NULL, *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            json_t *j;
            if (*l != '{' || !(j = json_loads(l, 0, NULL)))
                continue;
            last = ts_jkeep(j);
        }
    }
    if (!last)
        ts_fail("SDK script printed no JSON line (exit %d): %s", *rc, out ? out : "");
    ts_log("SDK %s at %s (%s): %s", regid, endpoint, scope, out);
    return last;
}

static const char *derived_key(const char *regid)
{
    unsigned char dk[SAS_KEY_LEN];
    char b64[100];
    sas_derive_key(tenant->key, (size_t)tenant->keylen, regid, dk);
    sas_b64_encode(dk, sizeof dk, b64, sizeof b64);
    return ts_str("%s", b64);
}

static bool is_hub_of(const char *stamp_id, const char *host)
{
    struct ts_rt_stamp *s = ts_rt_find_stamp(rt, stamp_id);
    for (int h = 0; host && s && h < 4 && s->hubs[h].id; h++)
        if (strcmp(host, ts_str("%s.hub.test", s->hubs[h].id)) == 0)
            return true;
    return false;
}

#define post201(path, body) ts_admin_post201(rt->cp[0], (path), (body))

/* Catalog: geographies, regions, stamps, hubs (as ts_rt_register_layout), DPS instances with service credentials. */
static void register_layout(void)
{
    rt->layout = &layout;
    for (int i = 0; layout.geographies[i]; i++)
        post201("/v1/geographies", ts_json("{'id':'%s'}", layout.geographies[i]));
    for (int i = 0; layout.regions[i].id; i++)
        post201("/v1/regions", ts_json("{'id':'%s','geography':'%s'}", layout.regions[i].id,
                                       layout.regions[i].geography));
    for (int i = 0; i < 2; i++) {
        struct ts_rt_stamp *s = ts_rt_find_stamp(rt, prov[i].stamp);
        post201("/v1/stamps", ts_json("{'id':'%s','region':'%s'}", s->id, s->region));
        post201("/v1/dps-instances",
                ts_json("{'id':'%s','stamp':'%s','idScope':'%s','endpoint':'%s','serviceKeyName':'%s',"
                        "'serviceKey':'%s'}",
                        prov[i].dps, s->id, ts_rt_id_scope(prov[i].dps), prov[i].endpoint, KEY_NAME,
                        prov[i].service_key));
        for (int h = 0; h < 4 && s->hubs[h].id; h++)
            post201("/v1/hubs", ts_json("{'id':'%s','stamp':'%s','hostName':'%s.hub.test'}", s->hubs[h].id, s->id,
                                        s->hubs[h].id));
    }
}

static bool agent_listening(void *arg)
{
    struct ts_proc *p = arg;
    return !ts_proc_alive(p) || ts_proc_log_contains(p, "event=dps_listening");
}

/* The stamp's agent with its provisioning section, on the private Redis. */
static void start_agent(struct stamp_prov *sp)
{
    struct ts_rt_stamp *s = ts_rt_find_stamp(rt, sp->stamp);
    json_t *inst = json_array(), *hubs = json_array(), *cfg;
    const char *path = ts_str("%s/agent-%s.json", ts_tmp(), s->id);
    char *txt;

    json_array_append_new(inst, json_pack("{s:s, s:s}", "id", sp->dps, "idScope", ts_rt_id_scope(sp->dps)));
    for (int h = 0; h < 4 && s->hubs[h].id; h++)
        json_array_append_new(hubs, json_pack("{s:s, s:s}", "id", s->hubs[h].id, "hostName",
                                              ts_str("%s.hub.test", s->hubs[h].id)));
    cfg = json_pack("{s:s, s:s, s:s, s:i, s:{s:s, s:s, s:{s:s, s:s}, s:[{s:s, s:s}], s:o, s:o}}",
                    "stampId", s->id, "region", s->region, "redis", rt->redis->addr, "reportIntervalMs", 200,
                    "provisioning", "listen", sp->endpoint, "database", ts_rt_geo_db(rt, sp->geo),
                    "tls", "cert", srv_crt, "key", srv_key,
                    "servicePolicies", "name", KEY_NAME, "key", sp->service_key,
                    "instances", inst, "hubs", hubs);
    if (!cfg)
        ts_fail("agent config for %s did not pack", s->id);
    json_object_set_new(cfg, "kekFile", json_string(ts_kek_file()));   /* the enrollment keys at rest */
    txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(cfg);
    ts_write_file(path, txt);
    free(txt);

    char *argv[] = { (char *)ts_bin("stamp-agent"), "--config", (char *)path, NULL };
    s->agent = ts_proc_spawn(ts_str("agent-%s", s->id), argv, NULL, NULL);
    if (!ts_wait_until(agent_listening, s->agent, 20000) || !ts_proc_alive(s->agent)) {
        ts_proc_dump_log(s->agent, 6000);
        ts_fail("stamp-agent %s did not start its provisioning endpoint on %s", s->id, sp->endpoint);
    }
}

static json_t *sync_status(const char *dps)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/dps-instances/%s/enrollment-sync", dps), NULL);
    return r->status == 200 ? r->json : NULL;
}

/* in_sync, from a pass that started after the tenant was created */
static bool sync_fresh(const char *dps, json_t **out)
{
    json_t *st = sync_status(dps);
    const char *state = ts_jstr(st, "state");
    int64_t at = ts_parse_rfc3339(ts_jstr(st, "lastRunAt"));
    *out = st;
    return st && state && strcmp(state, "in_sync") == 0 && at > tenant_created_ms;
}

static long enrollments(const char *geo, const char *dps, const char *group)
{
    return ts_pg_count(ts_rt_geo_db(rt, geo),
                       ts_str("SELECT count(*) FROM dps_enrollments WHERE dps_id = '%s' AND kind = 'group' "
                              "AND enrollment_id = '%s'", dps, group));
}

static void remember(const char *regid)
{
    for (int i = 0; i < nanswered; i++)
        if (strcmp(answered[i], regid) == 0)
            return;
    answered[nanswered++] = regid;
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    struct ts_rt_opts o;
    (void)state;

    make_certs();
    sdk_setup();
    for (int i = 0; i < 2; i++) {
        prov[i].port = ts_free_port();
        prov[i].endpoint = ts_str("127.0.0.1:%d", prov[i].port);
        random_key_b64(prov[i].service_key, sizeof prov[i].service_key);
    }
    memset(&o, 0, sizeof o);
    o.geos[0] = "eu";
    o.geos[1] = "us";
    o.layout_refresh_ms = 200;
    o.extra_json = ts_str("\"dps\": {\"caFile\": \"%s\", \"enrollmentSyncMs\": 500}", ca_crt);
    rt = ts_rt_start(&o);
    register_layout();
    for (int i = 0; i < 2; i++)
        start_agent(&prov[i]);
    for (int i = 0; i < 2; i++)
        if (!ts_rt_wait_health(rt, prov[i].stamp, "healthy", 10000))
            ts_fail("stamp %s not healthy 10 s after its agent started (%s)", prov[i].stamp,
                    ts_rt_health(rt->cp[0], prov[i].stamp));
    ts_rt_wait_layout(rt);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

/* Before any tenant: both instances reconcile to nothing (proves the service credentials work). */
static void test_sync_before_tenant(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        json_t *st = NULL;
        int64_t deadline = ts_now_ms() + 10000;
        const char *s;
        while (!((st = sync_status(prov[i].dps)) && (s = ts_jstr(st, "state")) && strcmp(s, "in_sync") == 0) &&
               ts_now_ms() < deadline)
            ts_sleep_ms(100);
        if (!st || strcmp(ts_jstr(st, "state") ? ts_jstr(st, "state") : "", "in_sync") != 0)
            ts_fail("enrollment-sync of %s not in_sync 10 s after its agent started: %s", prov[i].dps,
                    ts_resp_str(ts_admin(rt->cp[0], "GET",
                                         ts_str("/v1/dps-instances/%s/enrollment-sync", prov[i].dps), NULL)));
        assert_int_equal(ts_jint(st, "desiredGroups", -1), 0);
    }
}

static void test_tenant_group_synced_to_residency_only(void **state)
{
    json_t *eu = NULL, *us = NULL;
    int64_t deadline;
    (void)state;

    tenant_created_ms = ts_now_ms() - 1;
    tenant = ts_rt_tenant(rt->cp[0], ts_json("{'id':'%s','name':'Acme','residency':{'geographies':['eu']}}", TENANT));
    deadline = ts_now_ms() + 8000;
    for (;;) {
        bool eu_ok = sync_fresh(EU_DPS, &eu) && ts_jint(eu, "desiredGroups", -1) >= 1 &&
                     enrollments("eu", EU_DPS, TENANT) == 1;
        bool us_ok = sync_fresh(US_DPS, &us);
        if ((eu_ok && us_ok) || ts_now_ms() >= deadline)
            break;
        ts_sleep_ms(100);
    }
    if (!sync_fresh(EU_DPS, &eu) || ts_jint(eu, "desiredGroups", -1) < 1 || enrollments("eu", EU_DPS, TENANT) != 1)
        ts_fail("group %s not on %s 8 s after the tenant was created: status %s, rows %ld", TENANT, EU_DPS,
                ts_jdump(eu),
                enrollments("eu", EU_DPS, TENANT));
    if (!sync_fresh(US_DPS, &us))
        ts_fail("no in_sync pass on %s after the tenant was created: %s", US_DPS,
                ts_jdump(us));
    assert_int_equal(ts_jint(us, "desiredGroups", -1), 0);
    assert_int_equal(enrollments("us", US_DPS, TENANT), 0);
    assert_int_equal(enrollments("eu", US_DPS, TENANT), 0);
    /* the group is a symmetric-key group carrying the tenant's enrollment key, stored
     * sealed (common/envelope.h): it opens, with the group's AAD, to that key */
    {
        const char *stored = ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                          ts_str("SELECT doc->'attestation'->'symmetricKey'->>'primaryKey' FROM "
                                                 "dps_enrollments WHERE dps_id = '%s' AND kind = 'group' AND "
                                                 "enrollment_id = '%s'", EU_DPS, TENANT));
        char err[300], text[128], aad[ENVELOPE_AAD_MAX];
        struct envelope *env = envelope_load(ts_kek_file(), err, sizeof err);
        if (!env)
            ts_fail("%s", err);
        if (!stored || strncmp(stored, "enc:v1:", 7) != 0)
            ts_fail("the group's primaryKey is not stored sealed");
        envelope_aad_stamp_key(aad, sizeof aad, EU_DPS, "group", TENANT);
        assert_int_equal(envelope_open_text(env, stored, aad, text, sizeof text), ENVELOPE_OK);
        TS_EXPECT_STREQ(text, tenant->key_b64);
        envelope_free(env);
    }
}

/* GET /v1/inventory?tenant=acme lists the tenant's group at the eu stamp with >= 1 device. */
static bool inventory_has_group(void *arg)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/inventory?tenant=%s", TENANT), NULL);
    json_t *g;
    size_t i;
    (void)arg;
    if (r->status != 200)
        return false;
    json_array_foreach(json_object_get(r->json, "groups"), i, g)
        if (ts_jstr(g, "stamp") && strcmp(ts_jstr(g, "stamp"), EU_STAMP) == 0 && ts_jstr(g, "dps") &&
            strcmp(ts_jstr(g, "dps"), EU_DPS) == 0 && ts_jstr(g, "group") &&
            strcmp(ts_jstr(g, "group"), TENANT) == 0 && ts_jint(g, "devices", 0) >= 1)
            return true;
    return false;
}

/* Approach 1: locate at the router, then the official SDK at the stamp. */
static void test_locate_then_sdk(void **state)
{
    struct ts_resp *r;
    json_t *out, *rs;
    int rc;
    (void)state;
    assert_non_null(tenant);

    r = ts_rt_locate(rt->cp[0], tenant, "dev-1");
    TS_EXPECT_STATUS(r, 200);
    remember("dev-1");
    TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), EU_STAMP);
    TS_EXPECT_STREQ(ts_jstr(r->json, "dpsEndpoint"), prov[0].endpoint);
    TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_rt_id_scope(EU_DPS));

    out = sdk_register(ts_jstr(r->json, "dpsEndpoint"), ts_jstr(r->json, "idScope"), "dev-1", derived_key("dev-1"),
                       &rc);
    rs = rc == 0 ? out : NULL;
    if (!rs || !ts_jstr(rs, "status"))
        ts_fail("SDK registration of dev-1 at %s failed (exit %d): %s", prov[0].endpoint, rc,
                ts_jdump(out));
    TS_EXPECT_STREQ(ts_jstr(rs, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(rs, "registrationId"), "dev-1");
    if (!is_hub_of(EU_STAMP, ts_jstr(rs, "assignedHub")))
        ts_fail("dev-1 assigned to %s, not a hub of %s", ts_jstr(rs, "assignedHub") ? ts_jstr(rs, "assignedHub")
                                                                                      : "(none)", EU_STAMP);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(rs, "symmetricKey"), "enrollmentGroupId"), TENANT);
    TS_EXPECT_STREQ(ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                 ts_str("SELECT status || ' ' || assigned_hub FROM dps_registrations "
                                        "WHERE dps_id = '%s' AND registration_id = 'dev-1'", EU_DPS)),
                    ts_str("assigned %s", ts_jstr(rs, "assignedHub")));
    /* The stamp counts per group every 5 s and reports; the inventory shows it. */
    if (!ts_wait_until(inventory_has_group, NULL, 15000))
        ts_fail("GET /v1/inventory?tenant=%s never listed group %s at %s with a device: %s", TENANT, TENANT,
                EU_STAMP, ts_jdump(ts_admin(rt->cp[0], "GET", ts_str("/v1/inventory?tenant=%s", TENANT), NULL)->json));
}

/* The same device at the us stamp: outside the residency, no group there -> 401. */
static void test_sdk_outside_residency_unauthorized(void **state)
{
    json_t *out;
    int rc;
    (void)state;
    assert_non_null(tenant);

    out = sdk_register(prov[1].endpoint, ts_rt_id_scope(US_DPS), "dev-1", derived_key("dev-1"), &rc);
    if (rc == 0)
        ts_fail("dev-1 registered at the us stamp (outside its residency): %s",
                ts_jdump(out));
    /* like Azure DPS: a credential no enrollment accepts is 401 (the SDK's UnauthorizedError) */
    if (strcmp(ts_jstr(out, "name") ? ts_jstr(out, "name") : "", "UnauthorizedError") != 0 ||
        ts_jint(out, "statusCode", 0) != 401)
        ts_fail("dev-1 at the us stamp (no group for %s there): expected UnauthorizedError (401), got %s", TENANT,
                ts_jdump(out));
    assert_int_equal(ts_pg_count(ts_rt_geo_db(rt, "us"),
                                 "SELECT count(*) FROM dps_registrations WHERE registration_id = 'dev-1' "
                                 "AND status = 'assigned'"),
                     0);
}

/* Approach 2: the router registers the device at the stamp's DPS itself. */
static void test_proxy_provision(void **state)
{
    struct ts_resp *r, *dev;
    const char *hub;
    (void)state;
    assert_non_null(tenant);

    r = ts_rt_device(rt->cp[0], "provision", TENANT, "dev-2", ts_rt_sas(tenant, "dev-2", 0), NULL);
    TS_EXPECT_STATUS(r, 200);
    remember("dev-2");
    TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), EU_STAMP);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    hub = ts_jstr(r->json, "assignedHub");
    if (!is_hub_of(EU_STAMP, hub))
        ts_fail("dev-2 provisioned to %s, not a hub of %s: %s", hub ? hub : "(none)", EU_STAMP, ts_resp_str(r));
    TS_EXPECT_STREQ(ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                 ts_str("SELECT status || ' ' || assigned_hub || ' ' || enrollment_id "
                                        "FROM dps_registrations WHERE dps_id = '%s' AND registration_id = 'dev-2'",
                                        EU_DPS)),
                    ts_str("assigned %s %s", hub, TENANT));
    dev = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/%s/devices/dev-2", TENANT), NULL);
    TS_EXPECT_STATUS(dev, 200);
    TS_EXPECT_STREQ(ts_jstr(dev->json, "assignedHub"), hub);
}

static void test_devices_stay_in_eu(void **state)
{
    (void)state;
    assert_true(nanswered >= 2);
    for (int i = 0; i < nanswered; i++) {
        const char *q = ts_str("SELECT count(*) FROM devices WHERE tenant_id = '%s' AND registration_id = '%s'",
                               TENANT, answered[i]);
        if (ts_pg_count(ts_rt_geo_db(rt, "eu"), q) != 1)
            ts_fail("%s got a 200 but has no row in the eu geography database", answered[i]);
        if (ts_pg_count(ts_rt_geo_db(rt, "us"), q) != 0)
            ts_fail("%s has a row in the us geography database", answered[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_before_tenant),
        cmocka_unit_test(test_tenant_group_synced_to_residency_only),
        cmocka_unit_test(test_locate_then_sdk),
        cmocka_unit_test(test_sdk_outside_residency_unauthorized),
        cmocka_unit_test(test_proxy_provision),
        cmocka_unit_test(test_devices_stay_in_eu),
    };
    ts_init("test_e2e_provisioning");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
