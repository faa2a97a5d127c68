/*
 * test_isolation_matrix - the isolation matrix of docs/tenancy.md, generated
 * from the control plane's own route table (`controlplane --print-routes`),
 * not from a hand-written list of routes.
 *
 * Every route is called with each credential and the answer is asserted:
 *
 *   its own tenant's key with the route's scope      2xx
 *   the same tenant's key with every other scope     403 insufficient_scope
 *   another tenant's key (every tenant scope)        404 (the resource names a tenant it does not see),
 *                                                    or, on a list, 200 without the first tenant's objects
 *   no key                                           401
 *   a revoked key / an expired key (every scope)     401
 *
 * Platform-only routes take a platform key with the scope for the 2xx, a
 * platform key with every other scope for the 403, and refuse tenant keys
 * (403, or 404 when the path names a tenant the key does not see).
 *
 * Each route needs a fixture below (how to build a path and body it can
 * succeed on); a route in the table without one fails the test, so a new
 * route cannot ship without its row in the matrix. The refusals are made
 * before the success call, on the same path, so a refusal is never due to a
 * missing object.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

#define OWN "mx-a"        /* residency eu */
#define OTHER "mx-b"      /* residency us */

static struct ts_rt *rt;
static struct ts_cp *cp;
static int seq;

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub" } } },
        { .id = "us-east-1", .region = "us-east", .dps = { { "us-east-1-dps" } }, .hubs = { { "us-east-1-hub" } } },
    },
};

/* ---- scopes and keys ---- */

static const char *const scope_words[] = {
    "platform:admin", "tenants:read", "tenants:write", "devices:read", "devices:write",
    "provision:on-behalf", "keys:write", "transfers:write", "costs:read", "ops:failover", NULL,
};
#define NSCOPES 10
#define PLATFORM_ONLY ((1u << 0) | (1u << 9))    /* platform:admin, ops:failover */
#define ALL_SCOPES ((1u << NSCOPES) - 1)
#define TENANT_SCOPES (ALL_SCOPES & ~PLATFORM_ONLY)

static unsigned scope_bit(const char *w)
{
    for (int i = 0; scope_words[i]; i++)
        if (strcmp(scope_words[i], w) == 0)
            return 1u << i;
    ts_fail("the route table names a scope the test does not know: %s", w);
}

struct key_cache { char tenant[64]; unsigned mask; const char *key; };
static struct key_cache keys[256];
static int nkeys;

static const char *scopes_json(unsigned mask)
{
    char buf[512];
    size_t o = 0;
    o += (size_t)snprintf(buf + o, sizeof buf - o, "[");
    for (int i = 0; i < NSCOPES; i++)
        if (mask & (1u << i))
            o += (size_t)snprintf(buf + o, sizeof buf - o, "%s\"%s\"", o > 1 ? "," : "", scope_words[i]);
    snprintf(buf + o, sizeof buf - o, "]");
    return ts_str("%s", buf);
}

/* A key of tenant (NULL: platform) with exactly these scopes, made once. */
static const char *key_for(const char *tenant, unsigned mask)
{
    for (int i = 0; i < nkeys; i++)
        if (keys[i].mask == mask && strcmp(keys[i].tenant, tenant ? tenant : "") == 0)
            return keys[i].key;
    if (nkeys == (int)(sizeof keys / sizeof keys[0]))
        ts_fail("too many keys");
    snprintf(keys[nkeys].tenant, sizeof keys[nkeys].tenant, "%s", tenant ? tenant : "");
    keys[nkeys].mask = mask;
    keys[nkeys].key = ts_api_key(cp, NULL, tenant, scopes_json(mask), NULL);
    return keys[nkeys++].key;
}

static const char *revoked_tenant_key, *expired_tenant_key, *revoked_platform_key, *expired_platform_key;

/* ---- fixtures ---- */

struct call {
    const char *path;
    const char *body;      /* NULL: none */
    const char *tenant;    /* whose resource the path names ("own"); NULL: OWN */
};

