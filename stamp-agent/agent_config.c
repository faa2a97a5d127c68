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
#include <strings.h>

#include "dns.h"
#include "log.h"
#include "sas.h"

static const char *const agent_config_keys[] = {
    "stampId", "region", "redis", "redisSentinel", "redisAuth", "reportIntervalMs", "dpsInstances", "hubs", "logLevel", "provisioning", "kekFile", "dns", NULL
};
static const char *const agent_prov_keys[] = {
    "listen", "database", "tls", "serviceHostName", "servicePolicies", "instances", "hubs",
    "webhookTimeoutMs", "dbPoolSize", "authFailuresPer10s", "geography", "http", "webhookAllowPrivate", NULL
};
static const char *const agent_http_keys[] = {
    "maxConnections", "headerTimeoutMs", "requestTimeoutMs", "idleTimeoutMs", NULL
};
static const char *const agent_tls_keys[] = {"cert", "key", NULL};
static const char *const agent_policy_keys[] = {"name", "key", NULL};
static const char *const agent_dps_keys[] = {
    "id", "idScope", "maxRegistrations", "registrationsPerMinute", "pollsPer10s", "lookupsPerMinute",
    "throttle", NULL
};
static const char *const agent_hub_keys[] = {
    "id", "hostName", "maxDevices", "allocationWeight", "applyAllocationPolicy", NULL
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

static bool agent_config_charset(const char *s, const char *extra)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c)))
            return false;
    }
    return true;
}

static bool agent_config_dps_item(json_t *o, const char *path, struct agent_dps_config *d, struct jv_err *err)
{
    const char *id = NULL, *scope = NULL, *throttle = NULL;
    char p[96];
    d->max_registrations = 1000000;
    d->registrations_per_minute = 1000;
    d->polls_per_10s = 5;
    d->lookups_per_minute = 10000;
    if (!json_is_object(o)) {
        jv_set(err, "invalid_type", path, "field '%s' must be an object", path);
        return false;
    }
    if (!jv_only_keys(o, path, agent_dps_keys, err) ||
        !jv_string(o, path, "id", true, 1, 63, &id, err) ||
        !jv_string(o, path, "idScope", true, 1, 64, &scope, err) ||
        !jv_int(o, path, "maxRegistrations", false, 1, 1000000, &d->max_registrations, err) ||
        !jv_int(o, path, "registrationsPerMinute", false, 1, 10000000, &d->registrations_per_minute, err) ||
        !jv_int(o, path, "pollsPer10s", false, 1, 1000000, &d->polls_per_10s, err) ||
        !jv_int(o, path, "lookupsPerMinute", false, 1, 10000000, &d->lookups_per_minute, err) ||
        !jv_string(o, path, "throttle", false, 1, 16, &throttle, err))
        return false;
    snprintf(p, sizeof p, "%s.id", path);
    if (!jv_valid_id(id)) {
        jv_set(err, "invalid_value", p, "field '%s' must match [a-z0-9][a-z0-9-]{0,62}", p);
        return false;
    }
    snprintf(p, sizeof p, "%s.idScope", path);
    if (!agent_config_charset(scope, "")) {
        jv_set(err, "invalid_value", p, "field '%s' may only hold letters and digits", p);
        return false;
    }
    snprintf(p, sizeof p, "%s.throttle", path);
    if (throttle && strcmp(throttle, "reject") != 0 && strcmp(throttle, "gentle") != 0) {
        jv_set(err, "invalid_value", p, "field '%s' must be reject or gentle", p);
        return false;
    }
    d->id = xstrdup(id);
    d->id_scope = xstrdup(scope);
    d->gentle_throttle = throttle && strcmp(throttle, "gentle") == 0;
    return true;
}

