/*
 * test_tenant_lifecycle - enrollment key rotation, tenant update and removal,
 * and placement around the DPS group quota, with real stamp agents serving
 * the DPS device and service API (no mock) and two control planes.
 *
 * Layout: geography eu, region eu-west, stamps eu-west-1 and eu-west-2 with
 * one DPS instance and one hub each. Each agent runs its provisioning
 * endpoint (ts_pki_ca()'s certificate) on the eu database; the DPS instances
 * carry service credentials, so the reconciler (dps.enrollmentSyncMs 300)
 * keeps each tenant's group there. dps.maxEnrollmentGroups is 2, and a
 * group nobody manages ("foreign") is put on eu-west-1's instance first: it
 * has room for one managed group, eu-west-2's for two.
 *
 * Covered:
 *  - rotation: 200 with a fresh 32-byte key (no-store); each instance's group
 *    becomes primary=new, secondary=previous; devices signing with either
 *    locate (on the other control plane too) and register at the stamp; after
 *    a second rotation the oldest key is refused at once by both control
 *    planes (401) and, once synced, by the stamp;
 *  - PATCH (name; {} changes nothing) and bad input on PATCH and rotate;
 *  - the quota: tenant beta, created after acme, is over quota on eu-west-1:
 *    enrollment-sync says so (placementExcluded), its devices all go to
 *    eu-west-2 and the decision record names rule "enrollment";
 *  - removal: 409 tenant_has_devices while devices are assigned; after they
 *    are deprovisioned 204, then the group is deleted from every instance,
 *    GET/rotate/PATCH/DELETE are 404, the device key and the installer token
 *    are refused by both control planes, the id is not reused, and beta's
 *    group takes the freed room on eu-west-1.
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

#define KEY_NAME "provisioningserviceowner"
#define S1 "eu-west-1"
#define S2 "eu-west-2"
#define D1 "eu-west-1-dps"
#define D2 "eu-west-2-dps"

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = S1, .region = "eu-west", .dps = { { D1, 0, 0 } }, .hubs = { { "eu-west-1-hub", 0 } } },
        { .id = S2, .region = "eu-west", .dps = { { D2, 0, 0 } }, .hubs = { { "eu-west-2-hub", 0 } } },
        { .id = NULL },
    },
};

/* The two agents as ts_stamp handles (port, hostport, policy: what the helpers use). */
static struct ts_stamp agent[2];
static const char *const agent_dps[2] = { D1, D2 };
static const char *const agent_stamp[2] = { S1, S2 };

static struct ts_tenant *acme;          /* as created */
static struct ts_tenant k0, k1, k2;     /* acme with its keys: created, first and second rotation */
static const char *installer;

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */


#define expect_err ts_expect_err

static struct ts_stamp *agent_of_stamp(const char *stamp)
{
    for (int i = 0; i < 2; i++)
        if (stamp && strcmp(agent_stamp[i], stamp) == 0)
            return &agent[i];
    ts_fail("no agent serves stamp %s", stamp ? stamp : "(null)");
}

/* acme as it is after a rotation: the same id with another key */
static void with_key(struct ts_tenant *out, const char *key_b64)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", acme->id);
    snprintf(out->key_b64, sizeof out->key_b64, "%s", key_b64);
    out->keylen = sas_b64_decode(key_b64, out->key, sizeof out->key);
    if (out->keylen != 32)
        ts_fail("enrollmentKey '%s' is not base64 of 32 bytes", key_b64);
}

static const char *derived(const struct ts_tenant *t, const char *regid)
{
    return ts_derive_key(t->key_b64, regid);
}

/* The group's key as the stamp stores it ("" if the group is absent). */
/* A group's key as the stamp keeps it, opened (it is stored sealed, common/envelope.h); "" when absent. */
static const char *group_key(const char *dps, const char *group, const char *which)
{
    const char *v = ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                 ts_str("SELECT coalesce((SELECT doc->'attestation'->'symmetricKey'->>'%s' "
                                        "FROM dps_enrollments WHERE dps_id = '%s' AND kind = 'group' "
                                        "AND enrollment_id = '%s'), '')", which, dps, group));
    char err[300], aad[ENVELOPE_AAD_MAX], text[256];
    struct envelope *env;
    enum envelope_status st;
    if (!v || !*v)
        return "";
    if (!envelope_is_sealed(v))
        ts_fail("group %s on %s: %s is stored in clear", group, dps, which);
    if (!(env = envelope_load(ts_kek_file(), err, sizeof err)))
        ts_fail("%s", err);
    envelope_aad_stamp_key(aad, sizeof aad, dps, "group", group);
    st = envelope_open_text(env, v, aad, text, sizeof text);
    envelope_free(env);
    if (st != ENVELOPE_OK)
        ts_fail("group %s on %s: %s does not open (%s)", group, dps, which, envelope_status_word(st));
    return ts_str("%s", text);
}

