/*
 * test_admin_crud - the five operations on every admin collection, against
 * docs/api.md: create (201, Location, defaults), get, list (ordered by id,
 * cursor pagination, filters), patch (merge, version, updatedAt), delete
 * (204 then 404), and the conflict / reference rules (409 has_dependents,
 * 409 already_exists, 422 invalid_reference, 422 geography_not_configured).
 *
 * One control plane for the whole file, configured with six geographies
 * (us, eu, ap, sa, af, oc; oc is never created). Each test uses its own ids.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"

static struct ts_cp *cp;

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "us", "eu", "ap", "sa", "af", "oc", NULL } };
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000)) {
        ts_log("readyz: %s", ts_resp_str(ts_get(cp, "/readyz")));
        return -1;
    }
    /* us and eu are used by the region/stamp/dps/hub tests. */
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"us\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"eu\"}"), 201);
    return 0;
}

/* ---- helpers ---- */

static json_t *body(const struct ts_resp *r)
{
    if (!r->json || !json_is_object(r->json))
        ts_fail("expected a JSON object body, got %s", ts_resp_str(r));
    return r->json;
}

/* Common checks on a freshly created resource. */
static json_t *create(const char *coll, const char *json, const char *id)
{
    struct ts_resp *r = ts_admin(cp, "POST", ts_str("/v1/%s", coll), json);
    json_t *b;
    TS_EXPECT_STATUS(r, 201);
    b = body(r);
    TS_EXPECT_STREQ(ts_header(r, "Location"), ts_str("/v1/%s/%s", coll, id));
    TS_EXPECT_STREQ(ts_jstr(b, "id"), id);
    assert_int_equal(ts_jint(b, "version", -1), 1);
    assert_true(ts_parse_rfc3339(ts_jstr(b, "createdAt")) > 0);
    assert_true(ts_parse_rfc3339(ts_jstr(b, "updatedAt")) > 0);
    assert_true(ts_parse_rfc3339(ts_jstr(b, "updatedAt")) >= ts_parse_rfc3339(ts_jstr(b, "createdAt")));
    return b;
}

static json_t *get_ok(const char *coll, const char *id)
{
    struct ts_resp *r = ts_admin(cp, "GET", ts_str("/v1/%s/%s", coll, id), NULL);
    TS_EXPECT_STATUS(r, 200);
    return body(r);
}

static void expect_equal_json(json_t *a, json_t *b, const char *what)
{
    if (!json_equal(a, b)) {
        char *sa = json_dumps(a, JSON_SORT_KEYS | JSON_COMPACT);
        char *sb = json_dumps(b, JSON_SORT_KEYS | JSON_COMPACT);
        ts_keep(sa);
        ts_keep(sb);
        ts_fail("%s: %s != %s", what, sa, sb);
    }
}

/* Every member of a except the listed keys is equal in b (and b has no extra members). */
static void expect_same_except(json_t *a, json_t *b, const char *const *except)
{
    json_t *ca = json_deep_copy(a), *cb = json_deep_copy(b);
    for (const char *const *k = except; *k; k++) {
        json_object_del(ca, *k);
        json_object_del(cb, *k);
    }
    /* keep the copies reachable for the failure message, then free */
    if (!json_equal(ca, cb)) {
        char *sa = ts_keep(json_dumps(ca, JSON_SORT_KEYS | JSON_COMPACT));
        char *sb = ts_keep(json_dumps(cb, JSON_SORT_KEYS | JSON_COMPACT));
        json_decref(ca);
        json_decref(cb);
        ts_fail("fields other than the patched ones changed: before %s, after %s", sa, sb);
    }
    json_decref(ca);
    json_decref(cb);
}

/*
 * PATCH and check merge semantics: only the sent fields (plus version and
 * updatedAt) change, version is incremented, updatedAt moves forward.
 * Sleeps a little over a second first so a second-precision updatedAt moves.
 */
