/*
 * test_installer_tokens - the installer-token life cycle (docs/api.md
 * "Installer tokens"), with two control planes on one set of databases:
 *
 *  - create with defaults: 201 with a public id, the token (cpi_<id>_<64 hex>)
 *    once, expiresAt = now + 24 h, no prefix, no maximum, placements 0,
 *    status active, Location and Cache-Control: no-store; the catalog holds
 *    only the token's SHA-256; it places a device through the other router;
 *  - list (paged) and get never show the secret (the bodies don't contain
 *    it); another tenant's token id and an unknown tenant are 404 on
 *    get/delete/list, and the token keeps working after those attempts;
 *  - revoke on one instance: 401 unauthorized at once on the other (whose
 *    cache held the tenant) and on this one; the token stays listed as
 *    revoked, a second revoke keeps revokedAt;
 *  - expiry: a token made to expire in a few seconds works, then is 401 on
 *    both instances and shows status expired; a token whose expires_at is
 *    moved into the past in the catalog can't place a device either;
 *  - registrationIdPrefix: ids outside it are 403 installer_scope (nothing
 *    written), ids inside are placed;
 *  - maxPlacements 3 and 8 different new devices at once through both
 *    routers: exactly 3 placed, 5 refused with 403 installer_quota_exceeded,
 *    placements = 3; a placed device is still answered; a placement that
 *    fails (no eligible stamp) gives its count back;
 *  - bad input: unknown fields, expiresAt in the past / beyond 30 days / not
 *    RFC 3339, a bad prefix, maxPlacements 0, wrong methods, bad queries:
 *    the error contract, nothing written;
 *  - GET /v1/tenants/{t}/devices/{r} names the token that placed the device
 *    in the decision record and in the history (a SAS-placed device: none).
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
static struct ts_tenant *acme, *beta;
static const char *eu_db, *global_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west",
          .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 2, .geos = { "eu", "us", NULL } };
    (void)state;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    eu_db = ts_rt_geo_db(rt, "eu");
    global_db = rt->cp[0]->global_db;
    acme = ts_rt_tenant_acme(rt->cp[0]);
    beta = ts_rt_tenant(rt->cp[0], "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"eu\"]}}");
    /* a tenant whose residency has no stamp: its placements fail */
    (void)ts_rt_tenant(rt->cp[0], "{\"id\":\"nostamp\",\"name\":\"No stamp\",\"residency\":{\"geographies\":[\"us\"]}}");
    return 0;
}

static const char *tokens_path(const char *tenant)
{
    return ts_str("/v1/tenants/%s/installer-tokens", tenant);
}

/* POST a token body for tenant through cp[0]; expects 201 and returns the answer. */
static json_t *create_token(const char *tenant, const char *body)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "POST", tokens_path(tenant), body);
    if (r->status != 201)
        ts_fail("POST %s %s: expected 201, got %s", tokens_path(tenant), body, ts_resp_str(r));
    return r->json;
}

static struct ts_resp *use(int cp, const char *tenant, const char *regid, const char *token)
{
    return ts_rt_device(rt->cp[cp], "locate", tenant, regid, ts_str("Bearer %s", token), NULL);
}

static json_t *get_token(const char *tenant, const char *id)
{
    struct ts_resp *r = ts_admin(rt->cp[1], "GET", ts_str("%s/%s", tokens_path(tenant), id), NULL);
    TS_EXPECT_STATUS(r, 200);
    if (json_object_get(r->json, "token"))
        ts_fail("GET token shows the secret: %s", ts_resp_str(r));
    return r->json;
}

static long tokens_in_catalog(void)
{
    return ts_pg_count(global_db, "SELECT count(*) FROM installer_tokens");
}

