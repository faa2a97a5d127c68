/*
 * test_stamp_isolation - two pooled tenants on one DPS instance cannot reach
 * each other's registrations (docs/stamp-dps.md "Registration ownership";
 * issue #9 item 1), and a junk flood does not throttle a legitimate device
 * (item 2).
 *
 *   - the matrix: tenant B attacks three of tenant A's devices (a group
 *     device, an individually enrolled one, an X.509 one) with each of its
 *     credentials (its group SAS, its individual enrollment's key, a
 *     certificate of its own CA with the victim's CN) on each route
 *     (register, poll of the victim's operation, status lookup): every
 *     attempt is 401 / 401002, and the victim's row, hub and group are
 *     unchanged. The same with the official Node SDK and with
 *     libstampdevice (sd-provision-one, DPS only).
 *   - an individual enrollment of another tenant for an id that is already
 *     registered does not take the row over;
 *   - a device moves between two enrollments of its own tenant (symmetric
 *     group -> X.509 group); a hand-made enrollment owns its rows alone;
 *   - a disabled individual enrollment blocks the group-derived key;
 *   - deleting the registration through the service API frees the id;
 *   - two tenants' X.509 groups trusting one CA: a new device is refused;
 *   - a junk flood from 127.0.0.2 is cut by the per-address failure limit
 *     and spends none of the instance's registration budget: a device from
 *     127.0.0.1 registers, polls and looks up as usual.
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
#include "ts_devrun.h"
#include "ts_stamp.h"

#define SCOPE "0ne000ISO01"
#define DPS "iso-dps"
#define API "?api-version=2021-10-01"
#define HUB_A "hub-a.iso.test.net"
#define HUB_B "hub-b.iso.test.net"

static struct ts_stamp *st;
static const char *key_a, *key_b, *key_ind_a, *key_ind_b;
static const char *ca_a, *ca_a_key, *ca_b, *ca_b_key;

/* ------------------------------------------------------------------ */
/* enrollments                                                        */
/* ------------------------------------------------------------------ */

/* initialTwin marking a control-plane-managed enrollment of tenant. */
static json_t *managed_twin(const char *tenant)
{
    return json_pack("{s:{s:s, s:s}, s:{s:{}}}", "tags", "managedBy", "stampcp", "tenantId", tenant, "properties",
                     "desired");
}

static void put_enrollment(const char *path, json_t *doc, const char *tenant)
{
    struct ts_resp *r;
    if (tenant)
        json_object_set_new(doc, "initialTwin", managed_twin(tenant));
    r = ts_stamp_service(st, NULL, "PUT", path, ts_jdump(doc));
    json_decref(doc);
    TS_EXPECT_STATUS(r, 200);
}

static void sym_group(const char *id, const char *tenant, const char *key)
{
    put_enrollment(ts_str("/enrollmentGroups/%s" API, id),
                   json_pack("{s:s, s:{s:s, s:{s:s, s:s}}, s:s}", "enrollmentGroupId", id, "attestation", "type",
                             "symmetricKey", "symmetricKey", "primaryKey", key, "secondaryKey", key,
                             "provisioningStatus", "enabled"),
                   tenant);
}

static void x509_group(const char *id, const char *tenant, const char *ca_path)
{
    const char *pem = ts_read_file(ca_path, NULL);
    if (!pem)
        ts_fail("cannot read %s", ca_path);
    put_enrollment(ts_str("/enrollmentGroups/%s" API, id),
                   json_pack("{s:s, s:{s:s, s:{s:{s:{s:s}}}}, s:s}", "enrollmentGroupId", id, "attestation", "type",
                             "x509", "x509", "signingCertificates", "primary", "certificate", pem,
                             "provisioningStatus", "enabled"),
                   tenant);
}