struct fixture {
    const char *method, *pattern;
    int ok;                /* the success status */
    const char *leak;      /* lists: what another tenant's key must not see (then it gets 200) */
    void (*prep)(struct call *c);
};

static const char *fresh(const char *prefix)
{
    return ts_str("%s-%d", prefix, ++seq);
}

/* A device of OWN placed by the operator: the admin routes need one. */
static const char *placed_device(void)
{
    const char *d = fresh("mxdev");
    struct ts_resp *r = ts_rt_device(cp, "locate", OWN, d, ts_str("Bearer %s", cp->token), NULL);
    if (r->status != 200)
        ts_fail("placing %s: %s", d, ts_resp_str(r));
    return d;
}

static void p_locate(struct call *c) { c->path = ts_str("/v1/tenants/" OWN "/registrations/%s/locate", fresh("mxd")); }
static void p_dev_reprov(struct call *c) { c->path = ts_str("/v1/tenants/" OWN "/registrations/%s/reprovision", placed_device()); }
static void p_provision(struct call *c) { c->path = ts_str("/v1/tenants/" OWN "/registrations/%s/provision", fresh("mxd")); }
static void p_tenants(struct call *c) { c->path = "/v1/tenants"; }
static void p_tenant_create(struct call *c)
{
    c->path = "/v1/tenants";
    c->body = ts_str("{\"id\":\"%s\",\"name\":\"n\",\"residency\":{\"geographies\":[\"eu\"]}}", fresh("mxt"));
}
static void p_tenant(struct call *c) { c->path = "/v1/tenants/" OWN; }
static void p_tenant_patch(struct call *c) { c->path = "/v1/tenants/" OWN; c->body = "{\"name\":\"Matrix A\"}"; }
static void p_tenant_delete(struct call *c)
{
    const char *t = fresh("mxdel");
    ts_rt_tenant(cp, ts_str("{\"id\":\"%s\",\"name\":\"n\",\"residency\":{\"geographies\":[\"eu\"]}}", t));
    c->path = ts_str("/v1/tenants/%s", t);
    c->tenant = t;
}
/* a tenant of its own: suspending OWN would refuse the device routes after it */
static void p_suspend_resume(struct call *c, const char *verb)
{
    const char *t = fresh("mxsus");
    ts_rt_tenant(cp, ts_str("{\"id\":\"%s\",\"name\":\"n\",\"residency\":{\"geographies\":[\"eu\"]}}", t));
    c->path = ts_str("/v1/tenants/%s/%s", t, verb);
    c->tenant = t;
}
static void p_suspend(struct call *c) { p_suspend_resume(c, "suspend"); }
static void p_resume(struct call *c) { p_suspend_resume(c, "resume"); }
static void p_rotate(struct call *c) { c->path = "/v1/tenants/" OWN "/enrollment-key/rotate"; }
static void p_installer(struct call *c) { c->path = "/v1/tenants/" OWN "/installer-tokens"; c->body = "{\"name\":\"i\"}"; }
/* X.509 CAs of OWN: a fresh CA each time (a thumbprint is taken once) */
static const char *ca_crt, *ca_key;
static const char *cert_body(const char *crt)
{
    json_t *j = json_pack("{s:s}", "certificate", ts_read_file(crt, NULL));
    const char *s = ts_jdump(j);
    json_decref(j);
    return s;
}
static json_t *uploaded_ca(void)
{
    struct ts_resp *r;
    const char *name = fresh("mxca");
    ts_pki_make_ca(name, name, &ca_crt, &ca_key);
    r = ts_admin(cp, "POST", "/v1/tenants/" OWN "/certificates", cert_body(ca_crt));
    if (r->status != 201)
        ts_fail("uploading a CA: %s", ts_resp_str(r));
    return r->json;
}
static void p_cert_create(struct call *c)
{
    const char *name = fresh("mxca");
    const char *crt, *key;
    ts_pki_make_ca(name, name, &crt, &key);
    c->path = "/v1/tenants/" OWN "/certificates";
    c->body = cert_body(crt);
}
static void p_certs(struct call *c) { c->path = "/v1/tenants/" OWN "/certificates"; }
static void p_cert(struct call *c)
{
    c->path = ts_str("/v1/tenants/" OWN "/certificates/%s", ts_jstr(uploaded_ca(), "id"));
}
static void p_cert_patch(struct call *c) { p_cert(c); c->body = "{\"enabled\":false}"; }
static void p_cert_verify(struct call *c)
{
    json_t *ca = uploaded_ca();
    const char *crt, *key;
    ts_pki_make_leaf(fresh("mxproof"), ts_jstr(ca, "verificationCode"), ca_crt, ca_key, &crt, &key);
    c->path = ts_str("/v1/tenants/" OWN "/certificates/%s/verify", ts_jstr(ca, "id"));
    c->body = cert_body(crt);
}
static void p_cert_enable(struct call *c) { p_cert(c); c->path = ts_str("%s/enable", c->path); }
static void p_cert_disable(struct call *c) { p_cert(c); c->path = ts_str("%s/disable", c->path); }
static const char *own_installer_token_id(void)
{
    struct ts_resp *r = ts_admin(cp, "POST", "/v1/tenants/" OWN "/installer-tokens", "{\"name\":\"i\"}");
    if (r->status != 201)
        ts_fail("installer token: %s", ts_resp_str(r));
    return ts_str("%s", ts_jstr(r->json, "id"));
}
static void p_installers(struct call *c) { c->path = "/v1/tenants/" OWN "/installer-tokens"; }
static void p_installer_one(struct call *c)
{
    c->path = ts_str("/v1/tenants/" OWN "/installer-tokens/%s", own_installer_token_id());
}
static void p_devices(struct call *c) { c->path = "/v1/tenants/" OWN "/devices"; }
static void p_device(struct call *c) { c->path = ts_str("/v1/tenants/" OWN "/devices/%s", placed_device()); }
static void p_deprov(struct call *c) { c->path = ts_str("/v1/tenants/" OWN "/devices/%s/deprovision", placed_device()); }
static void p_retire(struct call *c) { c->path = ts_str("/v1/tenants/" OWN "/devices/%s/retire", placed_device()); }
static void p_admin_reprov(struct call *c) { c->path = ts_str("/v1/tenants/" OWN "/devices/%s/reprovision", placed_device()); }
static void p_keys(struct call *c) { c->path = "/v1/api-keys"; }
static void p_key_create(struct call *c)
{
    c->path = "/v1/api-keys";
    c->body = "{\"name\":\"m\",\"tenant\":\"" OWN "\",\"scopes\":[\"keys:write\"]}";
}
static const char *own_key_id(void)
{
    const char *id;
    ts_api_key(cp, NULL, OWN, "[\"keys:write\"]", &id);
    return id;
}
static void p_key(struct call *c) { c->path = ts_str("/v1/api-keys/%s", own_key_id()); }
static void p_key_rotate(struct call *c) { c->path = ts_str("/v1/api-keys/%s/rotate", own_key_id()); }
static void p_inventory(struct call *c) { c->path = "/v1/inventory?tenant=" OWN; }
static void p_job(struct call *c)
{
    const char *t = fresh("mxjob");
    struct ts_resp *r;
    ts_rt_tenant(cp, ts_str("{\"id\":\"%s\",\"name\":\"n\",\"residency\":{\"geographies\":[\"eu\"]}}", t));
    r = ts_admin(cp, "DELETE", ts_str("/v1/tenants/%s?cascade=true", t), NULL);
    if (r->status != 202 || !ts_jstr(r->json, "id"))
        ts_fail("offboarding %s: %s", t, ts_resp_str(r));
    c->path = ts_str("/v1/jobs/%s", ts_jstr(r->json, "id"));
}
static void p_audit(struct call *c) { c->path = "/v1/audit?tenant=" OWN; }
static void p_sync(struct call *c) { c->path = "/v1/dps-instances/eu-west-1-dps/enrollment-sync"; }
static void p_drift(struct call *c) { c->path = "/v1/dps-instances/eu-west-1-dps/registration-drift"; }
static void p_stamp_ops(struct call *c) { c->path = "/v1/dps-instances/eu-west-1-dps/stamp-ops"; }
static void p_kek(struct call *c) { c->path = "/v1/admin/kek"; }
static void p_kek_rotate(struct call *c) { c->path = "/v1/admin/kek/rotate"; }

