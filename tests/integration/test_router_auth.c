/*
 * test_router_auth - device credentials and bad input on the device routes
 * and on tenant onboarding (docs/api.md "Tenants", "Devices: where do I
 * belong?"):
 *
 *  - every refused credential is a 401 with the documented code and a JSON
 *    error body: no header / wrong scheme (unauthorized), malformed SAS
 *    (malformed_token), expired se (expired_token), a token for another
 *    device or another tenant (wrong_resource), a bad signature or wrong key
 *    (invalid_signature), an unknown tenant (invalid_signature: no leak);
 *  - accepted variants: sr URL-encoded (signed over the encoded form), the
 *    fields in another order;
 *  - registration ids outside the syntax: 400 invalid_value (registrationId);
 *  - bodies: malformed JSON, an unknown field, an oversized body;
 *  - tenant creation: unknown field, missing name, unknown / unconfigured
 *    geography (422), bad tenancy, dedicated without stamps, duplicates;
 *  - nothing is written for a refused request; the daemon is alive at the end.
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

#include "sas.h"
#include "ts.h"

static struct ts_rt *rt;
static struct ts_cp *cp;
static struct ts_tenant *acme, *beta;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },   /* "us" is configured but not in the catalog */
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west",
          .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", "us", NULL } };
    rt = ts_rt_start_fleet_with(&o, &layout);
    cp = rt->cp[0];
    eu_db = ts_rt_geo_db(rt, "eu");
    acme = ts_rt_tenant_acme(cp);
    beta = ts_rt_tenant(cp, "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"eu\"]}}");
    return 0;
}

static long ndevices(void)
{
    return ts_pg_count(eu_db, "SELECT count(*) FROM devices");
}

static struct ts_resp *locate_with(const char *regid, const char *authz)
{
    return ts_rt_device(cp, "locate", "acme", regid, authz, NULL);
}

static void expect_401(struct ts_resp *r, const char *code, const char *what)
{
    if (r->status != 401 || !ts_is_error_body(r) || !ts_err_code(r) || strcmp(ts_err_code(r), code) != 0)
        ts_fail("%s: expected 401 %s with a JSON error body, got %s", what, code, ts_resp_str(r));
    if (!ts_jstr(json_object_get(r->json, "error"), "message"))
        ts_fail("%s: error without message: %s", what, ts_resp_str(r));
}

/* Replace the value of one k=v field of a SAS string. */
static const char *sas_with(const char *sas, const char *key, const char *value)
{
    const char *body = sas + strlen("SharedAccessSignature ");
    char *out = ts_str("SharedAccessSignature ");
    char *copy = ts_str("%s", body), *save = NULL;
    bool first = true;
    for (char *f = strtok_r(copy, "&", &save); f; f = strtok_r(NULL, "&", &save)) {
        size_t kl = strlen(key);
        if (strncmp(f, key, kl) == 0 && f[kl] == '=') {
            if (value)
                out = ts_str("%s%s%s=%s", out, first ? "" : "&", key, value);
            else
                continue;
        } else {
            out = ts_str("%s%s%s", out, first ? "" : "&", f);
        }
        first = false;
    }
    return out;
}

static const char *sas_field(const char *sas, const char *key)
{
    const char *p = strstr(sas, ts_str("%s=", key));
    if (!p)
        ts_fail("no %s in %s", key, sas);
    p += strlen(key) + 1;
    return ts_str("%.*s", (int)strcspn(p, "&"), p);
}

