/*
 * main.c - the control plane daemon: command line, start-up, signals and the
 * graceful shutdown (stop accepting, drain requests in flight, close pools).
 */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_store.h"
#include "router.h"
#include "cp.h"
#include "cp_secrets.h"
#include "idempotency.h"
#include "http_call.h"
#include "http_server.h"
#include "log.h"
#include "ratelimit_epoch.h"
#include "routes.h"
#include "stampcheck.h"
#include "util.h"

#define CP_EXIT_CONFIG 2

static void cp_usage(FILE *out)
{
    fprintf(out,
            "usage: controlplane --config FILE [--listen HOST:PORT] [--log-level LEVEL] [--check-config]\n"
            "       controlplane --config FILE --pseudonym TENANT/REGISTRATION_ID...\n"
            "       controlplane --print-routes\n"
            "  --print-routes prints the route table (method, path, scope, who may call it) as JSON.\n"
            "  --pseudonym prints the pseudonym (dev_...) that logs and Redis messages use for each device.\n"
            "  The operator token comes from the config's operatorToken or, overriding it,\n"
            "  the CONTROLPLANE_OPERATOR_TOKEN environment variable.\n");
}

static void cp_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct cp *cp = arg;
    (void)fd; (void)what;
    /* lingering: requests the deadline answered still wait for a callback of a pool or Redis closed below */
    if (cp->inflight + cp->lingering == 0 || util_mono_ms() >= cp->shutdown_deadline_ms) {
        if (cp->inflight + cp->lingering > 0)
            log_warn("event=shutdown_deadline abandoned_requests=%d", cp->inflight + cp->lingering);
        event_base_loopbreak(cp->base);
    }
}

static void cp_on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct cp *cp = arg;
    struct timeval tick = {0, 20000};
    (void)what;
    if (sig == SIGHUP) {
        /* certificates only; the rest of the config needs a restart */
        log_info("event=sighup action=reload_tls_certificates");
        (void)http_server_reload_tls(cp);
        return;
    }
    if (cp->shutting_down) {
        log_warn("event=shutdown_forced signal=%d", (int)sig);
        event_base_loopbreak(cp->base);
        return;
    }
    log_info("event=shutdown_started signal=%d inflight=%d", (int)sig, cp->inflight);
    cp->shutting_down = true;
    cp->shutdown_deadline_ms = util_mono_ms() + cp->cfg.shutdown_timeout_ms;
    http_server_stop_accepting(cp);
    cp->drain_timer = event_new(cp->base, -1, EV_PERSIST, cp_drain_tick, cp);
    if (!cp->drain_timer || event_add(cp->drain_timer, &tick) != 0)
        event_base_loopbreak(cp->base);
}

static bool cp_pseudonym_mode;   /* --pseudonym: print pseudonyms of the remaining arguments */

/* controlplane --config FILE --pseudonym TENANT/REGID...: one line each,
 * "dev_... TENANT REGID". Returns the exit status. */
static int cp_print_pseudonyms(struct cp *cp, int argc, char **argv)
{
    int rc = 0;
    for (int i = optind; i < argc; i++) {
        const char *slash = strchr(argv[i], '/');
        char tenant[64], ps[PSEUDONYM_LEN];
        if (!slash || slash == argv[i] || (size_t)(slash - argv[i]) >= sizeof tenant || !slash[1]) {
            fprintf(stderr, "controlplane: --pseudonym wants TENANT/REGISTRATION_ID, got '%s'\n", argv[i]);
            rc = 2;
            continue;
        }
        snprintf(tenant, sizeof tenant, "%.*s", (int)(slash - argv[i]), argv[i]);
        printf("%s %s %s\n", pseudonym_device(&cp->pseudo, tenant, slash + 1, ps), tenant, slash + 1);
    }
    return rc;
}

