/*
 * ts_router.c - helpers for the router integration tests: a private Redis
 * with one or more control planes on shared databases, layouts registered
 * through the admin API with one stamp agent per stamp, tenants and device
 * SAS tokens, and a thread-safe request runner for concurrent device calls.
 */
#define _GNU_SOURCE 1 /* strcasestr */
#include "ts_internal.h"
#include "ts_stamp.h"

#include "sas.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *const default_geos[] = { "us", "eu", NULL };

/* ------------------------------------------------------------------ */
/* JSON values handed out to the main thread                           */
/* ------------------------------------------------------------------ */

static json_t **g_json;
static size_t g_njson, g_capjson;
static bool g_json_cleanup;

static void json_free_all(void *arg)
{
    (void)arg;
    for (size_t i = 0; i < g_njson; i++)
        json_decref(g_json[i]);
    free(g_json);
    g_json = NULL;
    g_njson = g_capjson = 0;
    g_json_cleanup = false;
}

static json_t *keep_json(json_t *j)
{
    if (!j)
        return NULL;
    if (!g_json_cleanup) {
        ts_on_cleanup(json_free_all, NULL);
        g_json_cleanup = true;
    }
    if (g_njson == g_capjson) {
        size_t cap = g_capjson ? g_capjson * 2 : 256;
        json_t **n = realloc(g_json, cap * sizeof *n);
        if (!n)
            abort();
        g_json = n;
        g_capjson = cap;
    }
    g_json[g_njson++] = j;
    return j;
}

/* ------------------------------------------------------------------ */
/* Control planes and layouts                                          */
/* ------------------------------------------------------------------ */

struct ts_rt *ts_rt_start(const struct ts_rt_opts *o)
{
    struct ts_rt *rt = ts_keep(calloc(1, sizeof *rt));
    struct ts_cp_opts co;
    const char *const *geos = o->geos[0] ? o->geos : default_geos;
    int ncp = o->ncp > 0 ? o->ncp : 1;

    if (ncp > TS_RT_MAX_CP)
        ts_fail("ts_rt_start: at most %d control planes", TS_RT_MAX_CP);
    rt->layout_refresh_ms = o->layout_refresh_ms > 0 ? o->layout_refresh_ms : 200;
    rt->redis_sentinel = o->redis_sentinel;
    if (!o->redis_sentinel)
        rt->redis = ts_redis_start("rt");

    memset(&co, 0, sizeof co);
    for (int i = 0; geos[i] && i < TS_MAX_GEOS - 1; i++)
        co.geo_ids[i] = geos[i];
    co.redis = rt->redis ? rt->redis->addr : NULL;
    co.redis_sentinel = o->redis_sentinel;
    co.global_db = o->global_db;
    for (int i = 0; geos[i] && i < TS_MAX_GEOS - 1; i++)
        co.geo_dbs[i] = o->geo_dbs[i];
    co.stale_after = 3;
    co.tls_cert = o->tls_cert;
    co.tls_key = o->tls_key;
    co.tls_ca = o->tls_ca;
    co.plain_http = o->plain_http;
    co.down_after = 10;
    co.extra_json = ts_str("\"layoutRefreshMs\": %d%s%s", rt->layout_refresh_ms,
                           o->extra_json && *o->extra_json ? ",\n  " : "",
                           o->extra_json ? o->extra_json : "");
    for (int i = 0; i < ncp; i++) {
        struct ts_cp *cp;
        if (i > 0) {
            co.global_db = rt->cp[0]->global_db;
            for (int g = 0; rt->cp[0]->geo_ids[g]; g++)
                co.geo_dbs[g] = rt->cp[0]->geo_dbs[g];
        }
        co.redis = rt->redis ? rt->redis->addr : NULL;
        if (o->redis_proxied[i] && rt->redis) {
            rt->redis_proxy[i] = ts_tcpproxy_start(rt->redis->addr);
            co.redis = ts_tcpproxy_addr(rt->redis_proxy[i]);
        }
        cp = ts_controlplane_start(&co);
        if (!ts_controlplane_wait_ready(cp, 20000))
            ts_fail("control plane %s not ready after 20 s: %s", cp->name, ts_resp_str(ts_get(cp, "/readyz")));
        rt->cp[rt->ncp++] = cp;
    }
    return rt;
}

const char *ts_rt_geo_db(const struct ts_rt *rt, const char *geo)
{
    for (int g = 0; rt->cp[0]->geo_ids[g]; g++)
        if (strcmp(rt->cp[0]->geo_ids[g], geo) == 0)
            return rt->cp[0]->geo_dbs[g];
    ts_fail("no database for geography %s", geo);
}

