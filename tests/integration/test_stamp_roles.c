/*
 * test_stamp_roles - least privilege in PostgreSQL and the geography check of
 * the stamp agent (docs/security.md "Database roles"; issue #9 items 6, 7a).
 *
 * A geography database (eu) and a global catalog get the control plane's
 * real migrations (schema/geo, schema/global). Two stamps (A, B) share that
 * geography database, each agent running as its own role
 * ("stampcp_agent_<pid>_<name>", set up the way
 * infra/stack does it: `stamp-agent --migrate` as the owner, then
 * stamp_agent_grant()). Then:
 *  - a device registers and is assigned at each stamp, under the agent's role,
 *    with an X.509 certificate of the stamp's group CA and with a group-derived
 *    symmetric key; stamp B's CA is refused at stamp A (its group is invisible);
 *  - each role SELECTs only its own stamp's enrollments and registrations;
 *    its UPDATE/DELETE of the other stamp's rows affect 0 rows, its INSERT of
 *    a row for the other stamp's instance and moving its own row there are
 *    refused, and the other stamp's rows are unchanged afterwards;
 *  - it may not touch the mapping table or the grant function;
 *  - every control-plane table of the geography database and of the global
 *    catalog is "permission denied" for it;
 *  - an agent configured for geography us on the eu database refuses to start
 *    (exit 3, log line startup_refused reason=wrong_geography), and so does
 *    `stamp-agent --migrate`; a database without geo_identity likewise;
 *  - a reconnect that lands on a database whose identity changed makes the
 *    agent answer 503 (and /healthz 503) without exiting, and it serves again
 *    once the identity is right.
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
#include <dirent.h>

#include "ts.h"
#include "ts_stamp.h"

#define API "?api-version=2021-10-01"
#define SCOPE_A "0ne000ROLA1"
#define SCOPE_B "0ne000ROLB1"
#define HUB_A "hub-ra.roles.test.net"
#define HUB_B "hub-rb.roles.test.net"

static const char *geo_db, *global_db;
static struct ts_stamp *sa, *sb;
static const char *key_a, *key_b;
static const char *ca_a, *ca_a_key, *ca_b, *ca_b_key;

/* The control plane's migrations of one kind, in order, as its owner would
 * apply them (the tables are what matters here, not who applies them). */
static void apply_schema(const char *db, const char *kind)
{
    const char *dir = ts_str("%s/schema/%s", ts_env("STAMPCP_SOURCE_DIR"), kind);
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    size_t len;
    if (n <= 0)
        ts_fail("no migrations in %s", dir);
    for (int i = 0; i < n; i++) {
        if (strstr(names[i]->d_name, ".sql")) {
            const char *sql = ts_read_file(ts_str("%s/%s", dir, names[i]->d_name), &len);
            if (!sql)
                ts_fail("cannot read %s/%s", dir, names[i]->d_name);
            PQclear(ts_pg_query(db, sql));
        }
        free(names[i]);
    }
    free(names);
}

static void put_group(struct ts_stamp *s, const char *group, const char *key)
{
    ts_stamp_put_symkey_group(s, group, key, ts_random_key(32));
}

static void put_x509_group(struct ts_stamp *s, const char *group, const char *ca)
{
    const char *pem = ts_read_file(ca, NULL);
    json_t *doc;
    if (!pem)
        ts_fail("cannot read %s", ca);
    doc = json_pack("{s:s, s:{s:s, s:{s:{s:{s:s}}}}}", "enrollmentGroupId", group, "attestation", "type", "x509",
                    "x509", "signingCertificates", "primary", "certificate", pem);
    TS_EXPECT_STATUS(ts_stamp_service(s, NULL, "PUT", ts_str("/enrollmentGroups/%s" API, group), ts_jdump(doc)), 200);
    json_decref(doc);
}