struct group_want {
    const char *dps, *group, *primary, *secondary;   /* primary "": absent */
};

static bool group_is(void *arg)
{
    const struct group_want *w = arg;
    return strcmp(group_key(w->dps, w->group, "primaryKey"), w->primary) == 0 &&
           (!w->secondary || strcmp(group_key(w->dps, w->group, "secondaryKey"), w->secondary) == 0);
}

static void wait_group(const char *dps, const char *group, const char *primary, const char *secondary)
{
    struct group_want w = { dps, group, primary, secondary };
    if (!ts_wait_until(group_is, &w, 15000))
        ts_fail("group %s on %s: wanted primaryKey '%s' secondaryKey '%s', have '%s' / '%s' after 15 s; sync: %s",
                group, dps, primary, secondary ? secondary : "(any)", group_key(dps, group, "primaryKey"),
                group_key(dps, group, "secondaryKey"),
                ts_resp_str(ts_admin(rt->cp[0], "GET", ts_str("/v1/dps-instances/%s/enrollment-sync", dps), NULL)));
}

/* locate, then register at the stamp the answer names with the derived key; returns the stamp's last answer */
static struct ts_resp *locate_and_register(struct ts_cp *cp, const struct ts_tenant *t, const char *regid)
{
    struct ts_resp *r = ts_rt_locate(cp, t, regid);
    const char *scope;
    if (r->status != 200)
        ts_fail("locate %s with key %.8s...: expected 200, got %s", regid, t->key_b64, ts_resp_str(r));
    scope = ts_jstr(r->json, "idScope");
    return ts_stamp_provision(agent_of_stamp(ts_jstr(r->json, "stamp")), scope, regid,
                              ts_device_sas(scope, regid, derived(t, regid), 0), 15000);
}

static void expect_assigned(struct ts_resp *r, const char *regid)
{
    const char *st = r->json ? ts_jstr(r->json, "status") : NULL;
    if (r->status != 200 || !st || strcmp(st, "assigned") != 0)
        ts_fail("%s at the stamp: expected 200 assigned, got %s", regid, ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(json_object_get(json_object_get(r->json, "registrationState"), "symmetricKey"),
                            "enrollmentGroupId"),
                    acme->id);
}

static json_t *sync_status(const char *dps)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/dps-instances/%s/enrollment-sync", dps), NULL);
    return r->status == 200 ? r->json : NULL;
}

/* the instance's last pass lists group among placementExcluded (reason contains why), or not (why NULL) */
static bool excluded_is(const char *dps, const char *group, const char *why)
{
    json_t *st = sync_status(dps), *e;
    size_t i;
    bool found = false;
    if (!st || !json_is_array(json_object_get(st, "placementExcluded")))
        return false;
    json_array_foreach(json_object_get(st, "placementExcluded"), i, e)
        if (ts_jstr(e, "group") && strcmp(ts_jstr(e, "group"), group) == 0)
            found = why && ts_jstr(e, "reason") && strstr(ts_jstr(e, "reason"), why);
    return why ? found : !found;
}

static bool beta_over_quota_on_d1(void *arg)
{
    (void)arg;
    return excluded_is(D1, "beta", "over quota") && excluded_is(D2, "beta", NULL) &&
           strcmp(group_key(D2, "beta", "primaryKey"), "") != 0;
}

static bool beta_fits_d1(void *arg)
{
    (void)arg;
    return excluded_is(D1, "beta", NULL) && strcmp(group_key(D1, "beta", "primaryKey"), "") != 0;
}

