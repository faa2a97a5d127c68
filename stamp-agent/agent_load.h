/*
 * agent_load.h - the stamp's load counters (per DPS instance and per IoT hub)
 * and their JSON form, the "load" object of every report.
 *
 * With a "provisioning" section the device API (dps_device.c) keeps them:
 * registrations and devices are counts of 'assigned' rows in the stamp's
 * database (refreshed every 5 s, adjusted live between refreshes); the
 * last-minute figures are sliding one-minute windows kept in memory.
 */
#ifndef STAMPAGENT_LOAD_H
#define STAMPAGENT_LOAD_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct agent_dps_load {
    char *id;
    uint64_t registrations;             /* registrations held: rows 'assigned' */
    uint64_t registrations_last_minute; /* register PUTs accepted (202) */
    uint64_t throttled_last_minute;     /* 429s, plus gentle-throttle deferrals */
};

struct agent_hub_load {
    char *id;
    uint64_t devices;                   /* devices currently assigned to the hub */
};

/* Devices assigned through one enrollment group of one DPS instance. */
struct agent_group_load {
    char *dps;
    char *group;
    uint64_t devices;                   /* rows 'assigned' with that group */
};

struct agent_load {
    struct agent_dps_load *dps;
    size_t n_dps;
    struct agent_hub_load *hubs;
    size_t n_hubs;
    struct agent_group_load *groups;    /* replaced wholesale on each refresh */
    size_t n_groups;
};

/* One zeroed entry per id, in the given order; the ids are copied. */
void agent_load_init(struct agent_load *load, char *const *dps_ids, size_t n_dps,
                     char *const *hub_ids, size_t n_hubs);
void agent_load_free(struct agent_load *load);

/* Find a counter block by id; NULL when the id is not configured. */
struct agent_dps_load *agent_load_dps(struct agent_load *load, const char *id);
struct agent_hub_load *agent_load_hub(struct agent_load *load, const char *id);

/* Drop every per-group count; then add one entry per (dps, group), ids copied. */
void agent_load_groups_clear(struct agent_load *load);
void agent_load_group_add(struct agent_load *load, const char *dps, const char *group, uint64_t devices);

/*
 * Build {"dps":[{"id","registrations","registrationsLastMinute",
 * "throttledLastMinute"}...],"hubs":[{"id","devices"}...],
 * "groups":[{"dps","group","devices"}...]}.
 * Returns a new reference the caller must json_decref(), or NULL if jansson
 * could not allocate.
 */
json_t *agent_load_json(const struct agent_load *load) MUSTCHECK;

#endif