static json_t *patch_check(const char *coll, const char *id, const char *json, const char *const *changed)
{
    json_t *before = get_ok(coll, id);
    struct ts_resp *r;
    json_t *after, *patch;
    const char *except[16];
    size_t n = 0;

    ts_sleep_ms(1100);
    r = ts_admin(cp, "PATCH", ts_str("/v1/%s/%s", coll, id), json);
    TS_EXPECT_STATUS(r, 200);
    after = body(r);
    patch = json_loads(json, 0, NULL);
    assert_non_null(patch);
    /* the sent fields have the sent values */
    {
        const char *k;
        json_t *v;
        json_object_foreach(patch, k, v) {
            if (!json_equal(json_object_get(after, k), v)) {
                json_decref(patch);
                ts_fail("PATCH %s/%s: field %s does not have the sent value: %s", coll, id, k,
                        ts_resp_str(r));
            }
        }
    }
    json_decref(patch);
    assert_int_equal(ts_jint(after, "version", -1), ts_jint(before, "version", -2) + 1);
    if (!(ts_parse_rfc3339(ts_jstr(after, "updatedAt")) > ts_parse_rfc3339(ts_jstr(before, "updatedAt"))))
        ts_fail("PATCH %s/%s: updatedAt did not move: before %s after %s", coll, id,
                ts_jstr(before, "updatedAt"), ts_jstr(after, "updatedAt"));
    TS_EXPECT_STREQ(ts_jstr(after, "createdAt"), ts_jstr(before, "createdAt"));
    for (const char *const *c = changed; *c; c++)
        except[n++] = *c;
    except[n++] = "version";
    except[n++] = "updatedAt";
    /* health-related fields may move on their own */
    except[n++] = "health";
    except[n++] = "lastReportAt";
    except[n++] = "load";
    except[n] = NULL;
    expect_same_except(before, after, except);
    /* and a GET shows the same as the PATCH answer */
    expect_equal_json(get_ok(coll, id), after, "GET after PATCH");
    return after;
}

