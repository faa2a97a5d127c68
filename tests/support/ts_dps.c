/*
 * ts_dps.c - see ts_stamp.h "DPS instances served by a real agent": the set-up
 * the router, tenant and device tests share when a stamp agent serves the
 * DPS device API of an instance the control plane knows (its handle, the
 * layout registered with that agent's endpoint and service key, the agent
 * started on the test PKI).
 */
#include "ts_stamp.h"

#include <stdlib.h>
#include <string.h>

void ts_dps_agent_prepare(struct ts_stamp *a, const char *policy_name, const char *db)
{
    a->port = ts_free_port();
    a->hostport = ts_str("127.0.0.1:%d", a->port);
    a->policy = policy_name;
    a->policy_key = ts_random_key(32);
    a->db = db;
}

/* The agent serving dps_id among agents[0..n) (NULL: none). */
static const struct ts_stamp *served_by(const char *dps_id, const char *const *dps_ids, const struct ts_stamp *agents,
                                        int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(dps_ids[i], dps_id) == 0)
            return &agents[i];
    return NULL;
}

/* POST one DPS instance: a served one names its agent's endpoint and service key. */
static void register_dps(struct ts_cp *cp, const char *stamp_id, const struct ts_rt_dps *p, const struct ts_stamp *a)
{
    char *extra = ts_str("%s", "");

    if (a)
        extra = ts_str(",'serviceKeyName':'%s','serviceKey':'%s'", a->policy, a->policy_key);
    if (p->max_registrations)
        extra = ts_str("%s,'maxRegistrations':%ld", extra, p->max_registrations);
    if (p->per_minute)
        extra = ts_str("%s,'registrationsPerMinute':%ld", extra, p->per_minute);
    ts_admin_post201(cp, "/v1/dps-instances",
                     ts_json("{'id':'%s','stamp':'%s','idScope':'%s','endpoint':'%s'%s}", p->id, stamp_id,
                             ts_rt_id_scope(p->id), a ? a->hostport : ts_rt_endpoint(p->id), extra));
}

void ts_rt_register_layout_served(struct ts_rt *rt, struct ts_rt_layout *l, const char *const *dps_ids,
                                  const struct ts_stamp *agents, int n)
{
    struct ts_cp *cp = rt->cp[0];

    rt->layout = l;
    for (int i = 0; l->geographies[i]; i++)
        ts_admin_post201(cp, "/v1/geographies", ts_json("{'id':'%s'}", l->geographies[i]));
    for (int i = 0; i < TS_RT_MAX && l->regions[i].id; i++)
        ts_admin_post201(cp, "/v1/regions",
                         ts_json("{'id':'%s','geography':'%s'}", l->regions[i].id, l->regions[i].geography));
    for (int i = 0; i < TS_RT_MAX && l->stamps[i].id; i++) {
        struct ts_rt_stamp *s = &l->stamps[i];
        ts_admin_post201(cp, "/v1/stamps", ts_json("{'id':'%s','region':'%s','tenancy':'%s'}", s->id, s->region,
                                                   s->tenancy ? s->tenancy : "pooled"));
        for (int d = 0; d < 4 && s->dps[d].id; d++)
            register_dps(cp, s->id, &s->dps[d], served_by(s->dps[d].id, dps_ids, agents, n));
        for (int h = 0; h < 4 && s->hubs[h].id; h++) {
            const struct ts_rt_hub *hb = &s->hubs[h];
            char *extra = hb->max_devices ? ts_str(",'maxDevices':%ld", hb->max_devices) : "";
            ts_admin_post201(cp, "/v1/hubs", ts_json("{'id':'%s','stamp':'%s','hostName':'%s.hub.test'%s}", hb->id,
                                                     s->id, hb->id, extra));
        }
    }
}

static bool agent_listening(void *arg)
{
    struct ts_proc *p = arg;
    return !ts_proc_alive(p) || ts_proc_log_contains(p, "event=dps_listening");
}

