/*
 * test_api_keys - scoped API keys (docs/tenancy.md, docs/api.md "API keys"),
 * on two control planes sharing the databases, with a real stamp agent:
 *
 *  - creation: the key is cpk_<16 hex>_<64 hex>, shown once (no-store),
 *    never in a GET or list, stored only as its SHA-256 (checked in SQL);
 *  - a tenant key sees only its tenant: lists filtered, another tenant's
 *    tenant, devices, keys and inventory are 404, a missing scope on its own
 *    tenant is 403 insufficient_scope, platform routes are 403, layout reads
 *    stop at its residency;
 *  - minting: a tenant key with keys:write makes keys for its tenant with at
 *    most its own scopes; broader scopes, platform scopes, another tenant,
 *    platform keys are refused; bad input (unknown scope, expiry in the
 *    past, bad time, unknown field, missing fields) gets the error contract;
 *  - revocation on one instance is refused by the other within 1 s;
 *  - rotation: overlap keeps the old secret for its seconds, 0 ends it at
 *    once; a key with fewer scopes cannot rotate (and so read) a stronger one;
 *  - expiry: an expiring key stops working at expiresAt;
 *  - a provision:on-behalf key places its tenant's devices (locate), not
 *    another tenant's (404), and a key without the scope gets 403.
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

static struct ts_rt *rt;
static struct ts_cp *cp, *cp2;

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
        { .id = "us-east-1", .region = "us-east", .dps = { { "us-east-1-dps" } }, .hubs = { { "us-east-1-hub1" } } },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 2, .geos = { "eu", "us", NULL } };
    rt = ts_rt_start(&o);
    cp = rt->cp[0];
    cp2 = rt->cp[1];
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    ts_rt_tenant_acme(cp);
    ts_rt_tenant(cp, "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"us\"]}}");
    return 0;
}

static int nitems(const struct ts_resp *r)
{
    return (int)json_array_size(json_object_get(r->json, "items"));
}

static void test_create_shown_once(void **state)
{
    const char *id, *key = ts_api_key(cp, NULL, "acme", "[\"devices:read\",\"tenants:read\"]", &id);
    const char *db = ts_env("STAMPCP_TEST_PG");
    struct ts_resp *r;
    (void)db;
    if (strlen(key) != 4 + 16 + 1 + 64 || strncmp(key, "cpk_", 4) != 0 || strncmp(key + 4, id, 16) != 0 ||
        key[20] != '_')
        ts_fail("key shape: %s (id %s)", key, id);
    r = ts_call(cp, cp->token, "POST", "/v1/api-keys",
                "{\"name\":\"n\",\"tenant\":\"acme\",\"scopes\":[\"devices:read\"]}");
    TS_EXPECT_STATUS(r, 201);
    TS_EXPECT_STREQ(ts_header(r, "Cache-Control"), "no-store");
    if (!ts_header(r, "Location") || !strstr(ts_header(r, "Location"), ts_jstr(r->json, "id")))
        ts_fail("Location: %s", ts_resp_str(r));
    r = ts_call(cp, cp->token, "GET", ts_str("/v1/api-keys/%s", id), NULL);
    TS_EXPECT_STATUS(r, 200);
    if (json_object_get(r->json, "key") || strstr(r->body, key + 21))
        ts_fail("GET shows the secret: %s", r->body);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "active");
    TS_EXPECT_STREQ(ts_jstr(r->json, "tenant"), "acme");
    TS_EXPECT_STREQ(json_string_value(json_array_get(json_object_get(r->json, "scopes"), 0)), "tenants:read");
    r = ts_call(cp, cp->token, "GET", "/v1/api-keys?tenant=acme", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (nitems(r) < 2 || strstr(r->body, key + 21))
        ts_fail("list: %s", r->body);
    /* the database holds the SHA-256 of the secret, never the secret */
    {
        const char *g = rt->cp[0]->global_db;
        if (ts_pg_count(g, ts_str("SELECT count(*) FROM api_keys WHERE id = '%s' AND "
                                  "secret_sha256 = sha256('%s'::bytea)", id, key + 21)) != 1)
            ts_fail("the stored hash is not SHA-256 of the secret");
        if (ts_pg_count(g, ts_str("SELECT count(*) FROM api_keys k WHERE k::text LIKE '%%%s%%'", key + 21)) != 0)
            ts_fail("the secret is stored in clear");
    }
    /* the key works at once, on both instances */
    TS_EXPECT_STATUS(ts_call(cp, key, "GET", "/v1/tenants/acme", NULL), 200);
    TS_EXPECT_STATUS(ts_call(cp2, key, "GET", "/v1/tenants/acme", NULL), 200);
}

