/*
 * test_tenant_x509 - X.509 CAs per tenant (docs/api.md "X.509 CA
 * certificates"), with a real stamp agent serving the DPS device and service
 * API and the control plane's reconciler keeping the groups there.
 *
 * Two control planes on the same databases. Layout: geography eu, region
 * eu-west, stamp eu-west-1 with one DPS instance (service credentials:
 * dps.enrollmentSyncMs 300) and one hub.
 * Certificates are made with the openssl CLI (ts_pki_make_ca /
 * ts_pki_make_leaf, as test_stamp_isolation does).
 *
 * Covered:
 *  - bad input: not PEM, two certificates, a key after the certificate, a
 *    leaf (not a CA), unknown and missing fields, a duplicate upload, a
 *    malformed or unknown id, another tenant's certificate id (404 on GET,
 *    verify, disable, DELETE), verify with the wrong CN, the wrong signer,
 *    a CA certificate instead of a leaf, and a bad method;
 *  - rollover: CA1 uploaded (unverified, verificationCode, the thumbprint of
 *    the file) -> its devices are refused until it is verified -> verified:
 *    a device under CA1 locates (approach 1) and provisions through the
 *    router (approach 2) with only its client certificate, and registers at
 *    the stamp itself once the reconciler put the CA's X.509 group there;
 *    CA2 added and verified: devices under both work; CA1 disabled: its
 *    devices are refused by both control planes at once (the second one had
 *    the tenant cached with CA1) and, after the
 *    reconciler removed its group, by the stamp, while CA2's devices go on
 *    (and a pass with both groups in place changes nothing);
 *    a path id other than the CN is 401; deleting CA2 removes its group;
 *  - the reconciler never touches hand-made groups: one tagged with the
 *    tenant under an id of its own, and one whose id looks like a managed
 *    X.509 group's but lacks the x509CaId tag, both survive every pass;
 *  - removing a tenant removes its X.509 group.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

#define KEY_NAME "provisioningserviceowner"
#define S1 "eu-west-1"
#define D1 "eu-west-1-dps"
#define API "?api-version=2021-10-01"

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = S1, .region = "eu-west", .dps = { { D1, 0, 0 } }, .hubs = { { "eu-west-1-hub", 0 } } },
        { .id = NULL },
    },
};
static struct ts_stamp agent;
static const char *ca1, *ca1_key, *ca2, *ca2_key, *ca3, *ca3_key;

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */


#define expect_err ts_expect_err

static const char *pem_of(const char *path)
{
    const char *pem = ts_read_file(path, NULL);
    if (!pem)
        ts_fail("cannot read %s", path);
    return pem;
}

/* {"certificate": <file's PEM>} (extra: more members, e.g. "\"name\":\"x\"," or "") */
static const char *cert_body(const char *extra, const char *pem)
{
    json_t *j = json_pack("{s:s}", "certificate", pem);
    const char *s = ts_jdump(j);
    json_decref(j);
    return extra && *extra ? ts_str("{%s%s", extra, s + 1) : s;
}

static struct ts_resp *upload(const char *tenant, const char *pem)
{
    return ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/%s/certificates", tenant), cert_body(NULL, pem));
}

/* Upload a CA (201) and return its JSON. */
static json_t *add_ca(const char *tenant, const char *crt)
{
    struct ts_resp *r = upload(tenant, pem_of(crt));
    if (r->status != 201)
        ts_fail("upload %s for %s: expected 201, got %s", crt, tenant, ts_resp_str(r));
    return r->json;
}

/* Prove possession of a CA: a leaf with CN = its code signed by ca_crt. */
static struct ts_resp *verify_with(const char *tenant, const char *id, const char *cn, const char *ca_crt,
                                   const char *ca_key)
{
    const char *crt, *key;
    ts_pki_make_leaf(ts_str("proof-%s-%s", id, cn), cn, ca_crt, ca_key, &crt, &key);
    return ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/%s/certificates/%s/verify", tenant, id),
                    cert_body(NULL, pem_of(crt)));
}

struct device {
    const char *regid, *crt, *key;
};