/* The agent's config: one instance, every hub of the stamp, TLS with the test PKI's server certificate. */
static json_t *agent_config(struct ts_rt *rt, const struct ts_rt_stamp *s, const char *dps_id, const char *db,
                            const char *policy_name, const struct ts_stamp *a)
{
    json_t *hubs = json_array(), *cfg;
    const char *crt, *key;

    ts_pki_server(&crt, &key);
    for (int h = 0; h < 4 && s->hubs[h].id; h++)
        json_array_append_new(hubs, json_pack("{s:s, s:s}", "id", s->hubs[h].id, "hostName",
                                              ts_str("%s.hub.test", s->hubs[h].id)));
    cfg = json_pack("{s:s, s:s, s:s, s:i, s:{s:s, s:s, s:{s:s, s:s}, s:[{s:s, s:s}], s:[{s:s, s:s}], s:o}}",
                    "stampId", s->id, "region", s->region, "redis", rt->redis->addr, "reportIntervalMs", 200,
                    "provisioning", "listen", a->hostport, "database", db,
                    "tls", "cert", crt, "key", key,
                    "servicePolicies", "name", policy_name, "key", a->policy_key,
                    "instances", "id", dps_id, "idScope", ts_rt_id_scope(dps_id),
                    "hubs", hubs);
    if (!cfg)
        ts_fail("agent config for %s did not pack", s->id);
    json_object_set_new(cfg, "kekFile", json_string(ts_kek_file()));   /* the enrollment keys at rest */
    return cfg;
}

void ts_rt_dps_agent_start(struct ts_rt *rt, const char *stamp_id, const char *dps_id, const char *db,
                           const char *policy_name, struct ts_stamp *a)
{
    struct ts_rt_stamp *s = ts_rt_find_stamp(rt, stamp_id);
    const char *path;
    json_t *cfg;
    char *txt;

    if (!s)
        ts_fail("no stamp %s in the layout", stamp_id);
    path = ts_str("%s/agent-%s.json", ts_tmp(), s->id);
    cfg = agent_config(rt, s, dps_id, db, policy_name, a);
    txt = json_dumps(cfg, JSON_INDENT(2));
    json_decref(cfg);
    if (!txt)
        ts_fail("agent config for %s did not dump", s->id);
    ts_write_file(path, txt);
    free(txt);
    a->config_path = path;
    {
        char *argv[] = { (char *)ts_bin("stamp-agent"), "--config", (char *)path, NULL };
        s->agent = ts_proc_spawn(ts_str("agent-%s", s->id), argv, NULL, NULL);
    }
    a->proc = s->agent;
    if (!ts_wait_until(agent_listening, s->agent, 20000) || !ts_proc_alive(s->agent)) {
        ts_proc_dump_log(s->agent, 6000);
        ts_fail("stamp-agent %s did not start its provisioning endpoint on %s", s->id, a->hostport);
    }
}

void ts_rt_dps_agent_restart(struct ts_rt *rt, const char *stamp_id, struct ts_stamp *a)
{
    struct ts_rt_stamp *s = ts_rt_find_stamp(rt, stamp_id);
    char *argv[] = { (char *)ts_bin("stamp-agent"), "--config", (char *)a->config_path, NULL };
    if (!s || !a->config_path)
        ts_fail("no started agent for stamp %s to restart", stamp_id);
    s->agent = ts_proc_spawn(ts_str("agent-%s-again", s->id), argv, NULL, NULL);
    a->proc = s->agent;
    if (!ts_wait_until(agent_listening, s->agent, 20000) || !ts_proc_alive(s->agent)) {
        ts_proc_dump_log(s->agent, 6000);
        ts_fail("stamp-agent %s did not start again on %s", s->id, a->hostport);
    }
}

bool ts_rt_group_synced(struct ts_rt *rt, const char *dps_id, const char *db, const char *group_id, int64_t after_ms)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/dps-instances/%s/enrollment-sync", dps_id), NULL);
    const char *st = r->status == 200 ? ts_jstr(r->json, "state") : NULL;
    return st && strcmp(st, "in_sync") == 0 && ts_parse_rfc3339(ts_jstr(r->json, "lastRunAt")) > after_ms &&
           ts_pg_count(db, ts_str("SELECT count(*) FROM dps_enrollments WHERE dps_id = '%s' AND kind = 'group' "
                                  "AND enrollment_id = '%s'", dps_id, group_id)) == 1;
}

struct tenant_wait {
    struct ts_rt *rt;
    const char *dps_id, *db, *group_id;
    int64_t after_ms;
};