static void sym_individual(const char *regid, const char *tenant, const char *key, bool enabled)
{
    put_enrollment(ts_str("/enrollments/%s" API, regid),
                   json_pack("{s:s, s:{s:s, s:{s:s, s:s}}, s:s}", "registrationId", regid, "attestation", "type",
                             "symmetricKey", "symmetricKey", "primaryKey", key, "secondaryKey", key,
                             "provisioningStatus", enabled ? "enabled" : "disabled"),
                   tenant);
}

/* ------------------------------------------------------------------ */
/* device calls                                                       */
/* ------------------------------------------------------------------ */

enum cred_kind { CRED_GROUP_SAS, CRED_INDIVIDUAL_SAS, CRED_X509 };
enum route { ROUTE_REGISTER, ROUTE_POLL, ROUTE_LOOKUP };
static const char *const cred_names[] = {"group SAS", "individual SAS", "X.509 of another CA"};
static const char *const route_names[] = {"register", "poll", "lookup"};

struct cred {
    const char *authz;              /* SAS, or NULL */
    const char *crt, *key;          /* X.509 client certificate, or NULL */
};

static struct ts_resp *device_call(enum route route, const char *regid, const char *op, const struct cred *c)
{
    const char *h[] = {"Content-Type: application/json; charset=utf-8",
                       c->authz ? ts_str("Authorization: %s", c->authz) : NULL, NULL};
    const char *body = route == ROUTE_POLL ? "{}" : ts_str("{\"registrationId\":\"%s\"}", regid);
    const char *path = route == ROUTE_REGISTER ? ts_str("/%s/registrations/%s/register" API, SCOPE, regid)
                       : route == ROUTE_POLL   ? ts_str("/%s/registrations/%s/operations/%s" API, SCOPE, regid, op)
                                               : ts_str("/%s/registrations/%s" API, SCOPE, regid);
    const char *method = route == ROUTE_REGISTER ? "PUT" : route == ROUTE_POLL ? "GET" : "POST";
    return ts_https(st->port, method, path, h, body, strlen(body), c->crt, c->key);
}

/* Register and poll until settled; the final operation id. */
static const char *provision(const char *regid, const struct cred *c, const char *want_status)
{
    struct ts_resp *r = device_call(ROUTE_REGISTER, regid, NULL, c);
    const char *op;
    int64_t deadline = ts_now_ms() + 20000;
    TS_EXPECT_STATUS(r, 202);
    op = ts_str("%s", ts_jstr(r->json, "operationId"));
    while (ts_now_ms() < deadline) {
        r = device_call(ROUTE_POLL, regid, op, c);
        if (r->status == 200) {
            TS_EXPECT_STREQ(ts_jstr(r->json, "status"), want_status);
            return op;
        }
        TS_EXPECT_STATUS(r, 202);
        ts_sleep_ms(200);
    }
    ts_fail("%s: still assigning after 20 s", regid);
}

static struct cred sas_cred(const char *regid, const char *device_key)
{
    struct cred c = {ts_device_sas(SCOPE, regid, device_key, 0), NULL, NULL};
    return c;
}

static struct cred x509_cred(const char *name, const char *regid, const char *ca, const char *ca_key)
{
    struct cred c = {NULL, NULL, NULL};
    ts_pki_make_leaf(name, regid, ca, ca_key, &c.crt, &c.key);
    return c;
}

/* ------------------------------------------------------------------ */
/* what must not change                                               */
/* ------------------------------------------------------------------ */

static const char *row(const char *regid)
{
    return ts_pg_scalar(st->db, ts_str("SELECT owner || ' ' || enrollment_kind || '/' || enrollment_id || ' ' || "
                                       "status || ' ' || coalesce(assigned_hub, '-') || ' ' || coalesce(device_id, "
                                       "'-') || ' ' || operation_id || ' ' || etag || ' ' || updated_at FROM "
                                       "dps_registrations WHERE dps_id = '" DPS "' AND registration_id = '%s'",
                                       regid));
}

