/*
 * ts_daemons.c - start the binaries under test with generated configs:
 * the control plane (waits for /healthz) and the stamp agent.
 */
#include "ts_internal.h"
#include "envelope.h"
#include "ts_stamp.h"
#include "util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *ts_kek_file(void)
{
    static char path[600];
    char *text;
    int fd;
    if (path[0] && strstr(path, ts_tmp()) == path)
        return path;
    snprintf(path, sizeof path, "%s/kek.json", ts_tmp());
    text = envelope_new_file_text("test-kek-1");
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (!text || fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text) || fchmod(fd, 0600) != 0)
        ts_fail("cannot write the KEK file %s", path);
    close(fd);
    free(text);
    return path;
}

const char *ts_bin(const char *name)
{
    const char *p = ts_str("%s/%s", ts_env("STAMPCP_BIN_DIR"), name);
    if (access(p, X_OK) != 0)
        ts_fail("binary %s is missing (is STAMPCP_BIN_DIR right? was it built?)", p);
    return p;
}

static const char *default_geos[] = { "us", "eu", NULL };

static bool healthz_ok(void *arg)
{
    struct ts_cp *cp = arg;
    struct ts_resp *r;
    bool ok;
    if (!ts_proc_alive(cp->proc))
        return true; /* stop waiting; the caller checks */
    r = ts_http(cp->port, "GET", "/healthz", NULL, NULL, 0);
    ok = r->status == 200;
    ts_resp_free(r);
    return ok;
}

static bool readyz_ok(void *arg)
{
    struct ts_cp *cp = arg;
    struct ts_resp *r = ts_http(cp->port, "GET", "/readyz", NULL, NULL, 0);
    /* every part up, not merely serving (200 "degraded"): tests start from a whole instance */
    const char *st = r->json ? json_string_value(json_object_get(r->json, "status")) : NULL;
    bool ok = r->status == 200 && st && strcmp(st, "ready") == 0;
    ts_resp_free(r);
    return ok;
}

/* The daemon's Redis: "redisSentinel" (the raw JSON object) when given, else "redis": "host:port". */
static void set_redis(json_t *cfg, const char *sentinel_json, const char *addr)
{
    json_error_t err;
    json_t *v;
    if (!sentinel_json) {
        json_object_set_new(cfg, "redis", json_string(addr));
        return;
    }
    v = json_loads(sentinel_json, 0, &err);
    if (!v)
        ts_fail("redis_sentinel is not JSON (%s): %s", err.text, sentinel_json);
    json_object_set_new(cfg, "redisSentinel", v);
}

/* The daemon's resolver: "dns": {"resolvConf"} when given (NULL: the system's). */
static void set_dns(json_t *cfg, const char *resolv_conf)
{
    if (resolv_conf)
        json_object_set_new(cfg, "dns", json_pack("{s:s}", "resolvConf", resolv_conf));
}

static void write_cp_config(struct ts_cp *cp, const struct ts_cp_opts *o, const char *name)
{
    json_t *cfg = json_object();
    json_t *geos = json_object();
    char *txt;

    json_object_set_new(cfg, "listen", json_string(ts_str("127.0.0.1:%d", cp->port)));
    json_object_set_new(cfg, "operatorToken", json_string(cp->token));
    json_object_set_new(cfg, "globalDatabase", json_string(cp->global_db));
    for (int i = 0; cp->geo_ids[i]; i++)
        json_object_set_new(geos, cp->geo_ids[i], json_string(cp->geo_dbs[i]));
    json_object_set_new(cfg, "geographies", geos);
    set_redis(cfg, cp->redis_sentinel, cp->redis);
    set_dns(cfg, o->resolv_conf);
    json_object_set_new(cfg, "logLevel", json_string(getenv("TS_CP_LOG") ? getenv("TS_CP_LOG") : "info"));
    json_object_set_new(cfg, "kekFile", json_string(o->kek_file ? o->kek_file : ts_kek_file()));
    if (o->stale_after)
        json_object_set_new(cfg, "staleAfterIntervals", json_integer(o->stale_after));
    if (o->down_after)
        json_object_set_new(cfg, "downAfterIntervals", json_integer(o->down_after));
    if (cp->tls) {
        json_t *tls = json_pack("{s:s, s:s}", "cert", cp->tls_cert, "key", cp->tls_key);
        if (cp->client_ca)
            json_object_set_new(tls, "clientCa", json_string(cp->client_ca));
        json_object_set_new(cfg, "tls", tls);
    } else {
        json_object_set_new(cfg, "plainHttp", json_true());
    }
    txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(cfg);
    if (o->extra_json && *o->extra_json) {
        /* splice the extra members in before the closing brace */
        char *end = strrchr(txt, '}');
        *end = '\0';
        ts_write_file(cp->config_path, ts_str("%s,\n  %s\n}\n", txt, o->extra_json));
    } else {
        ts_write_file(cp->config_path, ts_str("%s\n", txt));
    }
    free(txt);
    (void)name;
}

static int g_cp_seq;

