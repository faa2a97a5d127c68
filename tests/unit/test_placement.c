/*
 * test_placement.c - the pure placement decision: each filter in order, the
 * outcome codes, ordering by headroom band with a stable per-device
 * tie-break, the enrollment rule (DPS instances where the tenant's group
 * cannot exist), and a randomized property test that residency is never
 * broken whatever the health, status and capacity of the stamps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "placement.h"

#define NOW 1000000

static struct tenant *make_tenant(const char *geos_json, const char *regions_json, const char *tenancy,
                                  const char *stamps_json)
{
    char row[1024];
    json_t *j;
    struct tenant *t;
    snprintf(row, sizeof row,
             "{\"public\":{\"id\":\"acme\",\"residency\":{\"geographies\":%s,\"regions\":%s},"
             "\"tenancy\":\"%s\",\"dedicatedStamps\":%s},"
             "\"enrollmentKey\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\","
             "\"lookupGeographies\":%s,\"installerTokens\":[]}",
             geos_json, regions_json, tenancy, stamps_json, geos_json);
    j = json_loads(row, 0, NULL);
    assert_non_null(j);
    t = tenant_from_row(j);
    json_decref(j);
    assert_non_null(t);
    return t;
}

/* stamps: "id:region:geo:status:tenancy:hubcap:dpsmax:dpsused" separated by spaces */
static struct layout *make_layout(const char *spec)
{
    json_t *stamps = json_array(), *root;
    char buf[2048], *save = NULL, *tok;
    struct layout *l;
    snprintf(buf, sizeof buf, "%s", spec);
    for (tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        char id[64], region[64], geo[64], status[16], tenancy[16], dpsid[80];
        long long hubcap, max, used;
        assert_int_equal(sscanf(tok, "%63[^:]:%63[^:]:%63[^:]:%15[^:]:%15[^:]:%lld:%lld:%lld", id, region, geo,
                                status, tenancy, &hubcap, &max, &used), 8);
        snprintf(dpsid, sizeof dpsid, "%s-dps", id);
        json_array_append_new(stamps, json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:[{s:s, s:s, s:s, s:I, s:I}]}",
            "id", id, "region", region, "geography", geo, "status", status, "tenancy", tenancy,
            "hubs", hubcap > 0 ? 1 : 0, "hubCapacity", hubcap,
            "dps", "id", dpsid, "idScope", "0ne", "endpoint", "h:1", "max", max, "perMinute", 1000LL));
        (void)used;
    }
    root = json_pack("{s:o}", "stamps", stamps);
    l = layout_from_json(root);
    json_decref(root);
    assert_non_null(l);
    /* usage comes from the geography databases in real life */
    snprintf(buf, sizeof buf, "%s", spec);
    save = NULL;
    for (tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        char id[64], dpsid[80];
        long long used;
        assert_int_equal(sscanf(tok, "%63[^:]:%*[^:]:%*[^:]:%*[^:]:%*[^:]:%*d:%*d:%lld", id, &used), 2);
        snprintf(dpsid, sizeof dpsid, "%s-dps", id);
        /* a snapshot not yet published: the test may fill in its usage */
        struct layout_dps *dp = (struct layout_dps *)layout_find_dps(l, dpsid);
        dp->registrations = used;
        dp->stamp->devices = used;
    }
    return l;
}

static void report(struct loadtable *lt, const char *stamp, const char *health)
{
    json_t *r = json_pack("{s:s, s:s, s:I, s:I, s:I}", "stampId", stamp, "health", health, "ts", 5000LL,
                          "intervalMs", 1000LL, "seq", 1LL);
    assert_true(loadtable_apply(lt, r, 5000, NOW));
    json_decref(r);
}

static json_t *verdict(const struct placement_result *res, const char *stamp)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(res->decision, "stamps"), i, v)
        if (strcmp(json_string_value(json_object_get(v, "stamp")), stamp) == 0)
            return v;
    fail_msg("no verdict for %s", stamp);
    return NULL;
}

static const char *rule_of(const struct placement_result *res, const char *stamp)
{
    json_t *r = json_object_get(verdict(res, stamp), "rule");
    return r ? json_string_value(r) : "admitted";
}

static void run(struct tenant *t, struct layout *l, struct loadtable *lt, const char *regid,
                struct placement_result *out)
{
    struct placement_input in = {0};
    in.tenant = t;
    in.layout = l;
    in.loads = lt;
    in.now_mono_ms = NOW;
    in.registration_id = regid;
    placement_run(&in, out);
}

/* The router's own registrations count at once, beside the snapshot, which
 * stays as it was read (layouts_count / layouts_delta). */