static const char *enrollments(void)
{
    return ts_pg_scalar(st->db, "SELECT string_agg(kind || '/' || enrollment_id || ':' || etag || ':' || owner, ',' "
                                "ORDER BY kind, enrollment_id) FROM dps_enrollments WHERE dps_id = '" DPS "'");
}

static void expect_refused(struct ts_resp *r, const char *what)
{
    if (!ts_is_dps_error(r, 401) || ts_jint(r->json, "errorCode", 0) != 401002)
        ts_fail("%s: expected 401 with errorCode 401002, got %s", what, ts_resp_str(r));
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

struct victim {
    const char *regid;
    const char *op;                 /* its operation id */
    const char *row;                /* its row after provisioning */
};

static struct victim victims[3] = {{"v-group", NULL, NULL}, {"v-ind", NULL, NULL}, {"v-x509", NULL, NULL}};

static int group_setup(void **state)
{
    struct ts_stamp_opts o = {
        .name = "iso",
        .inst = {{.id = DPS, .scope = SCOPE}},
        .hubs = {{.id = "hub-a", .host = HUB_A, .weight = 1}, {.id = "hub-b", .host = HUB_B, .weight = 1}},
        /* the matrix makes dozens of failed attempts from 127.0.0.1 on purpose */
        .auth_failures_per_10s = 100000,
    };
    struct cred c;
    (void)state;
    ts_sdk_modules();
    st = ts_stamp_start(&o);
    key_a = ts_random_key(32);
    key_b = ts_random_key(32);
    key_ind_a = ts_random_key(32);
    key_ind_b = ts_random_key(32);
    ts_pki_make_ca("iso-ca-a", "tenant A devices", &ca_a, &ca_a_key);
    ts_pki_make_ca("iso-ca-b", "tenant B devices", &ca_b, &ca_b_key);

    sym_group("tenant-a", "tenant-a", key_a);
    sym_group("tenant-b", "tenant-b", key_b);
    x509_group("tenant-a-x509", "tenant-a", ca_a);
    x509_group("tenant-b-x509", "tenant-b", ca_b);
    sym_individual("v-ind", "tenant-a", key_ind_a, true);
    sym_individual("b-ind", "tenant-b", key_ind_b, true);

    c = sas_cred("v-group", ts_derive_key(key_a, "v-group"));
    victims[0].op = provision("v-group", &c, "assigned");
    c = sas_cred("v-ind", key_ind_a);
    victims[1].op = provision("v-ind", &c, "assigned");
    c = x509_cred("v-x509-a", "v-x509", ca_a, ca_a_key);
    victims[2].op = provision("v-x509", &c, "assigned");
    for (int v = 0; v < 3; v++) {
        victims[v].row = row(victims[v].regid);
        if (!victims[v].row || strncmp(victims[v].row, "tenant:tenant-a ", 16) != 0 || !strstr(victims[v].row,
                                                                                           " assigned hub-"))
            ts_fail("%s: expected an assigned row owned by tenant-a, got %s", victims[v].regid,
                    victims[v].row ? victims[v].row : "(none)");
    }
    return 0;
}

/* Tenant B's credential of kind k for the victim's id. */
static struct cred attacker_cred(enum cred_kind k, const char *regid)
{
    switch (k) {
    case CRED_GROUP_SAS:
        return sas_cred(regid, ts_derive_key(key_b, regid));
    case CRED_INDIVIDUAL_SAS:
        return sas_cred(regid, key_ind_b);
    case CRED_X509:
    default:
        return x509_cred(ts_str("attack-%s", regid), regid, ca_b, ca_b_key);
    }
}

static void expect_victims_unchanged(const char *after, const char *groups_before)
{
    for (int v = 0; v < 3; v++) {
        const char *now = row(victims[v].regid);
        if (!now || strcmp(now, victims[v].row) != 0)
            ts_fail("after %s: %s changed: was '%s', now '%s'", after, victims[v].regid, victims[v].row,
                    now ? now : "(gone)");
    }
    TS_EXPECT_STREQ(enrollments(), groups_before);
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

static void test_matrix_http(void **state)
{
    const char *groups = enrollments();
    (void)state;
    for (int v = 0; v < 3; v++)
        for (int k = 0; k < 3; k++) {
            struct cred c = attacker_cred((enum cred_kind)k, victims[v].regid);
            for (int rt = 0; rt < 3; rt++) {
                struct ts_resp *r = device_call((enum route)rt, victims[v].regid, victims[v].op, &c);
                expect_refused(r, ts_str("%s of %s with tenant B's %s", route_names[rt], victims[v].regid,
                                         cred_names[k]));
            }
        }
    expect_victims_unchanged("the HTTP matrix", groups);
    /* the victims' own credentials still work */
    {
        struct cred c = sas_cred("v-group", ts_derive_key(key_a, "v-group"));
        struct ts_resp *r = device_call(ROUTE_LOOKUP, "v-group", NULL, &c);
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    }
}

static void expect_sdk_refused(json_t *j, int rc, const char *what)
{
    if (rc != 1 || ts_jint(j, "statusCode", 0) != 401)
        ts_fail("%s: expected the SDK to fail with 401, got exit %d: %s", what, rc, ts_jdump(j));
}

static void test_matrix_node_sdk(void **state)
{
    const char *groups = enrollments();
    struct cred c = attacker_cred(CRED_X509, "v-x509");
    json_t *j;
    int rc;
    (void)state;
    for (int v = 0; v < 3; v++) {
        const char *id = victims[v].regid;
        j = ts_sdk_symkey(st, SCOPE, id, key_b, true, NULL, &rc);
        expect_sdk_refused(j, rc, ts_str("SDK: %s with tenant B's group key", id));
        j = ts_sdk_symkey(st, SCOPE, id, key_ind_b, false, NULL, &rc);
        expect_sdk_refused(j, rc, ts_str("SDK: %s with tenant B's individual key", id));
    }
    j = ts_sdk_x509(st, SCOPE, "v-x509", c.crt, c.key, NULL, &rc);
    expect_sdk_refused(j, rc, "SDK: v-x509 with a certificate of tenant B's CA");
    c = attacker_cred(CRED_X509, "v-group");
    j = ts_sdk_x509(st, SCOPE, "v-group", c.crt, c.key, NULL, &rc);
    expect_sdk_refused(j, rc, "SDK: v-group with a certificate of tenant B's CA");
    expect_victims_unchanged("the Node SDK attacks", groups);
}

/* sd-provision-one, DPS only, with one of tenant B's credentials. */
static char **example_argv(const char *regid, const char *opt, const char *v1, const char *v2)
{
    char **argv = ts_keep(calloc(24, sizeof(char *)));
    int n = 0;
    argv[n++] = (char *)ts_bin("sd-provision-one");
    argv[n++] = "--dps";
    argv[n++] = (char *)st->hostport;
    argv[n++] = "--scope";
    argv[n++] = SCOPE;
    argv[n++] = "--registration-id";
    argv[n++] = (char *)regid;
    if (strcmp(opt, "--cert") == 0) {
        argv[n++] = "--cert";
        argv[n++] = (char *)v1;
        argv[n++] = "--key";
        argv[n++] = (char *)v2;
    } else {
        argv[n++] = (char *)opt;
        argv[n++] = (char *)v1;
    }
    argv[n++] = "--ca";
    argv[n++] = (char *)ts_pki_ca();
    argv[n++] = "--state";
    argv[n++] = ts_str("%s/attack-%s%s.state", ts_tmp(), regid, opt);
    argv[n++] = "-v";
    return argv;
}

static void test_matrix_libstampdevice(void **state)
{
    const char *groups = enrollments();
    const char *out;
    (void)state;
    for (int v = 0; v < 3; v++) {
        const char *id = victims[v].regid;
        struct cred c = attacker_cred(CRED_X509, id);
        char **runs[3] = {example_argv(id, "--group-key", key_b, NULL), example_argv(id, "--device-key", key_ind_b, NULL),
                          example_argv(id, "--cert", c.crt, c.key)};
        for (int k = 0; k < 3; k++) {
            ts_sd_run_until_stopped(ts_str("sd-attack-%s-%d", id, k), runs[k], 0, 1, &out);
            if (ts_count_lines(out, "-> 401") < 1 || strstr(out, "\"status\":\"ready\""))
                ts_fail("libstampdevice: %s with tenant B's %s: expected 401s and no success: %s", id, cred_names[k],
                        out);
        }
    }
    expect_victims_unchanged("the libstampdevice attacks", groups);
}

/* Another tenant's individual enrollment for an id tenant A already holds
 * authenticates, but does not take the row over. */
static void test_individual_of_other_owner(void **state)
{
    const char *key_shadow = ts_random_key(32), *before;
    struct cred a = sas_cred("v-shadow", ts_derive_key(key_a, "v-shadow"));
    struct cred b = sas_cred("v-shadow", key_shadow);
    (void)state;
    provision("v-shadow", &a, "assigned");
    before = row("v-shadow");
    sym_individual("v-shadow", "tenant-b", key_shadow, true);
    for (int rt = 0; rt < 3; rt++)
        expect_refused(device_call((enum route)rt, "v-shadow", "4.x", &b),
                       ts_str("%s of v-shadow with tenant B's individual enrollment", route_names[rt]));
    TS_EXPECT_STREQ(row("v-shadow"), before);
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "DELETE", "/enrollments/v-shadow" API, NULL), 204);
}