static struct device make_device(const char *regid, const char *ca_crt, const char *ca_key)
{
    struct device d = { regid, NULL, NULL };
    ts_pki_make_leaf(ts_str("dev-%s-%s", regid, ca_crt == ca1 ? "ca1" : ca_crt == ca2 ? "ca2" : "ca3"), regid,
                     ca_crt, ca_key, &d.crt, &d.key);
    return d;
}

/* A device route of the control plane with only the client certificate (no Authorization). */
static struct ts_resp *cp_device_on(int c, const char *verb, const char *tenant, const char *path_regid,
                                    const struct device *d, const char *body)
{
    struct ts_http_opts o = { .tls = TS_HTTP_TLS, .ca = rt->cp[c]->ca, .cert = d->crt, .key = d->key };
    const char *h[] = { "Content-Type: application/json", NULL };
    return ts_http_ex(rt->cp[c]->port, &o, "POST",
                      ts_str("/v1/tenants/%s/registrations/%s/%s", tenant, path_regid, verb), body ? h : NULL, body,
                      body ? strlen(body) : 0);
}

static struct ts_resp *cp_device_body(const char *verb, const char *tenant, const char *path_regid,
                                      const struct device *d, const char *body)
{
    return cp_device_on(0, verb, tenant, path_regid, d, body);
}

static struct ts_resp *cp_device(const char *verb, const char *tenant, const char *path_regid, const struct device *d)
{
    return cp_device_body(verb, tenant, path_regid, d, NULL);
}

/* Register at the stamp with the client certificate and poll until settled: the final answer. */
static struct ts_resp *stamp_x509(const struct device *d)
{
    const char *scope = ts_rt_id_scope(D1);
    const char *h[] = { "Content-Type: application/json; charset=utf-8", NULL };
    const char *body = ts_str("{\"registrationId\":\"%s\"}", d->regid);
    struct ts_resp *r = ts_https(agent.port, "PUT", ts_str("/%s/registrations/%s/register" API, scope, d->regid), h,
                                 body, strlen(body), d->crt, d->key);
    int64_t deadline = ts_now_ms() + 15000;
    const char *op;
    if (r->status != 202)
        return r;
    op = ts_str("%s", ts_jstr(r->json, "operationId"));
    while (ts_now_ms() < deadline) {
        r = ts_https(agent.port, "GET", ts_str("/%s/registrations/%s/operations/%s" API, scope, d->regid, op), h, "{}",
                     2, d->crt, d->key);
        if (r->status != 202)
            return r;
        ts_sleep_ms(200);
    }
    ts_fail("%s: still assigning at the stamp after 15 s", d->regid);
}

static void expect_stamp_assigned(const struct device *d)
{
    struct ts_resp *r = stamp_x509(d);
    const char *st = r->json ? ts_jstr(r->json, "status") : NULL;
    if (r->status != 200 || !st || strcmp(st, "assigned") != 0)
        ts_fail("%s at the stamp with its certificate: expected 200 assigned, got %s", d->regid, ts_resp_str(r));
}

static bool group_present(const char *group)
{
    return ts_pg_count(ts_rt_geo_db(rt, "eu"),
                       ts_str("SELECT count(*) FROM dps_enrollments WHERE dps_id = '%s' AND kind = 'group' "
                              "AND enrollment_id = '%s'", D1, group)) == 1;
}

struct group_want {
    const char *group;
    bool present;
};

static bool group_is(void *arg)
{
    const struct group_want *w = arg;
    return group_present(w->group) == w->present;
}

static void wait_group(const char *group, bool present)
{
    struct group_want w = { group, present };
    if (!ts_wait_until(group_is, &w, 15000))
        ts_fail("group %s on %s: wanted %s after 15 s; sync: %s", group, D1, present ? "present" : "absent",
                ts_resp_str(ts_admin(rt->cp[0], "GET", "/v1/dps-instances/" D1 "/enrollment-sync", NULL)));
}

/* A pass that found nothing to change: the X.509 groups compare equal as listed (no PUT every pass). */
static bool sync_quiet(void *arg)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", "/v1/dps-instances/" D1 "/enrollment-sync", NULL);
    (void)arg;
    return r->status == 200 && ts_jstr(r->json, "state") && strcmp(ts_jstr(r->json, "state"), "in_sync") == 0 &&
           ts_jint(r->json, "changesApplied", -1) == 0 && ts_jint(r->json, "changesFailed", -1) == 0;
}