/* layout */
static void p_geos(struct call *c) { c->path = "/v1/geographies"; }
static void p_geo_create(struct call *c) { c->path = "/v1/geographies"; c->body = "{\"id\":\"ap\"}"; }
static void p_geo(struct call *c) { c->path = "/v1/geographies/eu"; }
static void p_geo_patch(struct call *c) { c->path = "/v1/geographies/eu"; c->body = "{\"displayName\":\"Europe\"}"; }
static void p_geo_delete(struct call *c)
{
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"sa\"}"), 201);
    c->path = "/v1/geographies/sa";
}
static void p_regions(struct call *c) { c->path = "/v1/regions"; }
static void p_region_create(struct call *c)
{
    c->path = "/v1/regions";
    c->body = ts_str("{\"id\":\"%s\",\"geography\":\"eu\"}", fresh("mxr"));
}
static void p_region(struct call *c) { c->path = "/v1/regions/eu-west"; }
static void p_region_patch(struct call *c) { c->path = "/v1/regions/eu-west"; c->body = "{\"displayName\":\"West\"}"; }
static void p_region_delete(struct call *c)
{
    const char *id = fresh("mxr");
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", ts_str("{\"id\":\"%s\",\"geography\":\"eu\"}", id)), 201);
    c->path = ts_str("/v1/regions/%s", id);
}
static void p_stamps(struct call *c) { c->path = "/v1/stamps"; }
static void p_stamp_create(struct call *c)
{
    c->path = "/v1/stamps";
    c->body = ts_str("{\"id\":\"%s\",\"region\":\"eu-west\",\"status\":\"draining\"}", fresh("mxs"));
}
static void p_stamp(struct call *c) { c->path = "/v1/stamps/eu-west-1"; }
static void p_stamp_patch(struct call *c) { c->path = "/v1/stamps/eu-west-1"; c->body = "{\"displayName\":\"EW1\"}"; }
static void p_stamp_delete(struct call *c)
{
    const char *id = fresh("mxs");
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/stamps", ts_str("{\"id\":\"%s\",\"region\":\"eu-west\",\"status\":\"draining\"}", id)), 201);
    c->path = ts_str("/v1/stamps/%s", id);
}
static void p_dpss(struct call *c) { c->path = "/v1/dps-instances"; }
static const char *dps_body(const char *id)
{
    return ts_str("{\"id\":\"%s\",\"stamp\":\"eu-west-1\",\"idScope\":\"0ne%s\",\"endpoint\":\"127.0.0.1:9\"}", id,
                  strchr(id, '-') + 1);
}
static void p_dps_create(struct call *c)
{
    const char *id = fresh("mxp");
    c->path = "/v1/dps-instances";
    c->body = dps_body(id);
}
static void p_dps(struct call *c) { c->path = "/v1/dps-instances/eu-west-1-dps"; }
static void p_dps_patch(struct call *c) { c->path = "/v1/dps-instances/eu-west-1-dps"; c->body = "{\"registrationsPerMinute\":100000}"; }
static void p_dps_delete(struct call *c)
{
    const char *id = fresh("mxp");
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/dps-instances", dps_body(id)), 201);
    c->path = ts_str("/v1/dps-instances/%s", id);
}
static void p_hubs(struct call *c) { c->path = "/v1/hubs"; }
static const char *hub_body(const char *id)
{
    return ts_str("{\"id\":\"%s\",\"stamp\":\"eu-west-1\",\"hostName\":\"%s.example.net\"}", id, id);
}
static void p_hub_create(struct call *c) { const char *id = fresh("mxh"); c->path = "/v1/hubs"; c->body = hub_body(id); }
static void p_hub(struct call *c) { c->path = "/v1/hubs/eu-west-1-hub"; }
static void p_hub_patch(struct call *c) { c->path = "/v1/hubs/eu-west-1-hub"; c->body = "{\"allocationWeight\":2}"; }
static void p_hub_delete(struct call *c)
{
    const char *id = fresh("mxh");
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/hubs", hub_body(id)), 201);
    c->path = ts_str("/v1/hubs/%s", id);
}

