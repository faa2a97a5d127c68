/*
 * dps_migrate.c - `stamp-agent --migrate`: apply the stamp schema migrations
 * as the database owner, then exit. Owns nothing beyond the call: the loop,
 * pool and timer it makes are freed before it returns.
 *
 * A stamp agent that runs under its own least-privilege role cannot create
 * tables; its pool skips migrations that stamp_schema_migrations records, so
 * the owner runs this first (docs/security.md "Database roles").
 */
#include "dps_server.h"

#include <string.h>

#include "log.h"
#include "util.h"

struct dps_migrate {
    struct event_base *base;
    struct pgpool *pool;
    int64_t deadline_ms;
    int rc;
};

static void dps_migrate_tick(evutil_socket_t fd, short what, void *arg)
{
    struct dps_migrate *m = arg;
    const char *word = pgpool_state_word(m->pool);
    (void)fd; (void)what;
    if (pgpool_is_ready(m->pool)) {
        log_info("event=migrate_done");
        m->rc = 0;
    } else if (strcmp(word, "wrong_geography") == 0) {
        log_error("event=migrate_refused reason=wrong_geography");
        m->rc = DPS_EXIT_WRONG_DATABASE;
    } else if (strcmp(word, "migration_failed") == 0 || strcmp(word, "identity_check_failed") == 0) {
        log_error("event=migrate_failed reason=%s", word);
        m->rc = 1;
    } else if (util_mono_ms() >= m->deadline_ms) {
        log_error("event=migrate_failed reason=timeout state=%s", word);
        m->rc = 1;
    } else {
        return;
    }
    event_base_loopexit(m->base, NULL);
}

int dps_migrate_run(const struct agent_config *cfg, const char *conninfo, int timeout_ms)
{
    struct dps_migrate m = {.rc = 1};
    struct pgpool_opts o;
    struct event *tick;
    struct timeval tv = {0, 50 * 1000};

    if (!cfg->prov.enabled) {
        log_error("event=migrate_failed reason=no_provisioning_section");
        return 1;
    }
    m.base = event_base_new();
    if (!m.base) {
        log_error("event=init_failed what=event_base");
        return 1;
    }
    dps_server_pool_opts(cfg, conninfo, &o);
    o.size = 1;
    m.pool = pgpool_new(m.base, &o);
    m.deadline_ms = util_mono_ms() + timeout_ms;
    tick = event_new(m.base, -1, EV_PERSIST, dps_migrate_tick, &m);
    if (!tick || event_add(tick, &tv) != 0 || event_base_dispatch(m.base) < 0) {
        log_error("event=migrate_failed reason=event_loop");
        m.rc = 1;
    }
    if (tick)
        event_free(tick);
    pgpool_free(m.pool);
    event_base_free(m.base);
    return m.rc;
}