const char *ts_rt_id_scope(const char *dps_id)
{
    char buf[65];
    size_t n = 0;
    buf[n++] = '0';
    buf[n++] = 'n';
    buf[n++] = 'e';
    for (const char *p = dps_id; *p && n < sizeof buf - 1; p++)
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9'))
            buf[n++] = *p;
    buf[n] = '\0';
    return ts_str("%s", buf);
}

const char *ts_rt_endpoint(const char *dps_id)
{
    return ts_str("%s.dps.test:8443", dps_id);
}

void ts_rt_register_layout(struct ts_rt *rt, struct ts_rt_layout *l)
{
    ts_rt_register_layout_served(rt, l, NULL, NULL, 0);   /* no instance served by a real agent */
}

struct ts_proc *ts_rt_agent_start(struct ts_rt *rt, struct ts_rt_stamp *s)
{
    struct ts_agent_opts a;
    memset(&a, 0, sizeof a);
    a.stamp_id = s->id;
    a.region = s->region;
    a.redis = rt->redis ? rt->redis->addr : NULL;
    a.redis_sentinel = rt->redis_sentinel;
    a.interval_ms = 200;
    for (int i = 0; i < 4 && s->dps[i].id; i++)
        a.dps[i] = s->dps[i].id;
    for (int i = 0; i < 4 && s->hubs[i].id; i++)
        a.hubs[i] = s->hubs[i].id;
    s->agent = ts_agent_start(&a);
    return s->agent;
}

const char *ts_rt_health(struct ts_cp *cp, const char *stamp)
{
    struct ts_resp *r = ts_admin(cp, "GET", ts_str("/v1/stamps/%s", stamp), NULL);
    const char *h = r->status == 200 ? ts_jstr(r->json, "health") : NULL;
    return h ? h : "?";
}

bool ts_rt_wait_health(struct ts_rt *rt, const char *stamp, const char *health, int timeout_ms)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    for (;;) {
        bool all = true;
        for (int i = 0; i < rt->ncp && all; i++)
            if (strcmp(ts_rt_health(rt->cp[i], stamp), health) != 0)
                all = false;
        if (all)
            return true;
        if (ts_now_ms() >= deadline)
            return false;
        ts_sleep_ms(50);
    }
}

void ts_rt_wait_layout(const struct ts_rt *rt)
{
    ts_sleep_ms(2 * rt->layout_refresh_ms + 150);
}

void ts_rt_start_agents(struct ts_rt *rt)
{
    struct ts_rt_layout *l = rt->layout;
    for (int i = 0; i < TS_RT_MAX && l->stamps[i].id; i++)
        ts_rt_agent_start(rt, &l->stamps[i]);
    for (int i = 0; i < TS_RT_MAX && l->stamps[i].id; i++)
        if (!ts_rt_wait_health(rt, l->stamps[i].id, "healthy", 10000))
            ts_fail("stamp %s not healthy 10 s after its agent started (%s)", l->stamps[i].id,
                    ts_rt_health(rt->cp[0], l->stamps[i].id));
    ts_rt_wait_layout(rt);
}

struct ts_rt_stamp *ts_rt_find_stamp(struct ts_rt *rt, const char *id)
{
    for (int i = 0; rt->layout && i < TS_RT_MAX && rt->layout->stamps[i].id; i++)
        if (id && strcmp(rt->layout->stamps[i].id, id) == 0)
            return &rt->layout->stamps[i];
    return NULL;
}

struct ts_rt_stamp *ts_rt_stamp_of_dps(struct ts_rt *rt, const char *dps_id)
{
    for (int i = 0; rt->layout && i < TS_RT_MAX && rt->layout->stamps[i].id; i++)
        for (int d = 0; d < 4 && rt->layout->stamps[i].dps[d].id; d++)
            if (dps_id && strcmp(rt->layout->stamps[i].dps[d].id, dps_id) == 0)
                return &rt->layout->stamps[i];
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Tenants and credentials                                             */
/* ------------------------------------------------------------------ */

struct ts_tenant *ts_rt_tenant(struct ts_cp *cp, const char *json_body)
{
    struct ts_resp *r = ts_admin(cp, "POST", "/v1/tenants", json_body);
    struct ts_tenant *t;
    const char *id, *key;
    int n;

