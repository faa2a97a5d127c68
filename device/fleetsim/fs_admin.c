/*
 * fs_admin.c - fleetsim: the control plane's admin API, blocking.
 *
 * Owns the stack's env file parsing, a small HTTP/1.1 client (one TCP
 * connection per call, TLS verified against STACK_CA_FILE when
 * CONTROLPLANE_URL is https://, sd_http for the bytes, a 10 s deadline per
 * call) and
 * the admin steps a run needs: the layout (and a fixed hub per device of a
 * stamp, for --seed-mode cp), a tenant and its enrollment key,
 * the wait for the enrollment groups to reach the stamps, and stamp status
 * changes (region loss). Called before and after the event loop runs, never
 * from inside it, so blocking is fine.
 */
#include "fs.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "sd_http.h"
#include "sd_tls.h"

#define FS_ADMIN_TIMEOUT_MS 10000

static void trim_eol(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
}

/* "http://host:port[/]" -> host:port */
static bool url_host(const char *url, char *host, size_t hostlen, bool *tls)
{
    const char *p;
    if (strncmp(url, "http://", 7) == 0) {
        p = url + 7;
        *tls = false;
    } else if (strncmp(url, "https://", 8) == 0) {
        p = url + 8;
        *tls = true;
    } else {
        return false;
    }
    size_t n = strcspn(p, "/");
    if (n == 0 || n >= hostlen)
        return false;
    memcpy(host, p, n);
    host[n] = '\0';
    return true;
}

/* Copy v into dst (truncated to fit; the limits are far above real values). */
static void set_val(char *dst, size_t len, const char *v)
{
    size_t n = strlen(v);
    if (n >= len)
        n = len - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

bool fs_admin_load_env(struct fs_admin *a, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[1024], url[512] = "";
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return false;
    }
    while (fgets(line, sizeof line, f)) {
        trim_eol(line);
        if (strncmp(line, "CONTROLPLANE_URL=", 17) == 0)
            set_val(url, sizeof url, line + 17);
        else if (strncmp(line, "OPERATOR_TOKEN=", 15) == 0)
            set_val(a->token, sizeof a->token, line + 15);
        else if (strncmp(line, "STACK_CA_FILE=", 14) == 0)
            set_val(a->ca_file, sizeof a->ca_file, line + 14);
    }
    fclose(f);
    if (!url[0] || !a->token[0] || !a->ca_file[0]) {
        snprintf(err, errlen, "%s: CONTROLPLANE_URL, OPERATOR_TOKEN and STACK_CA_FILE are required", path);
        return false;
    }
    if (!url_host(url, a->cp_host, sizeof a->cp_host, &a->cp_tls)) {
        snprintf(err, errlen, "%s: CONTROLPLANE_URL must be https://host:port or http://host:port (got %s)", path,
                 url);
        return false;
    }
    return true;
}

static int connect_host(const char *hostport, char *err, size_t errlen)
{
    char host[SD_HOST_MAX], *colon;
    struct addrinfo hints, *res = NULL;
    int fd = -1;
    snprintf(host, sizeof host, "%s", hostport);
    colon = strrchr(host, ':');
    if (!colon) {
        snprintf(err, errlen, "bad host:port %s", hostport);
        return -1;
    }
    *colon = '\0';
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res) {
        snprintf(err, errlen, "cannot resolve %s", hostport);
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        snprintf(err, errlen, "connect %s: %s", hostport, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* One admin connection: the socket (10 s send/receive timeouts) and, for https, its TLS session. */
struct admin_conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
};

static void conn_close(struct admin_conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL;
    c->ctx = NULL;
    c->fd = -1;
}

/* TLS over the connected socket, verifying the control plane against the stack's CA. */
static bool conn_tls(const struct fs_admin *a, struct admin_conn *c, char *err, size_t errlen)
{
    struct sd_tls_opts o = {a->ca_file, NULL, NULL};
    struct timeval tv = {FS_ADMIN_TIMEOUT_MS / 1000, 0};
    char host[SD_HOST_MAX], why[256], *colon;
    snprintf(host, sizeof host, "%s", a->cp_host);
    if ((colon = strrchr(host, ':')) != NULL)
        *colon = '\0';
    if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
        snprintf(err, errlen, "setsockopt: %s", strerror(errno));
        return false;
    }
    if (!(c->ctx = sd_tls_ctx_new(&o, err, errlen)) || !(c->ssl = sd_tls_new(c->ctx, host, c->fd, err, errlen)))
        return false;
    if (SSL_connect(c->ssl) != 1) {
        snprintf(err, errlen, "TLS to %s: %s", a->cp_host, sd_tls_describe(c->ssl, why, sizeof why));
        return false;
    }
    return true;
}