static bool d1_in_sync(void *arg)
{
    const char *st = ts_jstr(sync_status(D1), "state");
    (void)arg;
    return st && strcmp(st, "in_sync") == 0;
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    struct ts_rt_served_opts so = { .ncp = 2, .dps_extra = "\"maxEnrollmentGroups\": 2", .policy = KEY_NAME };
    (void)state;

    rt = ts_rt_start_served(&so, &layout, agent_dps, agent, 2);
    ts_rt_served_agents_start(rt, agent_dps, agent, 2);
    /* a group the control plane does not manage takes one of eu-west-1's two places */
    ts_stamp_put_symkey_group(&agent[0], "foreign", ts_random_key(32), ts_random_key(32));
    ts_rt_served_ready(rt, agent_dps, 2);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

static void test_rotation(void **state)
{
    struct ts_resp *r;
    json_int_t version;
    (void)state;

    acme = ts_rt_tenant_acme(rt->cp[0]);
    with_key(&k0, acme->key_b64);
    version = ts_jint(acme->json, "version", 0);
    installer = ts_rt_installer_token(rt->cp[0], "acme");
    /* never rotated: secondary = primary, on both instances (acme came first: it fits eu-west-1) */
    wait_group(D1, "acme", k0.key_b64, k0.key_b64);
    wait_group(D2, "acme", k0.key_b64, k0.key_b64);

    expect_assigned(locate_and_register(rt->cp[0], &k0, "dev-a"), "dev-a");
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], &k0, "dev-a"), 200);   /* cp[1] caches acme with key 0 */

    /* first rotation, no body */
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/enrollment-key/rotate", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (!ts_jstr(r->json, "enrollmentKey"))
        ts_fail("rotate answered no enrollmentKey: %s", ts_resp_str(r));
    with_key(&k1, ts_jstr(r->json, "enrollmentKey"));
    if (strcmp(k1.key_b64, k0.key_b64) == 0)
        ts_fail("the rotated key equals the old one");
    TS_EXPECT_STREQ(ts_header(r, "Cache-Control"), "no-store");
    TS_EXPECT_STREQ(ts_jstr(r->json, "id"), "acme");
    assert_int_equal(ts_jint(r->json, "version", 0), version + 1);
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/acme", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (strstr(r->body, k1.key_b64) || strstr(r->body, k0.key_b64) || json_object_get(r->json, "enrollmentKey"))
        ts_fail("GET shows a key: %s", ts_resp_str(r));

    /* the groups follow: primary = new, secondary = previous */
    wait_group(D1, "acme", k1.key_b64, k0.key_b64);
    wait_group(D2, "acme", k1.key_b64, k0.key_b64);
    /* both keys locate, on either control plane, and register at the stamp */
    expect_assigned(locate_and_register(rt->cp[1], &k1, "dev-b"), "dev-b");
    expect_assigned(locate_and_register(rt->cp[1], &k0, "dev-c"), "dev-c");
    expect_assigned(locate_and_register(rt->cp[0], &k0, "dev-a"), "dev-a");

    /* second rotation, body {} */
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/enrollment-key/rotate", "{}");
    TS_EXPECT_STATUS(r, 200);
    with_key(&k2, ts_jstr(r->json, "enrollmentKey") ? ts_jstr(r->json, "enrollmentKey") : "");
    /* the oldest key is refused at once by both control planes (invalidation confirmed before the 200) */
    for (int c = 0; c < 2; c++) {
        expect_err(ts_rt_locate(rt->cp[c], &k0, "dev-a"), 401, "invalid_signature", "locate dev-a with key 0");
        expect_err(ts_rt_locate(rt->cp[c], &k0, "dev-d"), 401, "invalid_signature", "locate dev-d with key 0");
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[c], &k1, "dev-b"), 200);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[c], &k2, "dev-b"), 200);
    }
    wait_group(D1, "acme", k2.key_b64, k1.key_b64);
    wait_group(D2, "acme", k2.key_b64, k1.key_b64);
    /* and by the stamps: key 0 matches no group any more */
    for (int i = 0; i < 2; i++) {
        const char *scope = ts_rt_id_scope(agent_dps[i]);
        r = ts_stamp_register(&agent[i], scope, "dev-c", ts_device_sas(scope, "dev-c", derived(&k0, "dev-c"), 0),
                              NULL);
        if (!ts_is_dps_error(r, 401))
            ts_fail("dev-c with key 0 at %s after the second rotation: expected a 401 DPS error, got %s",
                    agent_dps[i], ts_resp_str(r));
    }
    expect_assigned(locate_and_register(rt->cp[0], &k1, "dev-c"), "dev-c");
    expect_assigned(locate_and_register(rt->cp[0], &k2, "dev-e"), "dev-e");
}