static int group_setup(void **state)
{
    (void)state;
    geo_db = ts_pg_create_db(ts_env("STAMPCP_TEST_PG"), ts_unique("geo_eu"));
    global_db = ts_pg_create_db(ts_env("STAMPCP_TEST_PG"), ts_unique("global"));
    apply_schema(geo_db, "geo");
    apply_schema(global_db, "global");
    PQclear(ts_pg_query(geo_db, "INSERT INTO geo_identity (geography) VALUES ('eu')"));
    TS_EXPECT_STREQ(ts_pg_scalar(geo_db, "SELECT geography FROM geo_identity"), "eu");

    struct ts_stamp_opts oa = {
        .name = "roles-a", .db = geo_db, .geography = "eu", .own_role = true,
        .inst = { { .id = "ra-dps", .scope = SCOPE_A } },
        .hubs = { { .id = "hub-ra", .host = HUB_A } },
    };
    struct ts_stamp_opts ob = {
        .name = "roles-b", .db = geo_db, .geography = "eu", .own_role = true,
        .inst = { { .id = "rb-dps", .scope = SCOPE_B } },
        .hubs = { { .id = "hub-rb", .host = HUB_B } },
    };
    sa = ts_stamp_start(&oa);
    sb = ts_stamp_start(&ob);
    key_a = ts_random_key(32);
    key_b = ts_random_key(32);
    put_group(sa, "grp-a", key_a);
    put_group(sb, "grp-b", key_b);
    ts_pki_make_ca("roles-ca-a", "roles CA A", &ca_a, &ca_a_key);
    ts_pki_make_ca("roles-ca-b", "roles CA B", &ca_b, &ca_b_key);
    put_x509_group(sa, "x509-a", ca_a);
    put_x509_group(sb, "x509-b", ca_b);
    return 0;
}

static void provision(struct ts_stamp *s, const char *scope, const char *key, const char *regid, const char *hub)
{
    struct ts_resp *r = ts_stamp_provision(s, scope, regid, ts_device_sas(scope, regid, ts_derive_key(key, regid), 0),
                                           20000);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "registrationState"), "assignedHub"), hub);
}

/* Register with a client certificate (CN = regid) of ca, and poll until assigned. */
static void provision_x509(struct ts_stamp *s, const char *scope, const char *regid, const char *ca,
                           const char *ca_key, const char *hub)
{
    const char *crt, *key, *op, *body = ts_str("{\"registrationId\":\"%s\"}", regid);
    const char *h[] = { "Accept: application/json", "Content-Type: application/json; charset=utf-8", NULL };
    int64_t deadline = ts_now_ms() + 20000;
    struct ts_resp *r;

    ts_pki_make_leaf(ts_str("leaf-%s-%lld", regid, (long long)ts_now_ms()), regid, ca, ca_key, &crt, &key);
    r = ts_https(s->port, "PUT", ts_str("/%s/registrations/%s/register?api-version=2019-03-31", scope, regid), h,
                 body, strlen(body), crt, key);
    while (r->status == 202 && (op = ts_jstr(r->json, "operationId")) && ts_now_ms() < deadline) {
        ts_sleep_ms(200);
        r = ts_https(s->port, "GET",
                     ts_str("/%s/registrations/%s/operations/%s?api-version=2019-03-31", scope, regid, op), h, "{}",
                     2, crt, key);
        if (r->status == 200 && ts_jstr(r->json, "status") && strcmp(ts_jstr(r->json, "status"), "assigning") == 0)
            r->status = 202;
    }
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "registrationState"), "assignedHub"), hub);
}