static const struct fixture fixtures[] = {
    {"POST", "/v1/tenants/{tenant}/registrations/{device}/locate", 200, NULL, p_locate},
    {"POST", "/v1/tenants/{tenant}/registrations/{device}/reprovision", 200, NULL, p_dev_reprov},
    /* the stamps here serve no DPS: the proxy gets past authorisation and
     * finds the DPS unreachable (the 200 is test_router_proxy's) */
    {"POST", "/v1/tenants/{tenant}/registrations/{device}/provision", 503, NULL, p_provision},
    {"GET", "/v1/tenants", 200, "\"" OWN "\"", p_tenants},
    {"POST", "/v1/tenants", 201, NULL, p_tenant_create},
    {"GET", "/v1/tenants/{tenant}", 200, NULL, p_tenant},
    {"PATCH", "/v1/tenants/{tenant}", 200, NULL, p_tenant_patch},
    {"DELETE", "/v1/tenants/{tenant}", 204, NULL, p_tenant_delete},
    {"POST", "/v1/tenants/{tenant}/suspend", 200, NULL, p_suspend},
    {"POST", "/v1/tenants/{tenant}/resume", 200, NULL, p_resume},
    {"POST", "/v1/tenants/{tenant}/enrollment-key/rotate", 200, NULL, p_rotate},
    {"POST", "/v1/tenants/{tenant}/installer-tokens", 201, NULL, p_installer},
    {"GET", "/v1/tenants/{tenant}/installer-tokens", 200, NULL, p_installers},
    {"GET", "/v1/tenants/{tenant}/installer-tokens/{id}", 200, NULL, p_installer_one},
    {"DELETE", "/v1/tenants/{tenant}/installer-tokens/{id}", 204, NULL, p_installer_one},
    {"POST", "/v1/tenants/{tenant}/certificates", 201, NULL, p_cert_create},
    {"GET", "/v1/tenants/{tenant}/certificates", 200, NULL, p_certs},
    {"GET", "/v1/tenants/{tenant}/certificates/{id}", 200, NULL, p_cert},
    {"PATCH", "/v1/tenants/{tenant}/certificates/{id}", 200, NULL, p_cert_patch},
    {"DELETE", "/v1/tenants/{tenant}/certificates/{id}", 204, NULL, p_cert},
    {"POST", "/v1/tenants/{tenant}/certificates/{id}/verify", 200, NULL, p_cert_verify},
    {"POST", "/v1/tenants/{tenant}/certificates/{id}/enable", 200, NULL, p_cert_enable},
    {"POST", "/v1/tenants/{tenant}/certificates/{id}/disable", 200, NULL, p_cert_disable},
    {"GET", "/v1/tenants/{tenant}/devices", 200, NULL, p_devices},
    {"GET", "/v1/tenants/{tenant}/devices/{device}", 200, NULL, p_device},
    {"POST", "/v1/tenants/{tenant}/devices/{device}/deprovision", 200, NULL, p_deprov},
    {"POST", "/v1/tenants/{tenant}/devices/{device}/retire", 200, NULL, p_retire},
    {"POST", "/v1/tenants/{tenant}/devices/{device}/reprovision", 200, NULL, p_admin_reprov},
    {"GET", "/v1/api-keys", 200, "\"" OWN "\"", p_keys},
    {"POST", "/v1/api-keys", 201, NULL, p_key_create},
    {"GET", "/v1/api-keys/{id}", 200, NULL, p_key},
    {"DELETE", "/v1/api-keys/{id}", 204, NULL, p_key},
    {"POST", "/v1/api-keys/{id}/rotate", 200, NULL, p_key_rotate},
    {"GET", "/v1/inventory", 200, NULL, p_inventory},
    {"GET", "/v1/audit", 200, NULL, p_audit},
    {"GET", "/v1/jobs/{id}", 200, NULL, p_job},
    {"GET", "/v1/dps-instances/{id}/enrollment-sync", 200, NULL, p_sync},
    {"GET", "/v1/dps-instances/{id}/registration-drift", 200, NULL, p_drift},
    {"GET", "/v1/dps-instances/{id}/stamp-ops", 200, NULL, p_stamp_ops},
    {"GET", "/v1/admin/kek", 200, NULL, p_kek},
    {"POST", "/v1/admin/kek/rotate", 200, NULL, p_kek_rotate},
    {"GET", "/v1/geographies", 200, "\"eu\"", p_geos},
    {"POST", "/v1/geographies", 201, NULL, p_geo_create},
    {"GET", "/v1/geographies/{id}", 200, NULL, p_geo},
    {"PATCH", "/v1/geographies/{id}", 200, NULL, p_geo_patch},
    {"DELETE", "/v1/geographies/{id}", 204, NULL, p_geo_delete},
    {"GET", "/v1/regions", 200, "eu-west", p_regions},
    {"POST", "/v1/regions", 201, NULL, p_region_create},
    {"GET", "/v1/regions/{id}", 200, NULL, p_region},
    {"PATCH", "/v1/regions/{id}", 200, NULL, p_region_patch},
    {"DELETE", "/v1/regions/{id}", 204, NULL, p_region_delete},
    {"GET", "/v1/stamps", 200, "eu-west-1", p_stamps},
    {"POST", "/v1/stamps", 201, NULL, p_stamp_create},
    {"GET", "/v1/stamps/{id}", 200, NULL, p_stamp},
    {"PATCH", "/v1/stamps/{id}", 200, NULL, p_stamp_patch},
    {"DELETE", "/v1/stamps/{id}", 204, NULL, p_stamp_delete},
    {"GET", "/v1/dps-instances", 200, "eu-west-1-dps", p_dpss},
    {"POST", "/v1/dps-instances", 201, NULL, p_dps_create},
    {"GET", "/v1/dps-instances/{id}", 200, NULL, p_dps},
    {"PATCH", "/v1/dps-instances/{id}", 200, NULL, p_dps_patch},
    {"DELETE", "/v1/dps-instances/{id}", 204, NULL, p_dps_delete},
    {"GET", "/v1/hubs", 200, "eu-west-1-hub", p_hubs},
    {"POST", "/v1/hubs", 201, NULL, p_hub_create},
    {"GET", "/v1/hubs/{id}", 200, NULL, p_hub},
    {"PATCH", "/v1/hubs/{id}", 200, NULL, p_hub_patch},
    {"DELETE", "/v1/hubs/{id}", 204, NULL, p_hub_delete},
};