static void delete_ok(const char *coll, const char *id)
{
    TS_EXPECT_STATUS(ts_admin(cp, "DELETE", ts_str("/v1/%s/%s", coll, id), NULL), 204);
    TS_EXPECT_ERROR(ts_admin(cp, "GET", ts_str("/v1/%s/%s", coll, id), NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", ts_str("/v1/%s/%s", coll, id), NULL), 404, "not_found");
}

/*
 * Walk a listing with limit=2 following the next cursors. Checks every page
 * has at most 2 items, ids strictly ascending across pages (so nothing is seen
 * twice), and that the ids seen are exactly the expected ones.
 */
static void walk_list(const char *coll, const char *filter, const char *const *expected)
{
    char prev[128] = "";
    size_t seen = 0, nexp = 0, pages = 0;
    const char *cursor = NULL;

    while (expected[nexp])
        nexp++;
    for (;;) {
        const char *path = ts_str("/v1/%s?limit=2%s%s%s%s", coll, filter ? "&" : "", filter ? filter : "",
                                  cursor ? "&cursor=" : "", cursor ? ts_urlencode(cursor) : "");
        struct ts_resp *r = ts_admin(cp, "GET", path, NULL);
        json_t *items, *next, *it;
        size_t i;

        TS_EXPECT_STATUS(r, 200);
        items = json_object_get(body(r), "items");
        next = json_object_get(body(r), "next");
        if (!json_is_array(items) || !(json_is_null(next) || json_is_string(next)))
            ts_fail("GET %s: expected {\"items\":[...],\"next\":string|null}, got %s", path, ts_resp_str(r));
        if (json_array_size(items) > 2)
            ts_fail("GET %s: %zu items on a page with limit=2", path, json_array_size(items));
        json_array_foreach(items, i, it) {
            const char *id = ts_jstr(it, "id");
            assert_non_null(id);
            if (strcmp(id, prev) <= 0)
                ts_fail("GET %s: id %s after %s: not ascending / seen twice", path, id, prev);
            snprintf(prev, sizeof prev, "%s", id);
            if (seen >= nexp || strcmp(id, expected[seen]) != 0)
                ts_fail("GET %s: item %zu is %s, expected %s", path, seen, id,
                        seen < nexp ? expected[seen] : "(no more items)");
            seen++;
        }
        pages++;
        if (json_is_null(next))
            break;
        if (pages > 50)
            ts_fail("GET %s: more than 50 pages, cursor not advancing?", path);
        cursor = ts_str("%s", json_string_value(next));
    }
    if (seen != nexp)
        ts_fail("list %s?%s: saw %zu items, expected %zu (%s...)", coll, filter ? filter : "", seen, nexp,
                nexp ? expected[0] : "");
    if (nexp > 2 && pages < 2)
        ts_fail("list %s: %zu items on one page with limit=2", coll, nexp);
}

static const char *const no_changed[] = { NULL };

/* ---- geographies ---- */

static void test_geographies(void **state)
{
    json_t *b = create("geographies", "{\"id\":\"ap\"}", "ap");
    TS_EXPECT_STREQ(ts_jstr(b, "displayName"), "ap"); /* default: the id */
    expect_equal_json(get_ok("geographies", "ap"), b, "GET after POST");

    b = create("geographies", "{\"id\":\"sa\",\"displayName\":\"South America\"}", "sa");
    TS_EXPECT_STREQ(ts_jstr(b, "displayName"), "South America");
    create("geographies", "{\"id\":\"af\"}", "af");

    /* list: us eu ap sa af, ordered by id, in pages of 2 */
    {
        const char *const all[] = { "af", "ap", "eu", "sa", "us", NULL };
        walk_list("geographies", NULL, all);
    }

    {
        const char *const changed[] = { "displayName", NULL };
        b = patch_check("geographies", "ap", "{\"displayName\":\"Asia Pacific\"}", changed);
        assert_int_equal(ts_jint(b, "version", -1), 2);
        b = patch_check("geographies", "ap", "{\"displayName\":\"APAC\"}", changed);
        assert_int_equal(ts_jint(b, "version", -1), 3);
        /* an empty patch changes nothing but is still an update? only check it is accepted */
    }

    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"ap\"}"), 409, "already_exists");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"mars\"}"), 422,
                    "geography_not_configured");
    /* configured, never created: 404 */
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/geographies/oc", NULL), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(cp, "PATCH", "/v1/geographies/oc", "{\"displayName\":\"x\"}"), 404, "not_found");
    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", "/v1/geographies/oc", NULL), 404, "not_found");
    /* not configured: api.md allows reading this as 404 not_found or 422 geography_not_configured */
    {
        struct ts_resp *r = ts_admin(cp, "GET", "/v1/geographies/mars", NULL);
        if (!ts_is_error_body(r) ||
            !((r->status == 404 && strcmp(ts_err_code(r), "not_found") == 0) ||
              (r->status == 422 && strcmp(ts_err_code(r), "geography_not_configured") == 0)))
            ts_fail("GET /v1/geographies/mars: expected 404 not_found or 422 geography_not_configured, got %s",
                    ts_resp_str(r));
    }

    delete_ok("geographies", "ap");
    delete_ok("geographies", "sa");
    delete_ok("geographies", "af");
    {
        const char *const left[] = { "eu", "us", NULL };
        walk_list("geographies", NULL, left);
    }
    /* an id can be used again after delete */
    create("geographies", "{\"id\":\"af\"}", "af");
    delete_ok("geographies", "af");
}

/* ---- regions ---- */