static const char *x509_group(const char *tenant, const char *ca_id)
{
    return ts_str("%s.x509.%s", tenant, ca_id);
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    struct ts_rt_served_opts so = { .ncp = 2, .policy = KEY_NAME };
    static const char *const served[] = { D1 };
    (void)state;

    rt = ts_rt_start_served_ready(&so, &layout, served, &agent, 1);
    ts_pki_make_ca("ca1", "Acme Devices CA 1", &ca1, &ca1_key);
    ts_pki_make_ca("ca2", "Acme Devices CA 2", &ca2, &ca2_key);
    ts_pki_make_ca("ca3", "Beta Devices CA", &ca3, &ca3_key);
    (void)ts_rt_tenant_acme(rt->cp[0]);
    (void)ts_rt_tenant(rt->cp[0], "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"eu\"]}}");
    wait_group("acme", true);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

static void test_bad_input(void **state)
{
    const char *pem = pem_of(ca3), *leaf, *leaf_key, *id, *key_pem;
    json_t *beta_ca;
    (void)state;

    expect_err(upload("beta", "hello"), 400, "invalid_certificate", "not PEM");
    expect_err(upload("beta", ts_str("%s%s", pem, pem_of(ca2))), 400, "invalid_certificate", "two certificates");
    key_pem = pem_of(ca3_key);
    expect_err(upload("beta", ts_str("%s%s", pem, key_pem)), 400, "invalid_certificate", "a key after it");
    expect_err(upload("beta", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 400,
               "invalid_certificate", "garbage inside the PEM block");
    expect_err(upload("beta", ts_str("%sjunk", pem)), 400, "invalid_certificate", "text after the PEM");
    ts_pki_make_leaf("beta-leaf", "not-a-ca", ca3, ca3_key, &leaf, &leaf_key);
    expect_err(upload("beta", pem_of(leaf)), 422, "not_a_ca", "a leaf");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/beta/certificates", cert_body("\"colour\":\"red\",", pem)),
               400, "unknown_field", "unknown field");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/beta/certificates", "{\"name\":\"x\"}"), 400,
               "missing_field", "no certificate");
    expect_err(ts_admin(rt->cp[0], "POST", "/v1/tenants/beta/certificates", "{\"certificate\":7}"), 400,
               "invalid_type", "certificate not a string");
    expect_err(upload("nosuch", pem), 404, "not_found", "unknown tenant");

    beta_ca = ts_jkeep(json_incref(add_ca("beta", ca3)));
    id = ts_jstr(beta_ca, "id");
    TS_EXPECT_STREQ(ts_jstr(beta_ca, "state"), "unverified");
    expect_err(upload("beta", pem), 409, "already_exists", "the same CA twice");
    /* the same CA may belong to another tenant too (the stamp refuses ambiguous devices) */

    /* another tenant's id: 404 everywhere, exactly like an unknown one */
    expect_err(ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/certificates/%s", id), NULL), 404, "not_found",
               "GET another tenant's certificate");
    expect_err(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/acme/certificates/%s/disable", id), NULL), 404,
               "not_found", "disable another tenant's certificate");
    expect_err(ts_admin(rt->cp[0], "DELETE", ts_str("/v1/tenants/acme/certificates/%s", id), NULL), 404, "not_found",
               "DELETE another tenant's certificate");
    expect_err(verify_with("acme", id, ts_jstr(beta_ca, "verificationCode"), ca3, ca3_key), 404, "not_found",
               "verify another tenant's certificate");
    expect_err(ts_admin(rt->cp[0], "GET", "/v1/tenants/beta/certificates/0123456789abcdef", NULL), 404, "not_found",
               "unknown id");
    expect_err(ts_admin(rt->cp[0], "GET", "/v1/tenants/beta/certificates/NOT-AN-ID", NULL), 404, "not_found",
               "malformed id");
    expect_err(ts_admin(rt->cp[0], "PUT", ts_str("/v1/tenants/beta/certificates/%s", id), "{}"), 405,
               "method_not_allowed", "PUT");
    expect_err(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/beta/certificates/%s/enable", id), "{\"x\":1}"), 400,
               "unknown_field", "enable with a body");

    /* proof of possession */
    expect_err(verify_with("beta", id, "WRONGCODE", ca3, ca3_key), 422, "verification_code_mismatch", "wrong CN");
    expect_err(verify_with("beta", id, ts_jstr(beta_ca, "verificationCode"), ca2, ca2_key), 422, "wrong_signer",
               "the right CN signed by another CA");
    expect_err(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/beta/certificates/%s/verify", id),
                        cert_body(NULL, pem)), 422, "verification_code_mismatch", "the CA itself as the proof");
    expect_err(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/beta/certificates/%s/verify", id), "{}"), 400,
               "missing_field", "verify without a certificate");
    TS_EXPECT_STREQ(ts_jstr(ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/beta/certificates/%s", id), NULL)->json,
                            "state"),
                    "unverified");
}