/* Fill in databases, token and redis; no port, no process. */
static struct ts_cp *cp_new(const struct ts_cp_opts *o, int n)
{
    struct ts_cp *cp = ts_keep(calloc(1, sizeof *cp));
    const char *admin = ts_env("STAMPCP_TEST_PG");
    const char *const *ids = o->geo_ids[0] ? o->geo_ids : default_geos;

    util_random_hex(cp->token, 16);
    cp->global_db = o->global_db ? o->global_db : ts_pg_create_db(admin, ts_unique(ts_str("%d_global", n)));
    for (int i = 0; ids[i] && i < TS_MAX_GEOS - 1; i++) {
        cp->geo_ids[i] = ids[i];
        cp->geo_dbs[i] = o->geo_dbs[i] ? o->geo_dbs[i]
                                       : ts_pg_create_db(admin, ts_unique(ts_str("%d_%s", n, ids[i])));
    }
    cp->redis = o->redis ? o->redis : ts_env("STAMPCP_TEST_REDIS");
    cp->redis_sentinel = o->redis_sentinel;
    cp->tls = !o->plain_http;
    if (cp->tls) {
        const char *crt, *key;
        ts_pki_server(&crt, &key);
        cp->ca = o->tls_ca ? o->tls_ca : ts_pki_ca();
        cp->tls_cert = o->tls_cert ? o->tls_cert : crt;
        cp->tls_key = o->tls_key ? o->tls_key : key;
        cp->client_ca = o->client_ca;
    }
    return cp;
}

struct ts_cp *ts_controlplane_prepare(const struct ts_cp_opts *o)
{
    int n = g_cp_seq++;
    const char *name = o->name ? o->name : "controlplane";
    struct ts_cp *cp = cp_new(o, n);
    cp->port = ts_free_port();
    snprintf(cp->name, sizeof cp->name, "%s-%d", name, n);
    snprintf(cp->config_path, sizeof cp->config_path, "%s/%s.json", ts_tmp(), cp->name);
    write_cp_config(cp, o, name);
    return cp;
}

void ts_controlplane_spawn(struct ts_cp *cp)
{
    char *argv[] = { (char *)ts_bin("controlplane"), "--config", cp->config_path, NULL };
    if (cp->tls)
        ts_http_use_tls(cp->port, cp->ca);
    else
        ts_http_forget_tls(cp->port);
    cp->proc = ts_proc_spawn(cp->name, argv, NULL, NULL);
}

struct ts_cp *ts_controlplane_start(const struct ts_cp_opts *o)
{
    struct ts_cp *cp = ts_controlplane_prepare(o);

    for (int attempt = 0; attempt < 3; attempt++) {
        int64_t t0 = ts_now_ms();
        if (attempt > 0) {
            cp->port = ts_free_port();
            write_cp_config(cp, o, cp->name);
        }
        ts_controlplane_spawn(cp);
        if (o->no_wait)
            return cp;
        (void)ts_wait_until(healthz_ok, cp, 20000);
        if (ts_proc_alive(cp->proc)) {
            struct ts_resp *r = ts_http(cp->port, "GET", "/healthz", NULL, NULL, 0);
            int st = r->status;
            ts_resp_free(r);
            if (st != 200) {
                ts_proc_dump_log(cp->proc, 4000);
                ts_fail("controlplane on port %d not healthy after 20 s", cp->port);
            }
            ts_log("controlplane %s up on port %d in %lld ms", cp->name, cp->port,
                   (long long)(ts_now_ms() - t0));
            return cp;
        }
        /* It exited: a port taken between free-port and bind is worth a retry. */
        if (ts_proc_log_contains(cp->proc, "in use")) {
            ts_log("port %d was taken; retrying", cp->port);
            continue;
        }
        ts_proc_dump_log(cp->proc, 4000);
        ts_fail("controlplane exited during startup (exit %d, signal %d)",
                ts_proc_exit_code(cp->proc), ts_proc_term_signal(cp->proc));
    }
    ts_fail("controlplane could not bind a port in 3 attempts");
}

bool ts_controlplane_wait_ready(struct ts_cp *cp, int timeout_ms)
{
    return ts_wait_until(readyz_ok, cp, timeout_ms);
}

int ts_controlplane_stop(struct ts_cp *cp, int timeout_ms)
{
    ts_proc_kill(cp->proc, SIGTERM);
    if (!ts_proc_wait(cp->proc, timeout_ms)) {
        ts_proc_kill(cp->proc, SIGKILL);
        (void)ts_proc_wait(cp->proc, 5000);
        return -1;
    }
    return ts_proc_exit_code(cp->proc);
}

struct ts_resp *ts_admin(struct ts_cp *cp, const char *method, const char *path, const char *json_body)
{
    const char *auth = ts_str("Authorization: Bearer %s", cp->token);
    const char *h_body[] = { auth, "Content-Type: application/json", NULL };
    const char *h_nobody[] = { auth, NULL };
    if (json_body)
        return ts_http(cp->port, method, path, h_body, json_body, strlen(json_body));
    return ts_http(cp->port, method, path, h_nobody, NULL, 0);
}