static void test_regions(void **state)
{
    json_t *b = create("regions", "{\"id\":\"us-east\",\"geography\":\"us\"}", "us-east");
    TS_EXPECT_STREQ(ts_jstr(b, "geography"), "us");
    TS_EXPECT_STREQ(ts_jstr(b, "displayName"), "us-east");
    assert_true(json_is_null(json_object_get(b, "pairedRegion")));
    expect_equal_json(get_ok("regions", "us-east"), b, "GET after POST");

    b = create("regions", "{\"id\":\"us-west\",\"geography\":\"us\",\"displayName\":\"US West\",\"pairedRegion\":\"us-east\"}",
               "us-west");
    TS_EXPECT_STREQ(ts_jstr(b, "pairedRegion"), "us-east");
    TS_EXPECT_STREQ(ts_jstr(b, "displayName"), "US West");
    create("regions", "{\"id\":\"us-central\",\"geography\":\"us\"}", "us-central");
    create("regions", "{\"id\":\"us-south\",\"geography\":\"us\"}", "us-south");
    create("regions", "{\"id\":\"eu-west\",\"geography\":\"eu\"}", "eu-west");
    create("regions", "{\"id\":\"eu-north\",\"geography\":\"eu\",\"pairedRegion\":\"eu-west\"}", "eu-north");

    {
        const char *const us[] = { "us-central", "us-east", "us-south", "us-west", NULL };
        const char *const eu[] = { "eu-north", "eu-west", NULL };
        const char *const all[] = { "eu-north", "eu-west", "us-central", "us-east", "us-south", "us-west", NULL };
        const char *const none[] = { NULL };
        walk_list("regions", NULL, all);
        walk_list("regions", "geography=us", us);
        walk_list("regions", "geography=eu", eu);
        walk_list("regions", "geography=oc", none);
    }

    {
        const char *const changed[] = { "pairedRegion", NULL };
        const char *const changed2[] = { "displayName", NULL };
        patch_check("regions", "us-east", "{\"pairedRegion\":\"us-west\"}", changed);
        patch_check("regions", "us-east", "{\"displayName\":\"US East\"}", changed2);
        b = get_ok("regions", "us-east");
        TS_EXPECT_STREQ(ts_jstr(b, "pairedRegion"), "us-west"); /* untouched by the 2nd patch */
    }

    /* layout rules */
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"us-east\",\"geography\":\"us\"}"), 409,
                    "already_exists");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"oc-east\",\"geography\":\"oc\"}"), 422,
                    "invalid_reference"); /* configured but not created */
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"xx-east\",\"geography\":\"nowhere\"}"), 422,
                    NULL);
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/regions",
                             "{\"id\":\"us-north\",\"geography\":\"us\",\"pairedRegion\":\"no-such\"}"),
                    422, "invalid_reference");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/regions",
                             "{\"id\":\"us-north\",\"geography\":\"us\",\"pairedRegion\":\"eu-west\"}"),
                    422, "invalid_reference");
    TS_EXPECT_ERROR(ts_admin(cp, "PATCH", "/v1/regions/us-south", "{\"pairedRegion\":\"eu-west\"}"), 422,
                    "invalid_reference");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/regions/us-north", NULL), 404, "not_found");
    {
        /* pairing with itself: a 4xx error, and nothing changes */
        struct ts_resp *r = ts_admin(cp, "PATCH", "/v1/regions/us-south", "{\"pairedRegion\":\"us-south\"}");
        if (!(r->status == 400 || r->status == 422) || !ts_is_error_body(r))
            ts_fail("self-pairing: expected 400/422 with an error body, got %s", ts_resp_str(r));
        assert_true(json_is_null(json_object_get(get_ok("regions", "us-south"), "pairedRegion")));
    }

    /* dependents */
    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", "/v1/geographies/eu", NULL), 409, "has_dependents");
    /* us-east pairs with us-west (and vice versa) */
    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", "/v1/regions/us-west", NULL), 409, "has_dependents");
    get_ok("regions", "us-west");
    {
        const char *const changed[] = { "pairedRegion", NULL };
        b = patch_check("regions", "us-east", "{\"pairedRegion\":null}", changed);
        assert_true(json_is_null(json_object_get(b, "pairedRegion")));
    }
    /* us-west still pairs with us-east: deleting us-east is refused */
    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", "/v1/regions/us-east", NULL), 409, "has_dependents");
    /* nothing pairs with us-west now */
    delete_ok("regions", "us-west");
    delete_ok("regions", "us-east");
    delete_ok("regions", "eu-north");
    delete_ok("regions", "us-central");
    {
        const char *const left[] = { "eu-west", "us-south", NULL };
        walk_list("regions", NULL, left);
    }
    delete_ok("regions", "us-south");
    delete_ok("regions", "eu-west");
    (void)no_changed;
}

/* ---- stamps ---- */