static void test_local_counts(void **state)
{
    struct event_base *base = event_base_new();
    struct layouts *ls = layouts_new(base, NULL, NULL, NULL, 0, 1000);   /* the loop never runs: no query */
    struct loadtable *lt = loadtable_new(3, 10);
    struct placement_result res;
    struct tenant *t = make_tenant("[\"eu\"]", "[]", "pooled", "[]");
    struct layout *l = make_layout("eu-1:eu-west:eu:active:pooled:100:10:9");
    struct placement_input in = {.tenant = t, .layout = l, .loads = lt, .now_mono_ms = NOW,
                                 .registration_id = "d", .local = ls};
    (void)state;
    report(lt, "eu-1", "healthy");
    placement_run(&in, &res);
    assert_int_equal(res.outcome, PLACE_OK);
    placement_result_clear(&res);
    layouts_count(ls, "eu-1-dps", +1);   /* the 10th, committed by this router */
    assert_int_equal(layouts_delta(ls, "eu-1-dps"), 1);
    placement_run(&in, &res);
    assert_int_equal(res.outcome, PLACE_CAPACITY_EXHAUSTED);
    placement_result_clear(&res);
    assert_int_equal(layout_find_dps(l, "eu-1-dps")->registrations, 9);   /* the snapshot is untouched */
    layouts_count(ls, "eu-1-dps", -2);   /* two released */
    assert_int_equal(layouts_delta(ls, "eu-1-dps"), -1);
    assert_int_equal(layouts_delta(ls, "other"), 0);
    placement_run(&in, &res);
    assert_int_equal(res.outcome, PLACE_OK);
    placement_result_clear(&res);
    layouts_free(ls);
    event_base_free(base);
    layout_unref(l);
    loadtable_free(lt);
    tenant_unref(t);
}

static void test_filters_in_order(void **state)
{
    struct tenant *t = make_tenant("[\"eu\"]", "[]", "pooled", "[]");
    struct layout *l = make_layout("us-1:us-east:us:active:pooled:100:100:0 "
                                   "eu-1:eu-west:eu:active:dedicated:100:100:0 "
                                   "eu-2:eu-west:eu:active:pooled:100:100:0 "
                                   "eu-3:eu-west:eu:draining:pooled:100:100:0 "
                                   "eu-4:eu-north:eu:active:pooled:100:100:100 "
                                   "eu-5:eu-north:eu:active:pooled:100:100:0 "
                                   "eu-6:eu-north:eu:active:pooled:0:100:0");
    struct loadtable *lt = loadtable_new(3, 10);
    struct placement_result res;
    (void)state;
    report(lt, "us-1", "healthy");
    report(lt, "eu-1", "healthy");
    report(lt, "eu-3", "healthy");
    report(lt, "eu-4", "healthy");
    report(lt, "eu-5", "healthy");
    report(lt, "eu-6", "healthy");
    /* eu-2 never reported: down */
    run(t, l, lt, "dev-1", &res);
    assert_int_equal(res.outcome, PLACE_OK);
    assert_string_equal(rule_of(&res, "us-1"), "residency");
    assert_string_equal(rule_of(&res, "eu-1"), "tenancy");
    assert_string_equal(rule_of(&res, "eu-2"), "health");
    assert_string_equal(rule_of(&res, "eu-3"), "status");
    assert_string_equal(rule_of(&res, "eu-4"), "capacity");
    assert_string_equal(rule_of(&res, "eu-5"), "admitted");
    assert_string_equal(rule_of(&res, "eu-6"), "capacity");   /* no hubs */
    assert_int_equal(res.ncand, 1);
    assert_string_equal(res.cand[0]->stamp->id, "eu-5");
    assert_non_null(json_object_get(res.decision, "policy"));
    placement_result_clear(&res);
    layout_unref(l);
    loadtable_free(lt);
    tenant_unref(t);
}

