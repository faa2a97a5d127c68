/*
 * ts_device.c - see ts_device.h: the device tests' one-stamp stack and their
 * reading of the library's state files.
 */
#include "ts_device.h"

#include <string.h>

#include "ts_devrun.h"

static struct ts_rt_layout sd_layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = TS_SD_STAMP, .region = "eu-west", .dps = { { TS_SD_DPS, 0, 0 } },
          .hubs = { { "eu-west-1-hub-1", 0 }, { "eu-west-1-hub-2", 0 } } },
        { .id = NULL },
    },
};

struct ts_rt *ts_sd_stack_start(struct ts_stamp *stamp, struct ts_tenant **tenant)
{
    struct ts_rt_served_opts so = { .enrollment_sync_ms = 500, .policy = TS_SD_POLICY };
    static const char *const served[] = { TS_SD_DPS };
    struct ts_tenant *t;
    struct ts_rt *rt = ts_rt_start_served_ready(&so, &sd_layout, served, stamp, 1);

    stamp->redis = rt->redis;
    t = ts_rt_tenant_synced(rt, TS_SD_DPS, stamp->db, TS_RT_ACME_JSON);
    if (tenant)
        *tenant = t;
    return rt;
}

bool ts_sd_stack_hub(const struct ts_rt *rt, const char *host)
{
    return ts_rt_stamp_has_hub(&rt->layout->stamps[0], host);
}

struct sd_state ts_sd_load_state(const char *regid, enum sd_store_result want)
{
    struct sd_state st;
    char err[256] = "";
    enum sd_store_result r;

    memset(&st, 0, sizeof st);
    r = sd_store_load(ts_sd_state_path(regid), &st, err, sizeof err);
    if (r != want)
        ts_fail("state file of %s: %s (%s), expected %s", regid, sd_store_result_name(r), err,
                sd_store_result_name(want));
    return st;
}