static void test_stamps(void **state)
{
    json_t *b;
    create("regions", "{\"id\":\"st-a\",\"geography\":\"us\"}", "st-a");
    create("regions", "{\"id\":\"st-b\",\"geography\":\"us\"}", "st-b");
    create("regions", "{\"id\":\"st-c\",\"geography\":\"eu\"}", "st-c");

    b = create("stamps", "{\"id\":\"st-a-1\",\"region\":\"st-a\"}", "st-a-1");
    TS_EXPECT_STREQ(ts_jstr(b, "region"), "st-a");
    TS_EXPECT_STREQ(ts_jstr(b, "geography"), "us");
    TS_EXPECT_STREQ(ts_jstr(b, "displayName"), "st-a-1");
    TS_EXPECT_STREQ(ts_jstr(b, "status"), "active");
    TS_EXPECT_STREQ(ts_jstr(b, "tenancy"), "pooled");
    TS_EXPECT_STREQ(ts_jstr(b, "health"), "down"); /* never reported */
    assert_true(json_is_null(json_object_get(b, "lastReportAt")));
    assert_true(json_is_null(json_object_get(b, "load")));
    expect_equal_json(get_ok("stamps", "st-a-1"), b, "GET after POST");

    b = create("stamps",
               "{\"id\":\"st-a-2\",\"region\":\"st-a\",\"displayName\":\"A two\",\"status\":\"draining\",\"tenancy\":\"dedicated\"}",
               "st-a-2");
    TS_EXPECT_STREQ(ts_jstr(b, "status"), "draining");
    TS_EXPECT_STREQ(ts_jstr(b, "tenancy"), "dedicated");
    TS_EXPECT_STREQ(ts_jstr(b, "displayName"), "A two");
    create("stamps", "{\"id\":\"st-a-3\",\"region\":\"st-a\"}", "st-a-3");
    create("stamps", "{\"id\":\"st-b-1\",\"region\":\"st-b\"}", "st-b-1");
    b = create("stamps", "{\"id\":\"st-c-1\",\"region\":\"st-c\"}", "st-c-1");
    TS_EXPECT_STREQ(ts_jstr(b, "geography"), "eu");

    {
        const char *const a[] = { "st-a-1", "st-a-2", "st-a-3", NULL };
        const char *const us[] = { "st-a-1", "st-a-2", "st-a-3", "st-b-1", NULL };
        const char *const eu[] = { "st-c-1", NULL };
        const char *const all[] = { "st-a-1", "st-a-2", "st-a-3", "st-b-1", "st-c-1", NULL };
        walk_list("stamps", NULL, all);
        walk_list("stamps", "region=st-a", a);
        walk_list("stamps", "geography=us", us);
        walk_list("stamps", "geography=eu", eu);
    }

    {
        const char *const changed[] = { "status", NULL };
        const char *const changed2[] = { "tenancy", "displayName", NULL };
        patch_check("stamps", "st-a-1", "{\"status\":\"draining\"}", changed);
        b = patch_check("stamps", "st-a-1", "{\"tenancy\":\"dedicated\",\"displayName\":\"One\"}", changed2);
        TS_EXPECT_STREQ(ts_jstr(b, "status"), "draining");
        assert_int_equal(ts_jint(b, "version", -1), 3);
    }

    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/stamps", "{\"id\":\"st-a-1\",\"region\":\"st-b\"}"), 409,
                    "already_exists");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/stamps", "{\"id\":\"st-z-1\",\"region\":\"st-z\"}"), 422,
                    "invalid_reference");
    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", "/v1/regions/st-c", NULL), 409, "has_dependents");
    get_ok("regions", "st-c");

    delete_ok("stamps", "st-c-1");
    delete_ok("regions", "st-c");
    delete_ok("stamps", "st-a-1");
    delete_ok("stamps", "st-a-2");
    delete_ok("stamps", "st-a-3");
    delete_ok("stamps", "st-b-1");
    delete_ok("regions", "st-a");
    delete_ok("regions", "st-b");
}

/* ---- dps instances ---- */