static void test_outcomes(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    struct placement_result res;
    struct tenant *t = make_tenant("[\"eu\"]", "[]", "pooled", "[]");
    struct layout *only_us = make_layout("us-1:us-east:us:active:pooled:100:100:0");
    struct layout *eu_down = make_layout("eu-1:eu-west:eu:active:pooled:100:100:0 us-1:us-east:us:active:pooled:100:100:0");
    struct layout *eu_full = make_layout("eu-1:eu-west:eu:active:pooled:100:10:10");
    (void)state;
    report(lt, "us-1", "healthy");
    run(t, only_us, lt, "d", &res);
    assert_int_equal(res.outcome, PLACE_NO_ELIGIBLE);
    assert_string_equal(placement_outcome_code(res.outcome), "no_eligible_stamp");
    placement_result_clear(&res);
    run(t, eu_down, lt, "d", &res);   /* eu-1 never reported, us-1 healthy */
    assert_int_equal(res.outcome, PLACE_NO_HEALTHY);
    assert_int_equal(res.ncand, 0);
    placement_result_clear(&res);
    report(lt, "eu-1", "healthy");
    run(t, eu_full, lt, "d", &res);
    assert_int_equal(res.outcome, PLACE_CAPACITY_EXHAUSTED);
    assert_string_equal(placement_outcome_code(res.outcome), "capacity_exhausted");
    placement_result_clear(&res);
    layout_unref(only_us);
    layout_unref(eu_down);
    layout_unref(eu_full);
    loadtable_free(lt);
    tenant_unref(t);
}

static void test_regions_dedicated_exclude(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    struct placement_result res;
    struct tenant *regional = make_tenant("[\"eu\"]", "[\"eu-north\"]", "pooled", "[]");
    struct tenant *dedicated = make_tenant("[\"eu\"]", "[]", "dedicated", "[\"eu-1\"]");
    struct layout *l = make_layout("eu-1:eu-west:eu:active:dedicated:100:100:0 eu-2:eu-west:eu:active:pooled:100:100:0 "
                                   "eu-3:eu-north:eu:active:pooled:100:100:0");
    struct placement_input in = {0};
    const char *excl[1] = {"eu-3-dps"};
    (void)state;
    report(lt, "eu-1", "healthy");
    report(lt, "eu-2", "healthy");
    report(lt, "eu-3", "healthy");
    run(regional, l, lt, "d", &res);
    assert_int_equal(res.ncand, 1);
    assert_string_equal(res.cand[0]->stamp->id, "eu-3");
    assert_string_equal(rule_of(&res, "eu-2"), "residency");
    placement_result_clear(&res);
    run(dedicated, l, lt, "d", &res);
    assert_int_equal(res.ncand, 1);
    assert_string_equal(res.cand[0]->stamp->id, "eu-1");
    assert_string_equal(rule_of(&res, "eu-2"), "tenancy");
    placement_result_clear(&res);
    in.tenant = regional;
    in.layout = l;
    in.loads = lt;
    in.now_mono_ms = NOW;
    in.registration_id = "d";
    in.exclude_dps = excl;
    in.nexclude = 1;
    placement_run(&in, &res);
    assert_int_equal(res.outcome, PLACE_CAPACITY_EXHAUSTED);
    assert_string_equal(rule_of(&res, "eu-3"), "excluded");
    placement_result_clear(&res);
    layout_unref(l);
    loadtable_free(lt);
    tenant_unref(regional);
    tenant_unref(dedicated);
}

static void test_ordering(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    struct placement_result res;
    struct tenant *t = make_tenant("[\"eu\"]", "[]", "pooled", "[]");
    /* eu-1 is 50% full, eu-2 and eu-3 are empty: the empty ones come first */
    struct layout *l = make_layout("eu-1:eu-west:eu:active:pooled:1000:1000:500 eu-2:eu-west:eu:active:pooled:1000:1000:0 "
                                   "eu-3:eu-west:eu:active:pooled:1000:1000:10");
    int first_e2 = 0, first_e3 = 0;
    char regid[32], first[64];
    (void)state;
    report(lt, "eu-1", "healthy");
    report(lt, "eu-2", "healthy");
    report(lt, "eu-3", "healthy");
    for (int i = 0; i < 400; i++) {
        snprintf(regid, sizeof regid, "dev-%d", i);
        run(t, l, lt, regid, &res);
        assert_int_equal(res.ncand, 3);
        assert_string_equal(res.cand[2]->stamp->id, "eu-1");
        /* 0% and 1% full are in the same 5% band: the tie-break spreads devices */
        if (strcmp(res.cand[0]->stamp->id, "eu-2") == 0) first_e2++; else first_e3++;
        snprintf(first, sizeof first, "%s", res.cand[0]->stamp->id);
        placement_result_clear(&res);
        /* stable: the same device gets the same order again */
        run(t, l, lt, regid, &res);
        assert_string_equal(res.cand[0]->stamp->id, first);
        placement_result_clear(&res);
    }
    assert_true(first_e2 > 120 && first_e3 > 120);
    layout_unref(l);
    loadtable_free(lt);
    tenant_unref(t);
}

/* The reconciler's verdicts, keyed "dps|tenant". */
static const char *const *refused_table;

