/*
 * cp_config.c - config file parsing and validation for the control plane.
 *
 * The file is strict: an unknown key is an error, not a typo silently ignored,
 * because an operator who misspells "operatorToken" must not get an open API.
 */
#include "cp_config.h"

#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "log.h"
#include "util.h"

static const char *const cp_config_keys[] = {
    "listen", "operatorToken", "globalDatabase", "geographies", "redis", "redisSentinel", "maxBodyBytes",
    "staleAfterIntervals", "downAfterIntervals", "shutdownTimeoutMs", "db", "logLevel",
    "cacheSize", "cacheTtlMs", "cacheTrustMs", "tenantCacheTtlMs", "layoutRefreshMs", "dps", "tenants", "pseudonymKey", "tls", "plainHttp", "redisAuth", "kekFile", "http", "dns", "stampOps", "stampDrift", NULL,
};
static const char *const cp_config_stamp_ops_keys[] = {"enabled", "pollMs", "maxBackoffMs", "moveGraceSeconds", NULL};
static const char *const cp_config_http_keys[] = {
    "maxConnections", "headerTimeoutMs", "requestTimeoutMs", "idleTimeoutMs", "maxInFlight", "requestDeadlineMs", NULL,
};
static const char *const cp_config_tenants_keys[] = {
    "negativeCacheSize", "negativeTtlMs", "unknownFetchesPerSecond", "unknownFetchBurst", "staleOnErrorMs", NULL,
};
static const char *const cp_config_drift_keys[] = {"enabled", "intervalMs", "graceSeconds", "samplePage", NULL};
static const char *const cp_config_tls_keys[] = {"cert", "key", "clientCa", NULL};
static const char *const cp_config_dps_keys[] = {"caFile", "timeoutMs", "enrollmentSyncMs", "maxEnrollmentGroups", NULL};
static const char *const cp_config_db_keys[] = {
    "poolSize", "connectTimeoutMs", "queryTimeoutMs", "queueTimeoutMs", "maxQueue", "statementTimeoutMs",
    "lockTimeoutMs", "idleInTransactionTimeoutMs", "keepalivesIdleS", "keepalivesIntervalS", "keepalivesCount",
    "cancelGraceMs", NULL,
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
    /* -1: absent, derived from queryTimeoutMs after parsing (cp_config_parse_db) */
    cfg->db_statement_timeout_ms = -1;
    cfg->db_lock_timeout_ms = -1;
    cfg->db_idle_in_tx_timeout_ms = -1;
    cfg->db_cancel_grace_ms = -1;
    cfg->db_keepalives_idle_s = 10;
    cfg->db_keepalives_interval_s = 3;
    cfg->db_keepalives_count = 3;
    cfg->cache_size = 200000;
    cfg->cache_ttl_ms = 60000;
    cfg->cache_trust_ms = 1000;
    cfg->tenant_cache_ttl_ms = 5000;
    cfg->layout_refresh_ms = 1000;
    cfg->dps_timeout_ms = 30000;
    cfg->enrollment_sync_ms = 10000;
    cfg->max_enrollment_groups = 100;
    cfg->stamp_drift_enabled = true;
    cfg->stamp_drift_interval_ms = 60000;
    cfg->stamp_drift_grace_s = 600;
    cfg->stamp_drift_sample_page = 1000;
    cfg->stamp_ops_enabled = true;
    cfg->stamp_ops_poll_ms = 1000;
    cfg->stamp_ops_max_backoff_ms = 300000;
    cfg->stamp_ops_move_grace_s = 86400;
    cfg->tenants_negative_size = 10000;
    cfg->tenants_negative_ttl_ms = 2000;
    cfg->tenants_unknown_per_s = 100;
    cfg->tenants_unknown_burst = 200;
    cfg->tenants_stale_on_error_ms = 600000;
    cfg->log_level = LOG_INFO;
    cfg->http_max_connections = 4096;
    cfg->http_header_timeout_ms = 10000;
    cfg->http_request_timeout_ms = 30000;
    cfg->http_idle_timeout_ms = 60000;
    cfg->http_max_inflight = 1024;
    cfg->http_request_deadline_ms = 10000;
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

/* The server-side bounds default from queryTimeoutMs: the server ends a
 * statement when we stop waiting for it, a lock wait at half of that, and
 * a transaction left open (never by pgpool itself) after twice that. */
static void cp_config_derive_db(struct cp_config *cfg)
{
    if (cfg->db_statement_timeout_ms < 0) cfg->db_statement_timeout_ms = cfg->db_query_timeout_ms;
    if (cfg->db_lock_timeout_ms < 0) cfg->db_lock_timeout_ms = cfg->db_query_timeout_ms / 2;
    if (cfg->db_idle_in_tx_timeout_ms < 0) cfg->db_idle_in_tx_timeout_ms = 2 * cfg->db_query_timeout_ms;
    if (cfg->db_cancel_grace_ms < 0) cfg->db_cancel_grace_ms = cfg->db_query_timeout_ms;
}

static bool cp_config_parse_db(json_t *db, struct cp_config *cfg, struct jv_err *e)
{
    bool ok = !db ||
              (jv_only_keys(db, "db", cp_config_db_keys, e) &&
               jv_int(db, "db", "poolSize", false, 1, 64, &cfg->db_pool_size, e) &&
               jv_int(db, "db", "connectTimeoutMs", false, 100, 60000, &cfg->db_connect_timeout_ms, e) &&
               jv_int(db, "db", "queryTimeoutMs", false, 100, 600000, &cfg->db_query_timeout_ms, e) &&
               jv_int(db, "db", "queueTimeoutMs", false, 10, 60000, &cfg->db_queue_timeout_ms, e) &&
               jv_int(db, "db", "maxQueue", false, 1, 1000000, &cfg->db_max_queue, e) &&
               jv_int(db, "db", "statementTimeoutMs", false, 0, 3600000, &cfg->db_statement_timeout_ms, e) &&
               jv_int(db, "db", "lockTimeoutMs", false, 0, 3600000, &cfg->db_lock_timeout_ms, e) &&
               jv_int(db, "db", "idleInTransactionTimeoutMs", false, 0, 3600000, &cfg->db_idle_in_tx_timeout_ms, e) &&
               jv_int(db, "db", "keepalivesIdleS", false, 1, 7200, &cfg->db_keepalives_idle_s, e) &&
               jv_int(db, "db", "keepalivesIntervalS", false, 1, 600, &cfg->db_keepalives_interval_s, e) &&
               jv_int(db, "db", "keepalivesCount", false, 1, 100, &cfg->db_keepalives_count, e) &&
               jv_int(db, "db", "cancelGraceMs", false, 100, 600000, &cfg->db_cancel_grace_ms, e));
    if (ok)
        cp_config_derive_db(cfg);
    return ok;
}

/* "tls": {"cert","key","clientCa"} or "plainHttp": true - exactly one of them. */
static bool cp_config_parse_tls(json_t *root, struct cp_config *cfg, struct jv_err *e)
{
    json_t *tls = NULL;
    const char *cert = NULL, *key = NULL, *client_ca = NULL;
    bool plain = false;
    if (!jv_object(root, "", "tls", false, &tls, e) || !jv_bool(root, "", "plainHttp", false, &plain, e) ||
        (tls && (!jv_only_keys(tls, "tls", cp_config_tls_keys, e) ||
                 !jv_string(tls, "tls", "cert", true, 1, 4096, &cert, e) ||
                 !jv_string(tls, "tls", "key", true, 1, 4096, &key, e) ||
                 !jv_string(tls, "tls", "clientCa", false, 1, 4096, &client_ca, e))))
        return false;
    if (tls && plain) {
        jv_set(e, "invalid_value", "plainHttp", "plainHttp and tls exclude each other");
        return false;
    }
    if (!tls && !plain) {
        jv_set(e, "missing_field", "tls",
               "tls.cert and tls.key are required (or \"plainHttp\": true, only behind a TLS terminator)");
        return false;
    }
    cfg->plain_http = plain;
    if (tls) {
        cfg->tls_cert = xstrdup(cert);
        cfg->tls_key = xstrdup(key);
        cfg->tls_client_ca = client_ca ? xstrdup(client_ca) : NULL;
    }
    return true;
}

/* "http": the listener's bounds (connection cap, read deadlines, keep-alive idle). */
static bool cp_config_parse_http(json_t *root, struct cp_config *cfg, struct jv_err *e)
{
    json_t *http = NULL;
    if (!jv_object(root, "", "http", false, &http, e))
        return false;
    if (!http)
        return true;
    if (!jv_only_keys(http, "http", cp_config_http_keys, e) ||
        !jv_int(http, "http", "maxConnections", false, 1, 1000000, &cfg->http_max_connections, e) ||
        !jv_int(http, "http", "headerTimeoutMs", false, 100, 600000, &cfg->http_header_timeout_ms, e) ||
        !jv_int(http, "http", "requestTimeoutMs", false, 100, 3600000, &cfg->http_request_timeout_ms, e) ||
        !jv_int(http, "http", "idleTimeoutMs", false, 100, 60000, &cfg->http_idle_timeout_ms, e) ||
        !jv_int(http, "http", "maxInFlight", false, 1, 1000000, &cfg->http_max_inflight, e) ||
        !jv_int(http, "http", "requestDeadlineMs", false, 100, 600000, &cfg->http_request_deadline_ms, e))
        return false;
    if (cfg->http_request_timeout_ms < cfg->http_header_timeout_ms) {
        jv_set(e, "invalid_value", "http.requestTimeoutMs", "http.requestTimeoutMs must be at least http.headerTimeoutMs");
        return false;
    }
    return true;
}

/* "stampDrift": the registration drift pass (stamp_drift.c). */
static bool cp_config_parse_drift(json_t *root, struct cp_config *cfg, struct jv_err *e)
{
    json_t *sd = NULL;
    if (!jv_object(root, "", "stampDrift", false, &sd, e))
        return false;
    return !sd || (jv_only_keys(sd, "stampDrift", cp_config_drift_keys, e) &&
                   jv_bool(sd, "stampDrift", "enabled", false, &cfg->stamp_drift_enabled, e) &&
                   jv_int(sd, "stampDrift", "intervalMs", false, 200, 86400000, &cfg->stamp_drift_interval_ms, e) &&
                   jv_int(sd, "stampDrift", "graceSeconds", false, 0, 30 * 86400, &cfg->stamp_drift_grace_s, e) &&
                   jv_int(sd, "stampDrift", "samplePage", false, 1, 1000, &cfg->stamp_drift_sample_page, e));
}

/* stampOps: the stamp-operation outbox's delivery worker (stamp_ops.h). */
static bool cp_config_parse_stamp_ops(json_t *root, struct cp_config *cfg, struct jv_err *e)
{
    json_t *so = NULL;
    if (!jv_object(root, "", "stampOps", false, &so, e))
        return false;
    return !so || (jv_only_keys(so, "stampOps", cp_config_stamp_ops_keys, e) &&
                   jv_bool(so, "stampOps", "enabled", false, &cfg->stamp_ops_enabled, e) &&
                   jv_int(so, "stampOps", "pollMs", false, 50, 600000, &cfg->stamp_ops_poll_ms, e) &&
                   jv_int(so, "stampOps", "maxBackoffMs", false, 100, 86400000, &cfg->stamp_ops_max_backoff_ms, e) &&
                   jv_int(so, "stampOps", "moveGraceSeconds", false, 0, 31536000, &cfg->stamp_ops_move_grace_s, e));
}

bool cp_config_parse(json_t *root, struct cp_config *cfg, struct jv_err *e)
{
    const char *listen = NULL, *token = NULL, *global = NULL, *level = NULL;
    json_t *geos = NULL, *db = NULL, *dps = NULL, *tenants = NULL;
    const char *ca = NULL, *pseudonym_key = NULL;

    cp_config_defaults(cfg);
    if (!jv_only_keys(root, "", cp_config_keys, e) ||
        !jv_string(root, "", "listen", false, 3, 300, &listen, e) ||
        !jv_string(root, "", "operatorToken", false, 16, 512, &token, e) ||
        !jv_string(root, "", "globalDatabase", true, 1, 4096, &global, e) ||
        !jv_object(root, "", "geographies", true, &geos, e) ||
        !jv_int(root, "", "maxBodyBytes", false, 1024, 16 * 1024 * 1024, &cfg->max_body_bytes, e) ||
        !jv_int(root, "", "staleAfterIntervals", false, 1, 1000, &cfg->stale_after_intervals, e) ||
        !jv_int(root, "", "downAfterIntervals", false, 2, 10000, &cfg->down_after_intervals, e) ||
        !jv_int(root, "", "shutdownTimeoutMs", false, 0, 600000, &cfg->shutdown_timeout_ms, e) ||
        !jv_object(root, "", "db", false, &db, e) ||
        !jv_int(root, "", "cacheSize", false, 1, 100000000, &cfg->cache_size, e) ||
        !jv_int(root, "", "cacheTtlMs", false, 100, 3600000, &cfg->cache_ttl_ms, e) ||
        !jv_int(root, "", "cacheTrustMs", false, 200, 60000, &cfg->cache_trust_ms, e) ||
        !jv_int(root, "", "tenantCacheTtlMs", false, 100, 3600000, &cfg->tenant_cache_ttl_ms, e) ||
        !jv_int(root, "", "layoutRefreshMs", false, 50, 60000, &cfg->layout_refresh_ms, e) ||
        !jv_object(root, "", "dps", false, &dps, e) ||
        (dps && (!jv_only_keys(dps, "dps", cp_config_dps_keys, e) ||
                 !jv_string(dps, "dps", "caFile", false, 1, 4096, &ca, e) ||
                 !jv_int(dps, "dps", "timeoutMs", false, 1000, 600000, &cfg->dps_timeout_ms, e) ||
                 !jv_int(dps, "dps", "enrollmentSyncMs", false, 200, 3600000, &cfg->enrollment_sync_ms, e) ||
                 !jv_int(dps, "dps", "maxEnrollmentGroups", false, 1, 100, &cfg->max_enrollment_groups, e))) ||
        !jv_string(root, "", "logLevel", false, 1, 16, &level, e) ||
        !jv_object(root, "", "tenants", false, &tenants, e) ||
        (tenants && (!jv_only_keys(tenants, "tenants", cp_config_tenants_keys, e) ||
                     !jv_int(tenants, "tenants", "negativeCacheSize", false, 1, 10000000, &cfg->tenants_negative_size, e) ||
                     !jv_int(tenants, "tenants", "negativeTtlMs", false, 100, 3600000, &cfg->tenants_negative_ttl_ms, e) ||
                     !jv_int(tenants, "tenants", "unknownFetchesPerSecond", false, 1, 1000000, &cfg->tenants_unknown_per_s, e) ||
                     !jv_int(tenants, "tenants", "unknownFetchBurst", false, 1, 1000000, &cfg->tenants_unknown_burst, e) ||
                     !jv_int(tenants, "tenants", "staleOnErrorMs", false, 0, 86400000, &cfg->tenants_stale_on_error_ms, e))) ||
        !jv_string(root, "", "pseudonymKey", false, 16, 512, &pseudonym_key, e))
        return false;
    if (pseudonym_key)
        cfg->pseudonym_key = xstrdup(pseudonym_key);

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
    if (!redis_target_parse(root, &cfg->redis, e) ||
        !redis_auth_parse(root, "", "redisAuth", &cfg->redis_auth, e) ||
        !dns_config_parse(root, &cfg->dns_resolv_conf, e))
        return false;
    if (!cp_config_parse_db(db, cfg, e))
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
    {   /* the KEK file sealing secrets at rest (required: main.c refuses to start without it) */
        const char *kek = NULL;
        if (!jv_string(root, "", "kekFile", false, 1, 4096, &kek, e))
            return false;
        if (kek)
            cfg->kek_file = xstrdup(kek);
    }
    if (!cp_config_parse_http(root, cfg, e) || !cp_config_parse_stamp_ops(root, cfg, e) ||
        !cp_config_parse_drift(root, cfg, e))
        return false;
    /* last, so that the other keys' errors come first */
    return cp_config_parse_tls(root, cfg, e);
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
    redis_target_free(&cfg->redis);
    redis_auth_free(&cfg->redis_auth);
    free(cfg->dns_resolv_conf);
    free(cfg->dps_ca_file);
    free(cfg->kek_file);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->tls_client_ca);
    if (cfg->pseudonym_key) {
        memset(cfg->pseudonym_key, 0, strlen(cfg->pseudonym_key));
        free(cfg->pseudonym_key);
    }
    memset(cfg, 0, sizeof *cfg);
}