static void test_rollover(void **state)
{
    json_t *c1, *c2, *list;
    const char *id1, *id2, *g1, *g2;
    struct device d1, d1b, d1c, d2, d2b, beta_dev;
    struct ts_resp *r;
    (void)state;

    /* hand-made groups the reconciler must never touch: one tagged with acme under an id of its own,
     * one whose id looks like a managed X.509 group's but without the x509CaId tag */
    {
        const char *ids[2] = { "acme-handmade", "acme.x509.0000000000000000" };
        for (int i = 0; i < 2; i++) {
            json_t *doc = json_pack("{s:s, s:{s:s, s:{s:{s:{s:s}}}}, s:s, s:{s:{s:s, s:s}}}", "enrollmentGroupId",
                                    ids[i], "attestation", "type", "x509", "x509", "signingCertificates", "primary",
                                    "certificate", pem_of(ca3), "provisioningStatus", "disabled", "initialTwin",
                                    "tags", "managedBy", "stampcp", "tenantId", "acme");
            TS_EXPECT_STATUS(ts_stamp_service(&agent, NULL, "PUT", ts_str("/enrollmentGroups/%s" API, ids[i]),
                                              ts_jdump(doc)),
                             200);
            json_decref(doc);
        }
    }

    /* CA1: uploaded, not yet verified */
    c1 = add_ca("acme", ca1);
    id1 = ts_str("%s", ts_jstr(c1, "id"));
    g1 = x509_group("acme", id1);
    TS_EXPECT_STREQ(ts_jstr(c1, "state"), "unverified");
    if (!ts_jstr(c1, "verificationCode") || strlen(ts_jstr(c1, "verificationCode")) != 32)
        ts_fail("no 32-character verificationCode: %s", ts_jdump(c1));
    if (!ts_jstr(c1, "thumbprint") || strcasecmp(ts_jstr(c1, "thumbprint"), ts_cert_fingerprint(ca1)) != 0)
        ts_fail("thumbprint %s is not the SHA-256 of %s (%s)", ts_jstr(c1, "thumbprint"), ca1,
                ts_cert_fingerprint(ca1));
    if (!ts_jstr(c1, "subject") || !strstr(ts_jstr(c1, "subject"), "CN=Acme Devices CA 1"))
        ts_fail("subject: %s", ts_jdump(c1));
    if (ts_parse_rfc3339(ts_jstr(c1, "notBefore")) <= 0 ||
        ts_parse_rfc3339(ts_jstr(c1, "notAfter")) <= ts_parse_rfc3339(ts_jstr(c1, "notBefore")))
        ts_fail("validity: %s", ts_jdump(c1));
    d1 = make_device("d1", ca1, ca1_key);
    expect_err(cp_device("locate", "acme", "d1", &d1), 401, "invalid_certificate", "d1 before CA1 is verified");
    if (group_present(g1))
        ts_fail("an unverified CA has a group at the stamp");

    /* verified: approaches 1 and 2 with only the client certificate */
    r = verify_with("acme", id1, ts_jstr(c1, "verificationCode"), ca1, ca1_key);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "state"), "verified");
    if (json_object_get(r->json, "verificationCode") && !json_is_null(json_object_get(r->json, "verificationCode")))
        ts_fail("a verified CA still shows its verification code: %s", ts_resp_str(r));
    r = cp_device("locate", "acme", "d1", &d1);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), S1);
    TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_rt_id_scope(D1));
    r = cp_device("provision", "acme", "d1", &d1);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(r->json, "assignedHub"), "eu-west-1-hub.hub.test");
    /* the reconciler puts CA1's group at the stamp: a device registers there with its certificate */
    wait_group(g1, true);
    d1b = make_device("d1b", ca1, ca1_key);
    TS_EXPECT_STATUS(cp_device("locate", "acme", "d1b", &d1b), 200);
    expect_stamp_assigned(&d1b);
    /* a path id other than the certificate's CN */
    expect_err(cp_device("locate", "acme", "d1-other", &d1), 401, "invalid_certificate", "d1's cert for d1-other");
    expect_err(cp_device_body("provision", "acme", "d1-other", &d1, "{}"), 401, "invalid_certificate",
               "d1's cert for d1-other, with a body");
    /* a certificate of a CA nobody verified, with a body: refused by the handler */
    {
        const char *sc, *sk;
        struct device stranger;
        ts_pki_make_ca("stranger", "Stranger CA", &sc, &sk);
        stranger = make_device("d9", sc, sk);
        expect_err(cp_device_body("provision", "acme", "d9", &stranger, "{}"), 401, "invalid_certificate",
                   "a stranger's certificate");
    }
    /* another tenant's path with acme's device */
    expect_err(cp_device("locate", "beta", "d1", &d1), 401, "invalid_certificate", "d1 under beta");

    /* CA2 added: devices under both */
    c2 = add_ca("acme", ca2);
    id2 = ts_str("%s", ts_jstr(c2, "id"));
    g2 = x509_group("acme", id2);
    TS_EXPECT_STATUS(verify_with("acme", id2, ts_jstr(c2, "verificationCode"), ca2, ca2_key), 200);
    d2 = make_device("d2", ca2, ca2_key);
    TS_EXPECT_STATUS(cp_device("locate", "acme", "d2", &d2), 200);
    /* a body (the DPS payload) with only a client certificate passes the check before the body */
    r = cp_device_body("provision", "acme", "d2", &d2, "{\"payload\":{\"model\":\"x1\"}}");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    TS_EXPECT_STATUS(cp_device("locate", "acme", "d1", &d1), 200);
    TS_EXPECT_STATUS(cp_device_on(1, "locate", "acme", "d1", &d1, NULL), 200);   /* cp[1] caches acme with CA1 */
    wait_group(g2, true);
    d2b = make_device("d2b", ca2, ca2_key);
    expect_stamp_assigned(&d2b);
    if (!ts_wait_until(sync_quiet, NULL, 10000))
        ts_fail("no quiet pass with two X.509 groups in place (a group rewritten every pass?): %s",
                ts_resp_str(ts_admin(rt->cp[0], "GET", "/v1/dps-instances/" D1 "/enrollment-sync", NULL)));
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/acme/certificates", NULL);
    TS_EXPECT_STATUS(r, 200);
    list = json_object_get(r->json, "items");
    assert_int_equal(json_array_size(list), 2);
    TS_EXPECT_STREQ(ts_jstr(json_array_get(list, 0), "id"), id1);
    TS_EXPECT_STREQ(ts_jstr(json_array_get(list, 1), "id"), id2);

    /* CA1 disabled: refused by the control plane at once, by the stamp once its group is gone */
    r = ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/acme/certificates/%s/disable", id1), NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_true(json_is_false(json_object_get(r->json, "enabled")));
    TS_EXPECT_STREQ(ts_jstr(r->json, "state"), "verified");
    expect_err(cp_device("locate", "acme", "d1", &d1), 401, "invalid_certificate", "d1 after CA1 is disabled");
    expect_err(cp_device_on(1, "locate", "acme", "d1", &d1, NULL), 401, "invalid_certificate",
               "d1 at the other control plane after CA1 is disabled");
    expect_err(cp_device("provision", "acme", "d1b", &d1b), 401, "invalid_certificate", "d1b after CA1 is disabled");
    TS_EXPECT_STATUS(cp_device("locate", "acme", "d2", &d2), 200);
    wait_group(g1, false);
    d1c = make_device("d1c", ca1, ca1_key);
    r = stamp_x509(&d1c);
    if (!ts_is_dps_error(r, 401))
        ts_fail("a new device under the disabled CA1 at the stamp: expected a 401 DPS error, got %s", ts_resp_str(r));
    expect_stamp_assigned(&d2b);
    /* enabled again (PATCH), then disabled again */
    r = ts_admin(rt->cp[0], "PATCH", ts_str("/v1/tenants/acme/certificates/%s", id1), "{\"enabled\":true}");
    TS_EXPECT_STATUS(r, 200);
    assert_true(json_is_true(json_object_get(r->json, "enabled")));
    TS_EXPECT_STATUS(cp_device("locate", "acme", "d1", &d1), 200);
    wait_group(g1, true);
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/acme/certificates/%s/disable", id1), "{}"), 200);
    expect_err(cp_device("locate", "acme", "d1", &d1), 401, "invalid_certificate", "d1 after CA1 is disabled again");
    wait_group(g1, false);

    /* CA2 deleted: its devices refused, its group removed */
    r = ts_admin(rt->cp[0], "DELETE", ts_str("/v1/tenants/acme/certificates/%s", id2), NULL);
    TS_EXPECT_STATUS(r, 204);
    expect_err(ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/certificates/%s", id2), NULL), 404, "not_found",
               "GET a deleted certificate");
    expect_err(cp_device("locate", "acme", "d2", &d2), 401, "invalid_certificate", "d2 after CA2 is deleted");
    wait_group(g2, false);

    /* the hand-made groups survived every pass, and the symmetric group is there */
    if (!group_present("acme-handmade") || !group_present("acme.x509.0000000000000000") || !group_present("acme"))
        ts_fail("the reconciler removed a group it does not manage (or acme's own): %s",
                ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                             "SELECT string_agg(enrollment_id, ',') FROM dps_enrollments WHERE kind = 'group'"));

    /* removing a tenant removes its X.509 groups */
    {
        json_t *b = NULL;
        const char *bid, *bg;
        r = ts_admin(rt->cp[0], "GET", "/v1/tenants/beta/certificates", NULL);
        TS_EXPECT_STATUS(r, 200);
        b = json_array_get(json_object_get(r->json, "items"), 0);
        if (!b)
            ts_fail("beta has no certificate: %s", ts_resp_str(r));
        bid = ts_str("%s", ts_jstr(b, "id"));
        bg = x509_group("beta", bid);
        TS_EXPECT_STATUS(verify_with("beta", bid, ts_jstr(b, "verificationCode"), ca3, ca3_key), 200);
        wait_group(bg, true);
        beta_dev = make_device("beta-1", ca3, ca3_key);
        TS_EXPECT_STATUS(cp_device("locate", "beta", "beta-1", &beta_dev), 200);
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/beta/devices/beta-1/deprovision", NULL), 200);
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "DELETE", "/v1/tenants/beta", NULL), 204);
        wait_group(bg, false);
        wait_group("beta", false);
        expect_err(ts_admin(rt->cp[0], "GET", "/v1/tenants/beta/certificates", NULL), 404, "not_found",
                   "certificates of a removed tenant");
    }
}