static void test_dps_instances(void **state)
{
    json_t *b;
    create("regions", "{\"id\":\"dp-r\",\"geography\":\"eu\"}", "dp-r");
    create("stamps", "{\"id\":\"dp-s1\",\"region\":\"dp-r\"}", "dp-s1");
    create("stamps", "{\"id\":\"dp-s2\",\"region\":\"dp-r\"}", "dp-s2");

    b = create("dps-instances",
               "{\"id\":\"dp-s1-a\",\"stamp\":\"dp-s1\",\"idScope\":\"0ne00A1\",\"endpoint\":\"dps1.example:443\"}",
               "dp-s1-a");
    TS_EXPECT_STREQ(ts_jstr(b, "stamp"), "dp-s1");
    TS_EXPECT_STREQ(ts_jstr(b, "idScope"), "0ne00A1");
    TS_EXPECT_STREQ(ts_jstr(b, "endpoint"), "dps1.example:443");
    assert_int_equal(ts_jint(b, "maxRegistrations", -1), 1000000);
    assert_int_equal(ts_jint(b, "registrationsPerMinute", -1), 1000);
    expect_equal_json(get_ok("dps-instances", "dp-s1-a"), b, "GET after POST");

    b = create("dps-instances",
               "{\"id\":\"dp-s1-b\",\"stamp\":\"dp-s1\",\"idScope\":\"0ne00B1\",\"endpoint\":\"dps2.example:443\","
               "\"maxRegistrations\":1,\"registrationsPerMinute\":10000000}",
               "dp-s1-b");
    assert_int_equal(ts_jint(b, "maxRegistrations", -1), 1);
    assert_int_equal(ts_jint(b, "registrationsPerMinute", -1), 10000000);
    create("dps-instances",
           "{\"id\":\"dp-s1-c\",\"stamp\":\"dp-s1\",\"idScope\":\"0ne00C1\",\"endpoint\":\"dps3.example:443\"}", "dp-s1-c");
    create("dps-instances",
           "{\"id\":\"dp-s2-a\",\"stamp\":\"dp-s2\",\"idScope\":\"0ne00D1\",\"endpoint\":\"dps4.example:443\"}", "dp-s2-a");

    {
        const char *const s1[] = { "dp-s1-a", "dp-s1-b", "dp-s1-c", NULL };
        const char *const s2[] = { "dp-s2-a", NULL };
        const char *const all[] = { "dp-s1-a", "dp-s1-b", "dp-s1-c", "dp-s2-a", NULL };
        walk_list("dps-instances", NULL, all);
        walk_list("dps-instances", "stamp=dp-s1", s1);
        walk_list("dps-instances", "stamp=dp-s2", s2);
    }
    {
        const char *const changed[] = { "maxRegistrations", NULL };
        const char *const changed2[] = { "registrationsPerMinute", "endpoint", NULL };
        patch_check("dps-instances", "dp-s1-a", "{\"maxRegistrations\":5000}", changed);
        b = patch_check("dps-instances", "dp-s1-a",
                        "{\"registrationsPerMinute\":20,\"endpoint\":\"dps9.example:8443\"}", changed2);
        assert_int_equal(ts_jint(b, "maxRegistrations", -1), 5000);
    }

    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/dps-instances",
                             "{\"id\":\"dp-s1-a\",\"stamp\":\"dp-s2\",\"idScope\":\"0ne00E1\",\"endpoint\":\"x:1\"}"),
                    409, "already_exists");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/dps-instances",
                             "{\"id\":\"dp-s2-b\",\"stamp\":\"dp-s2\",\"idScope\":\"0ne00A1\",\"endpoint\":\"x:1\"}"),
                    409, "already_exists"); /* idScope taken */
    TS_EXPECT_ERROR(ts_admin(cp, "PATCH", "/v1/dps-instances/dp-s2-a", "{\"idScope\":\"0ne00B1\"}"), 409,
                    "already_exists");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/dps-instances",
                             "{\"id\":\"dp-s9-a\",\"stamp\":\"dp-s9\",\"idScope\":\"0ne00F1\",\"endpoint\":\"x:1\"}"),
                    422, "invalid_reference");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/dps-instances/dp-s2-b", NULL), 404, "not_found");

    /* a stamp with a DPS instance cannot go */
    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", "/v1/stamps/dp-s2", NULL), 409, "has_dependents");
    get_ok("stamps", "dp-s2");
    delete_ok("dps-instances", "dp-s2-a");
    delete_ok("stamps", "dp-s2");
    delete_ok("dps-instances", "dp-s1-a");
    delete_ok("dps-instances", "dp-s1-b");
    delete_ok("dps-instances", "dp-s1-c");
    delete_ok("stamps", "dp-s1");
    delete_ok("regions", "dp-r");
}

/* ---- hubs ---- */