static void test_refused_credentials(void **state)
{
    long before = ndevices();
    const char *good = ts_rt_sas(acme, "dev-1", 0);
    const char *sig = sas_field(good, "sig");
    unsigned char wrong_key[32];
    struct ts_resp *r;

    memset(wrong_key, 0x5a, sizeof wrong_key);
    r = locate_with("dev-1", NULL);
    expect_401(r, "unauthorized", "no Authorization header");
    r = locate_with("dev-1", "Basic YWNtZTpzZWNyZXQ=");
    expect_401(r, "unauthorized", "Basic scheme");
    r = locate_with("dev-1", "Bearer");
    expect_401(r, "unauthorized", "Bearer without token");
    r = locate_with("dev-1", sas_with(good, "sig", NULL));
    expect_401(r, "malformed_token", "SAS without sig");
    r = locate_with("dev-1", sas_with(good, "se", NULL));
    expect_401(r, "malformed_token", "SAS without se");
    r = locate_with("dev-1", sas_with(good, "sr", NULL));
    expect_401(r, "malformed_token", "SAS without sr");
    r = locate_with("dev-1", "SharedAccessSignature garbage");
    expect_401(r, "malformed_token", "SAS garbage");
    /* HTTP trims the trailing space: a bare scheme word; either code is a fair answer */
    r = locate_with("dev-1", "SharedAccessSignature ");
    if (r->status != 401 || !ts_err_code(r) ||
        (strcmp(ts_err_code(r), "malformed_token") != 0 && strcmp(ts_err_code(r), "unauthorized") != 0))
        ts_fail("empty SAS: expected 401 malformed_token or unauthorized, got %s", ts_resp_str(r));
    r = locate_with("dev-1", sas_with(good, "se", "soon"));
    expect_401(r, "malformed_token", "SAS with a non-numeric se");
    r = locate_with("dev-1", ts_str("%s&sig=%s", good, sig));
    expect_401(r, "malformed_token", "SAS with sig twice");

    r = locate_with("dev-1", ts_rt_sas(acme, "dev-1", (int64_t)time(NULL) - 30));
    expect_401(r, "expired_token", "expired se");
    r = locate_with("dev-1", ts_rt_sas(acme, "dev-2", 0));
    expect_401(r, "wrong_resource", "token of another device");
    r = locate_with("dev-1", ts_rt_sas(beta, "dev-1", 0));
    expect_401(r, "wrong_resource", "token of another tenant (sr beta/...)");
    /* the right sr, signed with the other tenant's key */
    r = locate_with("dev-1", ts_rt_sas_custom(beta->key, (size_t)beta->keylen, "dev-1", "acme/registrations/dev-1", 0,
                                              "registration"));
    expect_401(r, "invalid_signature", "the right sr signed with another tenant's key");
    r = locate_with("dev-1", ts_rt_sas_custom(wrong_key, sizeof wrong_key, "dev-1", "acme/registrations/dev-1", 0,
                                              "registration"));
    expect_401(r, "invalid_signature", "a wrong key");
    /* a device key derived for another registration id */
    r = locate_with("dev-1", ts_rt_sas_custom(acme->key, (size_t)acme->keylen, "dev-2", "acme/registrations/dev-1", 0,
                                              "registration"));
    expect_401(r, "invalid_signature", "the key of another registration id");
    /* the group key used directly (no derivation) */
    {
        char buf[1200];
        sas_build("acme/registrations/dev-1", acme->key, (size_t)acme->keylen, (int64_t)time(NULL) + 3600,
                  "registration", buf, sizeof buf);
        r = locate_with("dev-1", buf);
        expect_401(r, "invalid_signature", "signed with the enrollment key itself");
    }
    /* a tampered signature: first character changed */
    {
        char *bad = ts_str("%s", sig);
        bad[0] = bad[0] == 'A' ? 'B' : 'A';
        r = locate_with("dev-1", sas_with(good, "sig", bad));
        expect_401(r, "invalid_signature", "a tampered sig");
    }
    /* a later se than the one signed */
    r = locate_with("dev-1", sas_with(good, "se", ts_str("%lld", (long long)time(NULL) + 7200)));
    expect_401(r, "invalid_signature", "se changed after signing");
    /* unknown tenant: same answer as a bad signature */
    r = ts_rt_device(cp, "locate", "ghost", "dev-1",
                     ts_rt_sas_custom(wrong_key, sizeof wrong_key, "dev-1", "ghost/registrations/dev-1", 0,
                                      "registration"),
                     NULL);
    expect_401(r, "invalid_signature", "unknown tenant");
    /* installer-looking bearer for an unknown tenant */
    r = ts_rt_device(cp, "locate", "ghost", "dev-1", "Bearer cpi_00000000000000000000", NULL);
    expect_401(r, "unauthorized", "bearer for an unknown tenant");

    if (ndevices() != before)
        ts_fail("a refused request wrote a device (%ld before, %ld after)", before, ndevices());
}