static const char *fake_refused(void *arg, const char *dps_id, const char *tenant_id)
{
    char key[160];
    (void)arg;
    snprintf(key, sizeof key, "%s|%s", dps_id, tenant_id);
    for (const char *const *p = refused_table; p && *p; p += 2)
        if (strcmp(p[0], key) == 0)
            return p[1];
    return NULL;
}

static void run_enrollment(struct tenant *t, struct layout *l, struct loadtable *lt, struct placement_result *out)
{
    struct placement_input in = {0};
    in.tenant = t;
    in.layout = l;
    in.loads = lt;
    in.now_mono_ms = NOW;
    in.registration_id = "d";
    in.group_refused = fake_refused;
    placement_run(&in, out);
}

/* A DPS instance where the tenant's group is over quota (or refused) is never
 * a candidate; instances without a verdict (unmanaged, not reached yet) are. */
static void test_enrollment_rule(void **state)
{
    static const char *const some[] = {"eu-1-dps|acme", "over quota", "eu-2-dps|other", "over quota", NULL};
    static const char *const all[] = {"eu-1-dps|acme", "over quota", "eu-2-dps|acme", "refused (HTTP 400)", NULL};
    struct loadtable *lt = loadtable_new(3, 10);
    struct placement_result res;
    struct tenant *t = make_tenant("[\"eu\"]", "[]", "pooled", "[]");
    struct layout *l = make_layout("eu-1:eu-west:eu:active:pooled:100:100:0 eu-2:eu-west:eu:active:pooled:100:100:0");
    const char *detail;
    (void)state;
    report(lt, "eu-1", "healthy");
    report(lt, "eu-2", "healthy");

    refused_table = NULL;   /* no verdicts: both eligible (a fresh tenant before the first pass) */
    run_enrollment(t, l, lt, &res);
    assert_int_equal(res.ncand, 2);
    placement_result_clear(&res);

    refused_table = some;   /* over quota on eu-1 only; eu-2's verdict is another tenant's */
    run_enrollment(t, l, lt, &res);
    assert_int_equal(res.outcome, PLACE_OK);
    assert_int_equal(res.ncand, 1);
    assert_string_equal(res.cand[0]->id, "eu-2-dps");
    assert_string_equal(rule_of(&res, "eu-1"), "enrollment");
    detail = json_string_value(json_object_get(verdict(&res, "eu-1"), "detail"));
    assert_non_null(detail);
    assert_non_null(strstr(detail, "over quota"));
    assert_non_null(strstr(detail, "eu-1-dps"));
    assert_string_equal(rule_of(&res, "eu-2"), "admitted");
    assert_false(res.enrollment_only);
    placement_result_clear(&res);

    refused_table = all;    /* nowhere: capacity_exhausted, flagged as the enrollment rule's doing */
    run_enrollment(t, l, lt, &res);
    assert_int_equal(res.outcome, PLACE_CAPACITY_EXHAUSTED);
    assert_int_equal(res.ncand, 0);
    assert_true(res.enrollment_only);
    assert_string_equal(rule_of(&res, "eu-2"), "enrollment");
    assert_non_null(strstr(json_string_value(json_object_get(verdict(&res, "eu-2"), "detail")), "HTTP 400"));
    placement_result_clear(&res);

    /* the enrollment rule comes after health: an unhealthy stamp says health */
    {
        struct loadtable *lt2 = loadtable_new(3, 10);
        report(lt2, "eu-1", "healthy");   /* eu-2 never reported */
        run_enrollment(t, l, lt2, &res);
        assert_string_equal(rule_of(&res, "eu-2"), "health");
        assert_string_equal(rule_of(&res, "eu-1"), "enrollment");
        assert_int_equal(res.outcome, PLACE_CAPACITY_EXHAUSTED);
        assert_true(res.enrollment_only);   /* the one live stamp is out only for the enrollment rule */
        placement_result_clear(&res);
        loadtable_free(lt2);
    }
    refused_table = NULL;
    layout_unref(l);
    loadtable_free(lt);
    tenant_unref(t);
}