static bool agent_config_hub_item(json_t *o, const char *path, struct agent_hub_config *h, struct jv_err *err)
{
    const char *id = NULL, *host = NULL;
    char p[96];
    h->max_devices = 1000000;
    h->allocation_weight = 1;
    h->apply_allocation_policy = true;
    if (!json_is_object(o)) {
        jv_set(err, "invalid_type", path, "field '%s' must be an object", path);
        return false;
    }
    if (!jv_only_keys(o, path, agent_hub_keys, err) ||
        !jv_string(o, path, "id", true, 1, 63, &id, err) ||
        !jv_string(o, path, "hostName", true, 1, 255, &host, err) ||
        !jv_int(o, path, "maxDevices", false, 1, 1000000, &h->max_devices, err) ||
        !jv_int(o, path, "allocationWeight", false, 1, 1000, &h->allocation_weight, err) ||
        !jv_bool(o, path, "applyAllocationPolicy", false, &h->apply_allocation_policy, err))
        return false;
    snprintf(p, sizeof p, "%s.id", path);
    if (!jv_valid_id(id)) {
        jv_set(err, "invalid_value", p, "field '%s' must match [a-z0-9][a-z0-9-]{0,62}", p);
        return false;
    }
    snprintf(p, sizeof p, "%s.hostName", path);
    if (!agent_config_charset(host, ".-:")) {
        jv_set(err, "invalid_value", p, "field '%s' may only hold letters, digits, '.', '-' and ':'", p);
        return false;
    }
    h->id = xstrdup(id);
    h->host_name = xstrdup(host);
    return true;
}

static bool agent_config_policies(json_t *arr, struct agent_provisioning_config *pc, struct jv_err *err)
{
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o) {
        char path[64];
        const char *name = NULL, *key = NULL;
        struct agent_service_policy *pol = &pc->policies[i];
        snprintf(path, sizeof path, "provisioning.servicePolicies[%zu]", i);
        if (!json_is_object(o)) {
            jv_set(err, "invalid_type", path, "field '%s' must be an object", path);
            return false;
        }
        if (!jv_only_keys(o, path, agent_policy_keys, err) ||
            !jv_string(o, path, "name", true, 1, 64, &name, err) ||
            !jv_string(o, path, "key", true, 4, 128, &key, err))
            return false;
        pol->keylen = sas_b64_decode(key, pol->key, sizeof pol->key);
        if (pol->keylen < 16) {
            jv_set(err, "invalid_value", path, "field '%s.key' must be base64 of 16 to 64 bytes", path);
            return false;
        }
        pol->name = xstrdup(name);
        pol->key_b64 = xstrdup(key);
        pc->n_policies++;
    }
    return true;
}

/* Items of an object array, parsed by fn into an array of size elements. */
static bool agent_config_objects(json_t *arr, const char *key, size_t elem, void **out, size_t *n,
                                 bool (*fn)(json_t *, const char *, void *, struct jv_err *),
                                 struct jv_err *err)
{
    size_t i;
    json_t *o;
    *out = xcalloc(json_array_size(arr) + 1, elem);
    *n = 0;
    json_array_foreach(arr, i, o) {
        char path[64];
        snprintf(path, sizeof path, "provisioning.%s[%zu]", key, i);
        if (!fn(o, path, (char *)*out + i * elem, err))
            return false;
        (*n)++;
    }
    return true;
}

static bool agent_dps_fn(json_t *o, const char *path, void *d, struct jv_err *err)
{
    return agent_config_dps_item(o, path, d, err);
}

static bool agent_hub_fn(json_t *o, const char *path, void *h, struct jv_err *err)
{
    return agent_config_hub_item(o, path, h, err);
}

/* No two items may share a value (ids, scopes, host names). */
static bool agent_config_unique(const char *what, size_t n, const char *(*get)(const void *, size_t),
                                const void *base, struct jv_err *err)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(get(base, i), get(base, j)) == 0) {
                jv_set(err, "invalid_value", what, "'%s' repeats '%s'", what, get(base, i));
                return false;
            }
    return true;
}

