/*
 * ts_servers.c - private PostgreSQL and Redis servers for tests that stop and
 * restart them (infra/pg-server, infra/redis-server-ctl), plus a one-shot
 * Redis command helper.
 */
#include "ts_internal.h"

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/time.h>

static void run_script(const char *what, char *const argv[], int timeout_ms)
{
    char *out = NULL;
    int rc = ts_run(argv, timeout_ms, &out);
    if (rc != 0)
        ts_fail("%s failed (exit %d): %s", what, rc, out ? out : "");
}

static void pgserver_cleanup(void *arg)
{
    struct ts_pgserver *s = arg;
    if (s->paused)
        (void)ts_pgserver_signal(s, SIGCONT);
    if (s->running) {
        char *argv[] = { (char *)ts_str("%s/pg-server", ts_infra_dir()), "stop", s->dir, "immediate", NULL };
        (void)ts_run(argv, 60000, NULL);
        s->running = false;
    }
    free(s);
}

static void pgserver_run_start(struct ts_pgserver *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    char *argv[] = { (char *)ts_str("%s/pg-server", ts_infra_dir()), "start", s->dir, port, NULL };
    run_script("pg-server start", argv, 90000);
    s->running = true;
}

struct ts_pgserver *ts_pgserver_start(const char *name)
{
    struct ts_pgserver *s = calloc(1, sizeof *s);
    int64_t t0 = ts_now_ms();
    if (!s)
        abort();
    snprintf(s->dir, sizeof s->dir, "%s/pg-%s", ts_tmp(), name);
    {
        char *argv[] = { (char *)ts_str("%s/pg-server", ts_infra_dir()), "init", s->dir, NULL };
        run_script("pg-server init", argv, 120000);
    }
    ts_on_cleanup(pgserver_cleanup, s);
    s->port = ts_free_port();
    snprintf(s->conninfo, sizeof s->conninfo,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres", s->port);
    pgserver_run_start(s);
    ts_log("private PostgreSQL %s on port %d (%lld ms)", name, s->port, (long long)(ts_now_ms() - t0));
    return s;
}

void ts_pgserver_stop(struct ts_pgserver *s, const char *mode)
{
    char *argv[] = { (char *)ts_str("%s/pg-server", ts_infra_dir()), "stop", s->dir, (char *)mode, NULL };
    run_script("pg-server stop", argv, 90000);
    s->running = false;
    ts_log("private PostgreSQL on port %d stopped (%s)", s->port, mode);
}

void ts_pgserver_restart(struct ts_pgserver *s)
{
    pgserver_run_start(s);
    ts_log("private PostgreSQL on port %d started again", s->port);
}

struct ts_pgserver *ts_pgserver_start_standby(const char *name, const struct ts_pgserver *primary)
{
    struct ts_pgserver *s = calloc(1, sizeof *s);
    char port[16], pport[16];
    int64_t t0 = ts_now_ms();
    if (!s)
        abort();
    snprintf(s->dir, sizeof s->dir, "%s/pg-%s", ts_tmp(), name);
    s->port = ts_free_port();
    snprintf(s->conninfo, sizeof s->conninfo, "host=127.0.0.1 port=%d user=postgres dbname=postgres", s->port);
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(pport, sizeof pport, "%d", primary->port);
    ts_on_cleanup(pgserver_cleanup, s);
    {
        char *argv[] = { (char *)ts_str("%s/pg-server", ts_infra_dir()), "standby", s->dir, port, pport, NULL };
        run_script("pg-server standby", argv, 120000);
    }
    s->running = true;
    ts_log("private PostgreSQL standby %s on port %d of %d (%lld ms)", name, s->port, primary->port,
           (long long)(ts_now_ms() - t0));
    return s;
}

const char *ts_slowdns_start(const char *name, int delay_ms, const char **log_path)
{
    int port = ts_free_port();
    const char *conf = ts_str("%s/resolv-slow-%d.conf", ts_tmp(), port);
    const char *log = ts_str("%s/slowdns-%d.log", ts_tmp(), port);
    const char *script = ts_str("%s/tests/support/slowdns.py", ts_env("STAMPCP_SOURCE_DIR"));
    char *argv[] = {"/usr/bin/python3", (char *)script, "--port", (char *)ts_str("%d", port), "--delay-ms",
                    (char *)ts_str("%d", delay_ms), (char *)ts_str("%s=127.0.0.1", name), NULL};
    (void)ts_proc_spawn("slowdns", argv, log, NULL);
    for (int i = 0; i < 50; i++) {
        char *text = ts_read_file(log, NULL);
        if (text && strstr(text, "listening"))
            break;
        ts_sleep_ms(100);
    }
    ts_write_file(conf, ts_str("nameserver 127.0.0.1:%d\noptions timeout:10 attempts:1\n", port));
    if (log_path)
        *log_path = log;
    return conf;
}

int ts_slowdns_queries(const char *log_path, const char *name)
{
    const char *needle = ts_str(" query 1 %s", name);
    char *log = ts_read_file(log_path, NULL);
    int n = 0;
    for (char *p = log; p && (p = strstr(p, needle)); p++)
        n++;
    return n;
}

void ts_pgserver_promote(struct ts_pgserver *s)
{
    char *argv[] = { (char *)ts_str("%s/pg-server", ts_infra_dir()), "promote", s->dir, NULL };
    run_script("pg-server promote", argv, 60000);
    ts_log("private PostgreSQL on port %d promoted", s->port);
}

/* The postmaster's pid (first line of postmaster.pid), or -1. */
pid_t ts_pgserver_postmaster(const struct ts_pgserver *s)
{
    char *pidfile = ts_read_file(ts_str("%s/postmaster.pid", s->dir), NULL);
    long pid = pidfile ? strtol(pidfile, NULL, 10) : -1;
    return pid > 0 ? (pid_t)pid : -1;
}

/* Children of pid from /proc (the server's backends and auxiliary processes). */
static int pgserver_children(pid_t parent, pid_t *out, int cap)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;
    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL && n < cap) {
        char path[300], buf[512], *rp;
        FILE *f;
        long ppid;
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        buf[0] = '\0';
        if (!fgets(buf, sizeof buf, f))
            buf[0] = '\0';
        fclose(f);
        /* "pid (comm) state ppid ...": comm may hold spaces, so parse after the last ')' */
        if (!(rp = strrchr(buf, ')')) || sscanf(rp + 1, " %*c %ld", &ppid) != 1)
            continue;
        if (ppid == parent)
            out[n++] = (pid_t)strtol(e->d_name, NULL, 10);
    }
    closedir(d);
    return n;
}

