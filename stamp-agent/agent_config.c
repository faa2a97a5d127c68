/*
 * agent_config.c - parses and validates the stamp agent's config file.
 *
 * The file is parsed into a fresh struct; nothing is kept unless every field
 * passes, so a bad file never yields a half-filled config.
 */
#include "agent_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const char *const agent_config_keys[] = {
    "stampId", "region", "redis", "reportIntervalMs", "dpsInstances", "hubs", "logLevel", NULL
};

/* A required or optional id field: a string of id syntax. */
static bool agent_config_id(json_t *root, const char *key, bool required,
                            char **out, struct jv_err *err)
{
    const char *s = NULL;

    if (!jv_string(root, "", key, required, 1, 63, &s, err))
        return false;
    if (!s)
        return true;
    if (!jv_valid_id(s)) {
        jv_set(err, "invalid_value", key,
               "field '%s' must match [a-z0-9][a-z0-9-]{0,62}, got '%.63s'", key, s);
        return false;
    }
    *out = xstrdup(s);
    return true;
}

/* One element of an id array: a string of id syntax, not seen earlier in the array. */
static bool agent_config_id_item(json_t *arr, const char *key, size_t i, char **ids,
                                 struct jv_err *err)
{
    char path[64];
    json_t *v = json_array_get(arr, i);
    const char *s;

    snprintf(path, sizeof path, "%s[%zu]", key, i);
    if (!json_is_string(v)) {
        jv_set(err, "invalid_type", path, "field '%s' must be a string", path);
        return false;
    }
    s = json_string_value(v);
    if (strlen(s) != json_string_length(v) || !jv_valid_id(s)) {
        jv_set(err, "invalid_value", path,
               "field '%s' must match [a-z0-9][a-z0-9-]{0,62}, got '%.63s'", path, s);
        return false;
    }
    for (size_t j = 0; j < i; j++) {
        if (strcmp(ids[j], s) == 0) {
            jv_set(err, "invalid_value", path, "field '%s' repeats '%s' from %s[%zu]",
                   path, s, key, j);
            return false;
        }
    }
    ids[i] = xstrdup(s);
    return true;
}

/* An optional array of at most max ids; absent means empty. */
static bool agent_config_id_list(json_t *root, const char *key, size_t max,
                                 char ***out, size_t *n_out, struct jv_err *err)
{
    json_t *arr = NULL;
    size_t n;

    if (!jv_array(root, "", key, false, max, &arr, err))
        return false;
    n = arr ? json_array_size(arr) : 0;
    *out = xcalloc(n + 1, sizeof(char *));
    *n_out = 0;
    for (size_t i = 0; i < n; i++) {
        if (!agent_config_id_item(arr, key, i, *out, err))
            return false;
        (*n_out)++;
    }
    return true;
}

static bool agent_config_redis(json_t *root, struct agent_config *cfg, struct jv_err *err)
{
    const char *s = NULL;

    if (!jv_string(root, "", "redis", true, 1, AGENT_HOST_MAX + 6, &s, err))
        return false;
    if (!util_parse_hostport(s, cfg->redis_host, sizeof cfg->redis_host, &cfg->redis_port)
        || cfg->redis_port == 0) {
        jv_set(err, "invalid_value", "redis",
               "field 'redis' must be host:port with a port from 1 to 65535, got '%.64s'", s);
        return false;
    }
    cfg->redis_addr = xstrdup(s);
    return true;
}

static bool agent_config_log_level(json_t *root, struct agent_config *cfg, struct jv_err *err)
{
    const char *s = NULL;

    if (!jv_string(root, "", "logLevel", false, 1, 16, &s, err))
        return false;
    if (!s)
        return true;
    cfg->log_level = log_level_parse(s);
    if (cfg->log_level < 0) {
        jv_set(err, "invalid_value", "logLevel",
               "field 'logLevel' must be one of debug, info, warn, error");
        return false;
    }
    return true;
}

/* Every field check in document order; stops at the first failure. */
static bool agent_config_fields(json_t *root, struct agent_config *cfg, struct jv_err *err)
{
    return jv_only_keys(root, "", agent_config_keys, err)
        && agent_config_id(root, "stampId", true, &cfg->stamp_id, err)
        && agent_config_id(root, "region", true, &cfg->region, err)
        && agent_config_redis(root, cfg, err)
        && jv_int(root, "", "reportIntervalMs", false, AGENT_INTERVAL_MIN_MS,
                  AGENT_INTERVAL_MAX_MS, &cfg->report_interval_ms, err)
        && agent_config_id_list(root, "dpsInstances", AGENT_MAX_DPS,
                                &cfg->dps_ids, &cfg->n_dps, err)
        && agent_config_id_list(root, "hubs", AGENT_MAX_HUBS,
                                &cfg->hub_ids, &cfg->n_hubs, err)
        && agent_config_log_level(root, cfg, err);
}

bool agent_config_load(const char *path, struct agent_config *cfg, struct jv_err *err)
{
    json_t *root;
    bool ok;

    memset(cfg, 0, sizeof *cfg);
    cfg->report_interval_ms = AGENT_INTERVAL_DEFAULT_MS;
    cfg->log_level = -1;
    memset(err, 0, sizeof *err);

    root = jv_load_file(path, err);
    if (!root)
        return false;
    ok = agent_config_fields(root, cfg, err);
    json_decref(root);
    if (!ok)
        agent_config_free(cfg);
    return ok;
}

static void agent_config_free_list(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

void agent_config_free(struct agent_config *cfg)
{
    free(cfg->stamp_id);
    free(cfg->region);
    free(cfg->redis_addr);
    agent_config_free_list(cfg->dps_ids, cfg->n_dps);
    agent_config_free_list(cfg->hub_ids, cfg->n_hubs);
    memset(cfg, 0, sizeof *cfg);
    cfg->log_level = -1;
}