static const struct fixture *fixture_for(const char *method, const char *pattern)
{
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        if (strcmp(fixtures[i].method, method) == 0 && strcmp(fixtures[i].pattern, pattern) == 0)
            return &fixtures[i];
    return NULL;
}

/* ---- setup ---- */

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", "us", "ap", "sa", NULL },
                            .extra_json = "\"dps\": {\"enrollmentSyncMs\": 300}" };
    char exp[40];
    time_t t = time(NULL) + 2;
    struct tm tm;

    rt = ts_rt_start(&o);
    cp = rt->cp[0];
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    ts_rt_tenant(cp, "{\"id\":\"" OWN "\",\"name\":\"A\",\"residency\":{\"geographies\":[\"eu\"]}}");
    ts_rt_tenant(cp, "{\"id\":\"" OTHER "\",\"name\":\"B\",\"residency\":{\"geographies\":[\"us\"]}}");
    /* service credentials, so that the reconciler keeps a sync state for eu-west-1-dps */
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", "/v1/dps-instances/eu-west-1-dps",
                              "{\"serviceKeyName\":\"provisioningserviceowner\",\"serviceKey\":\"c2VjcmV0LXNlY3JldC1zZWNyZXQ=\"}"), 200);
    {
        const char *id;
        revoked_tenant_key = ts_api_key(cp, NULL, OWN, scopes_json(TENANT_SCOPES), &id);
        TS_EXPECT_STATUS(ts_admin(cp, "DELETE", ts_str("/v1/api-keys/%s", id), NULL), 204);
        revoked_platform_key = ts_api_key(cp, NULL, NULL, "[\"platform:admin\"]", &id);
        TS_EXPECT_STATUS(ts_admin(cp, "DELETE", ts_str("/v1/api-keys/%s", id), NULL), 204);
    }
    t = time(NULL) + 3;
    gmtime_r(&t, &tm);
    strftime(exp, sizeof exp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    {
        struct ts_resp *r = ts_call(cp, cp->token, "POST", "/v1/api-keys",
                                    ts_str("{\"name\":\"e\",\"tenant\":\"" OWN "\",\"scopes\":%s,\"expiresAt\":\"%s\"}",
                                           scopes_json(TENANT_SCOPES), exp));
        TS_EXPECT_STATUS(r, 201);
        expired_tenant_key = ts_str("%s", ts_jstr(r->json, "key"));
        r = ts_call(cp, cp->token, "POST", "/v1/api-keys",
                    ts_str("{\"name\":\"e\",\"tenant\":null,\"scopes\":[\"platform:admin\"],\"expiresAt\":\"%s\"}", exp));
        TS_EXPECT_STATUS(r, 201);
        expired_platform_key = ts_str("%s", ts_jstr(r->json, "key"));
    }
    ts_sleep_ms(4000);   /* the expiring keys are past their time */
    /* wait for the reconciler's first word on eu-west-1-dps */
    for (int i = 0; i < 100 && ts_admin(cp, "GET", "/v1/dps-instances/eu-west-1-dps/enrollment-sync", NULL)->status != 200; i++)
        ts_sleep_ms(100);
    return 0;
}