/* The agents work end to end under their roles, and really use them. */
static void test_provision_under_own_role(void **state)
{
    (void)state;
    provision_x509(sa, SCOPE_A, "dev-a-x", ca_a, ca_a_key, HUB_A);
    provision_x509(sb, SCOPE_B, "dev-b-x", ca_b, ca_b_key, HUB_B);
    /* another stamp's CA is refused at this stamp: its group is not visible here */
    {
        const char *crt, *key, *body = "{\"registrationId\":\"dev-b-y\"}";
        const char *h[] = { "Accept: application/json", "Content-Type: application/json; charset=utf-8", NULL };
        ts_pki_make_leaf("leaf-dev-b-y", "dev-b-y", ca_b, ca_b_key, &crt, &key);
        struct ts_resp *r = ts_https(sa->port, "PUT", "/" SCOPE_A "/registrations/dev-b-y/register?api-version=2019-03-31",
                                     h, body, strlen(body), crt, key);
        if (!ts_is_dps_error(r, 401))
            ts_fail("stamp A accepted a certificate of stamp B's CA: %s", ts_resp_str(r));
    }
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE registration_id = 'dev-b-y'"),
                     0);
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'ra-dps' "
                                         "AND status = 'assigned'"), 1);
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'rb-dps' "
                                         "AND status = 'assigned'"), 1);
    /* the agents' connections are their own roles, not a superuser */
    assert_true(ts_pg_count(geo_db, ts_str("SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'", sa->role)) > 0);
    assert_true(ts_pg_count(geo_db, ts_str("SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'", sb->role)) > 0);
    TS_EXPECT_STREQ(ts_pg_scalar(sa->role_db, "SELECT current_user"), sa->role);
    TS_EXPECT_STREQ(ts_pg_scalar(sa->role_db, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"),
                    "false");
}

/* The same with group-derived symmetric keys (the register upsert and the enrollment read). */
static void test_provision_symmetric_under_own_role(void **state)
{
    (void)state;
    provision(sa, SCOPE_A, key_a, "dev-a-1", HUB_A);
    provision(sa, SCOPE_A, key_a, "dev-a-2", HUB_A);
    provision(sb, SCOPE_B, key_b, "dev-b-1", HUB_B);
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'ra-dps' "
                                         "AND status = 'assigned'"), 3);
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'rb-dps' "
                                         "AND status = 'assigned'"), 2);
}

static void expect_only(const char *role_db, const char *table, const char *own_dps)
{
    long total = ts_pg_count(role_db, ts_str("SELECT count(*) FROM %s", table));
    long own = ts_pg_count(geo_db, ts_str("SELECT count(*) FROM %s WHERE dps_id = '%s'", table, own_dps));
    long all = ts_pg_count(geo_db, ts_str("SELECT count(*) FROM %s", table));
    long foreign_rows = ts_pg_count(role_db, ts_str("SELECT count(*) FROM %s WHERE dps_id <> '%s'", table, own_dps));
    if (own < 1 || all <= own)
        ts_fail("%s: the fixture needs rows of both stamps (own %ld, all %ld)", table, own, all);
    if (total != own || foreign_rows != 0)
        ts_fail("%s: the role of %s sees %ld rows (%ld of another stamp); its own are %ld of %ld", table, own_dps,
                total, foreign_rows, own, all);
}

static void test_select_own_rows_only(void **state)
{
    (void)state;
    expect_only(sa->role_db, "dps_registrations", "ra-dps");
    expect_only(sa->role_db, "dps_enrollments", "ra-dps");
    expect_only(sb->role_db, "dps_registrations", "rb-dps");
    expect_only(sb->role_db, "dps_enrollments", "rb-dps");
    /* even naming the other stamp's row explicitly */
    assert_int_equal(ts_pg_count(sa->role_db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'rb-dps' "
                                              "AND registration_id = 'dev-b-x'"), 0);
    /* its own mapping row only */
    assert_int_equal(ts_pg_count(sa->role_db, "SELECT count(*) FROM stamp_agent_dps"), 1);
    TS_EXPECT_STREQ(ts_pg_scalar(sa->role_db, "SELECT dps_id FROM stamp_agent_dps"), "ra-dps");
}

static void expect_state(const char *what, const char *got, const char *want)
{
    if (!got || strcmp(got, want) != 0)
        ts_fail("%s: expected SQLSTATE %s, got %s", what, want, got ? got : "success");
}

static void expect_rows(const char *role_db, const char *sql, long want)
{
    long n = -1;
    const char *st = ts_pg_try(role_db, sql, &n);
    if (st)
        ts_fail("%s: failed with SQLSTATE %s", sql, st);
    if (n != want)
        ts_fail("%s: %ld rows, expected %ld", sql, n, want);
}

