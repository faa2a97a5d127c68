/*
 * test_catalog.c - validation of every layout resource's bodies (good and
 * bad), the statements built from the descriptors, error-to-field mapping
 * and list cursors.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "listpage.h"

static bool validate(const char *collection, const char *text, bool create,
                     struct catalog_values *v, struct jv_err *e)
{
    const struct catalog_resource *res = catalog_find(collection);
    json_t *body = json_loads(text, 0, NULL);
    bool ok;
    assert_non_null(res);
    assert_non_null(body);
    memset(e, 0, sizeof *e);
    ok = catalog_validate(res, body, create, v, e);
    json_decref(body);
    return ok;
}

static const char *value_of(const char *collection, struct catalog_values *v, const char *field)
{
    bool present;
    const char *s = catalog_value(catalog_find(collection), v, field, &present);
    return present ? (s ? s : "<null>") : "<absent>";
}

static void test_good_creates(void **state)
{
    struct catalog_values v;
    struct jv_err e;
    (void)state;

    assert_true(validate("geographies", "{\"id\":\"eu\"}", true, &v, &e));
    assert_string_equal(value_of("geographies", &v, "id"), "eu");
    assert_string_equal(value_of("geographies", &v, "displayName"), "eu");  /* defaults to id */
    catalog_values_free(&v);

    assert_true(validate("regions", "{\"id\":\"eu-west\",\"geography\":\"eu\",\"pairedRegion\":null,"
                                    "\"displayName\":\"EU West\"}", true, &v, &e));
    assert_string_equal(value_of("regions", &v, "pairedRegion"), "<null>");
    assert_string_equal(value_of("regions", &v, "displayName"), "EU West");
    catalog_values_free(&v);

    assert_true(validate("stamps", "{\"id\":\"s1\",\"region\":\"r\",\"status\":\"draining\",\"tenancy\":\"dedicated\"}",
                         true, &v, &e));
    assert_string_equal(value_of("stamps", &v, "status"), "draining");
    assert_string_equal(value_of("stamps", &v, "tenancy"), "dedicated");
    catalog_values_free(&v);

    assert_true(validate("dps-instances", "{\"id\":\"d\",\"stamp\":\"s1\",\"idScope\":\"0ne0001\","
                                          "\"endpoint\":\"127.0.0.1:8443\",\"maxRegistrations\":1000000,"
                                          "\"registrationsPerMinute\":1}", true, &v, &e));
    assert_string_equal(value_of("dps-instances", &v, "maxRegistrations"), "1000000");
    assert_string_equal(value_of("dps-instances", &v, "registrationsPerMinute"), "1");
    catalog_values_free(&v);

    assert_true(validate("hubs", "{\"id\":\"h\",\"stamp\":\"s1\",\"hostName\":\"hub-1.example.net\","
                                 "\"allocationWeight\":1000}", true, &v, &e));
    assert_string_equal(value_of("hubs", &v, "allocationWeight"), "1000");
    assert_string_equal(value_of("hubs", &v, "maxDevices"), "<absent>");  /* database default */
    catalog_values_free(&v);
}

static void test_good_updates(void **state)
{
    struct catalog_values v;
    struct jv_err e;
    (void)state;
    assert_true(validate("stamps", "{\"status\":\"draining\"}", false, &v, &e));
    assert_int_equal(v.n, 1);
    catalog_values_free(&v);
    assert_true(validate("regions", "{\"pairedRegion\":\"eu-north\"}", false, &v, &e));
    assert_string_equal(value_of("regions", &v, "pairedRegion"), "eu-north");
    catalog_values_free(&v);
    assert_true(validate("hubs", "{}", false, &v, &e));
    assert_int_equal(v.n, 0);
    /* displayName gets no default on update */
    assert_true(validate("geographies", "{\"displayName\":\"Europe\"}", false, &v, &e));
    assert_int_equal(v.n, 1);
    catalog_values_free(&v);
}

struct bad {
    const char *collection;
    bool create;
    const char *body;
    const char *code;
    const char *field;
};

