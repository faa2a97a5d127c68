/*
 * ts_ha.c - the HA engines for tests: a Patroni-managed PostgreSQL pair
 * (infra/patroni-cluster) and a Redis master + replica under three Sentinels
 * (infra/redis-sentinel-ctl), each in the test's scratch dir, stopped at
 * ts_finish (and by infra/testenv's teardown if the test dies).
 */
#include "ts_internal.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* run infra/SCRIPT CMD DIR [ARG]; its stdout (library-owned) or the test fails. */
static char *script(const char *name, const char *cmd, const char *dir, const char *arg, int timeout_ms)
{
    char *out = NULL;
    char *argv[] = { (char *)ts_str("%s/%s", ts_infra_dir(), name), (char *)cmd, (char *)dir, (char *)arg, NULL };
    int rc = ts_run(argv, timeout_ms, &out);
    if (rc != 0)
        ts_fail("%s %s %s failed (exit %d): %s", name, cmd, dir, rc, out ? out : "");
    return out ? out : ts_str("%s", "");
}

/* The value of KEY=value (optionally 'quoted') in env-line output (library-owned). */
static const char *env_value(const char *out, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            const char *v = p + klen + 1;
            size_t n = strcspn(v, "\n");
            if (n >= 2 && v[0] == '\'' && v[n - 1] == '\'') {
                v++;
                n -= 2;
            }
            return ts_str("%.*s", (int)n, v);
        }
    }
    ts_fail("no %s in: %s", key, out);
}

/* The last non-empty line of a script's output (library-owned). */
static const char *last_line(const char *out)
{
    const char *end = out + strlen(out), *start;
    while (end > out && (end[-1] == '\n' || end[-1] == '\r'))
        end--;
    start = end;
    while (start > out && start[-1] != '\n')
        start--;
    return ts_str("%.*s", (int)(end - start), start);
}

/* ------------------------------------------------------------ Patroni */

static void patroni_cleanup(void *arg)
{
    struct ts_patroni *p = arg;
    char *argv[] = { (char *)ts_str("%s/patroni-cluster", ts_infra_dir()), "stop", p->dir, NULL };
    (void)ts_run(argv, 90000, NULL);
    free(p);
}

struct ts_patroni *ts_patroni_start(const char *name)
{
    struct ts_patroni *p = calloc(1, sizeof *p);
    int64_t t0 = ts_now_ms();
    const char *out;
    if (!p)
        abort();
    snprintf(p->dir, sizeof p->dir, "%s/patroni-%s", ts_tmp(), name);
    ts_on_cleanup(patroni_cleanup, p);
    out = script("patroni-cluster", "start", p->dir, name, 120000);
    snprintf(p->conninfo, sizeof p->conninfo, "%s", env_value(out, "PATRONI_CONNINFO"));
    snprintf(p->pg_ports, sizeof p->pg_ports, "%s", env_value(out, "PATRONI_PG_PORTS"));
    ts_log("Patroni cluster %s: PostgreSQL on %s, leader and sync standby after %lld ms", name, p->pg_ports,
           (long long)(ts_now_ms() - t0));
    return p;
}

const char *ts_patroni_create_db(struct ts_patroni *p, const char *name)
{
    PGconn *c = ts_pg_connect(p->conninfo);
    PGresult *res = PQexec(c, ts_str("CREATE DATABASE \"%s\"", name));
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        const char *msg = ts_str("%s", PQerrorMessage(c));
        PQclear(res);
        PQfinish(c);
        ts_fail("CREATE DATABASE %s on the Patroni cluster: %s", name, msg);
    }
    PQclear(res);
    PQfinish(c);
    return ts_pg_conninfo_db(p->conninfo, name);
}

const char *ts_patroni_leader(struct ts_patroni *p, int *pg_port)
{
    const char *line = last_line(script("patroni-cluster", "leader", p->dir, NULL, 20000));
    char member[64];
    int port = 0;
    if (sscanf(line, "%63s %d", member, &port) != 2)
        ts_fail("patroni-cluster leader: %s", line);
    if (pg_port)
        *pg_port = port;
    return ts_str("%s", member);
}

const char *ts_patroni_kill_leader(struct ts_patroni *p)
{
    const char *m = last_line(script("patroni-cluster", "kill-leader", p->dir, NULL, 20000));
    ts_log("Patroni leader %s: postmaster killed with SIGKILL", m);
    return m;
}

const char *ts_patroni_switchover(struct ts_patroni *p)
{
    const char *m = last_line(script("patroni-cluster", "switchover", p->dir, NULL, 60000));
    ts_log("Patroni switchover to %s done", m);
    return m;
}

void ts_patroni_wait(struct ts_patroni *p, int timeout_s)
{
    (void)script("patroni-cluster", "wait", p->dir, ts_str("%d", timeout_s), (timeout_s + 10) * 1000);
}

const char *ts_patroni_status(struct ts_patroni *p)
{
    char *out = NULL;
    char *argv[] = { (char *)ts_str("%s/patroni-cluster", ts_infra_dir()), "status", p->dir, NULL };
    (void)ts_run(argv, 20000, &out);
    return out ? out : "";
}

/* ------------------------------------------------------------ Sentinel */

static void sentinel_cleanup(void *arg)
{
    struct ts_sentinel *s = arg;
    char *argv[] = { (char *)ts_str("%s/redis-sentinel-ctl", ts_infra_dir()), "stop", s->dir, NULL };
    (void)ts_run(argv, 60000, NULL);
    free(s);
}