/* ---- the matrix ---- */

static int checked;

struct route_row {
    const char *method, *pattern, *access;
    unsigned need;          /* the route's scopes, all required */
    const char *scope;      /* the same as text, for messages */
};

static void expect(const char *who, const struct route_row *rr, struct ts_resp *r, int status, const char *code)
{
    checked++;
    if (r->status != status || (code && (!ts_err_code(r) || strcmp(ts_err_code(r), code) != 0)))
        ts_fail("%s %s with %s: expected %d %s, got %s", rr->method, rr->pattern, who, status, code ? code : "",
                ts_resp_str(r));
}

static void check_route(const struct route_row *rr, const struct fixture *fx)
{
    struct call c = { 0 };
    unsigned need = rr->need;
    bool platform = strcmp(rr->access, "platform") == 0;
    bool device = strcmp(rr->access, "device") == 0;
    const char *with, *without, *other;
    struct ts_resp *r;

    fx->prep(&c);
    if (!c.tenant)
        c.tenant = OWN;
    with = key_for(platform ? NULL : c.tenant, need);
    other = key_for(OTHER, TENANT_SCOPES);

    expect("no key", rr, ts_call(cp, NULL, rr->method, c.path, c.body), 401, "unauthorized");
    expect("a revoked key", rr, ts_call(cp, platform ? revoked_platform_key : revoked_tenant_key, rr->method, c.path, c.body),
           401, "unauthorized");
    expect("an expired key", rr, ts_call(cp, platform ? expired_platform_key : expired_tenant_key, rr->method, c.path, c.body),
           401, "unauthorized");
    /* each scope of the route missing in turn, every other scope held */
    for (int b = 0; b < NSCOPES; b++) {
        if (!(need & (1u << b)))
            continue;
        without = platform ? key_for(NULL, ALL_SCOPES & ~(1u << b) & ~1u) : key_for(c.tenant, TENANT_SCOPES & ~(1u << b));
        expect(ts_str("a key without %s", scope_words[b]), rr, ts_call(cp, without, rr->method, c.path, c.body), 403,
               "insufficient_scope");
    }
    r = ts_call(cp, other, rr->method, c.path, c.body);
    if (fx->leak) {
        expect("another tenant's key (a list)", rr, r, 200, NULL);
        if (strstr(r->body, fx->leak))
            ts_fail("%s %s: another tenant's key sees %s: %s", rr->method, rr->pattern, fx->leak, r->body);
    } else if (platform && strstr(rr->pattern, "{tenant}") == NULL) {
        expect("a tenant key on a platform route", rr, r, 403, "insufficient_scope");
    } else {
        expect("another tenant's key", rr, r, 404, "not_found");
    }
    if (platform) {
        expect("its own tenant's key (every tenant scope) on a platform route", rr,
               ts_call(cp, key_for(c.tenant, TENANT_SCOPES), rr->method, c.path, c.body), 403, "insufficient_scope");
    }
    r = ts_call(cp, with, rr->method, c.path, c.body);
    if (r->status != fx->ok)
        ts_fail("%s %s (%s) with %s key holding %s: expected %d, got %s", rr->method, rr->pattern, c.path,
                platform ? "a platform" : "its own tenant's", rr->scope, fx->ok, ts_resp_str(r));
    checked++;
    (void)device;
}