/* One tenant's device moves from its symmetric-key group to its X.509
 * group; a hand-made enrollment owns its registrations alone. */
static void test_same_tenant_move_and_handmade(void **state)
{
    const char *key_h = ts_random_key(32), *r;
    struct cred sym = sas_cred("v-move", ts_derive_key(key_a, "v-move"));
    struct cred x = x509_cred("v-move-a", "v-move", ca_a, ca_a_key);
    struct cred h = sas_cred("h-1", ts_derive_key(key_h, "h-1"));
    struct cred a = sas_cred("h-1", ts_derive_key(key_a, "h-1"));
    (void)state;
    provision("v-move", &sym, "assigned");
    provision("v-move", &x, "assigned");
    r = row("v-move");
    if (!r || strncmp(r, "tenant:tenant-a group/tenant-a-x509 assigned ", 45) != 0)
        ts_fail("v-move: expected to be owned by tenant-a through its X.509 group, got %s", r ? r : "(none)");

    sym_group("handmade", NULL, key_h);
    provision("h-1", &h, "assigned");
    r = row("h-1");
    expect_refused(device_call(ROUTE_REGISTER, "h-1", NULL, &a), "h-1 with tenant A's group key");
    expect_refused(device_call(ROUTE_LOOKUP, "h-1", NULL, &a), "lookup of h-1 with tenant A's group key");
    TS_EXPECT_STREQ(row("h-1"), r);
    if (strncmp(r, "enrollment:group:handmade group/handmade ", 41) != 0)
        ts_fail("h-1: expected to be owned by the hand-made group alone, got %s", r);
}

