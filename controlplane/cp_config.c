/*
 * cp_config.c - config file parsing and validation for the control plane.
 *
 * The file is strict: an unknown key is an error, not a typo silently ignored,
 * because an operator who misspells "operatorToken" must not get an open API.
 */
#include "cp_config.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

static const char *const cp_config_keys[] = {
    "listen", "operatorToken", "globalDatabase", "geographies", "redis", "maxBodyBytes",
    "staleAfterIntervals", "downAfterIntervals", "shutdownTimeoutMs", "db", "logLevel",
    "cacheSize", "cacheTtlMs", "tenantCacheTtlMs", "layoutRefreshMs", "dps", NULL,
};
static const char *const cp_config_dps_keys[] = {"caFile", "timeoutMs", "enrollmentSyncMs", "maxEnrollmentGroups", NULL};
static const char *const cp_config_db_keys[] = {
    "poolSize", "connectTimeoutMs", "queryTimeoutMs", "queueTimeoutMs", "maxQueue", NULL,
};

static void cp_config_defaults(struct cp_config *cfg)
{
    cfg->max_body_bytes = 64 * 1024;
    cfg->stale_after_intervals = 3;
    cfg->down_after_intervals = 10;
    cfg->shutdown_timeout_ms = 10000;
    cfg->db_pool_size = 4;
    cfg->db_connect_timeout_ms = 3000;
    cfg->db_query_timeout_ms = 5000;
    cfg->db_queue_timeout_ms = 2000;
    cfg->db_max_queue = 4096;
    cfg->cache_size = 200000;
    cfg->cache_ttl_ms = 60000;
    cfg->tenant_cache_ttl_ms = 5000;
    cfg->layout_refresh_ms = 1000;
    cfg->dps_timeout_ms = 30000;
    cfg->enrollment_sync_ms = 10000;
    cfg->max_enrollment_groups = 100;
    cfg->log_level = LOG_INFO;
}

bool cp_config_set_listen(struct cp_config *cfg, const char *hostport, struct jv_err *e)
{
    char host[256];
    int port;
    if (!util_parse_hostport(hostport, host, sizeof host, &port)) {
        jv_set(e, "invalid_value", "listen", "listen must be HOST:PORT, got '%s'", hostport);
        return false;
    }
    free(cfg->listen_host);
    cfg->listen_host = xstrdup(host);
    cfg->listen_port = port;
    return true;
}

static bool cp_config_parse_geos(json_t *geos, struct cp_config *cfg, struct jv_err *e)
{
    const char *key;
    json_t *val;
    if (json_object_size(geos) == 0) {
        jv_set(e, "invalid_value", "geographies", "geographies must map at least one geography id to a database");
        return false;
    }
    if (json_object_size(geos) > CP_MAX_GEOGRAPHIES) {
        jv_set(e, "invalid_value", "geographies", "at most %d geographies", CP_MAX_GEOGRAPHIES);
        return false;
    }
    json_object_foreach(geos, key, val) {
        char path[128];
        jv_path(path, sizeof path, "geographies", key);
        if (!jv_valid_id(key)) {
            jv_set(e, "invalid_value", path, "'%s': geography id must match [a-z0-9][a-z0-9-]{0,62}", path);
            return false;
        }
        if (!json_is_string(val) || json_string_length(val) == 0) {
            jv_set(e, "invalid_type", path, "'%s' must be a non-empty connection string", path);
            return false;
        }
        cfg->geos[cfg->n_geos].id = xstrdup(key);
        cfg->geos[cfg->n_geos].conninfo = xstrdup(json_string_value(val));
        cfg->n_geos++;
    }
    return true;
}

static bool cp_config_parse_db(json_t *db, struct cp_config *cfg, struct jv_err *e)
{
    return jv_only_keys(db, "db", cp_config_db_keys, e) &&
           jv_int(db, "db", "poolSize", false, 1, 64, &cfg->db_pool_size, e) &&
           jv_int(db, "db", "connectTimeoutMs", false, 100, 60000, &cfg->db_connect_timeout_ms, e) &&
           jv_int(db, "db", "queryTimeoutMs", false, 100, 600000, &cfg->db_query_timeout_ms, e) &&
           jv_int(db, "db", "queueTimeoutMs", false, 10, 60000, &cfg->db_queue_timeout_ms, e) &&
           jv_int(db, "db", "maxQueue", false, 1, 1000000, &cfg->db_max_queue, e);
}