int ts_pgserver_signal(struct ts_pgserver *s, int sig)
{
    pid_t pm = ts_pgserver_postmaster(s), kids[512];
    int n, sent = 0;
    if (pm < 0)
        ts_fail("PostgreSQL in %s: no postmaster.pid", s->dir);
    /* Stop the postmaster first so it forks nothing new; continue it last. */
    if (sig == SIGSTOP && kill(pm, sig) == 0)
        sent++;
    n = pgserver_children(pm, kids, 512);
    for (int i = 0; i < n; i++)
        if (kill(kids[i], sig) == 0)
            sent++;
    if (sig != SIGSTOP && kill(pm, sig) == 0)
        sent++;
    if (sig == SIGSTOP)
        s->paused = true;
    else if (sig == SIGCONT)
        s->paused = false;
    ts_log("PostgreSQL on port %d: signal %d to %d processes", s->port, sig, sent);
    return sent;
}

static void redis_cleanup(void *arg)
{
    struct ts_redis *r = arg;
    if (r->running) {
        char *argv[] = { (char *)ts_str("%s/redis-server-ctl", ts_infra_dir()), "stop", r->dir, NULL };
        (void)ts_run(argv, 30000, NULL);
        r->running = false;
    }
    free(r);
}

static void redis_run_start(struct ts_redis *r)
{
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    char *argv[] = { (char *)ts_str("%s/redis-server-ctl", ts_infra_dir()), "start", r->dir, port,
                     r->aclfile[0] ? "--aclfile" : NULL, r->aclfile, NULL };
    run_script("redis-server-ctl start", argv, 60000);
    r->running = true;
}