/* A disabled individual enrollment revokes one device of a group. */
static void test_disabled_individual_blocks_group_key(void **state)
{
    const char *key_r = ts_random_key(32), *before;
    struct cred g = sas_cred("a-retired", ts_derive_key(key_a, "a-retired"));
    struct cred own = sas_cred("a-retired", key_r);
    const char *op;
    struct ts_resp *r;
    (void)state;
    op = provision("a-retired", &g, "assigned");
    before = row("a-retired");
    sym_individual("a-retired", "tenant-a", key_r, false);
    expect_refused(device_call(ROUTE_REGISTER, "a-retired", NULL, &g), "register a-retired with the group key");
    expect_refused(device_call(ROUTE_POLL, "a-retired", op, &g), "poll a-retired with the group key");
    expect_refused(device_call(ROUTE_LOOKUP, "a-retired", NULL, &g), "lookup a-retired with the group key");
    TS_EXPECT_STREQ(row("a-retired"), before);
    /* its own (disabled) enrollment's key: authenticated, and told it is disabled */
    r = device_call(ROUTE_REGISTER, "a-retired", NULL, &own);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "disabled");
}

/* Deleting the registration (service API) is how an id changes owner. */
static void test_delete_frees_the_id(void **state)
{
    struct cred a = sas_cred("v-del", ts_derive_key(key_a, "v-del"));
    struct cred b = sas_cred("v-del", ts_derive_key(key_b, "v-del"));
    const char *r;
    (void)state;
    provision("v-del", &a, "assigned");
    expect_refused(device_call(ROUTE_REGISTER, "v-del", NULL, &b), "v-del with tenant B's group key");
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "DELETE", "/registrations/v-del" API, NULL), 204);
    provision("v-del", &b, "assigned");
    r = row("v-del");
    if (!r || strncmp(r, "tenant:tenant-b group/tenant-b ", 31) != 0)
        ts_fail("v-del: expected tenant-b to own it after the delete, got %s", r ? r : "(none)");
}

