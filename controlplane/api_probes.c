/*
 * api_probes.c - liveness and readiness.
 *
 * Readiness runs a real round trip on every database pool in parallel, so a
 * pool that looks connected but whose server hangs is caught, reads Redis
 * health from the heartbeat the bus already keeps, and answers what the
 * instance can still serve (readyz_finish).
 */
#include "api_probes.h"

#include <stdlib.h>
#include <string.h>

#include "ratelimit_epoch.h"
#include "util.h"

struct readyz {
    struct cp_req *r;
    json_t *checks;
    json_t *durability;
    int pending;
    bool redis_ok;
    bool global_ok;
    bool geo_ok[CP_MAX_GEOGRAPHIES];
    int geos_ok;
    bool misconfigured;          /* a database is not the one configured (or can't be migrated) */
};

void api_probes_healthz(struct cp_req *r)
{
    cpreq_reply_json(r, 200, json_pack("{s:s}", "status", r->cp->shutting_down ? "stopping" : "ok"));
}

/* The tenant cache's counters (docs/api.md, Probes): how a flood of unknown
 * tenant ids is absorbed. */
static json_t *readyz_tenant_stats(struct cp *cp)
{
    struct tenants_stats st;
    tenants_stats(cp->tenants, &st);
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "cached", (json_int_t)st.cached, "negative",
                     (json_int_t)st.negative, "negativeCap", (json_int_t)st.negative_cap, "negativeEvictions",
                     (json_int_t)st.negative_evictions, "queries", (json_int_t)st.queries, "coalesced",
                     (json_int_t)st.coalesced, "refused", (json_int_t)st.refused, "inflight",
                     (json_int_t)st.inflight, "staleServed", (json_int_t)st.stale_served);
}

/*
 * What the instance can still serve decides readiness (docs/api.md, Probes):
 * a load balancer must not eject every router because one geography's
 * database or Redis is down, when each of them still serves everything else.
 * Unready (503) only while shutting down, when a database is not the one
 * configured (another geography's, or migrations fail: a configuration
 * error), when no geography database answers (no device can be looked up),
 * or when the global catalog doesn't answer and no tenant is cached (nothing
 * can be authenticated). Anything else that
 * fails makes the instance "degraded" (200), with what it costs in `degraded`.
 */
static void readyz_finish(struct readyz *z)
{
    struct cp *cp = z->r->cp;
    json_t *body, *degraded;
    const char *status;
    bool ready;

    if (--z->pending > 0)
        return;
    degraded = json_array();
    if (!z->global_ok)
        json_array_append_new(degraded, json_string("globalDatabase: the admin API answers 503; device requests are "
                                                    "served for cached tenants (tenants.staleOnErrorMs)"));
    for (int i = 0; i < cp->cfg.n_geos; i++)
        if (!z->geo_ok[i])
            json_array_append_new(degraded, json_pack("s++", "geo:", cp->cfg.geos[i].id,
                                                      ": its devices answer 503; other geographies are served"));
    if (!z->redis_ok)
        json_array_append_new(degraded, json_string("redis: lookups are served; new placements, moves and releases "
                                                    "answer 503; stamp load is not updated"));
    if (!ratelimit_epoch_loaded())
        json_array_append_new(degraded, json_string("rateLimitEpoch: not read from the catalog yet; should Redis "
                                                    "have lost its data with every router restarted, this "
                                                    "instance would start the DPS buckets full"));
    ready = !cp->shutting_down && !z->misconfigured && z->geos_ok > 0 && (z->global_ok || tenants_any_servable(cp->tenants));
    status = !ready ? "unavailable" : json_array_size(degraded) > 0 ? "degraded" : "ready";
    body = json_pack("{s:s, s:o, s:o, s:o, s:o}", "status", status, "checks", z->checks, "degraded", degraded,
                     "durability", z->durability, "tenantCache", readyz_tenant_stats(cp));
    if (!ready)
        cpreq_retry_after(z->r, 1000);
    cpreq_reply_json(z->r, ready ? 200 : 503, body);
    free(z);
}

struct readyz_check {
    struct readyz *z;
    struct pgpool *pool;
    int geo;                     /* index in cfg.geos, or -1: the global catalog */
};

/* Per geography: what a commit waits for. The assignment functions force
 * synchronous_commit on for their own transactions (schema/geo/006); the
 * server's default and its synchronous standbys are shown beside it. */
static void readyz_durability(struct readyz_check *c, const PGresult *res)
{
    const char *standbys = PQgetvalue(res, 0, 1);
    json_object_set_new(c->z->durability, pgpool_name(c->pool),
                        json_pack("{s:s, s:s, s:s, s:b}", "assignments", "on", "serverDefault", PQgetvalue(res, 0, 0),
                                  "synchronousStandbyNames", standbys, "standbyRequired", standbys[0] != '\0'));
}

static void readyz_on_pg(const struct pgq_result *q, void *arg)
{
    struct readyz_check *c = arg;
    bool ok = q->status == PGQ_OK && pgpool_is_ready(c->pool);
    const char *word = ok ? "ok" : pgpool_state_word(c->pool);
    if (!ok && word[0] == 'o')   /* "ok" but the query failed */
        word = "unreachable";
    /* A database of another geography, or one the migrations fail on, is a
     * configuration error, not an outage: an instance with it must not serve. */
    if (strcmp(word, "wrong_geography") == 0 || strcmp(word, "identity_check_failed") == 0 ||
        strcmp(word, "migration_failed") == 0)
        c->z->misconfigured = true;
    if (ok && c->geo >= 0 && PQntuples(q->res) == 1 && PQnfields(q->res) == 2)
        readyz_durability(c, q->res);
    if (c->geo < 0) {
        c->z->global_ok = ok;
    } else {
        c->z->geo_ok[c->geo] = ok;
        c->z->geos_ok += ok;
    }
    json_object_set_new(c->z->checks, pgpool_name(c->pool), json_string(word));
    readyz_finish(c->z);
    free(c);
}

static void readyz_check_pool(struct readyz *z, struct pgpool *pool, int geo)
{
    static const char geo_sql[] =
        "SELECT current_setting('synchronous_commit'), current_setting('synchronous_standby_names')";
    struct readyz_check *c = xcalloc(1, sizeof *c);
    c->z = z;
    c->pool = pool;
    c->geo = geo;
    z->pending++;
    pgpool_query(pool, geo < 0 ? "SELECT 1" : geo_sql, 0, NULL, readyz_on_pg, c);
}

void api_probes_readyz(struct cp_req *r)
{
    struct cp *cp = r->cp;
    struct readyz *z = xcalloc(1, sizeof *z);

    z->r = r;
    z->redis_ok = redisbus_is_ready(cp->redis);
    z->checks = json_object();
    z->durability = json_object();
    json_object_set_new(z->checks, "redis", json_string(z->redis_ok ? "ok" : "unreachable"));
    z->pending = 1;   /* held until every check is issued */
    readyz_check_pool(z, cp->global, -1);
    for (int i = 0; i < cp->cfg.n_geos; i++)
        readyz_check_pool(z, cp->geo[i], i);
    readyz_finish(z);
}