static void test_patch_and_bad_input(void **state)
{
    struct ts_resp *r;
    json_int_t version;
    (void)state;
    assert_non_null(acme);

    r = ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"name\":\"Acme Industries\"}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "name"), "Acme Industries");
    version = ts_jint(r->json, "version", 0);
    r = ts_admin(rt->cp[1], "PATCH", "/v1/tenants/acme", "{}");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(ts_jint(r->json, "version", 0), version);
    TS_EXPECT_STREQ(ts_jstr(r->json, "name"), "Acme Industries");
    TS_EXPECT_STREQ(ts_jstr(ts_admin(rt->cp[1], "GET", "/v1/tenants/acme", NULL)->json, "name"), "Acme Industries");

    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"name\":"), 400, "invalid_json", "PATCH bad JSON");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "[]"), 400, "invalid_json", "PATCH array");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"name\":5}"), 400, "invalid_type", "PATCH name 5");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"name\":\"\"}"), 400, "invalid_value",
               "PATCH empty name");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"colour\":\"red\"}"), 400, "unknown_field",
               "PATCH unknown field");
    r = ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"residency\":{\"geographies\":[\"eu\"]}}");
    expect_err(r, 400, "read_only_field", "PATCH residency");
    TS_EXPECT_STREQ(ts_err_target(r), "residency");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"tenancy\":\"dedicated\"}"), 400,
               "read_only_field", "PATCH tenancy");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"enrollmentKey\":\"x\"}"), 400,
               "read_only_field", "PATCH enrollmentKey");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/nope", "{\"name\":\"x\"}"), 404, "not_found",
               "PATCH unknown tenant");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/nope/enrollment-key/rotate", NULL), 404, "not_found",
               "rotate unknown tenant");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/enrollment-key/rotate", "{\"keep\":true}"), 400,
               "unknown_field", "rotate with a field");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/enrollment-key/rotate", "nope"), 400, "invalid_json",
               "rotate with a non-JSON body");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/enrollment-key/rotate?now=1", NULL), 400,
               "invalid_query", "rotate with a query");
    expect_err(ts_admin(rt->cp[0], "DELETE", "/v1/tenants/nope", NULL), 404, "not_found", "DELETE unknown tenant");
    /* none of that rotated anything: key 2 still works */
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], &k2, "dev-b"), 200);
}

static void test_quota_excludes_instance(void **state)
{
    struct ts_tenant *beta;
    struct ts_resp *r;
    json_t *v;
    size_t i;
    bool seen = false;
    (void)state;

    beta = ts_rt_tenant(rt->cp[0], "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"eu\"]}}");
    if (!ts_wait_until(beta_over_quota_on_d1, NULL, 15000))
        ts_fail("beta not reported over quota on %s (and present on %s) after 15 s: %s / %s", D1, D2,
                ts_jdump(sync_status(D1)), ts_jdump(sync_status(D2)));
    assert_int_equal(ts_jint(sync_status(D1), "overQuota", -1), 1);
    TS_EXPECT_STREQ(ts_jstr(sync_status(D1), "state"), "drift");
    TS_EXPECT_STREQ(group_key(D1, "beta", "primaryKey"), "");
    for (int n = 0; n < 8; n++) {
        const char *regid = ts_str("beta-%d", n);
        r = ts_rt_locate(rt->cp[0], beta, regid);
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), S2);
    }
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/beta/devices/beta-0", NULL);
    TS_EXPECT_STATUS(r, 200);
    json_array_foreach(json_object_get(json_object_get(r->json, "decision"), "stamps"), i, v)
        if (ts_jstr(v, "stamp") && strcmp(ts_jstr(v, "stamp"), S1) == 0) {
            seen = true;
            TS_EXPECT_STREQ(ts_jstr(v, "rule"), "enrollment");
            if (!ts_jstr(v, "detail") || !strstr(ts_jstr(v, "detail"), "over quota"))
                ts_fail("the enrollment verdict's detail does not say over quota: %s", ts_jdump(v));
        }
    if (!seen)
        ts_fail("no verdict for %s in the decision record: %s", S1, ts_resp_str(r));
    /* the device registers at eu-west-2, where its group is */
    {
        const char *scope = ts_rt_id_scope(D2);
        r = ts_stamp_provision(&agent[1], scope, "beta-0",
                               ts_device_sas(scope, "beta-0", ts_derive_key(beta->key_b64, "beta-0"), 0), 15000);
        TS_EXPECT_STREQ(r->json ? ts_jstr(r->json, "status") : NULL, "assigned");
    }
}