/* The wall clock in ms (ts_now_ms is monotonic). */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An RFC 3339 UTC time ms from now. */
static const char *time_from_now_ms(int64_t ms)
{
    time_t s = (time_t)((wall_ms() + ms) / 1000);
    struct tm tm;
    char buf[40];
    gmtime_r(&s, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return ts_str("%s", buf);
}

static void test_create_defaults(void **state)
{
    json_t *t;
    const char *id, *tok, *loc;
    struct ts_resp *r;
    int64_t exp;
    (void)state;

    r = ts_admin(rt->cp[0], "POST", tokens_path("acme"), "{\"name\":\"line 4\"}");
    TS_EXPECT_STATUS(r, 201);
    t = r->json;
    id = ts_jstr(t, "id");
    tok = ts_jstr(t, "token");
    if (!id || strlen(id) != 16 || strspn(id, "0123456789abcdef") != 16)
        ts_fail("id is not 16 hex: %s", ts_resp_str(r));
    if (!tok || strlen(tok) != 4 + 16 + 1 + 64 || strncmp(tok, ts_str("cpi_%s_", id), 21) != 0 ||
        strspn(tok + 21, "0123456789abcdef") != 64)
        ts_fail("token is not cpi_<id>_<64 hex>: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(t, "tenantId"), "acme");
    TS_EXPECT_STREQ(ts_jstr(t, "name"), "line 4");
    TS_EXPECT_STREQ(ts_jstr(t, "status"), "active");
    TS_EXPECT_STREQ(ts_jstr(t, "scope"), "provision:on-behalf");
    exp = ts_parse_rfc3339(ts_jstr(t, "expiresAt"));
    if (exp < wall_ms() + 24LL * 3600 * 1000 - 120000 || exp > wall_ms() + 24LL * 3600 * 1000 + 1000)
        ts_fail("expiresAt is not now + 24 h: %s", ts_resp_str(r));
    if (!json_is_null(json_object_get(t, "registrationIdPrefix")) || !json_is_null(json_object_get(t, "maxPlacements")) ||
        !json_is_null(json_object_get(t, "revokedAt")))
        ts_fail("a default token has a prefix, a maximum or a revocation: %s", ts_resp_str(r));
    assert_int_equal(ts_jint(t, "placements", -1), 0);
    if (ts_parse_rfc3339(ts_jstr(t, "createdAt")) < 0)
        ts_fail("createdAt is not RFC 3339: %s", ts_resp_str(r));
    loc = ts_header(r, "Location");
    TS_EXPECT_STREQ(loc, ts_str("/v1/tenants/acme/installer-tokens/%s", id));
    TS_EXPECT_STREQ(ts_header(r, "Cache-Control"), "no-store");

    /* only the SHA-256 is stored; the token itself is nowhere in the row */
    assert_int_equal(ts_pg_count(global_db, ts_str("SELECT count(*) FROM installer_tokens WHERE id = '%s' AND"
                                                   " token_sha256 = encode(sha256('%s'::bytea), 'hex')", id, tok)), 1);
    assert_int_equal(ts_pg_count(global_db, ts_str("SELECT count(*) FROM installer_tokens i WHERE"
                                                   " strpos(i::text, '%s') > 0", tok + 21)), 0);

    /* it places a new device, through the other router */
    r = use(1, "acme", "create-dev-1", tok);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), "eu-west-1");
    assert_int_equal(ts_jint(get_token("acme", id), "placements", -1), 1);
    /* an answer for a placed device is no placement */
    TS_EXPECT_STATUS(use(0, "acme", "create-dev-1", tok), 200);
    assert_int_equal(ts_jint(get_token("acme", id), "placements", -1), 1);
}