static void test_accepted_variants(void **state)
{
    int64_t se = (int64_t)time(NULL) + 3600;
    const char *enc_sr = "acme%2Fregistrations%2Fdev-enc";
    const char *enc = ts_rt_sas_custom(acme->key, (size_t)acme->keylen, "dev-enc", enc_sr, se, "registration");
    const char *plain = ts_rt_sas(acme, "dev-order", se);
    const char *reordered;
    struct ts_resp *r;

    r = locate_with("dev-enc", enc);
    if (r->status != 200)
        ts_fail("URL-encoded sr (signed over the encoded form) must be accepted: %s (token %s)", ts_resp_str(r), enc);
    TS_EXPECT_STREQ(ts_jstr(r->json, "registrationId"), "dev-enc");
    /* lowercase percent-encoding too */
    r = locate_with("dev-enc", ts_rt_sas_custom(acme->key, (size_t)acme->keylen, "dev-enc",
                                                "acme%2fregistrations%2fdev-enc", se, "registration"));
    if (r->status != 200)
        ts_fail("lowercase URL-encoded sr must be accepted: %s", ts_resp_str(r));

    reordered = ts_str("SharedAccessSignature se=%s&skn=%s&sig=%s&sr=%s", sas_field(plain, "se"),
                       sas_field(plain, "skn"), sas_field(plain, "sig"), sas_field(plain, "sr"));
    r = locate_with("dev-order", reordered);
    if (r->status != 200)
        ts_fail("SAS fields in another order must be accepted: %s (token %s)", ts_resp_str(r), reordered);
    TS_EXPECT_STREQ(ts_jstr(r->json, "registrationId"), "dev-order");
    reordered = ts_str("SharedAccessSignature sig=%s&sr=%s&se=%s&skn=%s", sas_field(plain, "sig"),
                       sas_field(plain, "sr"), sas_field(plain, "se"), sas_field(plain, "skn"));
    TS_EXPECT_STATUS(locate_with("dev-order", reordered), 200);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE tenant_id='acme' AND registration_id IN"
                                        " ('dev-enc','dev-order') AND status='assigned'"),
                     2);
}

static void test_bad_registration_ids(void **state)
{
    char long_id[140];
    const char *op = ts_str("Bearer %s", cp->token);
    const char *bad[] = { "Dev-1", "DEV", long_id, "dev1.", "dev_1_", "dev:", "dev%201", "d%C3%A9v" };
    long before = ndevices();
    struct ts_resp *r;

    memset(long_id, 'a', 129);
    long_id[129] = '\0';
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = ts_rt_device(cp, "locate", "acme", bad[i], ts_rt_sas(acme, bad[i], 0), NULL);
        if (r->status != 400 || !ts_err_code(r) || strcmp(ts_err_code(r), "invalid_value") != 0 ||
            !ts_err_target(r) || strcmp(ts_err_target(r), "registrationId") != 0)
            ts_fail("registration id '%.40s' (len %zu): expected 400 invalid_value target registrationId, got %s",
                    bad[i], strlen(bad[i]), ts_resp_str(r));
        r = ts_rt_device(cp, "locate", "acme", bad[i], op, NULL);
        TS_EXPECT_ERROR(r, 400, "invalid_value");
    }
    /* the limits themselves are fine: 128 characters, '.', '_', ':' inside, '-' at the end */
    memset(long_id, 'b', 128);
    long_id[128] = '\0';
    TS_EXPECT_STATUS(ts_rt_locate(cp, acme, long_id), 200);
    TS_EXPECT_STATUS(ts_rt_locate(cp, acme, "a.b_c:d-"), 200);
    assert_int_equal(ndevices(), before + 2);
}

static void test_bad_bodies(void **state)
{
    const char *tok = ts_rt_sas(acme, "dev-body", 0);
    long before = ndevices();
    struct ts_resp *r;
    size_t big_len = 70 * 1024;
    char *big = ts_keep(malloc(big_len + 1));

    r = ts_rt_device(cp, "locate", "acme", "dev-body", tok, "{");
    TS_EXPECT_ERROR(r, 400, "invalid_json");
    r = ts_rt_device(cp, "locate", "acme", "dev-body", tok, "[1]");
    TS_EXPECT_ERROR(r, 400, "invalid_json");
    r = ts_rt_device(cp, "locate", "acme", "dev-body", tok, "{\"colour\":\"red\"}");
    TS_EXPECT_ERROR(r, 400, "unknown_field");
    TS_EXPECT_STREQ(ts_err_target(r), "colour");
    r = ts_rt_device(cp, "reprovision", "acme", "dev-body", tok, "{\"reason\":42}");
    TS_EXPECT_ERROR(r, 400, "invalid_type");
    /* oversized body: a JSON object of 70 KiB */
    memset(big, ' ', big_len);
    memcpy(big, "{\"reason\":\"", 11);
    memset(big + 11, 'x', big_len - 13);
    memcpy(big + big_len - 2, "\"}", 2);
    big[big_len] = '\0';
    r = ts_rt_device(cp, "locate", "acme", "dev-body", tok, big);
    if (r->status != 413 && r->status != 400)
        ts_fail("a 70 KiB body on locate: expected 413 body_too_large, got %s", ts_resp_str(r));
    if (!ts_is_error_body(r))
        ts_fail("oversized body answer is not a JSON error: %s", ts_resp_str(r));
    TS_EXPECT_ERROR(r, 413, "body_too_large");
    if (ndevices() != before)
        ts_fail("a refused body placed a device");
    /* an empty body and "{}" are fine */
    TS_EXPECT_STATUS(ts_rt_device(cp, "locate", "acme", "dev-body", tok, "{}"), 200);
    TS_EXPECT_STATUS(ts_rt_device(cp, "reprovision", "acme", "dev-body", tok, "{\"reason\":\"field swap\"}"), 200);
}