static void test_tenant_key_sees_own_tenant_only(void **state)
{
    const char *k = ts_api_key(cp, NULL, "acme", "[\"tenants:read\",\"devices:read\",\"keys:write\"]", NULL);
    const char *bk = ts_api_key(cp, NULL, "beta", "[\"tenants:read\"]", NULL);
    struct ts_resp *r;

    r = ts_call(cp, k, "GET", "/v1/tenants", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (nitems(r) != 1 || strcmp(ts_jstr(json_array_get(json_object_get(r->json, "items"), 0), "id"), "acme") != 0)
        ts_fail("tenant list of acme's key: %s", r->body);
    TS_EXPECT_STATUS(ts_call(cp, k, "GET", "/v1/tenants/acme", NULL), 200);
    /* another tenant's anything: 404, the same as a tenant that does not exist */
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/tenants/beta", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/tenants/nosuch", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "PATCH", "/v1/tenants/beta", "{\"name\":\"x\"}"), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/tenants/beta/devices", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/tenants/beta/devices/d1", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/tenants/beta/devices/d1/retire", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/inventory?tenant=beta", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/api-keys?tenant=beta", NULL), 404, "not_found");
    /* beta's key is invisible to acme's key (and the other way round) */
    r = ts_call(cp, cp->token, "GET", "/v1/api-keys?tenant=beta", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_ERROR(ts_call(cp, k, "GET",
                            ts_str("/v1/api-keys/%s", ts_jstr(json_array_get(json_object_get(r->json, "items"), 0), "id")),
                            NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "DELETE",
                            ts_str("/v1/api-keys/%s", ts_jstr(json_array_get(json_object_get(r->json, "items"), 0), "id")),
                            NULL), 404, "not_found");
    r = ts_call(cp, k, "GET", "/v1/api-keys", NULL);
    TS_EXPECT_STATUS(r, 200);
    for (int i = 0; i < nitems(r); i++)
        TS_EXPECT_STREQ(ts_jstr(json_array_get(json_object_get(r->json, "items"), (size_t)i), "tenant"), "acme");
    /* its own tenant without the scope: 403 */
    TS_EXPECT_ERROR(ts_call(cp, k, "PATCH", "/v1/tenants/acme", "{\"name\":\"x\"}"), 403, "insufficient_scope");
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/tenants/acme/devices/d1/retire", NULL), 403, "insufficient_scope");
    TS_EXPECT_ERROR(ts_call(cp, bk, "GET", "/v1/tenants/beta/devices", NULL), 403, "insufficient_scope");
    /* platform routes */
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/tenants",
                            "{\"name\":\"x\",\"residency\":{\"geographies\":[\"eu\"]}}"), 403, "insufficient_scope");
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/geographies", "{\"id\":\"zz\"}"), 403, "insufficient_scope");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/admin/kek", NULL), 403, "insufficient_scope");
    TS_EXPECT_ERROR(ts_call(cp, k, "DELETE", "/v1/tenants/acme", NULL), 403, "insufficient_scope");
    /* layout: only its residency (eu) */
    r = ts_call(cp, k, "GET", "/v1/geographies", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (nitems(r) != 1 || strcmp(ts_jstr(json_array_get(json_object_get(r->json, "items"), 0), "id"), "eu") != 0)
        ts_fail("geographies seen by an eu tenant: %s", r->body);
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/geographies/us", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/stamps/us-east-1", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/dps-instances/us-east-1-dps", NULL), 404, "not_found");
    r = ts_call(cp, k, "GET", "/v1/stamps", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (nitems(r) != 1 || strstr(r->body, "us-east"))
        ts_fail("stamps seen by an eu tenant: %s", r->body);
    if (!json_is_null(json_object_get(json_array_get(json_object_get(r->json, "items"), 0), "load")))
        ts_fail("a tenant key sees a stamp's load: %s", r->body);
    r = ts_call(cp, k, "GET", "/v1/hubs", NULL);
    if (r->status != 200 || nitems(r) != 1 || strstr(r->body, "us-east"))
        ts_fail("hubs seen by an eu tenant: %s", ts_resp_str(r));
    r = ts_call(cp, k, "GET", "/v1/inventory", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (strstr(r->body, "beta") || json_array_size(json_object_get(r->json, "hubs")) != 0)
        ts_fail("inventory of a tenant key: %s", r->body);
}

static void test_minting_rules(void **state)
{
    const char *k = ts_api_key(cp, NULL, "acme", "[\"keys:write\",\"devices:read\"]", NULL);
    struct ts_resp *r;

    r = ts_call(cp, k, "POST", "/v1/api-keys", "{\"name\":\"sub\",\"scopes\":[\"devices:read\"]}");
    TS_EXPECT_STATUS(r, 201);
    TS_EXPECT_STREQ(ts_jstr(r->json, "tenant"), "acme");
    TS_EXPECT_STREQ(ts_jstr(r->json, "createdBy"), ts_str("key %.16s", k + 4));
    r = ts_call(cp, k, "POST", "/v1/api-keys", "{\"name\":\"sub\",\"tenant\":\"acme\",\"scopes\":[\"devices:write\"]}");
    TS_EXPECT_ERROR(r, 403, "insufficient_scope");
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/api-keys", "{\"name\":\"s\",\"scopes\":[\"platform:admin\"]}"), 400,
                    "invalid_value");
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"beta\",\"scopes\":[\"devices:read\"]}"),
                    404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":null,\"scopes\":[\"devices:read\"]}"),
                    403, "insufficient_scope");
    /* bad input */
    r = ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"devices:everything\"]}");
    TS_EXPECT_ERROR(r, 400, "invalid_value");
    TS_EXPECT_STREQ(ts_err_target(r), "scopes");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys",
                            "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"devices:read\",\"devices:read\"]}"), 400, "invalid_value");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[]}"),
                    400, "invalid_value");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[1]}"),
                    400, "invalid_type");
    r = ts_call(cp, cp->token, "POST", "/v1/api-keys",
                "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"devices:read\"],\"expiresAt\":\"2001-01-01T00:00:00Z\"}");
    TS_EXPECT_ERROR(r, 400, "invalid_value");
    TS_EXPECT_STREQ(ts_err_target(r), "expiresAt");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys",
                            "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"devices:read\"],\"expiresAt\":\"tomorrow\"}"),
                    400, "invalid_value");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys",
                            "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"devices:read\"],\"expiresAt\":\"2026-13-45T99:00:00Z\"}"),
                    400, "invalid_value");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys",
                            "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"devices:read\"],\"expiresAt\":\"2999-01-01T00:00:00Z\"}"),
                    400, "out_of_range");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"devices:read\"],\"x\":1}"),
                    400, "unknown_field");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"tenant\":\"acme\",\"scopes\":[\"devices:read\"]}"),
                    400, "missing_field");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"name\":\"s\",\"scopes\":[\"devices:read\"]}"),
                    400, "missing_field");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"nosuch\",\"scopes\":[\"devices:read\"]}"),
                    422, "invalid_reference");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"ops:failover\"]}"),
                    400, "invalid_value");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", "/v1/api-keys", "[]"), 400, "invalid_json");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "GET", "/v1/api-keys?limit=0", NULL), 400, "invalid_query");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "GET", "/v1/api-keys?bogus=1", NULL), 400, "invalid_query");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "GET", "/v1/api-keys/not-a-key-id", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "PUT", "/v1/api-keys", NULL), 405, "method_not_allowed");
    /* a platform key with keys:write but not platform:admin mints only within its scopes */
    {
        const char *pk = ts_api_key(cp, NULL, NULL, "[\"keys:write\",\"tenants:read\"]", NULL);
        TS_EXPECT_STATUS(ts_call(cp, pk, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"beta\",\"scopes\":[\"tenants:read\"]}"), 201);
        TS_EXPECT_ERROR(ts_call(cp, pk, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":null,\"scopes\":[\"platform:admin\"]}"),
                        403, "insufficient_scope");
    }
}