static void test_hubs(void **state)
{
    json_t *b;
    create("regions", "{\"id\":\"hb-r\",\"geography\":\"us\"}", "hb-r");
    create("stamps", "{\"id\":\"hb-s1\",\"region\":\"hb-r\"}", "hb-s1");
    create("stamps", "{\"id\":\"hb-s2\",\"region\":\"hb-r\"}", "hb-s2");

    b = create("hubs", "{\"id\":\"hb-s1-a\",\"stamp\":\"hb-s1\",\"hostName\":\"hub-a.example\"}", "hb-s1-a");
    TS_EXPECT_STREQ(ts_jstr(b, "stamp"), "hb-s1");
    TS_EXPECT_STREQ(ts_jstr(b, "hostName"), "hub-a.example");
    assert_int_equal(ts_jint(b, "maxDevices", -1), 1000000);
    assert_int_equal(ts_jint(b, "allocationWeight", -1), 1);
    expect_equal_json(get_ok("hubs", "hb-s1-a"), b, "GET after POST");

    b = create("hubs",
               "{\"id\":\"hb-s1-b\",\"stamp\":\"hb-s1\",\"hostName\":\"hub-b.example\",\"maxDevices\":7,\"allocationWeight\":1000}",
               "hb-s1-b");
    assert_int_equal(ts_jint(b, "maxDevices", -1), 7);
    assert_int_equal(ts_jint(b, "allocationWeight", -1), 1000);
    create("hubs", "{\"id\":\"hb-s1-c\",\"stamp\":\"hb-s1\",\"hostName\":\"hub-c.example\"}", "hb-s1-c");
    create("hubs", "{\"id\":\"hb-s2-a\",\"stamp\":\"hb-s2\",\"hostName\":\"hub-d.example\"}", "hb-s2-a");
    {
        const char *const s1[] = { "hb-s1-a", "hb-s1-b", "hb-s1-c", NULL };
        const char *const s2[] = { "hb-s2-a", NULL };
        const char *const all[] = { "hb-s1-a", "hb-s1-b", "hb-s1-c", "hb-s2-a", NULL };
        walk_list("hubs", NULL, all);
        walk_list("hubs", "stamp=hb-s1", s1);
        walk_list("hubs", "stamp=hb-s2", s2);
    }
    {
        const char *const changed[] = { "allocationWeight", NULL };
        const char *const changed2[] = { "maxDevices", "hostName", NULL };
        patch_check("hubs", "hb-s1-a", "{\"allocationWeight\":5}", changed);
        b = patch_check("hubs", "hb-s1-a", "{\"maxDevices\":10,\"hostName\":\"hub-a2.example\"}", changed2);
        assert_int_equal(ts_jint(b, "allocationWeight", -1), 5);
    }
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/hubs",
                             "{\"id\":\"hb-s1-a\",\"stamp\":\"hb-s2\",\"hostName\":\"hub-x.example\"}"),
                    409, "already_exists");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/hubs",
                             "{\"id\":\"hb-s2-b\",\"stamp\":\"hb-s2\",\"hostName\":\"hub-b.example\"}"),
                    409, "already_exists"); /* hostName taken */
    TS_EXPECT_ERROR(ts_admin(cp, "PATCH", "/v1/hubs/hb-s2-a", "{\"hostName\":\"hub-c.example\"}"), 409,
                    "already_exists");
    TS_EXPECT_ERROR(ts_admin(cp, "POST", "/v1/hubs",
                             "{\"id\":\"hb-s9-a\",\"stamp\":\"hb-s9\",\"hostName\":\"hub-y.example\"}"),
                    422, "invalid_reference");

    TS_EXPECT_ERROR(ts_admin(cp, "DELETE", "/v1/stamps/hb-s2", NULL), 409, "has_dependents");
    get_ok("stamps", "hb-s2");
    delete_ok("hubs", "hb-s2-a");
    delete_ok("stamps", "hb-s2");
    delete_ok("hubs", "hb-s1-a");
    delete_ok("hubs", "hb-s1-b");
    delete_ok("hubs", "hb-s1-c");
    delete_ok("stamps", "hb-s1");
    delete_ok("regions", "hb-r");
}

/* The whole tree is gone: the geographies can go too. */
static void test_teardown_tree(void **state)
{
    const char *const none[] = { NULL };
    walk_list("regions", NULL, none);
    walk_list("stamps", NULL, none);
    walk_list("dps-instances", NULL, none);
    walk_list("hubs", NULL, none);
    delete_ok("geographies", "us");
    delete_ok("geographies", "eu");
    walk_list("geographies", NULL, none);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geographies),
        cmocka_unit_test(test_regions),
        cmocka_unit_test(test_stamps),
        cmocka_unit_test(test_dps_instances),
        cmocka_unit_test(test_hubs),
        cmocka_unit_test(test_teardown_tree),
    };
    ts_init("test_admin_crud");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