static const char *agent_dps_id(const void *b, size_t i) { return ((const struct agent_dps_config *)b)[i].id; }
static const char *agent_dps_scope(const void *b, size_t i) { return ((const struct agent_dps_config *)b)[i].id_scope; }
static const char *agent_hub_id(const void *b, size_t i) { return ((const struct agent_hub_config *)b)[i].id; }
static const char *agent_hub_host(const void *b, size_t i) { return ((const struct agent_hub_config *)b)[i].host_name; }

/*
 * The listener routes a request whose Host (port stripped, any case) names
 * a hub to that hub's registry (hub_registry.h), and signs both APIs with
 * the same servicePolicies: hub host names must differ from one another and
 * from serviceHostName in any case, or the service API would be unreachable
 * and a service token would open a hub's registry.
 */
static bool agent_config_hub_hosts(const struct agent_provisioning_config *pc, struct jv_err *err)
{
    size_t svc_len = strcspn(pc->service_host_name, ":");
    for (size_t i = 0; i < pc->n_hubs; i++) {
        const char *h = pc->hubs[i].host_name;
        if (strlen(h) == svc_len && strncasecmp(h, pc->service_host_name, svc_len) == 0) {
            jv_set(err, "invalid_value", "provisioning.hubs",
                   "'provisioning.hubs' hostName '%s' is the service host name", h);
            return false;
        }
        for (size_t j = 0; j < i; j++)
            if (strcasecmp(h, pc->hubs[j].host_name) == 0) {
                jv_set(err, "invalid_value", "provisioning.hubs", "'provisioning.hubs' repeats '%s'", h);
                return false;
            }
    }
    return true;
}

/* provisioning.geography: the geography whose database this stamp serves
 * (checked against the database's geo_identity row on every connection). */
static bool agent_config_prov_geography(json_t *prov, struct agent_provisioning_config *pc, struct jv_err *err)
{
    const char *s = NULL;
    if (!jv_string(prov, "provisioning", "geography", false, 1, 63, &s, err))
        return false;
    if (!s)
        return true;
    if (!jv_valid_id(s)) {
        jv_set(err, "invalid_value", "provisioning.geography",
               "field 'provisioning.geography' must match [a-z0-9][a-z0-9-]{0,62}, got '%.63s'", s);
        return false;
    }
    pc->geography = xstrdup(s);
    return true;
}

/* provisioning.http (the listener's bounds) and provisioning.webhookAllowPrivate. */
static bool agent_config_prov_limits(json_t *prov, struct agent_provisioning_config *pc, struct jv_err *err)
{
    json_t *http = NULL;
    pc->http_max_connections = 4096;
    pc->http_header_timeout_ms = 10000;
    pc->http_request_timeout_ms = 30000;
    pc->http_idle_timeout_ms = 60000;
    pc->webhook_allow_private = false;
    if (!jv_bool(prov, "provisioning", "webhookAllowPrivate", false, &pc->webhook_allow_private, err) ||
        !jv_object(prov, "provisioning", "http", false, &http, err))
        return false;
    if (!http)
        return true;
    if (!jv_only_keys(http, "provisioning.http", agent_http_keys, err) ||
        !jv_int(http, "provisioning.http", "maxConnections", false, 1, 1000000, &pc->http_max_connections, err) ||
        !jv_int(http, "provisioning.http", "headerTimeoutMs", false, 100, 600000, &pc->http_header_timeout_ms, err) ||
        !jv_int(http, "provisioning.http", "requestTimeoutMs", false, 100, 3600000, &pc->http_request_timeout_ms, err) ||
        !jv_int(http, "provisioning.http", "idleTimeoutMs", false, 100, 60000, &pc->http_idle_timeout_ms, err))
        return false;
    if (pc->http_request_timeout_ms < pc->http_header_timeout_ms) {
        jv_set(err, "invalid_value", "provisioning.http.requestTimeoutMs",
               "field 'provisioning.http.requestTimeoutMs' must be at least provisioning.http.headerTimeoutMs");
        return false;
    }
    return true;
}