static void test_list_get_without_secret(void **state)
{
    const char *ids[3], *toks[3];
    struct ts_resp *r, *r2;
    json_t *items;
    size_t i;
    int seen = 0;
    (void)state;

    for (int k = 0; k < 3; k++) {
        json_t *t = create_token("beta", ts_str("{\"name\":\"beta %d\"}", k));
        ids[k] = ts_jstr(t, "id");
        toks[k] = ts_jstr(t, "token");
    }
    /* two pages of two, ordered by id, never a secret */
    r = ts_admin(rt->cp[1], "GET", ts_str("%s?limit=2", tokens_path("beta")), NULL);
    TS_EXPECT_STATUS(r, 200);
    items = json_object_get(r->json, "items");
    assert_int_equal(json_array_size(items), 2);
    if (!ts_jstr(r->json, "next"))
        ts_fail("first page of 3 with limit 2 has no next: %s", ts_resp_str(r));
    r2 = ts_admin(rt->cp[1], "GET", ts_str("%s?limit=2&cursor=%s", tokens_path("beta"), ts_jstr(r->json, "next")), NULL);
    TS_EXPECT_STATUS(r2, 200);
    assert_int_equal(json_array_size(json_object_get(r2->json, "items")), 1);
    if (!json_is_null(json_object_get(r2->json, "next")))
        ts_fail("last page has a next: %s", ts_resp_str(r2));
    if (strcmp(ts_jstr(json_array_get(items, 0), "id"), ts_jstr(json_array_get(items, 1), "id")) >= 0 ||
        strcmp(ts_jstr(json_array_get(items, 1), "id"),
               ts_jstr(json_array_get(json_object_get(r2->json, "items"), 0), "id")) >= 0)
        ts_fail("list not ordered by id: %s then %s", ts_resp_str(r), ts_resp_str(r2));
    json_array_extend(items, json_object_get(r2->json, "items"));
    json_t *it;
    json_array_foreach(items, i, it) {
        if (json_object_get(it, "token"))
            ts_fail("a list item shows the token: %s", ts_resp_str(r));
        TS_EXPECT_STREQ(ts_jstr(it, "tenantId"), "beta");
        for (int k = 0; k < 3; k++)
            if (strcmp(ts_jstr(it, "id"), ids[k]) == 0)
                seen |= 1 << k;
    }
    assert_int_equal(seen, 7);
    for (int k = 0; k < 3; k++)
        if (strstr(r->body, toks[k] + 21) || strstr(r2->body, toks[k] + 21))
            ts_fail("a list answer holds a secret");

    /* get: the same fields, no secret */
    {
        json_t *g = get_token("beta", ids[1]);
        TS_EXPECT_STREQ(ts_jstr(g, "id"), ids[1]);
        TS_EXPECT_STREQ(ts_jstr(g, "name"), "beta 1");
        TS_EXPECT_STREQ(ts_jstr(g, "status"), "active");
    }

    /* another tenant's token id, an unknown tenant, an unknown id: 404 */
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s/%s", tokens_path("acme"), ids[0]), NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "DELETE", ts_str("%s/%s", tokens_path("acme"), ids[0]), NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s/%s", tokens_path("nope"), ids[0]), NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", tokens_path("nope"), NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "DELETE", ts_str("%s/%s", tokens_path("nope"), ids[0]), NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s/0123456789abcdef", tokens_path("beta")), NULL), 404,
                    "not_found");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s/not-an-id", tokens_path("beta")), NULL), 404, "not_found");
    /* ... and the cross-tenant delete revoked nothing */
    TS_EXPECT_STREQ(ts_jstr(get_token("beta", ids[0]), "status"), "active");
    TS_EXPECT_STATUS(use(1, "beta", "beta-dev-1", toks[0]), 200);
    /* an empty list of an existing tenant */
    r = ts_admin(rt->cp[0], "GET", tokens_path("nostamp"), NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 0);
}

static void test_revoke_everywhere(void **state)
{
    json_t *t = create_token("acme", "{\"name\":\"to revoke\"}");
    const char *id = ts_jstr(t, "id"), *tok = ts_jstr(t, "token"), *revoked_at;
    const char *path = ts_str("%s/%s", tokens_path("acme"), id);
    struct ts_resp *r;
    (void)state;

    /* both instances have the tenant (and the token) cached */
    TS_EXPECT_STATUS(use(0, "acme", "rev-dev-1", tok), 200);
    TS_EXPECT_STATUS(use(1, "acme", "rev-dev-1", tok), 200);
    r = ts_admin(rt->cp[0], "DELETE", path, NULL);
    TS_EXPECT_STATUS(r, 204);
    /* refused at once on the other instance, and on this one */
    TS_EXPECT_ERROR(use(1, "acme", "rev-dev-1", tok), 401, "unauthorized");
    TS_EXPECT_ERROR(use(0, "acme", "rev-dev-1", tok), 401, "unauthorized");
    TS_EXPECT_ERROR(use(1, "acme", "rev-dev-2", tok), 401, "unauthorized");
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id = 'rev-dev-2'"), 0);
    /* still listed, as revoked; a second revoke keeps the first time */
    t = get_token("acme", id);
    TS_EXPECT_STREQ(ts_jstr(t, "status"), "revoked");
    revoked_at = ts_jstr(t, "revokedAt");
    if (ts_parse_rfc3339(revoked_at) < 0)
        ts_fail("revokedAt not set: %s", json_dumps(t, 0));
    revoked_at = ts_str("%s", revoked_at);
    TS_EXPECT_STATUS(ts_admin(rt->cp[1], "DELETE", path, NULL), 204);
    TS_EXPECT_STREQ(ts_jstr(get_token("acme", id), "revokedAt"), revoked_at);
    TS_EXPECT_ERROR(use(0, "acme", "rev-dev-1", tok), 401, "unauthorized");
}