static bool send_all(struct admin_conn *c, const char *buf, size_t len)
{
    if (c->ssl)
        return len <= INT32_MAX && SSL_write(c->ssl, buf, (int)len) == (int)len;   /* blocking: all or nothing */
    while (len > 0) {
        ssize_t w = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        buf += w;
        len -= (size_t)w;
    }
    return true;
}

/* Read one answer into p; false on timeout, error or a malformed answer. */
static bool read_answer(struct admin_conn *c, struct sd_http_parser *p, char *err, size_t errlen)
{
    char buf[16384];
    int fd = c->fd;
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = c->ssl && SSL_pending(c->ssl) > 0 ? 1 : poll(&pfd, 1, FS_ADMIN_TIMEOUT_MS);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            snprintf(err, errlen, "no answer within %d ms", FS_ADMIN_TIMEOUT_MS);
            return false;
        }
        ssize_t n;
        if (c->ssl) {
            int r = SSL_read(c->ssl, buf, (int)sizeof buf);
            int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                continue;
            n = r > 0 ? r : e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL ? 0 : -1;
            if (n < 0)
                errno = EPROTO;
        } else {
            n = recv(fd, buf, sizeof buf, 0);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "recv: %s", strerror(errno));
            return false;
        }
        size_t used;
        enum sd_http_state st = sd_http_parser_feed(p, buf, (size_t)n, n == 0, &used);
        if (st == SD_HTTP_DONE)
            return true;
        if (st == SD_HTTP_ERROR) {
            snprintf(err, errlen, "bad answer: %s", sd_http_error(p));
            return false;
        }
    }
}

bool fs_admin_call(const struct fs_admin *a, const char *method, const char *path, const char *body,
                   int *status, json_t **out, char *err, size_t errlen)
{
    size_t blen = body ? strlen(body) : 0;
    size_t cap = strlen(path) + blen + 1024;
    char *req = malloc(cap);
    struct sd_http_parser *p = sd_http_parser_new();
    bool ok = false;
    struct admin_conn c = {-1, NULL, NULL};

    *out = NULL;
    *status = 0;
    if (!req || !p) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    int n = snprintf(req, cap,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: application/json\r\n"
                     "%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     method, path, a->cp_host, a->token, blen ? "Content-Type: application/json\r\n" : "", blen,
                     body ? body : "");
    if (n < 0 || (size_t)n >= cap) {
        snprintf(err, errlen, "request too large");
        goto out;
    }
    c.fd = connect_host(a->cp_host, err, errlen);
    if (c.fd < 0 || (a->cp_tls && !conn_tls(a, &c, err, errlen)))
        goto out;
    if (!send_all(&c, req, (size_t)n)) {
        snprintf(err, errlen, "send: %s", strerror(errno));
        goto out;
    }
    if (!read_answer(&c, p, err, errlen))
        goto out;
    *status = sd_http_status(p);
    size_t len;
    const char *b = sd_http_body(p, &len);
    if (b && len)
        *out = json_loadb(b, len, 0, NULL);
    ok = true;
out:
    conn_close(&c);
    sd_http_parser_free(p);
    free(req);
    return ok;
}

static void copy_str(char *dst, size_t len, json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    snprintf(dst, len, "%s", s ? s : "");
}