static bool agent_config_provisioning(json_t *root, struct agent_config *cfg, struct jv_err *err)
{
    struct agent_provisioning_config *pc = &cfg->prov;
    json_t *prov = NULL, *tls = NULL, *pols = NULL, *inst = NULL, *hubs = NULL;
    const char *listen = NULL, *db = NULL, *cert = NULL, *key = NULL, *svc = NULL;
    char host[AGENT_HOST_MAX];

    if (!jv_object(root, "", "provisioning", false, &prov, err))
        return false;
    if (!prov)
        return true;
    if (cfg->n_dps || cfg->n_hubs) {
        jv_set(err, "invalid_value", "dpsInstances",
               "with 'provisioning', list DPS instances and hubs in provisioning.instances and provisioning.hubs");
        return false;
    }
    pc->webhook_timeout_ms = 10000;
    pc->db_pool_size = 4;
    pc->auth_failures_per_10s = 20;
    if (!jv_only_keys(prov, "provisioning", agent_prov_keys, err) ||
        !jv_string(prov, "provisioning", "listen", true, 3, AGENT_HOST_MAX + 6, &listen, err) ||
        !jv_string(prov, "provisioning", "database", true, 1, 4096, &db, err) ||
        !jv_object(prov, "provisioning", "tls", true, &tls, err) ||
        !jv_only_keys(tls, "provisioning.tls", agent_tls_keys, err) ||
        !jv_string(tls, "provisioning.tls", "cert", true, 1, 4096, &cert, err) ||
        !jv_string(tls, "provisioning.tls", "key", true, 1, 4096, &key, err) ||
        !jv_string(prov, "provisioning", "serviceHostName", false, 1, 300, &svc, err) ||
        !jv_array(prov, "provisioning", "servicePolicies", true, AGENT_MAX_POLICIES, &pols, err) ||
        !jv_array(prov, "provisioning", "instances", true, AGENT_MAX_DPS, &inst, err) ||
        !jv_array(prov, "provisioning", "hubs", true, AGENT_MAX_HUBS, &hubs, err) ||
        !jv_int(prov, "provisioning", "webhookTimeoutMs", false, 100, 120000, &pc->webhook_timeout_ms, err) ||
        !jv_int(prov, "provisioning", "dbPoolSize", false, 1, 64, &pc->db_pool_size, err) ||
        !jv_int(prov, "provisioning", "authFailuresPer10s", false, 1, 1000000, &pc->auth_failures_per_10s, err))
        return false;
    if (!agent_config_prov_geography(prov, pc, err) || !agent_config_prov_limits(prov, pc, err))
        return false;
    if (!util_parse_hostport(listen, host, sizeof host, &pc->listen_port)) {
        jv_set(err, "invalid_value", "provisioning.listen", "field 'provisioning.listen' must be host:port");
        return false;
    }
    if (json_array_size(pols) == 0 || json_array_size(inst) == 0) {
        jv_set(err, "invalid_value", json_array_size(pols) == 0 ? "provisioning.servicePolicies" : "provisioning.instances",
               "field '%s' must not be empty",
               json_array_size(pols) == 0 ? "provisioning.servicePolicies" : "provisioning.instances");
        return false;
    }
    pc->listen_host = xstrdup(host);
    pc->database = xstrdup(db);
    pc->tls_cert = xstrdup(cert);
    pc->tls_key = xstrdup(key);
    pc->service_host_name = xstrdup(svc ? svc : listen);
    if (!agent_config_policies(pols, pc, err) ||
        !agent_config_objects(inst, "instances", sizeof *pc->dps, (void **)&pc->dps, &pc->n_dps, agent_dps_fn, err) ||
        !agent_config_objects(hubs, "hubs", sizeof *pc->hubs, (void **)&pc->hubs, &pc->n_hubs, agent_hub_fn, err) ||
        !agent_config_unique("provisioning.instances", pc->n_dps, agent_dps_id, pc->dps, err) ||
        !agent_config_unique("provisioning.instances", pc->n_dps, agent_dps_scope, pc->dps, err) ||
        !agent_config_unique("provisioning.hubs", pc->n_hubs, agent_hub_id, pc->hubs, err) ||
        !agent_config_unique("provisioning.hubs", pc->n_hubs, agent_hub_host, pc->hubs, err) ||
        !agent_config_hub_hosts(pc, err))
        return false;
    /* Load reports name the same instances and hubs. */
    free(cfg->dps_ids);
    free(cfg->hub_ids);
    cfg->dps_ids = xcalloc(pc->n_dps + 1, sizeof(char *));
    cfg->hub_ids = xcalloc(pc->n_hubs + 1, sizeof(char *));
    for (size_t i = 0; i < pc->n_dps; i++)
        cfg->dps_ids[i] = xstrdup(pc->dps[i].id);
    for (size_t i = 0; i < pc->n_hubs; i++)
        cfg->hub_ids[i] = xstrdup(pc->hubs[i].id);
    cfg->n_dps = pc->n_dps;
    cfg->n_hubs = pc->n_hubs;
    pc->enabled = true;
    return true;
}