static void test_delete(void **state)
{
    static const char *const devs[] = { "dev-a", "dev-b", "dev-c", "dev-e" };
    struct ts_resp *r;
    struct group_want gone1 = { D1, "acme", "", NULL }, gone2 = { D2, "acme", "", NULL };
    (void)state;
    assert_non_null(acme);

    r = ts_admin(rt->cp[0], "DELETE", "/v1/tenants/acme", NULL);
    expect_err(r, 409, "tenant_has_devices", "DELETE acme with devices");
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "GET", "/v1/tenants/acme", NULL), 200);
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], &k2, "dev-b"), 200);
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++)
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/acme/devices/%s/deprovision", devs[i]),
                                  NULL),
                         200);

    r = ts_admin(rt->cp[0], "DELETE", "/v1/tenants/acme", NULL);
    TS_EXPECT_STATUS(r, 204);
    /* gone at once, on both control planes */
    for (int c = 0; c < 2; c++) {
        expect_err(ts_admin(rt->cp[c], "GET", "/v1/tenants/acme", NULL), 404, "not_found", "GET after delete");
        expect_err(ts_rt_locate(rt->cp[c], &k2, "dev-b"), 401, "invalid_signature", "locate after delete");
        expect_err(ts_rt_locate(rt->cp[c], &k1, "dev-z"), 401, "invalid_signature", "locate (key 1) after delete");
        expect_err(ts_rt_device(rt->cp[c], "locate", "acme", "dev-i", ts_str("Bearer %s", installer), NULL), 401,
                   "unauthorized", "installer token after delete");
    }
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/enrollment-key/rotate", NULL), 404, "not_found",
               "rotate after delete");
    expect_err(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/acme", "{\"name\":\"x\"}"), 404, "not_found",
               "PATCH after delete");
    expect_err(ts_admin(rt->cp[0], "DELETE", "/v1/tenants/acme", NULL), 404, "not_found", "DELETE twice");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/installer-tokens", "{\"name\":\"x\"}"), 404,
               "not_found", "installer token after delete");
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (strstr(r->body, "\"acme\""))
        ts_fail("the tenant list still shows acme: %s", ts_resp_str(r));
    /* the id stays taken: the device history in the geography database is not inherited */
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants",
                        "{\"id\":\"acme\",\"name\":\"New\",\"residency\":{\"geographies\":[\"eu\"]}}"),
               409, "already_exists", "re-create acme");

    /* the reconciler deletes the group from every instance */
    if (!ts_wait_until(group_is, &gone1, 15000) || !ts_wait_until(group_is, &gone2, 15000))
        ts_fail("group acme still on %s or %s 15 s after the delete: %s / %s", D1, D2, ts_jdump(sync_status(D1)),
                ts_jdump(sync_status(D2)));
    for (int i = 0; i < 2; i++) {
        const char *scope = ts_rt_id_scope(agent_dps[i]);
        r = ts_stamp_register(&agent[i], scope, "dev-b", ts_device_sas(scope, "dev-b", derived(&k2, "dev-b"), 0),
                              NULL);
        if (!ts_is_dps_error(r, 401))
            ts_fail("dev-b at %s after the delete: expected a 401 DPS error, got %s", agent_dps[i], ts_resp_str(r));
    }
    /* the place acme held on eu-west-1 goes to beta */
    if (!ts_wait_until(beta_fits_d1, NULL, 15000))
        ts_fail("beta's group not on %s 15 s after acme's removal freed a place: %s", D1, ts_jdump(sync_status(D1)));
    /* Two routers reconcile: the last pass reported may have read the
     * instance before the other one freed the place (over quota: "drift");
     * the next pass (every 300 ms) finds it in sync. */
    (void)ts_wait_until(d1_in_sync, NULL, 5000);
    TS_EXPECT_STREQ(ts_jstr(sync_status(D1), "state"), "in_sync");
    /* the foreign group was never touched */
    if (!strcmp(group_key(D1, "foreign", "primaryKey"), ""))
        ts_fail("the unmanaged group 'foreign' disappeared from %s", D1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_patch_and_bad_input),
        cmocka_unit_test(test_quota_excludes_instance),
        cmocka_unit_test(test_delete),
    };
    ts_init("test_tenant_lifecycle");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