static void test_expiry(void **state)
{
    int64_t t0 = wall_ms();
    json_t *t = create_token("acme", ts_str("{\"name\":\"short\",\"expiresAt\":\"%s\"}", time_from_now_ms(4000)));
    const char *id = ts_jstr(t, "id"), *tok = ts_jstr(t, "token");
    int64_t exp = ts_parse_rfc3339(ts_jstr(t, "expiresAt"));
    (void)state;

    if (exp <= t0 || exp > t0 + 5000)
        ts_fail("expiresAt not as asked: %s", json_dumps(t, 0));
    TS_EXPECT_STATUS(use(1, "acme", "exp-dev-1", tok), 200);
    TS_EXPECT_STATUS(use(0, "acme", "exp-dev-1", tok), 200);
    while (wall_ms() < exp + 300)
        ts_sleep_ms(200);
    TS_EXPECT_ERROR(use(1, "acme", "exp-dev-1", tok), 401, "unauthorized");
    TS_EXPECT_ERROR(use(0, "acme", "exp-dev-2", tok), 401, "unauthorized");
    TS_EXPECT_STREQ(ts_jstr(get_token("acme", id), "status"), "expired");
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id = 'exp-dev-2'"), 0);

    /* expired in the catalog (behind the caches' back): no placement either */
    t = create_token("acme", "{\"name\":\"expired in the catalog\"}");
    tok = ts_jstr(t, "token");
    TS_EXPECT_STATUS(use(1, "acme", "exp-dev-3", tok), 200);
    ts_pg_scalar(global_db, ts_str("UPDATE installer_tokens SET expires_at = now() - interval '1 second'"
                                   " WHERE id = '%s' RETURNING id", ts_jstr(t, "id")));
    TS_EXPECT_ERROR(use(1, "acme", "exp-dev-4", tok), 401, "unauthorized");
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id = 'exp-dev-4'"), 0);
}

static void test_prefix_scope(void **state)
{
    json_t *t = create_token("acme", "{\"name\":\"line 4 only\",\"registrationIdPrefix\":\"line-4-\"}");
    const char *tok = ts_jstr(t, "token");
    struct ts_resp *r;
    (void)state;

    TS_EXPECT_STREQ(ts_jstr(t, "registrationIdPrefix"), "line-4-");
    TS_EXPECT_STATUS(use(0, "acme", "line-4-dev-1", tok), 200);
    TS_EXPECT_STATUS(use(1, "acme", "line-4-", tok), 200);
    r = use(1, "acme", "line-5-dev-1", tok);
    TS_EXPECT_ERROR(r, 403, "installer_scope");
    TS_EXPECT_STREQ(ts_err_target(r), "registrationId");
    TS_EXPECT_ERROR(use(0, "acme", "line-4", tok), 403, "installer_scope");
    TS_EXPECT_ERROR(use(0, "acme", "create-dev-1", tok), 403, "installer_scope");   /* placed, but outside */
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id IN ('line-5-dev-1', 'line-4')"),
                     0);
    assert_int_equal(ts_jint(get_token("acme", ts_jstr(t, "id")), "placements", -1), 2);
}

#define NQUOTA 8