/* "kekFile": the KEK file sealing the enrollment keys at rest; main.c
 * requires it (and loads it) when the provisioning section is present. */
static bool agent_config_kek_file(json_t *root, struct agent_config *cfg, struct jv_err *err)
{
    const char *s = NULL;
    if (!jv_string(root, "", "kekFile", false, 1, 4096, &s, err))
        return false;
    if (s)
        cfg->kek_file = xstrdup(s);
    return true;
}

/* Every field check in document order; stops at the first failure. */
static bool agent_config_fields(json_t *root, struct agent_config *cfg, struct jv_err *err)
{
    return jv_only_keys(root, "", agent_config_keys, err)
        && agent_config_id(root, "stampId", true, &cfg->stamp_id, err)
        && agent_config_id(root, "region", true, &cfg->region, err)
        && redis_target_parse(root, &cfg->redis, err)
        && redis_auth_parse(root, "", "redisAuth", &cfg->redis_auth, err)
        && dns_config_parse(root, &cfg->dns_resolv_conf, err)
        && jv_int(root, "", "reportIntervalMs", false, AGENT_INTERVAL_MIN_MS,
                  AGENT_INTERVAL_MAX_MS, &cfg->report_interval_ms, err)
        && agent_config_id_list(root, "dpsInstances", AGENT_MAX_DPS,
                                &cfg->dps_ids, &cfg->n_dps, err)
        && agent_config_id_list(root, "hubs", AGENT_MAX_HUBS,
                                &cfg->hub_ids, &cfg->n_hubs, err)
        && agent_config_log_level(root, cfg, err)
        && agent_config_provisioning(root, cfg, err)
        && agent_config_kek_file(root, cfg, err);
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

static void agent_config_free_prov(struct agent_provisioning_config *pc)
{
    free(pc->listen_host);
    free(pc->database);
    free(pc->geography);
    free(pc->tls_cert);
    free(pc->tls_key);
    free(pc->service_host_name);
    for (size_t i = 0; i < pc->n_policies; i++) {
        free(pc->policies[i].name);
        free(pc->policies[i].key_b64);
    }
    for (size_t i = 0; i < pc->n_dps; i++) {
        free(pc->dps[i].id);
        free(pc->dps[i].id_scope);
    }
    free(pc->dps);
    for (size_t i = 0; i < pc->n_hubs; i++) {
        free(pc->hubs[i].id);
        free(pc->hubs[i].host_name);
    }
    free(pc->hubs);
}

void agent_config_free(struct agent_config *cfg)
{
    agent_config_free_prov(&cfg->prov);
    free(cfg->stamp_id);
    free(cfg->region);
    redis_target_free(&cfg->redis);
    redis_auth_free(&cfg->redis_auth);
    free(cfg->dns_resolv_conf);
    free(cfg->kek_file);
    agent_config_free_list(cfg->dps_ids, cfg->n_dps);
    agent_config_free_list(cfg->hub_ids, cfg->n_hubs);
    memset(cfg, 0, sizeof *cfg);
    cfg->log_level = -1;
}