static void tenant_bad(const char *body, int status, const char *code)
{
    struct ts_resp *r = ts_admin(cp, "POST", "/v1/tenants", body);
    if (r->status != status || !ts_err_code(r) || strcmp(ts_err_code(r), code) != 0 || !ts_is_error_body(r))
        ts_fail("POST /v1/tenants %s: expected %d %s, got %s", body, status, code, ts_resp_str(r));
}

static void test_tenant_bad_inputs(void **state)
{
    long before = ts_pg_count(cp->global_db, "SELECT count(*) FROM tenants");

    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]},\"colour\":\"red\"}", 400, "unknown_field");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"],\"colour\":1}}", 400, "unknown_field");
    tenant_bad("{\"residency\":{\"geographies\":[\"eu\"]}}", 400, "missing_field");
    tenant_bad("{\"name\":\"X\"}", 400, "missing_field");
    tenant_bad("{\"name\":\"\",\"residency\":{\"geographies\":[\"eu\"]}}", 400, "invalid_value");
    tenant_bad("{\"name\":7,\"residency\":{\"geographies\":[\"eu\"]}}", 400, "invalid_type");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[]}}", 400, "invalid_value");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":\"eu\"}}", 400, "invalid_type");
    tenant_bad("{\"id\":\"Bad_Id\",\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]}}", 400, "invalid_value");
    /* configured here but not in the catalog */
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"us\"]}}", 422, "invalid_reference");
    /* not configured here at all */
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"apac\"]}}", 422, "geography_not_configured");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"],\"regions\":[\"nowhere\"]}}", 422,
               "invalid_reference");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]},\"tenancy\":\"shared\"}", 400, "invalid_value");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]},\"tenancy\":\"dedicated\"}", 400,
               "missing_field");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]},\"tenancy\":\"dedicated\",\"dedicatedStamps\":[]}",
               400, "missing_field");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]},\"dedicatedStamps\":[\"eu-west-1\"]}", 400,
               "invalid_value");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\",\"eu\"]}}", 400, "invalid_value");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"],\"regions\":[\"eu-west\",\"eu-west\"]}}", 400,
               "invalid_value");
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]},\"tenancy\":\"dedicated\","
               "\"dedicatedStamps\":[\"eu-west-1\",\"eu-west-1\"]}",
               400, "invalid_value");
    /* a pooled stamp can't be dedicated to a tenant */
    tenant_bad("{\"name\":\"X\",\"residency\":{\"geographies\":[\"eu\"]},\"tenancy\":\"dedicated\","
               "\"dedicatedStamps\":[\"eu-west-1\"]}",
               422, "invalid_reference");
    tenant_bad("{\"id\":\"acme\",\"name\":\"Again\",\"residency\":{\"geographies\":[\"eu\"]}}", 409, "already_exists");
    tenant_bad("[]", 400, "invalid_json");
    assert_int_equal(ts_pg_count(cp->global_db, "SELECT count(*) FROM tenants"), before);

    /* a good one with a generated id, a region and no key in GET */
    {
        struct ts_tenant *t = ts_rt_tenant(cp, "{\"name\":\"Gen\",\"residency\":{\"geographies\":[\"eu\"],"
                                               "\"regions\":[\"eu-west\"]}}");
        struct ts_resp *r;
        if (strncmp(t->id, "t-", 2) != 0 || strlen(t->id) != 18)
            ts_fail("generated tenant id should be t-<16 hex>: %s", t->id);
        r = ts_admin(cp, "GET", ts_str("/v1/tenants/%s", t->id), NULL);
        TS_EXPECT_STATUS(r, 200);
        if (json_object_get(r->json, "enrollmentKey") || strstr(r->body, t->key_b64))
            ts_fail("GET tenant shows the enrollment key: %s", ts_resp_str(r));
        TS_EXPECT_STATUS(ts_rt_locate(cp, t, "gen-dev-1"), 200);
    }
}

static void test_daemon_alive(void **state)
{
    if (!ts_proc_alive(cp->proc))
        ts_fail("control plane died");
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    TS_EXPECT_STATUS(ts_get(cp, "/readyz"), 200);
    TS_EXPECT_STATUS(ts_rt_locate(cp, acme, "dev-1"), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_credentials),
        cmocka_unit_test(test_accepted_variants),
        cmocka_unit_test(test_bad_registration_ids),
        cmocka_unit_test(test_bad_bodies),
        cmocka_unit_test(test_tenant_bad_inputs),
        cmocka_unit_test(test_daemon_alive),
    };
    ts_init("test_router_auth");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