struct ts_resp *ts_admin_raw(struct ts_cp *cp, const char *method, const char *path, const char *ctype,
                             const void *body, size_t n)
{
    const char *auth = ts_str("Authorization: Bearer %s", cp->token);
    const char *ct = ctype ? ts_str("Content-Type: %s", ctype) : NULL;
    const char *h[] = { auth, ct, NULL };
    return ts_http(cp->port, method, path, h, body, n);
}

void ts_admin_post201(struct ts_cp *cp, const char *path, const char *json_body)
{
    struct ts_resp *r = ts_admin(cp, "POST", path, json_body);
    if (r->status != 201)
        ts_fail("POST %s %s: expected 201, got %s", path, json_body, ts_resp_str(r));
}

void ts_admin_post_stamp(struct ts_cp *cp, const char *geography, const char *region, const char *stamp)
{
    ts_admin_post201(cp, "/v1/geographies", ts_json("{'id':'%s'}", geography));
    ts_admin_post201(cp, "/v1/regions", ts_json("{'id':'%s','geography':'%s'}", region, geography));
    ts_admin_post201(cp, "/v1/stamps", ts_json("{'id':'%s','region':'%s'}", stamp, region));
}

void ts_expect_err(struct ts_resp *r, int status, const char *code, const char *what)
{
    if (r->status != status || !ts_is_error_body(r) || !ts_err_code(r) || strcmp(ts_err_code(r), code) != 0)
        ts_fail("%s: expected %d %s with a JSON error body, got %s", what, status, code, ts_resp_str(r));
}

struct ts_resp *ts_call(struct ts_cp *cp, const char *bearer, const char *method, const char *path,
                        const char *json_body)
{
    const char *auth = bearer ? ts_str("Authorization: Bearer %s", bearer) : NULL;
    const char *h[3] = { NULL, NULL, NULL };
    int n = 0;
    if (auth)
        h[n++] = auth;
    if (json_body)
        h[n++] = "Content-Type: application/json";
    return ts_http(cp->port, method, path, h, json_body, json_body ? strlen(json_body) : 0);
}

const char *ts_api_key(struct ts_cp *cp, const char *bearer, const char *tenant, const char *scopes_json,
                       const char **id_out)
{
    const char *body = tenant ? ts_str("{\"name\":\"k\",\"tenant\":\"%s\",\"scopes\":%s}", tenant, scopes_json)
                              : ts_str("{\"name\":\"k\",\"tenant\":null,\"scopes\":%s}", scopes_json);
    struct ts_resp *r = ts_call(cp, bearer ? bearer : cp->token, "POST", "/v1/api-keys", body);
    if (r->status != 201 || !ts_jstr(r->json, "key"))
        ts_fail("POST /v1/api-keys %s: %s", body, ts_resp_str(r));
    if (id_out)
        *id_out = ts_str("%s", ts_jstr(r->json, "id"));
    return ts_str("%s", ts_jstr(r->json, "key"));
}

struct ts_resp *ts_get(struct ts_cp *cp, const char *path)
{
    return ts_http(cp->port, "GET", path, NULL, NULL, 0);
}

struct ts_proc *ts_agent_start(const struct ts_agent_opts *o)
{
    static int seq;
    json_t *cfg = json_object();
    json_t *dps = json_array();
    json_t *hubs = json_array();
    const char *path = ts_str("%s/agent-%s-%d.json", ts_tmp(), o->stamp_id, seq);
    struct ts_proc *p;
    char *txt;

    json_object_set_new(cfg, "stampId", json_string(o->stamp_id));
    json_object_set_new(cfg, "region", json_string(o->region));
    set_redis(cfg, o->redis_sentinel, o->redis ? o->redis : ts_env("STAMPCP_TEST_REDIS"));
    set_dns(cfg, o->resolv_conf);
    json_object_set_new(cfg, "reportIntervalMs", json_integer(o->interval_ms ? o->interval_ms : 200));
    for (int i = 0; i < 4 && o->dps[i]; i++)
        json_array_append_new(dps, json_string(o->dps[i]));
    for (int i = 0; i < 4 && o->hubs[i]; i++)
        json_array_append_new(hubs, json_string(o->hubs[i]));
    json_object_set_new(cfg, "dpsInstances", dps);
    json_object_set_new(cfg, "hubs", hubs);
    txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(cfg);
    ts_write_file(path, txt);
    free(txt);

    char *argv[] = { (char *)ts_bin("stamp-agent"), "--config", (char *)path, NULL };
    p = ts_proc_spawn(ts_str("agent-%s-%d", o->stamp_id, seq++), argv, NULL, NULL);
    ts_sleep_ms(200);
    if (!ts_proc_alive(p)) {
        ts_proc_dump_log(p, 4000);
        ts_fail("stamp-agent exited at startup (exit %d)", ts_proc_exit_code(p));
    }
    return p;
}