bool cp_config_parse(json_t *root, struct cp_config *cfg, struct jv_err *e)
{
    const char *listen = NULL, *token = NULL, *global = NULL, *redis = NULL, *level = NULL;
    json_t *geos = NULL, *db = NULL, *dps = NULL;
    const char *ca = NULL;
    char host[256];
    int port;

    cp_config_defaults(cfg);
    if (!jv_only_keys(root, "", cp_config_keys, e) ||
        !jv_string(root, "", "listen", false, 3, 300, &listen, e) ||
        !jv_string(root, "", "operatorToken", false, 16, 512, &token, e) ||
        !jv_string(root, "", "globalDatabase", true, 1, 4096, &global, e) ||
        !jv_object(root, "", "geographies", true, &geos, e) ||
        !jv_string(root, "", "redis", true, 3, 300, &redis, e) ||
        !jv_int(root, "", "maxBodyBytes", false, 1024, 16 * 1024 * 1024, &cfg->max_body_bytes, e) ||
        !jv_int(root, "", "staleAfterIntervals", false, 1, 1000, &cfg->stale_after_intervals, e) ||
        !jv_int(root, "", "downAfterIntervals", false, 2, 10000, &cfg->down_after_intervals, e) ||
        !jv_int(root, "", "shutdownTimeoutMs", false, 0, 600000, &cfg->shutdown_timeout_ms, e) ||
        !jv_object(root, "", "db", false, &db, e) ||
        !jv_int(root, "", "cacheSize", false, 1, 100000000, &cfg->cache_size, e) ||
        !jv_int(root, "", "cacheTtlMs", false, 100, 3600000, &cfg->cache_ttl_ms, e) ||
        !jv_int(root, "", "tenantCacheTtlMs", false, 100, 3600000, &cfg->tenant_cache_ttl_ms, e) ||
        !jv_int(root, "", "layoutRefreshMs", false, 50, 60000, &cfg->layout_refresh_ms, e) ||
        !jv_object(root, "", "dps", false, &dps, e) ||
        (dps && (!jv_only_keys(dps, "dps", cp_config_dps_keys, e) ||
                 !jv_string(dps, "dps", "caFile", false, 1, 4096, &ca, e) ||
                 !jv_int(dps, "dps", "timeoutMs", false, 1000, 600000, &cfg->dps_timeout_ms, e) ||
                 !jv_int(dps, "dps", "enrollmentSyncMs", false, 200, 3600000, &cfg->enrollment_sync_ms, e) ||
                 !jv_int(dps, "dps", "maxEnrollmentGroups", false, 1, 100, &cfg->max_enrollment_groups, e))) ||
        !jv_string(root, "", "logLevel", false, 1, 16, &level, e))
        return false;

    if (cfg->down_after_intervals <= cfg->stale_after_intervals) {
        jv_set(e, "invalid_value", "downAfterIntervals", "downAfterIntervals must be greater than staleAfterIntervals");
        return false;
    }
    if (!cp_config_set_listen(cfg, listen ? listen : "127.0.0.1:8080", e))
        return false;
    if (token)
        cfg->operator_token = xstrdup(token);
    cfg->global_conninfo = xstrdup(global);
    if (!cp_config_parse_geos(geos, cfg, e))
        return false;
    if (!util_parse_hostport(redis, host, sizeof host, &port) || port == 0) {
        jv_set(e, "invalid_value", "redis", "redis must be HOST:PORT, got '%s'", redis);
        return false;
    }
    cfg->redis_host = xstrdup(host);
    cfg->redis_port = port;
    if (db && !cp_config_parse_db(db, cfg, e))
        return false;
    if (ca)
        cfg->dps_ca_file = xstrdup(ca);
    if (level) {
        int l = log_level_parse(level);
        if (l < 0) {
            jv_set(e, "invalid_value", "logLevel", "logLevel must be debug, info, warn or error");
            return false;
        }
        cfg->log_level = l;
    }
    return true;
}

bool cp_config_load(const char *path, struct cp_config *cfg, struct jv_err *e)
{
    json_t *root = jv_load_file(path, e);
    bool ok;
    if (!root)
        return false;
    ok = cp_config_parse(root, cfg, e);
    json_decref(root);
    return ok;
}

const char *cp_config_geo_conninfo(const struct cp_config *cfg, const char *geo_id)
{
    for (int i = 0; i < cfg->n_geos; i++)
        if (strcmp(cfg->geos[i].id, geo_id) == 0)
            return cfg->geos[i].conninfo;
    return NULL;
}

void cp_config_free(struct cp_config *cfg)
{
    free(cfg->listen_host);
    if (cfg->operator_token) {
        /* The token is a secret: don't leave it in freed memory. */
        memset(cfg->operator_token, 0, strlen(cfg->operator_token));
        free(cfg->operator_token);
    }
    free(cfg->global_conninfo);
    for (int i = 0; i < cfg->n_geos; i++) {
        free(cfg->geos[i].id);
        free(cfg->geos[i].conninfo);
    }
    free(cfg->redis_host);
    free(cfg->dps_ca_file);
    memset(cfg, 0, sizeof *cfg);
}