static void test_writes_to_other_stamp_refused(void **state)
{
    (void)state;
    /* the fixture: A's dev-a-1 and B's dev-b-1 exist (an UPDATE of a missing row would "succeed") */
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE (dps_id, registration_id) "
                                         "IN (('ra-dps', 'dev-a-x'), ('rb-dps', 'dev-b-x'))"), 2);
    const char *before = ts_pg_scalar(geo_db, "SELECT string_agg(registration_id || ':' || status || ':' || "
                                              "coalesce(assigned_hub, '') || ':' || etag, ',' ORDER BY registration_id) "
                                              "FROM dps_registrations WHERE dps_id = 'rb-dps'");
    const char *enr_before = ts_pg_scalar(geo_db, "SELECT string_agg(enrollment_id || ':' || etag || ':' || md5(doc::text), ',') "
                                                  "FROM dps_enrollments WHERE dps_id = 'rb-dps'");

    expect_rows(sa->role_db, "UPDATE dps_registrations SET status = 'failed' WHERE dps_id = 'rb-dps'", 0);
    expect_rows(sa->role_db, "UPDATE dps_registrations SET assigned_hub = 'evil' WHERE registration_id = 'dev-b-x'", 0);
    expect_rows(sa->role_db, "DELETE FROM dps_registrations WHERE dps_id = 'rb-dps'", 0);
    expect_rows(sa->role_db, "DELETE FROM dps_enrollments WHERE dps_id = 'rb-dps'", 0);
    expect_rows(sa->role_db, "UPDATE dps_enrollments SET etag = etag + 1 WHERE dps_id = 'rb-dps'", 0);
    /* 42501: new row violates row-level security policy */
    expect_state("INSERT a registration for the other stamp",
                 ts_pg_try(sa->role_db,
                           "INSERT INTO dps_registrations (dps_id, registration_id, enrollment_kind, enrollment_id, "
                           "operation_id, status, owner) VALUES ('rb-dps', 'planted', 'group', 'grp-b', 'op', "
                           "'assigned', 'enrollment:group:grp-b')", NULL),
                 "42501");
    expect_state("INSERT an enrollment for the other stamp",
                 ts_pg_try(sa->role_db,
                           "INSERT INTO dps_enrollments (dps_id, kind, enrollment_id, attestation, doc) VALUES "
                           "('rb-dps', 'group', 'evil', 'symmetricKey', '{}')", NULL),
                 "42501");
    expect_state("move an own row to the other stamp",
                 ts_pg_try(sa->role_db, "UPDATE dps_registrations SET dps_id = 'rb-dps' WHERE registration_id = 'dev-a-x'",
                           NULL),
                 "42501");
    /* no widening its own grant */
    expect_state("INSERT into the mapping",
                 ts_pg_try(sa->role_db, "INSERT INTO stamp_agent_dps VALUES (current_user, 'rb-dps')", NULL), "42501");
    expect_state("call the grant function",
                 ts_pg_try(sa->role_db, "SELECT stamp_agent_grant(current_user, ARRAY['rb-dps'])", NULL), "42501");
    expect_state("write geo_identity",
                 ts_pg_try(sa->role_db, "UPDATE geo_identity SET geography = 'us'", NULL), "42501");

    TS_EXPECT_STREQ(ts_pg_scalar(geo_db, "SELECT string_agg(registration_id || ':' || status || ':' || "
                                         "coalesce(assigned_hub, '') || ':' || etag, ',' ORDER BY registration_id) "
                                         "FROM dps_registrations WHERE dps_id = 'rb-dps'"),
                    before);
    TS_EXPECT_STREQ(ts_pg_scalar(geo_db, "SELECT string_agg(enrollment_id || ':' || etag || ':' || md5(doc::text), ',') "
                                         "FROM dps_enrollments WHERE dps_id = 'rb-dps'"),
                    enr_before);
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'ra-dps' "
                                         "AND registration_id = 'dev-a-x'"), 1);
    /* and B, still working, still sees its device */
    provision_x509(sb, SCOPE_B, "dev-b-x", ca_b, ca_b_key, HUB_B);
}