static const char *x_group_status(const char *group)
{
    return ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                        ts_str("SELECT coalesce((SELECT doc->>'provisioningStatus' FROM dps_enrollments"
                               " WHERE dps_id = '%s' AND kind = 'group' AND enrollment_id = '%s'), '')",
                               D1, group));
}

static bool x_group_is(void *arg)
{
    const char *const *want = arg;   /* {group, status} */
    const char *s = x_group_status(want[0]);
    return s && strcmp(s, want[1]) == 0;
}

/* A suspended tenant's X.509 groups are disabled at the stamp like its
 * symmetric group (the stamp refuses its certificates), and enabled again on
 * resume; nothing is deleted. */
static void test_suspend_disables_x509_groups(void **state)
{
    const char *c4, *k4, *id, *g;
    const char *want_dis[2], *want_en[2];
    json_t *c;
    struct device d;
    struct ts_resp *r;
    (void)state;

    (void)ts_rt_tenant(rt->cp[0], "{\"id\":\"gamma\",\"name\":\"Gamma\",\"residency\":{\"geographies\":[\"eu\"]}}");
    wait_group("gamma", true);
    ts_pki_make_ca("ca4", "Gamma Devices CA", &c4, &k4);
    c = add_ca("gamma", c4);
    id = ts_str("%s", ts_jstr(c, "id"));
    g = x509_group("gamma", id);
    TS_EXPECT_STATUS(verify_with("gamma", id, ts_jstr(c, "verificationCode"), c4, k4), 200);
    wait_group(g, true);
    d = make_device("g-1", c4, k4);
    expect_stamp_assigned(&d);

    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/gamma/suspend", NULL), 200);
    want_dis[0] = g;
    want_dis[1] = "disabled";
    if (!ts_wait_until(x_group_is, (void *)want_dis, 15000))
        ts_fail("the X.509 group %s of a suspended tenant is %s, not disabled", g, x_group_status(g));
    TS_EXPECT_STREQ(x_group_status("gamma"), "disabled");
    {
        struct device d2 = make_device("g-2", c4, k4);
        r = stamp_x509(&d2);
        if (r->status == 200 && r->json && ts_jstr(r->json, "status") && strcmp(ts_jstr(r->json, "status"), "assigned") == 0)
            ts_fail("a suspended tenant's X.509 device registered at the stamp: %s", ts_resp_str(r));
        expect_err(cp_device("locate", "gamma", "g-2", &d2), 403, "tenant_suspended", "suspended, X.509 at the control plane");
    }
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/gamma/resume", NULL), 200);
    want_en[0] = g;
    want_en[1] = "enabled";
    if (!ts_wait_until(x_group_is, (void *)want_en, 15000))
        ts_fail("the X.509 group %s was not enabled again on resume: %s", g, x_group_status(g));
    expect_stamp_assigned(&d);
}