static void test_max_placements(void **state)
{
    static struct ts_rt_job jobs[NQUOTA];
    json_t *t = create_token("acme", "{\"name\":\"three\",\"maxPlacements\":3}");
    const char *id = ts_jstr(t, "id"), *tok = ts_jstr(t, "token");
    const char *authz = ts_str("Bearer %s", tok);
    const char *placed = NULL;
    int ok = 0, refused = 0;
    (void)state;

    assert_int_equal(ts_jint(t, "maxPlacements", -1), 3);
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < NQUOTA; i++) {
        jobs[i].port = rt->cp[i % 2]->port;
        jobs[i].path = ts_str("/v1/tenants/acme/registrations/quota-dev-%d/locate", i);
        jobs[i].authz = authz;
    }
    ts_rt_run_jobs(jobs, NQUOTA, NQUOTA);
    for (int i = 0; i < NQUOTA; i++) {
        if (jobs[i].ans.status == 200) {
            ok++;
            placed = ts_str("quota-dev-%d", i);
        } else if (jobs[i].ans.status == 403 && strcmp(ts_rt_answer_code(&jobs[i].ans), "installer_quota_exceeded") == 0) {
            refused++;
        } else {
            ts_fail("quota-dev-%d: expected 200 or 403 installer_quota_exceeded, got %d %s", i, jobs[i].ans.status,
                    jobs[i].ans.body);
        }
    }
    assert_int_equal(ok, 3);
    assert_int_equal(refused, NQUOTA - 3);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id LIKE 'quota-dev-%'"), 3);
    assert_int_equal(ts_jint(get_token("acme", id), "placements", -1), 3);
    /* a device it placed is still answered; a new one is not placed */
    TS_EXPECT_STATUS(use(1, "acme", placed, tok), 200);
    TS_EXPECT_ERROR(use(0, "acme", "quota-dev-new", tok), 403, "installer_quota_exceeded");

    /* a placement that fails gives its count back */
    t = create_token("nostamp", "{\"name\":\"one\",\"maxPlacements\":1}");
    TS_EXPECT_ERROR(use(0, "nostamp", "ns-dev-1", ts_jstr(t, "token")), 503, "no_eligible_stamp");
    for (int i = 0; i < 50 && ts_jint(get_token("nostamp", ts_jstr(t, "id")), "placements", -1) != 0; i++)
        ts_sleep_ms(100);
    assert_int_equal(ts_jint(get_token("nostamp", ts_jstr(t, "id")), "placements", -1), 0);
    TS_EXPECT_ERROR(use(1, "nostamp", "ns-dev-2", ts_jstr(t, "token")), 503, "no_eligible_stamp");
}

static void post_err(const char *path, const char *body, int status, const char *code, const char *target)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "POST", path, body);
    if (r->status != status || !ts_is_error_body(r) || strcmp(ts_err_code(r) ? ts_err_code(r) : "", code) != 0)
        ts_fail("POST %s %s: expected %d %s, got %s", path, body, status, code, ts_resp_str(r));
    if (target && strcmp(ts_err_target(r) ? ts_err_target(r) : "", target) != 0)
        ts_fail("POST %s %s: expected target %s, got %s", path, body, target, ts_resp_str(r));
}