struct ts_sentinel *ts_sentinel_start(const char *name)
{
    struct ts_sentinel *s = calloc(1, sizeof *s);
    int64_t t0 = ts_now_ms();
    const char *out, *list;
    json_t *arr;
    if (!s)
        abort();
    snprintf(s->dir, sizeof s->dir, "%s/sentinel-%s", ts_tmp(), name);
    ts_on_cleanup(sentinel_cleanup, s);
    out = script("redis-sentinel-ctl", "start", s->dir, NULL, 60000);
    snprintf(s->sentinels, sizeof s->sentinels, "%s", env_value(out, "REDIS_SENTINELS"));
    snprintf(s->master_name, sizeof s->master_name, "%s", env_value(out, "REDIS_MASTER_NAME"));
    snprintf(s->pass_file, sizeof s->pass_file, "%s", env_value(out, "REDIS_SENTINEL_PASS_FILE"));
    /* "redisSentinel": {"masterName": ..., "sentinels": [...], "auth": {"passwordFile": ...}}
     * for the daemons' configs */
    arr = json_array();
    list = s->sentinels;
    while (*list) {
        size_t n = strcspn(list, ",");
        json_array_append_new(arr, json_stringn(list, n));
        list += n;
        if (*list == ',')
            list++;
    }
    {
        json_t *o = json_pack("{s:s, s:o, s:{s:s}}", "masterName", s->master_name, "sentinels", arr, "auth",
                              "passwordFile", s->pass_file);
        char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        snprintf(s->sentinel_json, sizeof s->sentinel_json, "%s", txt);
        free(txt);
        json_decref(o);
    }
    ts_log("Redis + Sentinel %s: Sentinels %s, master %s (%lld ms)", name, s->sentinels, ts_sentinel_master(s),
           (long long)(ts_now_ms() - t0));
    return s;
}

const char *ts_sentinel_password(struct ts_sentinel *s)
{
    char *pw = ts_read_file(s->pass_file, NULL);
    if (!pw)
        ts_fail("no Sentinel password file %s", s->pass_file);
    pw[strcspn(pw, "\r\n")] = '\0';
    return pw;
}

const char *ts_sentinel_master(struct ts_sentinel *s)
{
    char addr[64];
    const char *line = last_line(script("redis-sentinel-ctl", "master", s->dir, NULL, 20000));
    if (sscanf(line, "%63s", addr) != 1)
        ts_fail("redis-sentinel-ctl master: %s", line);
    return ts_str("%s", addr);
}

const char *ts_sentinel_kill_master(struct ts_sentinel *s)
{
    const char *line = last_line(script("redis-sentinel-ctl", "kill-master", s->dir, NULL, 20000));
    ts_log("Redis master %s killed with SIGKILL", line);
    return ts_str("%.*s", (int)strcspn(line, " "), line);
}

void ts_sentinel_start_node(struct ts_sentinel *s, const char *addr)
{
    char *out = NULL;
    char *argv[] = { (char *)ts_str("%s/redis-sentinel-ctl", ts_infra_dir()), "env", s->dir, NULL };
    const char *nodes;
    if (ts_run(argv, 10000, &out) != 0 || !out)
        ts_fail("redis-sentinel-ctl env %s failed", s->dir);
    nodes = env_value(out, "REDIS_NODES");
    /* node a is the first address of REDIS_NODES, b the second */
    (void)script("redis-sentinel-ctl", "start-node", s->dir,
                 strncmp(nodes, addr, strlen(addr)) == 0 && nodes[strlen(addr)] == ',' ? "a" : "b", 30000);
    ts_log("Redis %s started again (empty) as a replica", addr);
}

const char *ts_sentinel_restart_empty(struct ts_sentinel *s)
{
    const char *line = last_line(script("redis-sentinel-ctl", "restart-empty", s->dir, NULL, 30000));
    ts_log("Redis master %s restarted without its data", line);
    return ts_str("%.*s", (int)strcspn(line, " "), line);
}

void ts_sentinel_wait(struct ts_sentinel *s, int timeout_s)
{
    (void)script("redis-sentinel-ctl", "wait", s->dir, ts_str("%d", timeout_s), (timeout_s + 10) * 1000);
}

/* ------------------------------------------------------------ a subscriber */

struct ts_redis_sub {
    redisContext *c;
};

void ts_redis_sub_close(struct ts_redis_sub *s)
{
    if (!s)
        return;
    if (s->c)
        redisFree(s->c);
    free(s);
}

struct ts_redis_sub *ts_redis_subscribe(const char *addr, const char *channel)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    struct timeval tv = { 3, 0 };
    struct ts_redis_sub *s;
    redisReply *rep;

    if (!colon || (size_t)(colon - addr) >= sizeof host)
        ts_fail("bad redis address %s", addr);
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    s = calloc(1, sizeof *s);
    if (!s)
        abort();
    s->c = redisConnectWithTimeout(host, atoi(colon + 1), tv);
    if (!s->c || s->c->err) {
        ts_redis_sub_close(s);
        return NULL;
    }
    redisSetTimeout(s->c, tv);
    rep = redisCommand(s->c, "SUBSCRIBE %s", channel);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep)
            freeReplyObject(rep);
        ts_redis_sub_close(s);
        return NULL;
    }
    freeReplyObject(rep);
    return s;
}

const char *ts_redis_sub_next(struct ts_redis_sub *s, int timeout_ms)
{
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    void *r = NULL;
    redisReply *rep;
    const char *out = NULL;

    if (!s || !s->c || s->c->err)
        return NULL;
    redisSetTimeout(s->c, tv);
    if (redisGetReply(s->c, &r) != REDIS_OK || !r) {
        /* a timeout leaves the context unusable */
        redisFree(s->c);
        s->c = NULL;
        return NULL;
    }
    rep = r;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 && rep->element[2]->type == REDIS_REPLY_STRING)
        out = ts_str("%.*s", (int)rep->element[2]->len, rep->element[2]->str);
    freeReplyObject(rep);
    return out;
}