/* Two tenants' X.509 groups trusting one CA (a shared intermediate): a new
 * device of that CA belongs to neither, rather than to whichever group id
 * sorts first. Devices already registered keep their owner. */
static void test_shared_ca_is_ambiguous(void **state)
{
    struct cred c = x509_cred("amb-1", "amb-1", ca_a, ca_a_key);
    const char *groups;
    (void)state;
    x509_group("tenant-c-x509", "tenant-c", ca_a);
    groups = enrollments();
    expect_refused(device_call(ROUTE_REGISTER, "amb-1", NULL, &c), "a new device of a CA two tenants trust");
    assert_null(row("amb-1"));
    expect_victims_unchanged("a second owner of tenant A's CA", groups);
    {
        struct cred v = x509_cred("v-x509-again", "v-x509", ca_a, ca_a_key);
        provision("v-x509", &v, "assigned");
    }
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "DELETE", "/enrollmentGroups/tenant-c-x509" API, NULL), 204);
    provision("amb-1", &c, "assigned");
    TS_EXPECT_STREQ(ts_pg_scalar(st->db, "SELECT owner FROM dps_registrations WHERE registration_id = 'amb-1'"),
                    "tenant:tenant-a");
}

/* A junk flood from 127.0.0.2: cut by the per-address failure limit, no
 * registration budget spent; a device from 127.0.0.1 is not throttled. */