/* Every table of db except the allowed ones: permission denied for role_db. */
static void expect_tables_denied(const char *db, const char *role_db, const char *allowed_sql_list)
{
    PGresult *r = ts_pg_query(db, ts_str("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename "
                                         "NOT IN (%s) ORDER BY 1", allowed_sql_list));
    int n = PQntuples(r);
    if (n < 3) {
        PQclear(r);
        ts_fail("expected the control plane's tables in %s, found %d", db, n);
    }
    for (int i = 0; i < n; i++) {
        const char *t = ts_str("%s", PQgetvalue(r, i, 0));
        expect_state(ts_str("SELECT from %s", t), ts_pg_try(role_db, ts_str("SELECT * FROM %s LIMIT 1", t), NULL),
                     "42501");
    }
    ts_log("%d control-plane tables denied", n);
    PQclear(r);
}

static void test_control_plane_tables_denied(void **state)
{
    (void)state;
    assert_true(ts_pg_table_exists(geo_db, "devices"));
    expect_tables_denied(geo_db, sa->role_db,
                         "'dps_enrollments','dps_registrations','hub_devices','stamp_agent_dps',"
                         "'stamp_schema_migrations','geo_identity'");
    expect_tables_denied(geo_db, sb->role_db,
                         "'dps_enrollments','dps_registrations','hub_devices','stamp_agent_dps',"
                         "'stamp_schema_migrations','geo_identity'");
    /* geo_identity: the geography column only */
    TS_EXPECT_STREQ(ts_pg_scalar(sa->role_db, "SELECT geography FROM geo_identity"), "eu");
    expect_state("geo_identity.*", ts_pg_try(sa->role_db, "SELECT * FROM geo_identity", NULL), "42501");
    /* the global catalog: nothing at all */
    const char *global_as_a = ts_pg_conninfo_db(sa->role_db, ts_pg_scalar(global_db, "SELECT current_database()"));
    assert_true(ts_pg_table_exists(global_db, "tenants"));
    expect_tables_denied(global_db, global_as_a, "''");
}

static struct ts_proc *spawn_and_wait_exit(struct ts_stamp *s, const char *name)
{
    struct ts_proc *p = ts_proc_spawn(name, ts_stamp_argv(s), NULL, NULL);
    if (!ts_proc_wait(p, 15000)) {
        ts_proc_dump_log(p, 4000);
        ts_fail("%s: the agent did not exit within 15 s", name);
    }
    return p;
}

static void test_wrong_geography_refuses_start(void **state)
{
    (void)state;
    /* configured for us, pointed at eu's database */
    struct ts_stamp_opts o = {
        .name = "roles-wrong", .db = geo_db, .geography = "us", .no_start = true,
        .inst = { { .id = "rw-dps", .scope = "0ne000ROLW1" } },
        .hubs = { { .id = "hub-rw", .host = "hub-rw.roles.test.net" } },
    };
    struct ts_stamp *w = ts_stamp_start(&o);
    struct ts_proc *p = spawn_and_wait_exit(w, "agent-wrong-geo");
    if (ts_proc_exit_code(p) != 3) {
        ts_proc_dump_log(p, 4000);
        ts_fail("exit code %d, expected 3", ts_proc_exit_code(p));
    }
    assert_true(ts_proc_log_contains(p, "event=startup_refused reason=wrong_geography geography=us"));
    assert_true(ts_proc_log_contains(p, "database belongs to geography 'eu', configured as 'us'"));
    assert_false(ts_proc_log_contains(p, "event=dps_request"));

    /* --migrate refuses too, before touching the database */
    char *margv[] = { (char *)ts_bin("stamp-agent"), "--config", (char *)w->config_path, "--migrate", NULL };
    char *out = NULL;
    assert_int_equal(ts_run(margv, 30000, &out), 3);
    assert_non_null(strstr(out, "reason=wrong_geography"));

    /* a database that is no geography database at all (no geo_identity) */
    struct ts_stamp_opts o2 = {
        .name = "roles-nogeo", .db = ts_pg_create_db(ts_env("STAMPCP_TEST_PG"), ts_unique("nogeo")),
        .geography = "eu", .no_start = true,
        .inst = { { .id = "rn-dps", .scope = "0ne000ROLN1" } },
        .hubs = { { .id = "hub-rn", .host = "hub-rn.roles.test.net" } },
    };
    struct ts_stamp *n = ts_stamp_start(&o2);
    p = spawn_and_wait_exit(n, "agent-no-geo");
    assert_int_equal(ts_proc_exit_code(p), 3);
    assert_true(ts_proc_log_contains(p, "event=startup_refused reason=wrong_geography geography=eu"));
    assert_true(ts_proc_log_contains(p, "no geo_identity table"));
    assert_false(ts_pg_table_exists(o2.db, "dps_registrations"));   /* nothing migrated into it */
}

