/*
 * cp_config.h - the control plane's configuration: parsed from a strict JSON
 * file, overridden by command-line flags and the environment, validated whole
 * before the daemon uses any of it.
 */
#ifndef CP_CONFIG_H
#define CP_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "jsonv.h"
#include "redisauth.h"
#include "redistarget.h"

#define CP_MAX_GEOGRAPHIES 32

struct cp_geo_config {
    char *id;        /* geography id, e.g. "eu" */
    char *conninfo;  /* libpq connection string of its database */
};

struct cp_config {
    char *listen_host;
    int listen_port;
    char *operator_token;        /* sensitive: never logged */
    char *global_conninfo;
    struct cp_geo_config geos[CP_MAX_GEOGRAPHIES];
    int n_geos;
    struct redis_target redis;    /* "redis" or "redisSentinel" */
    struct redis_auth redis_auth; /* "redisAuth": the control plane's Redis user; sensitive: never logged */
    char *dns_resolv_conf;        /* dns.resolvConf: the resolver's resolv.conf (NULL: the system's) */
    int64_t max_body_bytes;
    int64_t stale_after_intervals;
    int64_t down_after_intervals;
    int64_t shutdown_timeout_ms;
    int64_t db_pool_size;
    int64_t db_connect_timeout_ms;
    int64_t db_query_timeout_ms;
    int64_t db_queue_timeout_ms;
    int64_t db_max_queue;
    /* Server-side bounds per connection (ms; 0: not sent, the server's own
     * setting) and TCP keepalives; absent keys derive from db_query_timeout_ms
     * (common/pgpool.h). */
    int64_t db_statement_timeout_ms;
    int64_t db_lock_timeout_ms;
    int64_t db_idle_in_tx_timeout_ms;
    int64_t db_keepalives_idle_s, db_keepalives_interval_s, db_keepalives_count;
    int64_t db_cancel_grace_ms;   /* how long a timed-out statement may take to end after its cancel */
    int64_t cache_size;           /* device assignments cached for repeat lookups */
    int64_t cache_ttl_ms;
    int64_t cache_trust_ms;       /* cacheTrustMs: caches used only while invalidations are proven flowing this recently */
    int64_t tenant_cache_ttl_ms;
    int64_t layout_refresh_ms;
    char *dps_ca_file;            /* CA that signs the stamps' DPS endpoints (NULL: system store) */
    char *kek_file;               /* "kekFile": the KEK file sealing secrets at rest (common/envelope.h) */
    int64_t dps_timeout_ms;       /* a proxied registration's deadline */
    int64_t enrollment_sync_ms;   /* how often enrollment groups are reconciled */
    bool stamp_drift_enabled;             /* stampDrift.enabled: run the registration drift pass */
    int64_t stamp_drift_interval_ms;      /* stampDrift.intervalMs: a pass per DPS instance this often */
    int64_t stamp_drift_grace_s;          /* stampDrift.graceSeconds: an orphan's age before its repair */
    int64_t stamp_drift_sample_page;      /* stampDrift.samplePage: registration ids sampled per pass (<= 1000) */
    bool stamp_ops_enabled;           /* stampOps.enabled: the stamp-operation outbox worker (stamp_ops.h) */
    int64_t stamp_ops_poll_ms;        /* stampOps.pollMs: how often each geography's outbox is read */
    int64_t stamp_ops_max_backoff_ms; /* stampOps.maxBackoffMs: the cap of an op's retry delay */
    int64_t stamp_ops_move_grace_s;   /* stampOps.moveGraceSeconds: a move's old registration goes after this anyway */
    int64_t max_enrollment_groups;/* symmetric-key groups a DPS instance holds (DPS: 100; lower for tests) */
    int64_t tenants_negative_size;       /* tenants.negativeCacheSize: ids remembered as absent */
    int64_t tenants_negative_ttl_ms;     /* tenants.negativeTtlMs */
    int64_t tenants_unknown_per_s;       /* tenants.unknownFetchesPerSecond */
    int64_t tenants_unknown_burst;       /* tenants.unknownFetchBurst */
    int64_t tenants_stale_on_error_ms;   /* tenants.staleOnErrorMs */
    char *pseudonym_key;         /* pseudonymKey: keys the device pseudonyms in logs (sensitive; NULL: derived) */
    char *tls_cert;               /* tls.cert: HTTPS certificate chain (PEM); NULL only with plain_http */
    char *tls_key;                /* tls.key: its private key */
    char *tls_client_ca;          /* tls.clientCa: CAs for client certificates (mTLS); NULL: none asked for */
    bool plain_http;              /* plainHttp: serve plain HTTP (behind a TLS terminator only) */
    int log_level;
    int64_t http_max_connections;      /* "http": connections admitted at once (more: 503) */
    int64_t http_header_timeout_ms;    /* first byte of a request -> end of its headers */
    int64_t http_request_timeout_ms;   /* first byte of a request -> end of its body */
    int64_t http_idle_timeout_ms;      /* an idle keep-alive connection is closed after this */
    int64_t http_max_inflight;         /* requests being served at once (more: 503 overloaded; probes exempt) */
    int64_t http_request_deadline_ms;  /* device requests: accepted -> answered, end to end (router.c) */
};

/*
 * Parse the JSON text of a config into cfg (which the caller zeroes first).
 * On failure returns false, fills e, and leaves cfg safe to pass to
 * cp_config_free().
 */
bool cp_config_parse(json_t *root, struct cp_config *cfg, struct jv_err *e) MUSTCHECK;
bool cp_config_load(const char *path, struct cp_config *cfg, struct jv_err *e) MUSTCHECK;
/* Apply "--listen HOST:PORT" style overrides; false with e filled on a bad value. */
bool cp_config_set_listen(struct cp_config *cfg, const char *hostport, struct jv_err *e) MUSTCHECK;
const char *cp_config_geo_conninfo(const struct cp_config *cfg, const char *geo_id);
void cp_config_free(struct cp_config *cfg);

#endif