struct ts_redis *ts_redis_start(const char *name)
{
    return ts_redis_start_acl(name, NULL);
}

struct ts_redis *ts_redis_start_acl(const char *name, const char *aclfile)
{
    struct ts_redis *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    if (aclfile)
        snprintf(r->aclfile, sizeof r->aclfile, "%s", aclfile);
    snprintf(r->dir, sizeof r->dir, "%s/redis-%s", ts_tmp(), name);
    r->port = ts_free_port();
    snprintf(r->addr, sizeof r->addr, "127.0.0.1:%d", r->port);
    ts_on_cleanup(redis_cleanup, r);
    redis_run_start(r);
    ts_log("private Redis %s on port %d", name, r->port);
    return r;
}

void ts_redis_stop(struct ts_redis *r)
{
    char *argv[] = { (char *)ts_str("%s/redis-server-ctl", ts_infra_dir()), "stop", r->dir, NULL };
    run_script("redis-server-ctl stop", argv, 30000);
    r->running = false;
    ts_log("private Redis on port %d stopped", r->port);
}

void ts_redis_restart(struct ts_redis *r)
{
    redis_run_start(r);
    ts_log("private Redis on port %d started again", r->port);
}

static char *reply_str(const redisReply *rep)
{
    switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        return ts_str("%.*s", (int)rep->len, rep->str);
    case REDIS_REPLY_INTEGER:
        return ts_str("%lld", rep->integer);
    case REDIS_REPLY_NIL:
        return NULL;
    case REDIS_REPLY_ARRAY: {
        /* space-separated elements */
        char *acc = ts_str("%s", "");
        for (size_t i = 0; i < rep->elements; i++) {
            char *e = reply_str(rep->element[i]);
            acc = ts_str("%s%s%s", acc, i ? " " : "", e ? e : "(nil)");
        }
        return acc;
    }
    default:
        return NULL;
    }
}

/* One command on a new connection to addr, after "AUTH password" when
 * password is not NULL (a refused AUTH: "ERR ..." as the answer). */
static const char *redis_vcmd(const char *addr, const char *password, const char *fmt, va_list ap)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    struct timeval tv = { 3, 0 };
    redisContext *c;
    redisReply *rep;
    char *out = NULL;

    if (!colon || (size_t)(colon - addr) >= sizeof host)
        ts_fail("bad redis address %s", addr);
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    c = redisConnectWithTimeout(host, atoi(colon + 1), tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (password) {
        rep = redisCommand(c, "AUTH %s", password);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            out = rep ? reply_str(rep) : NULL;
            if (rep)
                freeReplyObject(rep);
            redisFree(c);
            return out;
        }
        freeReplyObject(rep);
    }
    rep = redisvCommand(c, fmt, ap);
    if (rep) {
        out = reply_str(rep);
        freeReplyObject(rep);
    }
    redisFree(c);
    return out;
}

const char *ts_redis_cmd(const char *addr, const char *fmt, ...)
{
    const char *out;
    va_list ap;
    va_start(ap, fmt);
    out = redis_vcmd(addr, NULL, fmt, ap);
    va_end(ap);
    return out;
}

const char *ts_redis_cmd_auth(const char *addr, const char *password, const char *fmt, ...)
{
    const char *out;
    va_list ap;
    va_start(ap, fmt);
    out = redis_vcmd(addr, password, fmt, ap);
    va_end(ap);
    return out;
}

int ts_redis_daemon_clients(const char *addr)
{
    const char *list = ts_redis_cmd(addr, "CLIENT LIST");
    int n = 0;
    for (const char *l = list; l && *l;) {
        size_t len = strcspn(l, "\n");
        const char *line = ts_str("%.*s", (int)len, l);
        const char *flags = strstr(line, " flags=");
        if (!strstr(line, " name=sentinel-") && !strstr(line, " cmd=client|list") && flags && !strchr("MS", flags[7]))
            n++;
        l += len + (l[len] == '\n');
    }
    return n;
}
