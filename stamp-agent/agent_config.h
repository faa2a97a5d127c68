/*
 * agent_config.h - the stamp agent's JSON config file: strict parsing into a
 * struct agent_config, with errors that name the offending field.
 */
#ifndef STAMPAGENT_CONFIG_H
#define STAMPAGENT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "jsonv.h"
#include "redisauth.h"
#include "redistarget.h"
#include "util.h"

#define AGENT_INTERVAL_DEFAULT_MS 1000
#define AGENT_INTERVAL_MIN_MS     50
#define AGENT_INTERVAL_MAX_MS     60000
#define AGENT_MAX_DPS             10
#define AGENT_MAX_HUBS            50
#define AGENT_HOST_MAX            256

#define AGENT_MAX_POLICIES        16

/* A DPS instance this stamp serves (the "provisioning" section). */
struct agent_dps_config {
    char *id;                        /* catalog id, e.g. "eu-west-1-dps" */
    char *id_scope;                  /* what devices put in the URL */
    int64_t max_registrations;       /* registrations held, default 1,000,000 */
    int64_t registrations_per_minute;/* default 1,000 */
    int64_t polls_per_10s;           /* operation-status polls per device, default 5 */
    int64_t lookups_per_minute;      /* status lookups per instance, default 10,000 */
    bool gentle_throttle;            /* "throttle": "gentle" answers 202 assigning with a longer Retry-After instead of 429 */
};

/* A hub of this stamp. */
struct agent_hub_config {
    char *id;
    char *host_name;                 /* assignedHub as devices see it */
    int64_t max_devices;             /* default 1,000,000 */
    int64_t allocation_weight;       /* 1-1000, default 1 */
    bool apply_allocation_policy;    /* false: excluded from allocation */
};

struct agent_service_policy {
    char *name;                      /* SharedAccessKeyName */
    unsigned char key[64];           /* raw key */
    int keylen;
    char *key_b64;
};

/* The stamp's provisioning service: absent means the agent only reports load. */
struct agent_provisioning_config {
    bool enabled;
    char *listen_host;
    int listen_port;
    char *database;                  /* libpq conninfo of the stamp's geography database */
    char *geography;                 /* "geography": its geo_identity must say this; NULL: unchecked */
    char *tls_cert, *tls_key;
    char *service_host_name;         /* the sr of service-API SAS tokens (default: listen) */
    struct agent_service_policy policies[AGENT_MAX_POLICIES];
    size_t n_policies;
    struct agent_dps_config *dps;
    size_t n_dps;
    struct agent_hub_config *hubs;
    size_t n_hubs;
    int64_t webhook_timeout_ms;      /* custom allocation webhook deadline, default 10,000 */
    int64_t db_pool_size;            /* default 4 */
    /* "http": the listener's bounds (common/connguard.h) */
    int64_t http_max_connections;    /* admitted at once, default 4,096; more are answered 503 */
    int64_t http_header_timeout_ms;  /* first byte of a request -> end of its headers, default 10,000 */
    int64_t http_request_timeout_ms; /* first byte of a request -> end of its body, default 30,000 */
    int64_t http_idle_timeout_ms;    /* idle keep-alive connections are closed after this, default 60,000 */
    bool webhook_allow_private;      /* "webhookAllowPrivate": webhooks may target loopback/private/link-local */
    int64_t auth_failures_per_10s;   /* failed device authentications per source address, default 20 */
};

struct agent_config {
    char *stamp_id;              /* "stampId", id syntax */
    char *region;                /* "region", id syntax */
    struct redis_target redis;   /* "redis" or "redisSentinel" */
    struct redis_auth redis_auth;/* "redisAuth": the stamp's own Redis user; sensitive: never logged */
    char *dns_resolv_conf;       /* dns.resolvConf: the resolver's resolv.conf (NULL: the system's) */
    int64_t report_interval_ms;  /* "reportIntervalMs" */
    char *kek_file;              /* "kekFile": KEK file sealing enrollment keys at rest (common/envelope.h) */
    char **dps_ids;              /* "dpsInstances" */
    size_t n_dps;
    char **hub_ids;              /* "hubs" */
    size_t n_hubs;
    int log_level;               /* enum log_level, or -1 when "logLevel" is absent */
    struct agent_provisioning_config prov;  /* "provisioning"; when set, dps_ids/hub_ids come from it */
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