static void test_bad_bodies(void **state)
{
    static const struct bad cases[] = {
        {"geographies", true, "{}", "missing_field", "id"},
        {"geographies", true, "{\"id\":\"eu\",\"colour\":\"red\"}", "unknown_field", "colour"},
        {"geographies", true, "{\"id\":\"EU\"}", "invalid_value", "id"},
        {"geographies", true, "{\"id\":\"-eu\"}", "invalid_value", "id"},
        {"geographies", true, "{\"id\":\"\"}", "invalid_value", "id"},
        {"geographies", true, "{\"id\":7}", "invalid_type", "id"},
        {"geographies", true, "{\"id\":null}", "invalid_type", "id"},
        {"geographies", true, "{\"id\":\"eu\",\"createdAt\":\"x\"}", "read_only_field", "createdAt"},
        {"geographies", true, "{\"id\":\"eu\",\"version\":3}", "read_only_field", "version"},
        {"geographies", false, "{\"id\":\"eu\"}", "read_only_field", "id"},
        {"geographies", true, "{\"id\":\"eu\",\"displayName\":\"\"}", "invalid_value", "displayName"},
        {"regions", true, "{\"id\":\"r\"}", "missing_field", "geography"},
        {"regions", true, "{\"id\":\"r\",\"geography\":\"eu\",\"pairedRegion\":5}", "invalid_type", "pairedRegion"},
        {"regions", true, "{\"id\":\"r\",\"geography\":\"eu\",\"pairedRegion\":\"Bad Id\"}", "invalid_value", "pairedRegion"},
        {"regions", false, "{\"geography\":\"us\"}", "read_only_field", "geography"},
        {"stamps", true, "{\"id\":\"s\",\"region\":\"r\",\"status\":\"paused\"}", "invalid_value", "status"},
        {"stamps", true, "{\"id\":\"s\",\"region\":\"r\",\"tenancy\":\"shared\"}", "invalid_value", "tenancy"},
        {"stamps", true, "{\"id\":\"s\",\"region\":\"r\",\"health\":\"healthy\"}", "read_only_field", "health"},
        {"stamps", false, "{\"region\":\"r2\"}", "read_only_field", "region"},
        {"stamps", false, "{\"load\":{}}", "read_only_field", "load"},
        {"stamps", false, "{\"status\":null}", "invalid_type", "status"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"endpoint\":\"h:1\"}", "missing_field", "idScope"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"idScope\":\"0ne\",\"endpoint\":\"h:1\",\"maxRegistrations\":0}", "out_of_range", "maxRegistrations"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"idScope\":\"0ne\",\"endpoint\":\"h:1\",\"maxRegistrations\":1000001}", "out_of_range", "maxRegistrations"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"idScope\":\"0ne\",\"endpoint\":\"h:1\",\"registrationsPerMinute\":0}", "out_of_range", "registrationsPerMinute"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"idScope\":\"0ne\",\"endpoint\":\"h:1\",\"maxRegistrations\":\"10\"}", "invalid_type", "maxRegistrations"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"idScope\":\"0ne\",\"endpoint\":\"h:1\",\"maxRegistrations\":1.5}", "invalid_type", "maxRegistrations"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"idScope\":\"0ne-1\",\"endpoint\":\"h:1\"}", "invalid_value", "idScope"},
        {"dps-instances", true, "{\"id\":\"d\",\"stamp\":\"s\",\"idScope\":\"0ne\",\"endpoint\":\"h 1\"}", "invalid_value", "endpoint"},
        {"hubs", true, "{\"id\":\"h\",\"stamp\":\"s\",\"hostName\":\"a.b\",\"allocationWeight\":1001}", "out_of_range", "allocationWeight"},
        {"hubs", true, "{\"id\":\"h\",\"stamp\":\"s\",\"hostName\":\"a.b\",\"allocationWeight\":0}", "out_of_range", "allocationWeight"},
        {"hubs", true, "{\"id\":\"h\",\"stamp\":\"s\",\"hostName\":\"a.b\",\"maxDevices\":-1}", "out_of_range", "maxDevices"},
        {"hubs", true, "{\"id\":\"h\",\"stamp\":\"s\",\"hostName\":\"a/b\"}", "invalid_value", "hostName"},
        {"hubs", true, "{\"id\":\"h\",\"stamp\":\"s\",\"hostName\":true}", "invalid_type", "hostName"},
        {"hubs", false, "{\"stamp\":\"s2\"}", "read_only_field", "stamp"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct catalog_values v;
        struct jv_err e;
        if (validate(cases[i].collection, cases[i].body, cases[i].create, &v, &e)) {
            catalog_values_free(&v);
            fail_msg("case %zu accepted: %s %s", i, cases[i].collection, cases[i].body);
        }
        if (strcmp(e.code, cases[i].code) != 0 || strcmp(e.field, cases[i].field) != 0)
            fail_msg("case %zu (%s %s): got %s/%s, want %s/%s: %s", i, cases[i].collection,
                     cases[i].body, e.code, e.field, cases[i].code, cases[i].field, e.message);
        assert_non_null(strstr(e.message, cases[i].field));
    }
}

static void test_long_display_name(void **state)
{
    struct catalog_values v;
    struct jv_err e;
    char body[400];
    (void)state;
    snprintf(body, sizeof body, "{\"id\":\"eu\",\"displayName\":\"%0129d\"}", 0);
    assert_false(validate("geographies", body, true, &v, &e));
    assert_string_equal(e.code, "invalid_value");
    snprintf(body, sizeof body, "{\"id\":\"eu\",\"displayName\":\"%0128d\"}", 0);
    assert_true(validate("geographies", body, true, &v, &e));
    catalog_values_free(&v);
}

static void test_sql(void **state)
{
    const struct catalog_resource *hubs = catalog_find("hubs");
    const struct catalog_resource *stamps = catalog_find("stamps");
    struct catalog_values v;
    struct jv_err e;
    int f[2] = {0, 1};
    char *sql;
    (void)state;

    assert_true(validate("hubs", "{\"id\":\"h\",\"stamp\":\"s\",\"hostName\":\"a.b\"}", true, &v, &e));
    sql = catalog_sql_insert(hubs, &v);
    assert_non_null(strstr(sql, "INSERT INTO hubs AS t (id, stamp_id, host_name) VALUES ($1, $2, $3) RETURNING"));
    free(sql);
    catalog_values_free(&v);

    assert_true(validate("hubs", "{\"maxDevices\":5,\"allocationWeight\":2}", false, &v, &e));
    sql = catalog_sql_update(hubs, &v);
    assert_non_null(strstr(sql, "SET max_devices = $2, allocation_weight = $3, version = t.version + 1"));
    assert_non_null(strstr(sql, "WHERE t.id = $1"));
    free(sql);
    catalog_values_free(&v);

    sql = catalog_sql_list(stamps, f, 2, false);
    assert_non_null(strstr(sql, "t.region_id = $3 AND t.region_id IN (SELECT r.id FROM regions r WHERE r.geography_id = $4)"));
    assert_non_null(strstr(sql, "ORDER BY t.id LIMIT $2"));
    assert_null(strstr(sql, "$?"));
    free(sql);
}

static void test_constraint_mapping(void **state)
{
    const struct catalog_resource *dps = catalog_find("dps-instances");
    const struct catalog_resource *regions = catalog_find("regions");
    (void)state;
    assert_string_equal(catalog_field_for_constraint(dps, "dps_instances_pkey", NULL), "id");
    assert_string_equal(catalog_field_for_constraint(dps, "dps_instances_id_scope_key", NULL), "idScope");
    assert_string_equal(catalog_field_for_constraint(dps, "dps_instances_stamp_id_fkey", NULL), "stamp");
    assert_string_equal(catalog_field_for_constraint(regions, NULL, "paired_region_id"), "pairedRegion");
    assert_null(catalog_field_for_constraint(dps, "hubs_pkey", NULL));
    assert_null(catalog_find("tenants"));
}

static void test_cursor(void **state)
{
    char id[64];
    char *c = list_cursor_encode("c1", "eu-west-1");
    (void)state;
    assert_null(strchr(c, '='));
    assert_true(list_cursor_decode("c1", c, jv_valid_id, id, sizeof id));
    assert_string_equal(id, "eu-west-1");
    assert_false(list_cursor_decode("d1", c, jv_valid_id, id, sizeof id));   /* another kind of list */
    free(c);
    assert_false(list_cursor_decode("c1", "", jv_valid_id, id, sizeof id));
    assert_false(list_cursor_decode("c1", "!!!!", jv_valid_id, id, sizeof id));
    assert_false(list_cursor_decode("c1", "ZXUtd2VzdA", jv_valid_id, id, sizeof id));   /* "eu-west" without prefix */
    assert_false(list_cursor_decode("c1", "YzE6RVU", jv_valid_id, id, sizeof id));      /* "c1:EU": not an id */
    assert_false(list_cursor_decode("c1", "a", jv_valid_id, id, sizeof id));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_creates),
        cmocka_unit_test(test_good_updates),
        cmocka_unit_test(test_bad_bodies),
        cmocka_unit_test(test_long_display_name),
        cmocka_unit_test(test_sql),
        cmocka_unit_test(test_constraint_mapping),
        cmocka_unit_test(test_cursor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