/* A key's changes are audited under its id; a tenant key reads its own tenant's entries only. */
static void test_audited_by_key(void **state)
{
    const char *id, *k = ts_api_key(cp, NULL, "acme", "[\"keys:write\",\"tenants:read\",\"tenants:write\"]", &id);
    const char *bk = ts_api_key(cp, NULL, "beta", "[\"tenants:write\"]", NULL);
    struct ts_resp *r;
    json_t *items, *e;
    size_t i;
    bool found = false;

    TS_EXPECT_STATUS(ts_call(cp, k, "PATCH", "/v1/tenants/acme", "{\"name\":\"Acme by key\"}"), 200);
    TS_EXPECT_STATUS(ts_call(cp, bk, "PATCH", "/v1/tenants/beta", "{\"name\":\"Beta by key\"}"), 200);
    r = ts_call(cp, k, "POST", "/v1/api-keys", "{\"name\":\"child\",\"scopes\":[\"tenants:read\"]}");
    TS_EXPECT_STATUS(r, 201);
    r = ts_call(cp, k, "GET", "/v1/audit?limit=500", NULL);
    TS_EXPECT_STATUS(r, 200);
    items = json_object_get(r->json, "items");
    if (json_array_size(items) == 0)
        ts_fail("no audit entries for acme's key: %s", r->body);
    json_array_foreach(items, i, e) {
        TS_EXPECT_STREQ(ts_jstr(e, "tenant"), "acme");
        if (ts_jstr(json_object_get(e, "who"), "keyId") && strcmp(ts_jstr(json_object_get(e, "who"), "keyId"), id) == 0 &&
            strcmp(ts_jstr(e, "method"), "PATCH") == 0)
            found = true;
    }
    if (!found)
        ts_fail("the key's PATCH is not in the audit log under its id %s: %s", id, r->body);
    if (strstr(r->body, "Beta by key") || strstr(r->body, "cpk_"))
        ts_fail("acme's key reads another tenant's entries or a key: %s", r->body);
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/audit?tenant=beta", NULL), 404, "not_found");
}