static bool cp_parse_args(int argc, char **argv, struct cp *cp, bool *check_only)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"log-level", required_argument, NULL, 'L'},
        {"check-config", no_argument, NULL, 'k'},
        {"pseudonym", no_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *listen = NULL, *level = NULL, *env_token;
    struct jv_err e;
    int ch;

    while ((ch = getopt_long(argc, argv, "c:l:L:kh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'l': listen = optarg; break;
        case 'L': level = optarg; break;
        case 'k': *check_only = true; break;
        case 'P': cp_pseudonym_mode = true; break;
        case 'h': cp_usage(stdout); exit(0);
        default: cp_usage(stderr); return false;
        }
    }
    if ((optind < argc && !cp_pseudonym_mode) || !config) {
        fprintf(stderr, "controlplane: %s\n", config ? "unexpected arguments" : "--config is required");
        cp_usage(stderr);
        return false;
    }
    if (!cp_config_load(config, &cp->cfg, &e) ||
        (listen && !cp_config_set_listen(&cp->cfg, listen, &e))) {
        fprintf(stderr, "controlplane: config error: %s%s%s\n", e.message,
                e.field[0] ? " (field: " : "", e.field[0] ? e.field : "");
        if (e.field[0]) fprintf(stderr, ")\n");
        return false;
    }
    if (level) {
        int l = log_level_parse(level);
        if (l < 0) {
            fprintf(stderr, "controlplane: --log-level must be debug, info, warn or error\n");
            return false;
        }
        cp->cfg.log_level = l;
    }
    env_token = getenv("CONTROLPLANE_OPERATOR_TOKEN");
    if (env_token && *env_token) {
        free(cp->cfg.operator_token);
        cp->cfg.operator_token = xstrdup(env_token);
    }
    if (!cp->cfg.operator_token || strlen(cp->cfg.operator_token) < 16) {
        fprintf(stderr, "controlplane: config error: an operator token of at least 16 characters is "
                        "required (operatorToken or CONTROLPLANE_OPERATOR_TOKEN)\n");
        return false;
    }
    return true;
}

static struct event *cp_signal(struct cp *cp, int sig)
{
    struct event *ev = evsignal_new(cp->base, sig, cp_on_signal, cp);
    if (!ev || event_add(ev, NULL) != 0) {
        log_error("event=signal_setup_failed signal=%d", sig);
        exit(1);
    }
    return ev;
}

/* Batches of one kind running at once on a geography's pool: the rest of the
 * pool stays free for the other kind and for single statements, and while
 * they run, arriving requests queue up into the next batch. */
static int cp_batch_inflight(const struct cp *cp)
{
    int n = (int)cp->cfg.db_pool_size / 4;
    return n < 1 ? 1 : n;
}

#define CP_BATCH_MAX 64

static void cp_start_pools(struct cp *cp)
{
    struct pgpool_opts o = {
        .size = (int)cp->cfg.db_pool_size,
        .connect_timeout_ms = (int)cp->cfg.db_connect_timeout_ms,
        .query_timeout_ms = (int)cp->cfg.db_query_timeout_ms,
        .queue_timeout_ms = (int)cp->cfg.db_queue_timeout_ms,
        .max_queue = (int)cp->cfg.db_max_queue,
        /* config 0: leave the server's setting (pgpool: -1); the config derived absent keys already */
        .statement_timeout_ms = cp->cfg.db_statement_timeout_ms ? (int)cp->cfg.db_statement_timeout_ms : -1,
        .lock_timeout_ms = cp->cfg.db_lock_timeout_ms ? (int)cp->cfg.db_lock_timeout_ms : -1,
        .idle_in_tx_timeout_ms = cp->cfg.db_idle_in_tx_timeout_ms ? (int)cp->cfg.db_idle_in_tx_timeout_ms : -1,
        .keepalives_idle_s = (int)cp->cfg.db_keepalives_idle_s,
        .keepalives_interval_s = (int)cp->cfg.db_keepalives_interval_s,
        .keepalives_count = (int)cp->cfg.db_keepalives_count,
        .cancel_grace_ms = (int)cp->cfg.db_cancel_grace_ms,
        .application_name = "stampcp-controlplane",
        .dns = cp->dns,   /* database host names resolved on the loop, libpq gets hostaddr */
    };
    o.name = "globalDatabase";
    o.conninfo = cp->cfg.global_conninfo;
    o.migrations = migrations_global;
    o.n_migrations = migrations_global_count;
    cp->global = pgpool_new(cp->base, &o);
    for (int i = 0; i < cp->cfg.n_geos; i++) {
        char name[80];
        snprintf(name, sizeof name, "geo:%s", cp->cfg.geos[i].id);
        o.name = name;
        o.conninfo = cp->cfg.geos[i].conninfo;
        o.migrations = migrations_geo;
        o.n_migrations = migrations_geo_count;
        o.geography = cp->cfg.geos[i].id;
        cp->geo[i] = pgpool_new(cp->base, &o);
        cp->geo_lookup[i] = device_store_lookup_batcher(cp->base, cp->geo[i], cp->cfg.geos[i].id,
                                                       cp_batch_inflight(cp), CP_BATCH_MAX, o.queue_timeout_ms);
        cp->geo_assign[i] = device_store_assign_batcher(cp->base, cp->geo[i], cp->cfg.geos[i].id,
                                                       cp_batch_inflight(cp), CP_BATCH_MAX, o.queue_timeout_ms);
    }
}

static void cp_free(struct cp *cp)
{
    http_server_free(cp);
    stampcheck_free(cp->stampcheck);
    layouts_free(cp->layouts);
    redisbus_free(cp->redis);   /* pending Redis commands are answered (NULL) first */
    invalidate_free(cp->inval);
    redisfeed_free(cp->feed);
    jobs_free(cp->jobs);   /* after the invalidations (their waits are dropped), before the pools */
    tenants_free(cp->tenants);
    assign_cache_free(cp->cache);
    dps_client_free(cp->dps);
    enroll_sync_free(cp->sync);
    stamp_drift_free(cp->drift);
    stamp_ops_free(cp->stamp_ops);   /* before the pools: they drop its queries without callbacks */
    cp_secrets_free(cp->secrets);
    idempotency_free(cp->idem);
    http_call_abort_all();
    ratelimit_epoch_stop();
    pgpool_free(cp->global);
    apikeys_free(cp->keys);   /* after its pool, which drops the queries in flight */
    for (int i = 0; i < cp->cfg.n_geos; i++) {
        pgbatch_free(cp->geo_lookup[i]);
        pgbatch_free(cp->geo_assign[i]);
        pgpool_free(cp->geo[i]);
    }
    loadtable_free(cp->lt);
    if (cp->drain_timer) event_free(cp->drain_timer);
    if (cp->sig_term) event_free(cp->sig_term);
    if (cp->sig_int) event_free(cp->sig_int);
    if (cp->sig_hup) event_free(cp->sig_hup);
    if (cp->base) {
        /* Connections freed above (evhttp's, the outbound calls') finish
         * freeing in deferred callbacks: let those run before the base goes. */
        for (int i = 0; i < 4; i++)
            event_base_loop(cp->base, EVLOOP_NONBLOCK);
        /* The resolver last: lookups cancelled by the connections freed above
         * report to its evdns base from those deferred callbacks. */
        dns_free(cp->dns);
        for (int i = 0; i < 2; i++)
            event_base_loop(cp->base, EVLOOP_NONBLOCK);
        event_base_free(cp->base);
    }
    pseudonym_clear(&cp->pseudo);
    envelope_free(cp->env);
    cp_config_free(&cp->cfg);
}

/* A DPS instance's idScope or endpoint changed in the catalog: cached
 * answers name the old one, and every device must learn the new one on its
 * next status lookup. */
static void cp_on_dps_address(void *arg)
{
    struct cp *cp = arg;
    log_info("event=dps_address_changed cached_answers_dropped=%zu", assign_cache_count(cp->cache));
    assign_cache_clear(cp->cache);
}

int main(int argc, char **argv)
{
    struct cp cp;
    bool check_only = false;
    int rc = 0;

    memset(&cp, 0, sizeof cp);
    log_init("controlplane", LOG_INFO);
    if (argc == 2 && strcmp(argv[1], "--print-routes") == 0) {
        routes_print_json(stdout);   /* the route table, for tools and the isolation matrix test */
        return 0;
    }
    if (!cp_parse_args(argc, argv, &cp, &check_only)) {
        cp_config_free(&cp.cfg);
        return CP_EXIT_CONFIG;
    }
    /* A per-deployment key: every control plane of the deployment derives the same pseudonyms.
     * Without pseudonymKey and operatorToken a random key per process: never a
     * known (empty) key, which would make pseudonyms reversible by anyone. */
    {
        char random_key[65];
        const char *pkey = cp.cfg.pseudonym_key ? cp.cfg.pseudonym_key : cp.cfg.operator_token;
        if (!pkey) {
            util_random_hex(random_key, 32);
            random_key[64] = '\0';
            pkey = random_key;
            log_warn("event=pseudonym_key_random message=\"set pseudonymKey: without it this instance's device "
                     "pseudonyms differ from every other instance's\"");
        }
        pseudonym_init(&cp.pseudo, pkey);
        OPENSSL_cleanse(random_key, sizeof random_key);
    }
    if (cp_pseudonym_mode) {
        rc = cp_print_pseudonyms(&cp, argc, argv);
        pseudonym_clear(&cp.pseudo);
        cp_config_free(&cp.cfg);
        return rc;
    }
    {
        char err[300];
        if (!http_server_check_tls(&cp.cfg, err, sizeof err)) {
            fprintf(stderr, "controlplane: config error: tls: %s\n", err);
            cp_config_free(&cp.cfg);
            return CP_EXIT_CONFIG;
        }
    }
    {
        char err[400];
        if (!(cp.env = cp_secrets_load(&cp.cfg, err, sizeof err))) {
            fprintf(stderr, "controlplane: config error: kekFile: %s\n", err);
            cp_config_free(&cp.cfg);
            return CP_EXIT_CONFIG;
        }
    }
    if (check_only) {
        printf("config ok\n");
        envelope_free(cp.env);
        cp_config_free(&cp.cfg);
        return 0;
    }
    log_init("controlplane", (enum log_level)cp.cfg.log_level);
    /* A client that hangs up mid-reply must not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);

    cp.base = event_base_new();
    if (!cp.base) {
        log_error("event=event_base_failed");
        cp_config_free(&cp.cfg);
        return 1;
    }
    if (!(cp.dns = dns_new(cp.base, cp.cfg.dns_resolv_conf))) {
        fprintf(stderr, "controlplane: config error: dns.resolvConf: cannot be used (see the log)\n");
        event_base_free(cp.base);
        cp_config_free(&cp.cfg);
        return CP_EXIT_CONFIG;
    }
    http_call_set_dns(dns_evdns(cp.dns));   /* DPS endpoints by name (dps_client, enroll_sync, offboard) */
    cp.sig_term = cp_signal(&cp, SIGTERM);
    cp.sig_int = cp_signal(&cp, SIGINT);
    cp.sig_hup = cp_signal(&cp, SIGHUP);
    cp.lt = loadtable_new(cp.cfg.stale_after_intervals, cp.cfg.down_after_intervals);
    cp_start_pools(&cp);
    for (int i = 0; i < cp.cfg.n_geos; i++)
        cp.geo_ids[i] = cp.cfg.geos[i].id;
    cp.cache = assign_cache_new((size_t)cp.cfg.cache_size, cp.cfg.cache_ttl_ms);
    assign_cache_set_pseudonym(cp.cache, &cp.pseudo);
    {
        char err[300];
        cp.dps = dps_client_new(cp.base, cp.cfg.dps_ca_file, (int)cp.cfg.dps_timeout_ms, err, sizeof err);
        if (!cp.dps && cp.cfg.dps_ca_file) {
            fprintf(stderr, "controlplane: config error: dps.caFile: %s\n", err);
            cp_free(&cp);
            return CP_EXIT_CONFIG;
        }
        if (!cp.dps)
            log_warn("event=dps_client_disabled reason=\"%s\"", err);
    }
    {
        struct tenants_opts to = {.ttl_ms = (int)cp.cfg.tenant_cache_ttl_ms,
                                  .negative_cache_size = (int)cp.cfg.tenants_negative_size,
                                  .negative_ttl_ms = (int)cp.cfg.tenants_negative_ttl_ms,
                                  .unknown_rate = (double)cp.cfg.tenants_unknown_per_s,
                                  .unknown_burst = (int)cp.cfg.tenants_unknown_burst,
                                  .stale_on_error_ms = cp.cfg.tenants_stale_on_error_ms};
        cp.tenants = tenants_new(cp.global, &to);
    }
    tenants_set_envelope(cp.tenants, cp.env);
    cp.keys = apikeys_new(cp.global);
    cp.sync = enroll_sync_new(&cp, (int)cp.cfg.enrollment_sync_ms);
    cp.drift = stamp_drift_new(&cp);
    cp.secrets = cp_secrets_new(&cp);
    cp.idem = idempotency_new(&cp);
    cp.stampcheck = stampcheck_new(&cp, 1000);
    cp.jobs = jobs_new(&cp, 1000);
    cp.stamp_ops = stamp_ops_new(&cp);
    cp.layouts = layouts_new(cp.base, cp.global, cp.geo, cp.geo_ids, cp.cfg.n_geos,
                             (int)cp.cfg.layout_refresh_ms);
    layouts_on_address(cp.layouts, cp_on_dps_address, &cp);
    /* four heartbeats per trust window: one slow answer doesn't lapse the caches */
    cp.redis = redisbus_new(cp.base, cp.dns, &cp.cfg.redis, &cp.cfg.redis_auth, (int)(cp.cfg.cache_trust_ms / 4));
    ratelimit_epoch_start(cp.base, cp.global);
    cp.feed = redisfeed_new(cp.redis, cp.lt);
    cp.inval = invalidate_new(&cp, cp.redis);
    if (!http_server_start(&cp)) {
        rc = 1;
    } else {
        log_info("event=started geographies=%d", cp.cfg.n_geos);
        event_base_dispatch(cp.base);
        log_info("event=stopped");
    }
    cp_free(&cp);
    return rc;
}