/* GET a whole collection (following "next") and call fn for each item. */
static bool for_each_item(const struct fs_admin *a, const char *coll, void (*fn)(struct fs_admin *, json_t *),
                          struct fs_admin *dst, char *err, size_t errlen)
{
    char path[512], cursor[256] = "";
    for (;;) {
        int status;
        json_t *j;
        snprintf(path, sizeof path, "/v1/%s?limit=500%s%s", coll, cursor[0] ? "&cursor=" : "", cursor);
        if (!fs_admin_call(a, "GET", path, NULL, &status, &j, err, errlen))
            return false;
        if (status != 200 || !json_is_array(json_object_get(j, "items"))) {
            snprintf(err, errlen, "GET %s -> %d", path, status);
            json_decref(j);
            return false;
        }
        size_t i;
        json_t *it;
        json_array_foreach(json_object_get(j, "items"), i, it)
            fn(dst, it);
        const char *next = json_string_value(json_object_get(j, "next"));
        /* cursors are opaque but URL-safe base64/hex in practice; refuse anything else */
        bool more = next && next[0] && strlen(next) < sizeof cursor && strspn(next,
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~") == strlen(next);
        if (more)
            snprintf(cursor, sizeof cursor, "%s", next);
        json_decref(j);
        if (!more)
            return true;
    }
}

static void add_stamp(struct fs_admin *a, json_t *it)
{
    if (a->nstamps >= FS_MAX_STAMPS)
        return;
    struct fs_stamp *s = &a->stamps[a->nstamps++];
    memset(s, 0, sizeof *s);
    copy_str(s->id, sizeof s->id, it, "id");
    copy_str(s->region, sizeof s->region, it, "region");
    copy_str(s->geography, sizeof s->geography, it, "geography");
    copy_str(s->status, sizeof s->status, it, "status");
    copy_str(s->tenancy, sizeof s->tenancy, it, "tenancy");
}

static void add_dps(struct fs_admin *a, json_t *it)
{
    int i = fs_admin_stamp_by_id(a, json_string_value(json_object_get(it, "stamp")));
    if (i < 0 || a->ndps >= FS_MAX_STAMPS)
        return;
    struct fs_dps *d = &a->dps[a->ndps++];
    copy_str(d->id, sizeof d->id, it, "id");
    copy_str(d->id_scope, sizeof d->id_scope, it, "idScope");
    copy_str(d->endpoint, sizeof d->endpoint, it, "endpoint");
    d->stamp = i;
    a->stamps[i].has_dps = true;
}

static void add_hub(struct fs_admin *a, json_t *it)
{
    int i = fs_admin_stamp_by_id(a, json_string_value(json_object_get(it, "stamp")));
    if (i < 0 || a->nhubs >= FS_MAX_HUBS)
        return;
    copy_str(a->hubs[a->nhubs].host, sizeof a->hubs[a->nhubs].host, it, "hostName");
    a->hubs[a->nhubs++].stamp = i;
}

static int cmp_hub(const void *x, const void *y)
{
    const struct fs_hub *a = x, *b = y;
    if (a->stamp != b->stamp)
        return a->stamp < b->stamp ? -1 : 1;
    return strcmp(a->host, b->host);
}

bool fs_admin_load_layout(struct fs_admin *a, char *err, size_t errlen)
{
    a->nstamps = 0;
    a->nhubs = 0;
    a->ndps = 0;
    if (!for_each_item(a, "stamps", add_stamp, a, err, errlen) ||
        !for_each_item(a, "dps-instances", add_dps, a, err, errlen) ||
        !for_each_item(a, "hubs", add_hub, a, err, errlen))
        return false;
    /* by stamp, then host name: fs_admin_pick_hub does not depend on the API's order */
    qsort(a->hubs, (size_t)a->nhubs, sizeof a->hubs[0], cmp_hub);
    return true;
}

int fs_admin_stamp_by_id(const struct fs_admin *a, const char *id)
{
    for (int i = 0; id && i < a->nstamps; i++)
        if (strcmp(a->stamps[i].id, id) == 0)
            return i;
    return -1;
}

int fs_admin_dps_by_scope(const struct fs_admin *a, const char *id_scope)
{
    for (int i = 0; id_scope && i < a->ndps; i++)
        if (strcmp(a->dps[i].id_scope, id_scope) == 0)
            return i;
    return -1;
}

int fs_admin_hub_stamp(const struct fs_admin *a, const char *host)
{
    for (int i = 0; host && i < a->nhubs; i++)
        if (strcmp(a->hubs[i].host, host) == 0)
            return a->hubs[i].stamp;
    return -1;
}

const char *fs_admin_pick_hub(const struct fs_admin *a, int stamp, const char *key)
{
    int first = -1, n = 0;
    uint32_t h = 2166136261u;
    for (int i = 0; i < a->nhubs; i++) {
        if (a->hubs[i].stamp != stamp)
            continue;
        if (first < 0)
            first = i;
        n++;
    }
    if (n == 0)
        return NULL;
    for (const char *p = key; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return a->hubs[first + (int)(h % (uint32_t)n)].host; /* sorted: the stamp's hubs are adjacent */
}

bool fs_admin_create_tenant(const struct fs_admin *a, const char *id, char geos[][32], int ngeos, char *key,
                            size_t keylen, char *err, size_t errlen)
{
    json_t *g = json_array(), *out = NULL;
    for (int i = 0; i < ngeos; i++)
        json_array_append_new(g, json_string(geos[i]));
    json_t *body = json_pack("{s:s, s:s, s:{s:o}}", "id", id, "name", "fleetsim", "residency", "geographies", g);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    int status;
    bool ok = text && fs_admin_call(a, "POST", "/v1/tenants", text, &status, &out, err, errlen);
    free(text);
    json_decref(body);
    if (!ok)
        return false;
    const char *k = json_string_value(json_object_get(out, "enrollmentKey"));
    if (status == 201 && k && strlen(k) < keylen) {
        snprintf(key, keylen, "%s", k);
    } else if (!(status == 409 && key[0])) {
        char *dump = out ? json_dumps(out, JSON_COMPACT) : NULL;
        snprintf(err, errlen, "POST /v1/tenants %s -> %d %s%s", id, status, dump ? dump : "",
                 status == 409 ? " (an existing tenant needs --enrollment-key)" : "");
        free(dump);
        ok = false;
    }
    json_decref(out);
    return ok;
}

static bool geo_in(char geos[][32], int ngeos, const char *g)
{
    for (int i = 0; i < ngeos; i++)
        if (strcmp(geos[i], g) == 0)
            return true;
    return false;
}

/* lastRunAt of one instance's enrollment sync ("" before the first pass) and whether in_sync. */
static bool sync_state(const struct fs_admin *a, const char *dps, char *last, size_t lastlen, bool *in_sync,
                       char *err, size_t errlen)
{
    char path[256];
    int status;
    json_t *j;
    snprintf(path, sizeof path, "/v1/dps-instances/%s/enrollment-sync", dps);
    if (!fs_admin_call(a, "GET", path, NULL, &status, &j, err, errlen))
        return false;
    last[0] = '\0';
    *in_sync = false;
    if (status == 200) {
        copy_str(last, lastlen, j, "lastRunAt");
        const char *st = json_string_value(json_object_get(j, "state"));
        *in_sync = st && strcmp(st, "in_sync") == 0;
    }
    json_decref(j);
    return true;
}

/*
 * A pass that ended after we first looked may have started before the tenant
 * existed; the pass after it cannot have. So: wait for lastRunAt to change
 * twice, the second time in sync.
 */
bool fs_admin_wait_sync(const struct fs_admin *a, char geos[][32], int ngeos, int timeout_s, char *err,
                        size_t errlen)
{
    char seen[FS_MAX_STAMPS][40];
    int changes[FS_MAX_STAMPS] = {0};
    bool in_sync;
    time_t deadline = time(NULL) + timeout_s;
    for (int i = 0; i < a->ndps; i++) {
        const struct fs_stamp *s = &a->stamps[a->dps[i].stamp];
        if (!geo_in(geos, ngeos, s->geography) || strcmp(s->tenancy, "dedicated") == 0) {
            changes[i] = 2;
            continue;
        }
        if (!sync_state(a, a->dps[i].id, seen[i], sizeof seen[i], &in_sync, err, errlen))
            return false;
    }
    for (;;) {
        bool all = true;
        for (int i = 0; i < a->ndps; i++) {
            char last[40];
            if (changes[i] >= 2)
                continue;
            if (!sync_state(a, a->dps[i].id, last, sizeof last, &in_sync, err, errlen))
                return false;
            if (strcmp(last, seen[i]) != 0) {
                snprintf(seen[i], sizeof seen[i], "%s", last);
                changes[i]++;
                if (changes[i] == 2 && !in_sync)
                    changes[i] = 1; /* not in sync yet: wait for another pass */
            }
            all = all && changes[i] >= 2;
        }
        if (all)
            return true;
        if (time(NULL) >= deadline) {
            snprintf(err, errlen, "enrollment groups not in sync in every eligible DPS within %d s", timeout_s);
            return false;
        }
        usleep(250 * 1000);
    }
}

bool fs_admin_set_stamp_status(const struct fs_admin *a, const char *stamp, const char *status, char *err,
                               size_t errlen)
{
    char path[256], body[64];
    int st;
    json_t *out;
    snprintf(path, sizeof path, "/v1/stamps/%s", stamp);
    snprintf(body, sizeof body, "{\"status\":\"%s\"}", status);
    if (!fs_admin_call(a, "PATCH", path, body, &st, &out, err, errlen))
        return false;
    json_decref(out);
    if (st != 200) {
        snprintf(err, errlen, "PATCH %s %s -> %d", path, body, st);
        return false;
    }
    return true;
}
