/*
 * agent_config.h - the stamp agent's JSON config file: strict parsing into a
 * struct agent_config, with errors that name the offending field.
 */
#ifndef STAMPAGENT_CONFIG_H
#define STAMPAGENT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "jsonv.h"
#include "util.h"

#define AGENT_INTERVAL_DEFAULT_MS 1000
#define AGENT_INTERVAL_MIN_MS     50
#define AGENT_INTERVAL_MAX_MS     60000
#define AGENT_MAX_DPS             10
#define AGENT_MAX_HUBS            50
#define AGENT_HOST_MAX            256

struct agent_config {
    char *stamp_id;              /* "stampId", id syntax */
    char *region;                /* "region", id syntax */
    char *redis_addr;            /* "redis" as written, for log lines */
    char redis_host[AGENT_HOST_MAX];
    int redis_port;
    int64_t report_interval_ms;  /* "reportIntervalMs" */
    char **dps_ids;              /* "dpsInstances" */
    size_t n_dps;
    char **hub_ids;              /* "hubs" */
    size_t n_hubs;
    int log_level;               /* enum log_level, or -1 when "logLevel" is absent */
};

/*
 * Load and validate the file at path into *cfg (which is overwritten). On
 * success the caller owns cfg and releases it with agent_config_free(). On
 * failure *cfg holds nothing to free and err names the field (err->field, and
 * err->message is a full sentence); the file itself is named for I/O and
 * syntax errors.
 */
bool agent_config_load(const char *path, struct agent_config *cfg, struct jv_err *err) MUSTCHECK;

/* Release everything agent_config_load() allocated; safe on a zeroed struct. */
void agent_config_free(struct agent_config *cfg);

#endif