static bool x_job_finished(void *arg)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/jobs/%s", (const char *)arg), NULL);
    const char *st = r->json ? ts_jstr(r->json, "state") : NULL;
    return st && (strcmp(st, "succeeded") == 0 || strcmp(st, "failed") == 0);
}

/* Offboarding deletes the registrations made through the tenant's X.509
 * groups too (devices that registered at the stamp with their certificate,
 * which the control plane has no row for). Runs after the suspend test:
 * gamma's device g-1 is registered at the stamp through its X.509 group. */
static void test_offboard_removes_x509_registrations(void **state)
{
    const char *eu = ts_rt_geo_db(rt, "eu"), *job;
    struct ts_resp *r;
    (void)state;
    if (ts_pg_count(eu, "SELECT count(*) FROM dps_registrations WHERE enrollment_id LIKE 'gamma.x509.%'") < 1)
        ts_fail("setup: gamma has no registration through an X.509 group");
    r = ts_admin(rt->cp[0], "DELETE", "/v1/tenants/gamma?cascade=true", NULL);
    TS_EXPECT_STATUS(r, 202);
    job = ts_str("%s", ts_jstr(r->json, "id"));
    if (!ts_wait_until(x_job_finished, (void *)job, 90000))
        ts_fail("offboarding job %s not finished after 90 s", job);
    r = ts_admin(rt->cp[0], "GET", ts_str("/v1/jobs/%s", job), NULL);
    TS_EXPECT_STREQ(ts_jstr(r->json, "state"), "succeeded");
    if (ts_pg_count(eu, "SELECT count(*) FROM dps_registrations WHERE enrollment_id = 'gamma'"
                        " OR enrollment_id LIKE 'gamma.x509.%'") != 0)
        ts_fail("registrations of gamma left at the stamp after offboarding: %s",
                ts_pg_scalar(eu, "SELECT string_agg(registration_id || ':' || enrollment_id, ',') FROM dps_registrations"
                                 " WHERE enrollment_id LIKE 'gamma%'"));
    if (ts_pg_count(eu, "SELECT count(*) FROM dps_enrollments WHERE kind = 'group' AND enrollment_id LIKE 'gamma%'") != 0)
        ts_fail("groups of gamma left at the stamp after offboarding");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_rollover),
        cmocka_unit_test(test_suspend_disables_x509_groups),
        cmocka_unit_test(test_offboard_removes_x509_registrations),
    };
    ts_init("test_tenant_x509");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