/* After a rotation the tenant row carries the previous key: both verify. */
static void test_tenant_previous_key(void **state)
{
    static const char row_txt[] =
        "{\"public\":{\"id\":\"acme\",\"residency\":{\"geographies\":[\"eu\"],\"regions\":[]},"
        "\"tenancy\":\"pooled\",\"dedicatedStamps\":[]},"
        "\"enrollmentKey\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\","
        "\"enrollmentKeyPrevious\":\"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=\","
        "\"lookupGeographies\":[\"eu\"],\"installerTokens\":[]}";
    json_t *row = json_loads(row_txt, 0, NULL);
    struct tenant *t;
    unsigned char dk[SAS_KEY_LEN];
    char sas[700];
    struct sas_token tok;
    const char *keys[] = {"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                          "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
                          "WllaWllaWllaWllaWllaWllaWllaWllaWllaWllaWlo="};
    (void)state;
    assert_non_null(row);
    t = tenant_from_row(row);
    json_decref(row);
    assert_non_null(t);
    assert_int_equal(t->prev_keylen, 32);
    for (int k = 0; k < 3; k++) {
        unsigned char raw[64];
        int n = sas_b64_decode(keys[k], raw, sizeof raw);
        assert_true(n > 0);
        sas_derive_key(raw, (size_t)n, "dev-1", dk);
        sas_build("acme/registrations/dev-1", dk, sizeof dk, 4000000000LL, "registration", sas, sizeof sas);
        assert_int_equal(sas_parse(sas, &tok), SAS_OK);
        /* primary and previous verify; a third key does not */
        assert_int_equal(tenant_verify_device_sas(t, "dev-1", &tok), k < 2);
    }
    tenant_unref(t);
}

/* Residency holds under any random health, status, tenancy and capacity. */
static void test_residency_property(void **state)
{
    static const char *const geos[] = {"eu", "us", "ap"};
    static const char *const regions[] = {"west", "north"};
    unsigned seed = 20261127;
    (void)state;
    for (int round = 0; round < 300; round++) {
        char spec[4096] = "", one[256], regid[32];
        struct loadtable *lt = loadtable_new(3, 10);
        struct layout *l;
        struct placement_result res;
        int n = 1 + rand_r(&seed) % 9, allowed = rand_r(&seed) % 3;
        char geo_json[32], region_json[48];
        struct tenant *t;
        bool region_bound = rand_r(&seed) % 3 == 0;
        const char *bound_region = regions[rand_r(&seed) % 2];
        size_t o = 0;

        for (int i = 0; i < n; i++) {
            const char *g = geos[rand_r(&seed) % 3];
            const char *r = regions[rand_r(&seed) % 2];
            long long max = 1 + rand_r(&seed) % 5, used = rand_r(&seed) % 6;
            o += (size_t)snprintf(spec + o, sizeof spec - o, "%ss%d:%s-%s:%s:%s:%s:%d:%lld:%lld", i ? " " : "", i, g, r, g,
                                  rand_r(&seed) % 4 == 0 ? "draining" : "active",
                                  rand_r(&seed) % 5 == 0 ? "dedicated" : "pooled", rand_r(&seed) % 4 ? 10 : 0,
                                  max, used > max ? max : used);
        }
        l = make_layout(spec);
        for (int i = 0; i < n; i++) {
            int h = rand_r(&seed) % 3;
            snprintf(one, sizeof one, "s%d", i);
            if (h == 0) report(lt, one, "healthy");
            else if (h == 1) report(lt, one, "down");
        }
        snprintf(geo_json, sizeof geo_json, "[\"%s\"]", geos[allowed]);
        snprintf(region_json, sizeof region_json, region_bound ? "[\"%s-%s\"]" : "[]", geos[allowed], bound_region);
        t = make_tenant(geo_json, region_json, "pooled", "[]");
        snprintf(regid, sizeof regid, "dev-%d", round);
        run(t, l, lt, regid, &res);
        for (int c = 0; c < res.ncand; c++) {
            const struct layout_stamp *st = res.cand[c]->stamp;
            if (strcmp(st->geo, geos[allowed]) != 0)
                fail_msg("seed round %d: %s placed on %s in %s (layout %s)", round, regid, st->id, st->geo, spec);
            if (region_bound && !tenant_allows_region(t, st->region))
                fail_msg("round %d: region-bound tenant offered %s", round, st->region);
            assert_false(st->draining);
            assert_false(st->dedicated);
            assert_int_equal(loadtable_health(lt, st->id, NOW), STAMP_HEALTHY);
            assert_true(res.cand[c]->registrations < res.cand[c]->max_registrations);
        }
        assert_true((res.ncand > 0) == (res.outcome == PLACE_OK));
        placement_result_clear(&res);
        layout_unref(l);
        loadtable_free(lt);
        tenant_unref(t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filters_in_order),
        cmocka_unit_test(test_local_counts),
        cmocka_unit_test(test_outcomes),
        cmocka_unit_test(test_regions_dedicated_exclude),
        cmocka_unit_test(test_ordering),
        cmocka_unit_test(test_enrollment_rule),
        cmocka_unit_test(test_tenant_previous_key),
        cmocka_unit_test(test_residency_property),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