static bool tenant_group_synced(void *arg)
{
    struct tenant_wait *w = arg;
    return ts_rt_group_synced(w->rt, w->dps_id, w->db, w->group_id, w->after_ms);
}

struct ts_tenant *ts_rt_tenant_synced(struct ts_rt *rt, const char *dps_id, const char *db, const char *json_body)
{
    struct tenant_wait w = { rt, dps_id, db, NULL, ts_now_ms() - 1 };
    struct ts_tenant *t = ts_rt_tenant(rt->cp[0], json_body);

    w.group_id = t->id;   /* the reconciler names the tenant's group after it */
    if (!ts_wait_until(tenant_group_synced, &w, 15000))
        ts_fail("group %s not on %s 15 s after the tenant was created", t->id, dps_id);
    return t;
}

/* The geography whose database holds the stamp's tables (the stamp's region's). */
static const char *stamp_geography(const struct ts_rt_layout *l, const struct ts_rt_stamp *s)
{
    for (int i = 0; i < TS_RT_MAX && l->regions[i].id; i++)
        if (strcmp(l->regions[i].id, s->region) == 0)
            return l->regions[i].geography;
    ts_fail("stamp %s: region %s is not in the layout", s->id, s->region);
}

struct ts_rt *ts_rt_start_served(const struct ts_rt_served_opts *so, struct ts_rt_layout *l,
                                 const char *const *dps_ids, struct ts_stamp *agents, int n)
{
    struct ts_rt_opts o;
    struct ts_rt *rt;

    memset(&o, 0, sizeof o);
    o.ncp = so->ncp;
    for (int i = 0; i < TS_MAX_GEOS && l->geographies[i]; i++)
        o.geos[i] = l->geographies[i];
    o.layout_refresh_ms = 200;
    o.extra_json = ts_str("\"dps\": {\"caFile\": \"%s\", \"enrollmentSyncMs\": %d%s%s}", ts_pki_ca(),
                          so->enrollment_sync_ms ? so->enrollment_sync_ms : 300, so->dps_extra ? ", " : "",
                          so->dps_extra ? so->dps_extra : "");
    if (so->cp_extra)
        o.extra_json = ts_str("%s, %s", o.extra_json, so->cp_extra);
    rt = ts_rt_start(&o);
    rt->layout = l;   /* ts_rt_stamp_of_dps below looks in it */
    for (int i = 0; i < n; i++) {
        struct ts_rt_stamp *s = ts_rt_stamp_of_dps(rt, dps_ids[i]);
        if (!s)
            ts_fail("no stamp with DPS instance %s in the layout", dps_ids[i]);
        ts_dps_agent_prepare(&agents[i], so->policy ? so->policy : "provisioningserviceowner",
                             ts_rt_geo_db(rt, stamp_geography(l, s)));
    }
    ts_rt_register_layout_served(rt, l, dps_ids, agents, n);
    return rt;
}

void ts_rt_served_agents_start(struct ts_rt *rt, const char *const *dps_ids, struct ts_stamp *agents, int n)
{
    for (int i = 0; i < n; i++)
        ts_rt_dps_agent_start(rt, ts_rt_stamp_of_dps(rt, dps_ids[i])->id, dps_ids[i], agents[i].db,
                              agents[i].policy, &agents[i]);
}

void ts_rt_served_ready(struct ts_rt *rt, const char *const *dps_ids, int n)
{
    for (int i = 0; i < n; i++) {
        const char *stamp = ts_rt_stamp_of_dps(rt, dps_ids[i])->id;
        if (!ts_rt_wait_health(rt, stamp, "healthy", 10000))
            ts_fail("stamp %s not healthy 10 s after its agent started (%s)", stamp, ts_rt_health(rt->cp[0], stamp));
    }
    ts_rt_wait_layout(rt);
}

struct ts_rt *ts_rt_start_served_ready(const struct ts_rt_served_opts *o, struct ts_rt_layout *l,
                                       const char *const *dps_ids, struct ts_stamp *agents, int n)
{
    struct ts_rt *rt = ts_rt_start_served(o, l, dps_ids, agents, n);

    ts_rt_served_agents_start(rt, dps_ids, agents, n);
    ts_rt_served_ready(rt, dps_ids, n);
    return rt;
}