    if (r->status != 201)
        ts_fail("POST /v1/tenants %s: expected 201, got %s", json_body, ts_resp_str(r));
    id = ts_jstr(r->json, "id");
    key = ts_jstr(r->json, "enrollmentKey");
    if (!id || !key)
        ts_fail("tenant answer without id or enrollmentKey: %s", ts_resp_str(r));
    t = ts_keep(calloc(1, sizeof *t));
    snprintf(t->id, sizeof t->id, "%s", id);
    snprintf(t->key_b64, sizeof t->key_b64, "%s", key);
    n = sas_b64_decode(key, t->key, sizeof t->key);
    if (n != 32)
        ts_fail("enrollmentKey %s does not decode to 32 bytes (%d)", key, n);
    t->keylen = n;
    t->json = r->json;
    return t;
}

struct ts_tenant *ts_rt_tenant_acme(struct ts_cp *cp)
{
    return ts_rt_tenant(cp, TS_RT_ACME_JSON);
}

void ts_rt_job_locate(struct ts_rt_job *j, int port, const struct ts_tenant *t, const char *regid)
{
    j->port = port;
    j->path = ts_str("/v1/tenants/%s/registrations/%s/locate", t->id, regid);
    j->authz = ts_rt_sas(t, regid, 0);
}

void ts_rt_expect_usage_matches(const char *geo_db, const char *when)
{
    const char *bad = ts_pg_scalar(geo_db, "SELECT string_agg(u.dps_id || '=' || u.registrations || '/' ||"
                                           " coalesce(c.n, 0), ',') FROM dps_usage u LEFT JOIN (SELECT dps_id,"
                                           " count(*) n FROM devices WHERE status = 'assigned' GROUP BY 1) c"
                                           " ON c.dps_id = u.dps_id WHERE u.registrations <> coalesce(c.n, 0)");
    if (bad)
        ts_fail("dps_usage disagrees with the assigned rows %s (usage/rows): %s", when, bad);
}

const char *ts_rt_installer_token(struct ts_cp *cp, const char *tenant_id)
{
    struct ts_resp *r = ts_admin(cp, "POST", ts_str("/v1/tenants/%s/installer-tokens", tenant_id),
                                 "{\"name\":\"installer app\"}");
    const char *tok;
    if (r->status != 201)
        ts_fail("installer token for %s: expected 201, got %s", tenant_id, ts_resp_str(r));
    tok = ts_jstr(r->json, "token");
    if (!tok || !*tok)
        ts_fail("installer token answer without token: %s", ts_resp_str(r));
    return tok;
}

const char *ts_rt_sas_custom(const unsigned char *key, size_t keylen, const char *derive_regid,
                             const char *sr, int64_t expiry, const char *skn)
{
    unsigned char dk[SAS_KEY_LEN];
    char buf[1200];
    if (!expiry)
        expiry = (int64_t)time(NULL) + 3600;
    sas_derive_key(key, keylen, derive_regid, dk);
    sas_build(sr, dk, sizeof dk, expiry, skn ? skn : "registration", buf, sizeof buf);
    return ts_str("%s", buf);
}

const char *ts_rt_sas(const struct ts_tenant *t, const char *regid, int64_t expiry)
{
    return ts_rt_sas_custom(t->key, (size_t)t->keylen, regid, ts_str("%s/registrations/%s", t->id, regid), expiry,
                            "registration");
}

const char *ts_rt_authz(const char *value)
{
    return ts_str("Authorization: %s", value);
}

struct ts_resp *ts_rt_device(struct ts_cp *cp, const char *verb, const char *tenant_id, const char *regid,
                             const char *authz_value, const char *body)
{
    const char *h[3];
    int n = 0;
    if (authz_value)
        h[n++] = ts_rt_authz(authz_value);
    if (body)
        h[n++] = "Content-Type: application/json";
    h[n] = NULL;
    return ts_http(cp->port, "POST", ts_str("/v1/tenants/%s/registrations/%s/%s", tenant_id, regid, verb), h, body,
                   body ? strlen(body) : 0);
}

struct ts_resp *ts_rt_locate(struct ts_cp *cp, const struct ts_tenant *t, const char *regid)
{
    return ts_rt_device(cp, "locate", t->id, regid, ts_rt_sas(t, regid, 0), NULL);
}

/* ------------------------------------------------------------------ */
/* Thread-safe requests                                                */
/* ------------------------------------------------------------------ */

void ts_rt_post_mt(int port, const char *path, const char *authz, const char *body, int timeout_ms,
                   struct ts_rt_answer *out)
{
    char req[4096], buf[8192];
    size_t len = 0, reqlen;
    int n;
    struct ts_resp *a;
    const char *ra;