static void test_matrix(void **state)
{
    char *out = NULL;
    char *const argv[] = { (char *)ts_bin("controlplane"), "--print-routes", NULL };
    json_t *routes, *rt_json;
    size_t i;
    int missing = 0, nroutes = 0;

    if (ts_run(argv, 10000, &out) != 0 || !out)
        ts_fail("controlplane --print-routes failed");
    if (!(routes = json_loads(out, 0, NULL)) || !json_is_array(routes) || json_array_size(routes) < 10)
        ts_fail("--print-routes is not a JSON array of routes: %.200s", out);
    json_array_foreach(routes, i, rt_json) {
        const char *m = ts_jstr(rt_json, "method"), *p = ts_jstr(rt_json, "pattern"), *a = ts_jstr(rt_json, "access");
        if (strcmp(a, "public") == 0)
            continue;
        if (!fixture_for(m, p)) {
            ts_log("route %s %s (%s) has no row in the isolation matrix", m, p, a);
            missing++;
        }
    }
    if (missing)
        ts_fail("%d route(s) of the route table are missing from the matrix: add a fixture", missing);
    json_array_foreach(routes, i, rt_json) {
        struct route_row rr = { ts_jstr(rt_json, "method"), ts_jstr(rt_json, "pattern"), ts_jstr(rt_json, "access"), 0,
                                "" };
        json_t *sc;
        size_t k;
        json_array_foreach(json_object_get(rt_json, "scopes"), k, sc) {
            rr.need |= scope_bit(json_string_value(sc));
            rr.scope = ts_str("%s%s%s", rr.scope, k ? "+" : "", json_string_value(sc));
        }
        if (strcmp(rr.access, "public") == 0) {
            TS_EXPECT_STATUS(ts_get(cp, rr.pattern), 200);
            continue;
        }
        check_route(&rr, fixture_for(rr.method, rr.pattern));
        nroutes++;
    }
    ts_log("isolation matrix: %d routes, %d answers checked", nroutes, checked);
    json_decref(routes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matrix),
    };
    ts_init("test_isolation_matrix");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