/* Review findings, kept as regressions. */
static void test_no_escalation_through_issued_credentials(void **state)
{
    const char *kw = ts_api_key(cp, NULL, "acme", "[\"keys:write\",\"tenants:write\",\"tenants:read\"]", NULL);
    const char *plain_id, *old, *kid;
    char exp[40];
    time_t t = time(NULL) + 30;
    struct tm tm;
    struct ts_resp *r;

    /* credentials that provision devices need provision:on-behalf too */
    TS_EXPECT_ERROR(ts_call(cp, kw, "POST", "/v1/tenants/acme/installer-tokens", "{\"name\":\"i\"}"), 403,
                    "insufficient_scope");
    TS_EXPECT_ERROR(ts_call(cp, kw, "POST", "/v1/tenants/acme/enrollment-key/rotate", NULL), 403, "insufficient_scope");

    /* an expiring key cannot rotate (and so own) a key that outlives it */
    gmtime_r(&t, &tm);
    strftime(exp, sizeof exp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    ts_api_key(cp, NULL, "acme", "[\"tenants:read\"]", &plain_id);
    r = ts_call(cp, cp->token, "POST", "/v1/api-keys",
                ts_str("{\"name\":\"exp\",\"tenant\":\"acme\",\"scopes\":[\"keys:write\",\"tenants:read\"],\"expiresAt\":\"%s\"}", exp));
    TS_EXPECT_STATUS(r, 201);
    TS_EXPECT_ERROR(ts_call(cp, ts_jstr(r->json, "key"), "POST", ts_str("/v1/api-keys/%s/rotate", plain_id), NULL), 403,
                    "insufficient_scope");

    /* the old secret of a rotation overlap: no rotation, and what it makes expires with the overlap */
    old = ts_api_key(cp, NULL, "acme", "[\"keys:write\",\"tenants:read\"]", &kid);
    r = ts_call(cp, cp->token, "POST", ts_str("/v1/api-keys/%s/rotate", kid), "{\"overlapSeconds\":60}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_ERROR(ts_call(cp, old, "POST", ts_str("/v1/api-keys/%s/rotate", kid), NULL), 403, "insufficient_scope");
    {
        struct ts_resp *c = ts_call(cp, old, "POST", "/v1/api-keys", "{\"name\":\"child\",\"scopes\":[\"tenants:read\"]}");
        int64_t until = ts_parse_rfc3339(ts_jstr(r->json, "previousValidUntil"));
        TS_EXPECT_STATUS(c, 201);
        if (!ts_jstr(c->json, "expiresAt") || ts_parse_rfc3339(ts_jstr(c->json, "expiresAt")) > until + 1000)
            ts_fail("a key made with an overlap secret outlives the overlap (%s): %s",
                    ts_jstr(r->json, "previousValidUntil"), ts_resp_str(c));
    }
    /* a weaker key cannot revoke a stronger one */
    {
        const char *strong_id;
        ts_api_key(cp, NULL, "acme", "[\"keys:write\",\"devices:write\"]", &strong_id);
        TS_EXPECT_ERROR(ts_call(cp, kw, "DELETE", ts_str("/v1/api-keys/%s", strong_id), NULL), 403, "insufficient_scope");
    }
    /* layout pages: neither items nor cursors name anything outside the residency */
    {
        const char *bk = ts_api_key(cp, NULL, "beta", "[\"tenants:read\"]", NULL);
        r = ts_call(cp, bk, "GET", "/v1/geographies?limit=1", NULL);
        TS_EXPECT_STATUS(r, 200);
        if (json_array_size(json_object_get(r->json, "items")) != 1 || !json_is_null(json_object_get(r->json, "next")))
            ts_fail("beta (us) reads geographies page: %s", r->body);
        TS_EXPECT_STREQ(ts_jstr(json_array_get(json_object_get(r->json, "items"), 0), "id"), "us");
        r = ts_call(cp, bk, "GET", "/v1/dps-instances", NULL);
        if (r->status != 200 || strstr(r->body, "serviceKeyName") || strstr(r->body, "eu-west"))
            ts_fail("beta reads DPS instances: %s", ts_resp_str(r));
    }
}

static bool refused_on_cp2(void *arg);

/* An offboarded tenant's keys stop with the DELETE, everywhere, within 1 s. */
static void test_offboarding_stops_keys(void **state)
{
    const char *k;
    struct ts_resp *r;
    ts_rt_tenant(cp, "{\"id\":\"gamma\",\"name\":\"Gamma\",\"residency\":{\"geographies\":[\"eu\"]}}");
    k = ts_api_key(cp, NULL, "gamma", "[\"tenants:read\"]", NULL);
    TS_EXPECT_STATUS(ts_call(cp2, k, "GET", "/v1/tenants/gamma", NULL), 200);
    r = ts_call(cp, cp->token, "DELETE", "/v1/tenants/gamma?cascade=true", NULL);
    TS_EXPECT_STATUS(r, 202);
    if (!ts_wait_until(refused_on_cp2, (void *)ts_str("%s", k), 1000))
        ts_fail("a key of an offboarding tenant still works after 1 s");
    /* its job is the platform's to read */
    TS_EXPECT_STATUS(ts_call(cp, cp->token, "GET", ts_str("/v1/jobs/%s", ts_jstr(r->json, "id")), NULL), 200);
}

static void test_bad_credentials(void **state)
{
    const char *k = ts_api_key(cp, NULL, "acme", "[\"tenants:read\"]", NULL);
    char wrong[200];
    snprintf(wrong, sizeof wrong, "%s", k);
    wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == '0' ? '1' : '0';
    TS_EXPECT_ERROR(ts_call(cp, wrong, "GET", "/v1/tenants/acme", NULL), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_call(cp, "cpk_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                            "GET", "/v1/tenants", NULL), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_call(cp, "cpk_short", "GET", "/v1/tenants", NULL), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_call(cp, NULL, "GET", "/v1/tenants", NULL), 401, "unauthorized");
    /* an unauthenticated caller learns nothing about routes */
    TS_EXPECT_ERROR(ts_call(cp, NULL, "GET", "/v1/no-such-route", NULL), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/no-such-route", NULL), 404, "route_not_found");
    /* a body is not read for a refused key (checked before the body) */
    TS_EXPECT_ERROR(ts_call(cp, wrong, "POST", "/v1/api-keys", "{\"name\":\"s\",\"tenant\":\"acme\",\"scopes\":[\"tenants:read\"]}"),
                    401, "unauthorized");
}

static bool refused_on_cp2(void *arg)
{
    struct ts_resp *r = ts_call(cp2, arg, "GET", "/v1/tenants", NULL);
    return r->status == 401;
}

static void test_revocation_everywhere_within_1s(void **state)
{
    const char *id, *k = ts_api_key(cp, NULL, "acme", "[\"tenants:read\",\"keys:write\"]", &id);
    int64_t t0;
    TS_EXPECT_STATUS(ts_call(cp2, k, "GET", "/v1/tenants/acme", NULL), 200);   /* cached on cp2 */
    TS_EXPECT_STATUS(ts_call(cp, k, "GET", "/v1/tenants/acme", NULL), 200);
    t0 = ts_now_ms();
    TS_EXPECT_STATUS(ts_call(cp, cp->token, "DELETE", ts_str("/v1/api-keys/%s", id), NULL), 204);
    if (!ts_wait_until(refused_on_cp2, (void *)k, 1000))
        ts_fail("the revoked key still works on the second control plane after 1 s");
    ts_log("revoked key refused on the other instance after %lld ms", (long long)(ts_now_ms() - t0));
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/tenants/acme", NULL), 401, "unauthorized");
    TS_EXPECT_STREQ(ts_jstr(ts_call(cp, cp->token, "GET", ts_str("/v1/api-keys/%s", id), NULL)->json, "status"), "revoked");
    TS_EXPECT_STATUS(ts_call(cp, cp->token, "DELETE", ts_str("/v1/api-keys/%s", id), NULL), 204);   /* idempotent */
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", ts_str("/v1/api-keys/%s/rotate", id), NULL), 409, "key_revoked");
}

static void test_rotation(void **state)
{
    const char *id, *k = ts_api_key(cp, NULL, "acme", "[\"tenants:read\",\"keys:write\"]", &id);
    const char *strong_id, *newk;
    struct ts_resp *r;

    TS_EXPECT_STATUS(ts_call(cp2, k, "GET", "/v1/tenants/acme", NULL), 200);
    r = ts_call(cp, cp->token, "POST", ts_str("/v1/api-keys/%s/rotate", id), "{\"overlapSeconds\":3}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_header(r, "Cache-Control"), "no-store");
    newk = ts_str("%s", ts_jstr(r->json, "key"));
    if (strncmp(newk, k, 21) != 0 || strcmp(newk, k) == 0)
        ts_fail("rotation keeps the id and changes the secret: %s vs %s", newk, k);
    if (!ts_jstr(r->json, "previousValidUntil"))
        ts_fail("previousValidUntil missing: %s", r->body);
    TS_EXPECT_STATUS(ts_call(cp2, newk, "GET", "/v1/tenants/acme", NULL), 200);
    TS_EXPECT_STATUS(ts_call(cp2, k, "GET", "/v1/tenants/acme", NULL), 200);   /* in the overlap */
    ts_sleep_ms(4200);
    TS_EXPECT_ERROR(ts_call(cp2, k, "GET", "/v1/tenants/acme", NULL), 401, "unauthorized");
    TS_EXPECT_STATUS(ts_call(cp2, newk, "GET", "/v1/tenants/acme", NULL), 200);
    /* overlap 0 (the default): the old secret is refused at once, everywhere */
    r = ts_call(cp, newk, "POST", ts_str("/v1/api-keys/%s/rotate", id), NULL);   /* a key rotates itself */
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_ERROR(ts_call(cp2, newk, "GET", "/v1/tenants/acme", NULL), 401, "unauthorized");
    TS_EXPECT_STATUS(ts_call(cp2, ts_jstr(r->json, "key"), "GET", "/v1/tenants/acme", NULL), 200);
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", ts_str("/v1/api-keys/%s/rotate", id), "{\"overlapSeconds\":-1}"),
                    400, "out_of_range");
    TS_EXPECT_ERROR(ts_call(cp, cp->token, "POST", ts_str("/v1/api-keys/%s/rotate", id), "{\"overlap\":1}"),
                    400, "unknown_field");
    /* a weaker key of the same tenant cannot rotate (and so obtain) a stronger one */
    ts_api_key(cp, NULL, "acme", "[\"tenants:read\",\"keys:write\",\"devices:write\"]", &strong_id);
    TS_EXPECT_ERROR(ts_call(cp, ts_jstr(r->json, "key"), "POST", ts_str("/v1/api-keys/%s/rotate", strong_id), NULL),
                    403, "insufficient_scope");
}

static void test_expiry(void **state)
{
    char exp[40];
    time_t t = time(NULL) + 3;
    struct tm tm;
    struct ts_resp *r;
    const char *k, *id;
    gmtime_r(&t, &tm);
    strftime(exp, sizeof exp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    r = ts_call(cp, cp->token, "POST", "/v1/api-keys",
                ts_str("{\"name\":\"short\",\"tenant\":\"acme\",\"scopes\":[\"tenants:read\",\"keys:write\"],\"expiresAt\":\"%s\"}", exp));
    TS_EXPECT_STATUS(r, 201);
    k = ts_str("%s", ts_jstr(r->json, "key"));
    id = ts_str("%s", ts_jstr(r->json, "id"));
    TS_EXPECT_STATUS(ts_call(cp2, k, "GET", "/v1/tenants/acme", NULL), 200);
    /* a key made by an expiring key expires no later than its maker */
    r = ts_call(cp, k, "POST", "/v1/api-keys", "{\"name\":\"child\",\"scopes\":[\"tenants:read\"]}");
    TS_EXPECT_STATUS(r, 201);
    if (ts_parse_rfc3339(ts_jstr(r->json, "expiresAt")) != (int64_t)t * 1000)
        ts_fail("child key expiry: %s, maker's %s", ts_resp_str(r), exp);
    TS_EXPECT_ERROR(ts_call(cp, k, "POST", "/v1/api-keys",
                            "{\"name\":\"child\",\"scopes\":[\"tenants:read\"],\"expiresAt\":\"2030-01-01T00:00:00Z\"}"),
                    400, "out_of_range");
    ts_sleep_ms(4500);
    TS_EXPECT_ERROR(ts_call(cp2, k, "GET", "/v1/tenants/acme", NULL), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_call(cp, k, "GET", "/v1/tenants/acme", NULL), 401, "unauthorized");
    TS_EXPECT_STREQ(ts_jstr(ts_call(cp, cp->token, "GET", ts_str("/v1/api-keys/%s", id), NULL)->json, "status"), "expired");
}

static void test_provision_on_behalf(void **state)
{
    const char *k = ts_api_key(cp, NULL, "acme", "[\"provision:on-behalf\"]", NULL);
    const char *nok = ts_api_key(cp, NULL, "acme", "[\"devices:read\"]", NULL);
    const char *pk = ts_api_key(cp, NULL, NULL, "[\"provision:on-behalf\"]", NULL);
    struct ts_resp *r;

    r = ts_rt_device(cp, "locate", "acme", "key-dev-1", ts_str("Bearer %s", k), NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), "eu-west-1");
    TS_EXPECT_ERROR(ts_rt_device(cp, "locate", "beta", "key-dev-1", ts_str("Bearer %s", k), NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_rt_device(cp, "locate", "acme", "key-dev-2", ts_str("Bearer %s", nok), NULL), 403,
                    "insufficient_scope");
    /* a platform key with the scope acts for any tenant */
    r = ts_rt_device(cp2, "locate", "beta", "key-dev-3", ts_str("Bearer %s", pk), NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), "us-east-1");
    TS_EXPECT_ERROR(ts_rt_device(cp, "locate", "acme", "key-dev-4", "Bearer cpk_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", NULL),
                    401, "unauthorized");
    /* and with devices:read, the device is visible to the key of its tenant */
    TS_EXPECT_STATUS(ts_call(cp, nok, "GET", "/v1/tenants/acme/devices/key-dev-1", NULL), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_shown_once),
        cmocka_unit_test(test_tenant_key_sees_own_tenant_only),
        cmocka_unit_test(test_minting_rules),
        cmocka_unit_test(test_audited_by_key),
        cmocka_unit_test(test_no_escalation_through_issued_credentials),
        cmocka_unit_test(test_offboarding_stops_keys),
        cmocka_unit_test(test_bad_credentials),
        cmocka_unit_test(test_revocation_everywhere_within_1s),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_provision_on_behalf),
    };
    ts_init("test_api_keys");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
