/*
 * test_agent_load.c - the JSON shape of the load object and of a full report
 * for given counters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "agent_load.h"
#include "agent_report.h"

static char *const test_dps_ids[] = { "eu-west-1-dps", "eu-west-1-dps2" };
static char *const test_hub_ids[] = { "eu-west-1-hub1" };

static char *test_dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_non_null(s);
    return s;
}

static void test_load_zero(void **state)
{
    struct agent_load load;
    json_t *j;
    char *s;

    agent_load_init(&load, test_dps_ids, 1, test_hub_ids, 1);
    j = agent_load_json(&load);
    assert_non_null(j);
    s = test_dump(j);
    assert_string_equal(s, "{\"dps\":[{\"id\":\"eu-west-1-dps\",\"registrations\":0,"
                           "\"registrationsLastMinute\":0,\"throttledLastMinute\":0}],"
                           "\"hubs\":[{\"id\":\"eu-west-1-hub1\",\"devices\":0}],\"groups\":[]}");
    free(s);
    json_decref(j);
    agent_load_free(&load);
}

static void test_load_counters(void **state)
{
    struct agent_load load;
    json_t *j, *d1;
    char *s;

    agent_load_init(&load, test_dps_ids, 2, test_hub_ids, 1);
    assert_null(agent_load_dps(&load, "nope"));
    agent_load_dps(&load, "eu-west-1-dps2")->registrations = 12345678901ULL;
    agent_load_dps(&load, "eu-west-1-dps2")->registrations_last_minute = 17;
    agent_load_dps(&load, "eu-west-1-dps2")->throttled_last_minute = 3;
    agent_load_hub(&load, "eu-west-1-hub1")->devices = 42;
    agent_load_group_add(&load, "eu-west-1-dps", "stale", 9);
    agent_load_groups_clear(&load);
    agent_load_group_add(&load, "eu-west-1-dps", "acme", 5);
    agent_load_group_add(&load, "eu-west-1-dps2", "globex", 7);
    j = agent_load_json(&load);
    assert_non_null(j);
    assert_int_equal(json_array_size(json_object_get(j, "dps")), 2);
    d1 = json_array_get(json_object_get(j, "dps"), 1);
    assert_string_equal(json_string_value(json_object_get(d1, "id")), "eu-west-1-dps2");
    assert_int_equal(json_integer_value(json_object_get(d1, "registrations")), 12345678901LL);
    assert_int_equal(json_integer_value(json_object_get(d1, "registrationsLastMinute")), 17);
    assert_int_equal(json_integer_value(json_object_get(d1, "throttledLastMinute")), 3);
    s = test_dump(json_object_get(j, "hubs"));
    assert_string_equal(s, "[{\"id\":\"eu-west-1-hub1\",\"devices\":42}]");
    free(s);
    s = test_dump(json_object_get(j, "groups"));
    assert_string_equal(s, "[{\"dps\":\"eu-west-1-dps\",\"group\":\"acme\",\"devices\":5},"
                           "{\"dps\":\"eu-west-1-dps2\",\"group\":\"globex\",\"devices\":7}]");
    free(s);
    json_decref(j);
    agent_load_free(&load);
}

static void test_load_empty(void **state)
{
    struct agent_load load;
    json_t *j;
    char *s;

    agent_load_init(&load, NULL, 0, NULL, 0);
    j = agent_load_json(&load);
    assert_non_null(j);
    s = test_dump(j);
    assert_string_equal(s, "{\"dps\":[],\"hubs\":[],\"groups\":[]}");
    free(s);
    json_decref(j);
    agent_load_free(&load);
}

static void test_report_message(void **state)
{
    struct agent_load load;
    struct agent_report r = {
        .stamp_id = "eu-west-1", .region = "eu-west", .health = AGENT_HEALTH_HEALTHY,
        .ts_ms = 1700000000000LL, .interval_ms = 1000, .seq = 12,
    };
    char *key = agent_report_key("eu-west-1");

    agent_load_init(&load, test_dps_ids, 1, test_hub_ids, 1);
    assert_true(agent_report_render(&r, &load));
    assert_string_equal(r.message,
        "{\"stampId\":\"eu-west-1\",\"region\":\"eu-west\",\"health\":\"healthy\","
        "\"ts\":1700000000000,\"intervalMs\":1000,\"seq\":12,\"load\":{\"dps\":[{\"id\":"
        "\"eu-west-1-dps\",\"registrations\":0,\"registrationsLastMinute\":0,"
        "\"throttledLastMinute\":0}],\"hubs\":[{\"id\":\"eu-west-1-hub1\",\"devices\":0}],"
        "\"groups\":[]}}");
    assert_non_null(strstr(r.message, r.load_text));
    assert_string_equal(key, "stamp:eu-west-1:load");
    agent_report_clear(&r);
    agent_report_clear(&r);
    free(key);
    /* With a run id (what the agent sends): ordered by it and seq, not by ts. */
    r.run_id = "0123456789abcdef";
    assert_true(agent_report_render(&r, &load));
    assert_non_null(strstr(r.message, ",\"runId\":\"0123456789abcdef\"}"));
    agent_report_clear(&r);
    /* Each stamp has a channel of its own, so its Redis user can be limited to it. */
    key = agent_report_channel("eu-west-1");
    assert_string_equal(key, "stamps:load:eu-west-1");
    free(key);
    agent_load_free(&load);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_zero),
        cmocka_unit_test(test_load_counters),
        cmocka_unit_test(test_load_empty),
        cmocka_unit_test(test_report_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