static void test_bad_input(void **state)
{
    const char *p = tokens_path("acme");
    long n0 = tokens_in_catalog();
    struct ts_resp *r;
    (void)state;

    post_err(p, "{\"name\":\"x\",\"colour\":\"red\"}", 400, "unknown_field", "colour");
    post_err(p, "{\"name\":\"x\",\"token\":\"cpi_mine\"}", 400, "unknown_field", "token");
    post_err(p, "{\"name\":\"x\",\"placements\":0}", 400, "unknown_field", "placements");
    post_err(p, "{}", 400, "missing_field", "name");
    post_err(p, ts_str("{\"name\":\"x\",\"expiresAt\":\"%s\"}", time_from_now_ms(-60000)), 400, "out_of_range",
             "expiresAt");
    post_err(p, ts_str("{\"name\":\"x\",\"expiresAt\":\"%s\"}", time_from_now_ms(31LL * 24 * 3600 * 1000)), 400,
             "out_of_range", "expiresAt");
    post_err(p, "{\"name\":\"x\",\"expiresAt\":\"tomorrow\"}", 400, "invalid_value", "expiresAt");
    post_err(p, "{\"name\":\"x\",\"expiresAt\":\"2030-01-01 00:00:00\"}", 400, "invalid_value", "expiresAt");
    post_err(p, "{\"name\":\"x\",\"expiresAt\":86400}", 400, "invalid_type", "expiresAt");
    post_err(p, "{\"name\":\"x\",\"registrationIdPrefix\":\"Line-4\"}", 400, "invalid_value", "registrationIdPrefix");
    post_err(p, "{\"name\":\"x\",\"registrationIdPrefix\":\"\"}", 400, "invalid_value", "registrationIdPrefix");
    post_err(p, "{\"name\":\"x\",\"registrationIdPrefix\":\"a/b\"}", 400, "invalid_value", "registrationIdPrefix");
    post_err(p, "{\"name\":\"x\",\"maxPlacements\":0}", 400, "out_of_range", "maxPlacements");
    post_err(p, "{\"name\":\"x\",\"maxPlacements\":\"5\"}", 400, "invalid_type", "maxPlacements");
    post_err(tokens_path("nope"), "{\"name\":\"x\"}", 404, "not_found", NULL);
    assert_int_equal(tokens_in_catalog(), n0);

    r = ts_admin(rt->cp[0], "PUT", p, "{\"name\":\"x\"}");
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    TS_EXPECT_STREQ(ts_header(r, "Allow"), "GET, POST");
    r = ts_admin(rt->cp[0], "POST", ts_str("%s/0123456789abcdef", p), "{\"name\":\"x\"}");
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    TS_EXPECT_STREQ(ts_header(r, "Allow"), "GET, DELETE");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s/0123456789abcdef/x", p), NULL), 404, "route_not_found");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s?limit=0", p), NULL), 400, "invalid_query");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s?cursor=garbage", p), NULL), 400, "invalid_query");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", ts_str("%s?status=active", p), NULL), 400, "invalid_query");
    /* the admin gate: no operator token, no answer */
    r = ts_http(rt->cp[0]->port, "GET", p, NULL, NULL, 0);
    TS_EXPECT_ERROR(r, 401, "unauthorized");
    assert_int_equal(tokens_in_catalog(), n0);
}

static void test_device_names_its_token(void **state)
{
    json_t *t = create_token("acme", "{\"name\":\"named\"}");
    const char *id = ts_jstr(t, "id");
    struct ts_resp *r;
    json_t *hist, *dec;
    (void)state;

    TS_EXPECT_STATUS(use(1, "acme", "named-dev-1", ts_jstr(t, "token")), 200);
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/acme/devices/named-dev-1", NULL);
    TS_EXPECT_STATUS(r, 200);
    dec = json_object_get(r->json, "decision");
    TS_EXPECT_STREQ(ts_jstr(dec, "installerToken"), id);
    hist = json_object_get(r->json, "history");
    assert_int_equal(json_array_size(hist), 1);
    TS_EXPECT_STREQ(ts_jstr(json_array_get(hist, 0), "event"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(json_array_get(hist, 0), "installerToken"), id);

    /* a device placed with its own SAS token names no installer token */
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "sas-dev-1"), 200);
    r = ts_admin(rt->cp[1], "GET", "/v1/tenants/acme/devices/sas-dev-1", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (json_object_get(json_object_get(r->json, "decision"), "installerToken"))
        ts_fail("a SAS placement names an installer token: %s", ts_resp_str(r));
    if (!json_is_null(json_object_get(json_array_get(json_object_get(r->json, "history"), 0), "installerToken")))
        ts_fail("a SAS placement's history names an installer token: %s", ts_resp_str(r));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_defaults),
        cmocka_unit_test(test_list_get_without_secret),
        cmocka_unit_test(test_revoke_everywhere),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_prefix_scope),
        cmocka_unit_test(test_max_placements),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_device_names_its_token),
    };
    ts_init("test_installer_tokens");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