    memset(out, 0, sizeof *out);
    out->sent_ms = ts_now_ms();
    n = snprintf(req, sizeof req,
                 "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s%s%s%s"
                 "Content-Length: %zu\r\n\r\n%s",
                 path, port, authz ? "Authorization: " : "", authz ? authz : "", authz ? "\r\n" : "",
                 body ? "Content-Type: application/json\r\n" : "", body ? strlen(body) : 0, body ? body : "");
    if (n < 0 || (size_t)n >= sizeof req) {
        snprintf(out->body, sizeof out->body, "request too long");
        return;
    }
    reqlen = (size_t)n;
    {
        char err[160];
        if (!ts_http_exchange_mt(port, req, reqlen, timeout_ms, buf, sizeof buf, &len, err, sizeof err)) {
            snprintf(out->body, sizeof out->body, "%s", err);
            return;
        }
    }
    buf[len] = '\0';
    out->at_ms = ts_now_ms();
    if (!(a = ts_http_parse_raw(buf, len))) {   /* incomplete: a dropped connection, as the client saw */
        snprintf(out->body, sizeof out->body, "no complete answer (%zu bytes)", len);
        return;
    }
    out->status = a->status;
    if ((ra = ts_header(a, "Retry-After")) != NULL)
        snprintf(out->retry_after, sizeof out->retry_after, "%s", ra);
    snprintf(out->body, sizeof out->body, "%s", a->body);
    ts_http_answer_free(a);
}

struct ts_rt_batch {
    struct ts_rt_job *jobs;
    int n;
    int nthreads;
    int next;          /* __atomic */
    int stop;          /* __atomic */
    pthread_barrier_t go;
    pthread_t *threads;
};

static void *batch_worker(void *arg)
{
    struct ts_rt_batch *b = arg;
    pthread_barrier_wait(&b->go);
    for (;;) {
        int i;
        if (__atomic_load_n(&b->stop, __ATOMIC_SEQ_CST))
            break;
        i = __atomic_fetch_add(&b->next, 1, __ATOMIC_SEQ_CST);
        if (i >= b->n)
            break;
        ts_rt_post_mt(b->jobs[i].port, b->jobs[i].path, b->jobs[i].authz, b->jobs[i].body, 20000, &b->jobs[i].ans);
        __atomic_store_n(&b->jobs[i].done, true, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

struct ts_rt_batch *ts_rt_batch_start(struct ts_rt_job *jobs, int n, int nthreads)
{
    struct ts_rt_batch *b = calloc(1, sizeof *b);
    if (!b)
        abort();
    b->jobs = jobs;
    b->n = n;
    b->nthreads = nthreads;
    b->threads = calloc((size_t)nthreads, sizeof *b->threads);
    if (!b->threads)
        abort();
    pthread_barrier_init(&b->go, NULL, (unsigned)nthreads);
    for (int i = 0; i < n; i++)
        jobs[i].done = false;
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&b->threads[i], NULL, batch_worker, b) != 0)
            ts_fail("pthread_create failed");
    return b;
}

void ts_rt_batch_stop(struct ts_rt_batch *b)
{
    __atomic_store_n(&b->stop, 1, __ATOMIC_SEQ_CST);
}

void ts_rt_batch_wait(struct ts_rt_batch *b)
{
    for (int i = 0; i < b->nthreads; i++)
        pthread_join(b->threads[i], NULL);
    pthread_barrier_destroy(&b->go);
    free(b->threads);
    free(b);
}

void ts_rt_run_jobs(struct ts_rt_job *jobs, int n, int nthreads)
{
    ts_rt_batch_wait(ts_rt_batch_start(jobs, n, nthreads));
}

json_t *ts_rt_answer_json(const struct ts_rt_answer *a)
{
    return keep_json(json_loads(a->body, 0, NULL));
}

const char *ts_rt_answer_code(const struct ts_rt_answer *a)
{
    json_t *j = ts_rt_answer_json(a);
    return ts_jstr(json_object_get(j, "error"), "code");
}

struct ts_rt *ts_rt_start_fleet_with(const struct ts_rt_opts *o, struct ts_rt_layout *l)
{
    struct ts_rt_opts with = *o;
    struct ts_rt *rt;

    if (!with.geos[0])
        for (int i = 0; i < TS_MAX_GEOS && l->geographies[i]; i++)
            with.geos[i] = l->geographies[i];
    rt = ts_rt_start(&with);
    ts_rt_register_layout(rt, l);
    ts_rt_start_agents(rt);
    return rt;
}

struct ts_rt *ts_rt_start_fleet(struct ts_rt_layout *l, int ncp)
{
    struct ts_rt_opts o;

    memset(&o, 0, sizeof o);
    o.ncp = ncp;
    return ts_rt_start_fleet_with(&o, l);
}

struct ts_rt *ts_rt_start_fleet_acme(struct ts_rt_layout *l, int ncp, struct ts_tenant **acme)
{
    struct ts_rt *rt = ts_rt_start_fleet(l, ncp);

    *acme = ts_rt_tenant_acme(rt->cp[0]);
    return rt;
}
