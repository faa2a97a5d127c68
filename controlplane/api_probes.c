/*
 * api_probes.c - liveness and readiness.
 *
 * Readiness runs a real round trip ("SELECT 1") on every database pool in
 * parallel, so a pool that looks connected but whose server hangs is caught,
 * and reads Redis health from the heartbeat the feed already keeps.
 */
#include "api_probes.h"

#include <stdlib.h>

#include "util.h"

struct readyz {
    struct cp_req *r;
    json_t *checks;
    int pending;
    bool ok;
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
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "cached", (json_int_t)st.cached, "negative",
                     (json_int_t)st.negative, "negativeCap", (json_int_t)st.negative_cap, "negativeEvictions",
                     (json_int_t)st.negative_evictions, "queries", (json_int_t)st.queries, "coalesced",
                     (json_int_t)st.coalesced, "refused", (json_int_t)st.refused, "inflight",
                     (json_int_t)st.inflight);
}

static void readyz_finish(struct readyz *z)
{
    json_t *body;
    if (--z->pending > 0)
        return;
    body = json_pack("{s:s, s:o, s:o}", "status", z->ok ? "ready" : "unavailable", "checks", z->checks,
                     "tenantCache", readyz_tenant_stats(z->r->cp));
    if (!z->ok)
        cpreq_add_header(z->r, "Retry-After", "1");
    cpreq_reply_json(z->r, z->ok ? 200 : 503, body);
    free(z);
}

struct readyz_check {
    struct readyz *z;
    struct pgpool *pool;
};

static void readyz_on_pg(const struct pgq_result *q, void *arg)
{
    struct readyz_check *c = arg;
    const char *word = q->status == PGQ_OK ? "ok" : pgpool_state_word(c->pool);
    if (q->status == PGQ_OK && !pgpool_is_ready(c->pool))
        word = pgpool_state_word(c->pool);
    if (q->status != PGQ_OK && word[0] == 'o')   /* "ok" but the query failed */
        word = "unreachable";
    if (q->status != PGQ_OK)
        c->z->ok = false;
    json_object_set_new(c->z->checks, pgpool_name(c->pool), json_string(word));
    readyz_finish(c->z);
    free(c);
}

static void readyz_check_pool(struct readyz *z, struct pgpool *pool)
{
    struct readyz_check *c = xcalloc(1, sizeof *c);
    c->z = z;
    c->pool = pool;
    z->pending++;
    pgpool_query(pool, "SELECT 1", 0, NULL, readyz_on_pg, c);
}

void api_probes_readyz(struct cp_req *r)
{
    struct cp *cp = r->cp;
    struct readyz *z = xcalloc(1, sizeof *z);
    bool redis_ok = redisbus_is_ready(cp->redis);

    z->r = r;
    z->ok = redis_ok && !cp->shutting_down;
    z->checks = json_object();
    json_object_set_new(z->checks, "redis", json_string(redis_ok ? "ok" : "unreachable"));
    z->pending = 1;   /* held until every check is issued */
    readyz_check_pool(z, cp->global);
    for (int i = 0; i < cp->cfg.n_geos; i++)
        readyz_check_pool(z, cp->geo[i]);
    readyz_finish(z);
}