static void test_junk_flood(void **state)
{
    struct ts_stamp_opts o = {
        .name = "iso-flood",
        .inst = {{.id = "flood-dps", .scope = "0ne000FLD01", .per_minute = 5, .throttle = "reject"}},
        .hubs = {{.id = "hub-f", .host = "hub-f.iso.test.net", .weight = 1}},
        .auth_failures_per_10s = 10,
    };
    struct ts_stamp *fs = ts_stamp_start(&o);
    const char *key = ts_random_key(32), *junk_sas = ts_device_sas("0ne000FLD01", "junk-1", ts_random_key(32), 0);
    const char *doc = ts_jdump(ts_jkeep(json_pack(
        "{s:s, s:{s:s, s:{s:s, s:s}}, s:s, s:o}", "enrollmentGroupId", "tenant-f", "attestation", "type",
        "symmetricKey", "symmetricKey", "primaryKey", key, "secondaryKey", key, "provisioningStatus", "enabled",
        "initialTwin", managed_twin("tenant-f"))));
    char *argv[32], *out = NULL;
    int n = 0, ok401 = 0, throttled = 0, other = 0, rc;
    struct ts_resp *r;
    const char *authz = ts_device_sas("0ne000FLD01", "legit-1", ts_derive_key(key, "legit-1"), 0);
    const char *h[] = {"Content-Type: application/json; charset=utf-8", ts_str("Authorization: %s", authz), NULL};
    (void)state;

    TS_EXPECT_STATUS(ts_stamp_service(fs, NULL, "PUT", "/enrollmentGroups/tenant-f" API, doc), 200);
    argv[n++] = "/usr/bin/curl";
    argv[n++] = "-sS";
    argv[n++] = "--max-time";
    argv[n++] = "60";
    argv[n++] = "--cacert";
    argv[n++] = (char *)ts_pki_ca();
    argv[n++] = "--interface";
    argv[n++] = "127.0.0.2";
    argv[n++] = "-o";
    argv[n++] = "/dev/null";
    argv[n++] = "-w";
    argv[n++] = "%{http_code}\\n";
    argv[n++] = "-X";
    argv[n++] = "PUT";
    argv[n++] = "-H";
    argv[n++] = ts_str("Authorization: %s", junk_sas);
    argv[n++] = "-H";
    argv[n++] = "Content-Type: application/json";
    argv[n++] = "--data";
    argv[n++] = "{\"registrationId\":\"junk-1\"}";
    argv[n++] = ts_str("https://127.0.0.1:%d/0ne000FLD01/registrations/junk-1/register?n=[1-300]", fs->port);
    argv[n] = NULL;
    rc = ts_run(argv, 120000, &out);
    if (rc != 0 || !out)
        ts_fail("curl flood failed (exit %d): %s", rc, out ? out : "");
    for (char *save = NULL, *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (strcmp(l, "401") == 0) ok401++;
        else if (strcmp(l, "429") == 0) throttled++;
        else other++;
    }
    ts_log("junk flood: %d x 401, %d x 429, %d other", ok401, throttled, other);
    /* a burst of 10 failures, then about one a second: the flood is answered 429 without being authenticated */
    if (other != 0 || ok401 < 10 || ok401 > 60 || throttled < 200)
        ts_fail("junk flood: expected 10..60 401s and the rest 429, got %d 401s, %d 429s, %d other", ok401,
                throttled, other);
    /* the instance's 5 registrations a minute are untouched: the legitimate device registers, polls, looks up */
    r = ts_https(fs->port, "PUT", "/0ne000FLD01/registrations/legit-1/register" API, h,
                 "{\"registrationId\":\"legit-1\"}", 28, NULL, NULL);
    TS_EXPECT_STATUS(r, 202);
    {
        const char *op = ts_str("%s", ts_jstr(r->json, "operationId"));
        int64_t deadline = ts_now_ms() + 20000;
        do {
            ts_sleep_ms(200);
            r = ts_https(fs->port, "GET", ts_str("/0ne000FLD01/registrations/legit-1/operations/%s" API, op), h, "{}",
                         2, NULL, NULL);
        } while (r->status == 202 && ts_now_ms() < deadline);
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    }
    r = ts_https(fs->port, "POST", "/0ne000FLD01/registrations/legit-1" API, h, "{\"registrationId\":\"legit-1\"}", 28,
                 NULL, NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(ts_pg_count(fs->db, "SELECT count(*) FROM dps_registrations WHERE registration_id = 'junk-1'"),
                     0);
}

int main(void)
{
    ts_init("test_stamp_isolation");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matrix_http),
        cmocka_unit_test(test_matrix_node_sdk),
        cmocka_unit_test(test_matrix_libstampdevice),
        cmocka_unit_test(test_individual_of_other_owner),
        cmocka_unit_test(test_same_tenant_move_and_handmade),
        cmocka_unit_test(test_disabled_individual_blocks_group_key),
        cmocka_unit_test(test_delete_frees_the_id),
        cmocka_unit_test(test_shared_ca_is_ambiguous),
        cmocka_unit_test(test_junk_flood),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