static bool healthz_is(struct ts_stamp *s, int status)
{
    struct ts_resp *r = ts_https(s->port, "GET", "/healthz", NULL, NULL, 0, NULL, NULL);
    return r->status == status;   /* r is library-owned */
}
static bool a_unhealthy(void *arg) { (void)arg; return healthz_is(sa, 503); }
static bool a_healthy(void *arg) { (void)arg; return healthz_is(sa, 200); }

static void test_reconnect_to_wrong_geography_503(void **state)
{
    (void)state;
    const char *kill_a = ts_str("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '%s'",
                                sa->role);
    /* the database now says it is us's; A's connections drop and come back */
    PQclear(ts_pg_query(geo_db, "UPDATE geo_identity SET geography = 'us'"));
    assert_true(ts_pg_count(geo_db, kill_a) > 0);
    if (!ts_wait_until(a_unhealthy, NULL, 15000))
        ts_fail("stamp A still healthy on a database of another geography");
    const char *crt, *key, *body = "{\"registrationId\":\"dev-a-3\"}";
    const char *h[] = { "Accept: application/json", "Content-Type: application/json; charset=utf-8", NULL };
    ts_pki_make_leaf("leaf-dev-a-3-early", "dev-a-3", ca_a, ca_a_key, &crt, &key);
    struct ts_resp *r = ts_https(sa->port, "PUT", "/" SCOPE_A "/registrations/dev-a-3/register?api-version=2019-03-31",
                                 h, body, strlen(body), crt, key);
    if (!ts_is_dps_error(r, 503))
        ts_fail("register on the wrong database: %s", ts_resp_str(r));
    TS_EXPECT_STATUS(ts_stamp_service(sa, NULL, "GET", "/enrollmentGroups/grp-a" API, NULL), 503);
    assert_true(ts_proc_alive(sa->proc));
    assert_true(ts_proc_log_contains(sa->proc, "event=pg_identity_refused"));
    assert_true(ts_proc_log_contains(sa->proc, "reason=wrong_geography"));
    assert_int_equal(ts_pg_count(geo_db, "SELECT count(*) FROM dps_registrations WHERE registration_id = 'dev-a-3'"), 0);

    /* right again: it serves again, without a restart */
    PQclear(ts_pg_query(geo_db, "UPDATE geo_identity SET geography = 'eu'"));
    if (!ts_wait_until(a_healthy, NULL, 20000))
        ts_fail("stamp A did not resume on its own database");
    provision_x509(sa, SCOPE_A, "dev-a-3", ca_a, ca_a_key, HUB_A);
    assert_true(ts_proc_log_contains(sa->proc, "event=pg_identity_ok"));
}

int main(void)
{
    ts_init("test_stamp_roles");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provision_under_own_role),
        cmocka_unit_test(test_provision_symmetric_under_own_role),
        cmocka_unit_test(test_select_own_rows_only),
        cmocka_unit_test(test_writes_to_other_stamp_refused),
        cmocka_unit_test(test_control_plane_tables_denied),
        cmocka_unit_test(test_wrong_geography_refuses_start),
        cmocka_unit_test(test_reconnect_to_wrong_geography_503),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
