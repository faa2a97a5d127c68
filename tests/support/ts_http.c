/*
 * ts_http.c - a small blocking HTTP/1.1 client with one deadline per request.
 *
 * One connection per request ("Connection: close"). The answer is complete at
 * Content-Length bytes, at the last chunk of a chunked body, or at EOF; a
 * server that never finishes is reported as status 0 with err "timeout", so a
 * hang shows up as a failed assertion, not as a stuck test.
 */
#define _GNU_SOURCE 1 /* memmem, strcasestr */
#include "ts_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int g_timeout_ms = 10000;

static struct ts_resp **g_resps;
static size_t g_nresps, g_capresps;

void ts_http_set_timeout(int ms) { g_timeout_ms = ms; }

static void track(struct ts_resp *r)
{
    if (g_nresps == g_capresps) {
        size_t cap = g_capresps ? g_capresps * 2 : 128;
        struct ts_resp **n = realloc(g_resps, cap * sizeof *n);
        if (!n)
            abort();
        g_resps = n;
        g_capresps = cap;
    }
    g_resps[g_nresps++] = r;
}

static void resp_destroy(struct ts_resp *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->hname[i]);
        free(r->hvalue[i]);
    }
    free(r->hname);
    free(r->hvalue);
    free(r->body);
    if (r->json)
        json_decref(r->json);
    free(r);
}

void ts_resp_free(struct ts_resp *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < g_nresps; i++) {
        if (g_resps[i] == r) {
            g_resps[i] = g_resps[--g_nresps];
            break;
        }
    }
    resp_destroy(r);
}

void ts_http_free_all(void)
{
    for (size_t i = 0; i < g_nresps; i++)
        resp_destroy(g_resps[i]);
    free(g_resps);
    g_resps = NULL;
    g_nresps = g_capresps = 0;
}

static int remaining(int64_t deadline)
{
    int64_t left = deadline - ts_now_ms();
    return left > 0 ? (int)left : 0;
}

static int connect_deadline(int port, int64_t deadline, char *err, size_t errlen)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (errno != EINPROGRESS) {
            snprintf(err, errlen, "connect: %s", strerror(errno));
            close(fd);
            return -1;
        }
        struct pollfd p = { fd, POLLOUT, 0 };
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (poll(&p, 1, remaining(deadline)) <= 0) {
            snprintf(err, errlen, "timeout connecting");
            close(fd);
            return -1;
        }
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr) {
            snprintf(err, errlen, "connect: %s", strerror(soerr));
            close(fd);
            return -1;
        }
    }
    return fd;
}

static bool send_all(int fd, const char *buf, size_t len, int64_t deadline, char *err, size_t errlen)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            struct pollfd p = { fd, POLLOUT, 0 };
            if (poll(&p, 1, remaining(deadline)) <= 0) {
                snprintf(err, errlen, "timeout sending");
                return false;
            }
            continue;
        }
        /* The server may answer (413, 400) and close before reading it all:
         * stop sending and read what it said. */
        snprintf(err, errlen, "send: %s", strerror(errno));
        return false;
    }
    return true;
}

/* Find "\r\n\r\n"; returns header length including it, or 0. */
static size_t header_end(const char *buf, size_t len)
{
    for (size_t i = 3; i < len; i++)
        if (buf[i - 3] == '\r' && buf[i - 2] == '\n' && buf[i - 1] == '\r' && buf[i] == '\n')
            return i + 1;
    return 0;
}

/*
 * Decode a chunked body from src[0..len). Returns 1 when complete (out/outlen
 * set, malloc'd), 0 when more bytes are needed, -1 when malformed.
 */
static int dechunk(const char *src, size_t len, char **out, size_t *outlen)
{
    size_t pos = 0, n = 0;
    char *buf = malloc(len + 1);
    if (!buf)
        abort();
    for (;;) {
        const char *eol = memmem(src + pos, len - pos, "\r\n", 2);
        char *endp;
        unsigned long sz;
        if (!eol)
            goto more;
        sz = strtoul(src + pos, &endp, 16);
        if (endp == src + pos) {
            free(buf);
            return -1;
        }
        pos = (size_t)(eol - src) + 2;
        if (sz == 0) {
            /* trailers until an empty line */
            for (;;) {
                const char *e2 = memmem(src + pos, len - pos, "\r\n", 2);
                if (!e2)
                    goto more;
                if (e2 == src + pos)
                    break;
                pos = (size_t)(e2 - src) + 2;
            }
            buf[n] = '\0';
            *out = buf;
            *outlen = n;
            return 1;
        }
        if (len - pos < sz + 2)
            goto more;
        memcpy(buf + n, src + pos, sz);
        n += sz;
        pos += sz + 2;
    }
more:
    free(buf);
    return 0;
}

static void add_header(struct ts_resp *r, const char *name, size_t nlen, const char *val, size_t vlen)
{
    r->hname = realloc(r->hname, (r->nheaders + 1) * sizeof *r->hname);
    r->hvalue = realloc(r->hvalue, (r->nheaders + 1) * sizeof *r->hvalue);
    if (!r->hname || !r->hvalue)
        abort();
    r->hname[r->nheaders] = strndup(name, nlen);
    r->hvalue[r->nheaders] = strndup(val, vlen);
    r->nheaders++;
}

/*
 * Try to parse buf as a complete answer. Returns 1 when complete (r filled),
 * 0 when more is needed, -1 when malformed. At EOF (eof=true) a body without
 * framing is complete.
 */
static int parse_answer(struct ts_resp *r, const char *method, const char *buf, size_t len, bool eof)
{
    size_t hlen = header_end(buf, len);
    const char *p, *end;
    const char *te, *cl;
    bool no_body;

    if (!hlen)
        return eof ? -1 : 0;
    /* reset (we may be called several times) */
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->hname[i]);
        free(r->hvalue[i]);
    }
    r->nheaders = 0;

    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    r->status = atoi(buf + 9);
    p = memchr(buf, '\n', hlen);
    end = buf + hlen - 2;
    while (p && p + 1 < end) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', (size_t)(end + 2 - line));
        const char *colon;
        size_t ll;
        if (!eol)
            break;
        ll = (size_t)(eol - line);
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        colon = memchr(line, ':', ll);
        if (colon) {
            const char *v = colon + 1;
            const char *ve = line + ll;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            add_header(r, line, (size_t)(colon - line), v, (size_t)(ve - v));
        }
        p = eol;
    }

    no_body = strcmp(method, "HEAD") == 0 || r->status == 204 || r->status == 304 ||
              (r->status >= 100 && r->status < 200);
    te = ts_header(r, "Transfer-Encoding");
    cl = ts_header(r, "Content-Length");
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    if (no_body) {
        r->body = strdup("");
        return 1;
    }
    if (te && strcasestr(te, "chunked")) {
        int rc = dechunk(buf + hlen, len - hlen, &r->body, &r->body_len);
        if (rc == 0 && eof)
            return -1;
        return rc;
    }
    if (cl) {
        size_t want = (size_t)strtoull(cl, NULL, 10);
        if (len - hlen < want)
            return eof ? -1 : 0;
        r->body = malloc(want + 1);
        if (!r->body)
            abort();
        memcpy(r->body, buf + hlen, want);
        r->body[want] = '\0';
        r->body_len = want;
        return 1;
    }
    if (!eof)
        return 0;
    r->body_len = len - hlen;
    r->body = malloc(r->body_len + 1);
    if (!r->body)
        abort();
    memcpy(r->body, buf + hlen, r->body_len);
    r->body[r->body_len] = '\0';
    return 1;
}

static struct ts_resp *exchange(int port, const char *method, const char *req, size_t reqlen)
{
    struct ts_resp *r = calloc(1, sizeof *r);
    int64_t start = ts_now_ms();
    int64_t deadline = start + g_timeout_ms;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd, rc = 0;
    bool sent;

    if (!r)
        abort();
    track(r);
    fd = connect_deadline(port, deadline, r->err, sizeof r->err);
    if (fd < 0)
        goto out;
    sent = send_all(fd, req, reqlen, deadline, r->err, sizeof r->err);
    (void)sent; /* read the answer either way */
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t n;
        if (cap - len < 16384) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap + 1);
            if (!buf)
                abort();
        }
        n = recv(fd, buf + len, cap - len, 0);
        if (n > 0) {
            len += (size_t)n;
            rc = parse_answer(r, method, buf, len, false);
            if (rc != 0)
                break;
            continue;
        }
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            rc = parse_answer(r, method, buf ? buf : "", len, true);
            if (rc < 0 && len == 0) {
                char prev[sizeof r->err];
                memcpy(prev, r->err, sizeof prev);
                snprintf(r->err, sizeof r->err, "connection closed without an answer%s%.100s",
                         prev[0] ? " after " : "", prev);
            }
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            int left = remaining(deadline);
            if (left == 0 || poll(&pfd, 1, left) == 0) {
                snprintf(r->err, sizeof r->err, "timeout after %d ms (%zu bytes read)", g_timeout_ms, len);
                rc = -2;
                break;
            }
            continue;
        }
        snprintf(r->err, sizeof r->err, "recv: %s", strerror(errno));
        rc = -1;
        break;
    }
    close(fd);
    if (rc != 1) {
        if (rc == -1 && len > 0)
            snprintf(r->err, sizeof r->err, "malformed answer (%zu bytes)", len);
        r->status = 0;
    } else {
        r->err[0] = '\0';
        if (r->body_len > 0) {
            json_error_t je;
            r->json = json_loadb(r->body, r->body_len, 0, &je);
        }
    }
out:
    free(buf);
    r->elapsed_ms = ts_now_ms() - start;
    if (!r->body) {
        r->body = strdup("");
        r->body_len = 0;
    }
    return r;
}

struct ts_resp *ts_http(int port, const char *method, const char *path,
                        const char *const *headers, const void *body, size_t body_len)
{
    size_t cap = 1024 + strlen(path) + body_len;
    char *req;
    size_t n;
    struct ts_resp *r;

    for (const char *const *h = headers; h && *h; h++)
        cap += strlen(*h) + 2;
    req = malloc(cap);
    if (!req)
        abort();
    n = (size_t)snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n",
                         method, path, port);
    for (const char *const *h = headers; h && *h; h++)
        n += (size_t)snprintf(req + n, cap - n, "%s\r\n", *h);
    if (body)
        n += (size_t)snprintf(req + n, cap - n, "Content-Length: %zu\r\n", body_len);
    n += (size_t)snprintf(req + n, cap - n, "\r\n");
    if (body && body_len) {
        memcpy(req + n, body, body_len);
        n += body_len;
    }
    r = exchange(port, method, req, n);
    free(req);
    return r;
}

struct ts_resp *ts_http_raw(int port, const void *bytes, size_t len)
{
    const char *b = bytes;
    /* HEAD answers have no body: recognise the method for framing. */
    return exchange(port, len >= 5 && strncmp(b, "HEAD ", 5) == 0 ? "HEAD" : "GET", b, len);
}

const char *ts_header(const struct ts_resp *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->hname[i], name) == 0)
            return r->hvalue[i];
    return NULL;
}

const char *ts_jstr(const json_t *obj, const char *key)
{
    json_t *v;
    if (!obj || !json_is_object(obj))
        return NULL;
    v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

json_int_t ts_jint(const json_t *obj, const char *key, json_int_t def)
{
    json_t *v;
    if (!obj || !json_is_object(obj))
        return def;
    v = json_object_get(obj, key);
    return json_is_integer(v) ? json_integer_value(v) : def;
}

static json_t *error_obj(const struct ts_resp *r)
{
    json_t *e = r->json ? json_object_get(r->json, "error") : NULL;
    return json_is_object(e) ? e : NULL;
}

const char *ts_err_code(const struct ts_resp *r) { return ts_jstr(error_obj(r), "code"); }
const char *ts_err_target(const struct ts_resp *r) { return ts_jstr(error_obj(r), "target"); }

bool ts_is_error_body(const struct ts_resp *r)
{
    json_t *e = error_obj(r);
    return e && ts_jstr(e, "code") && ts_jstr(e, "message");
}

const char *ts_resp_str(const struct ts_resp *r)
{
    if (r->status == 0)
        return ts_str("no answer: %s", r->err);
    return ts_str("%d %.*s", r->status, (int)(r->body_len > 600 ? 600 : r->body_len), r->body);
}

void ts_expect_status(const struct ts_resp *r, int status, const char *file, int line)
{
    if (r->status != status)
        ts_fail("%s:%d: expected HTTP %d, got %s", file, line, status, ts_resp_str(r));
}

void ts_expect_error(const struct ts_resp *r, int status, const char *code, const char *file, int line)
{
    const char *got;
    if (r->status != status)
        ts_fail("%s:%d: expected HTTP %d %s, got %s", file, line, status, code, ts_resp_str(r));
    if (!ts_is_error_body(r))
        ts_fail("%s:%d: expected an error body {\"error\":{\"code\",\"message\"}}, got %s",
                file, line, ts_resp_str(r));
    got = ts_err_code(r);
    if (code && strcmp(got, code) != 0)
        ts_fail("%s:%d: expected error code %s, got %s", file, line, code, ts_resp_str(r));
}

void ts_expect_streq(const char *actual, const char *expected, const char *what, const char *file, int line)
{
    if (!actual && !expected)
        return;
    if (!actual || !expected || strcmp(actual, expected) != 0)
        ts_fail("%s:%d: %s: expected %s%s%s, got %s%s%s", file, line, what,
                expected ? "\"" : "", expected ? expected : "NULL", expected ? "\"" : "",
                actual ? "\"" : "", actual ? actual : "NULL", actual ? "\"" : "");
}

const char *ts_urlencode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = ts_keep(malloc(strlen(s) * 3 + 1));
    char *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

int64_t ts_parse_rfc3339(const char *s)
{
    int y, mo, d, h, mi, sec, n = 0;
    int64_t ms = 0;
    struct tm tm;
    const char *p;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
        return -1;
    p = s + n;
    if (*p == '.') {
        int digits = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
            digits++;
            p++;
        }
        if (digits == 0)
            return -1;
        for (; digits < 3; digits++)
            ms *= 10;
    }
    if (strcmp(p, "Z") != 0 && strcmp(p, "+00:00") != 0)
        return -1;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    return (int64_t)timegm(&tm) * 1000 + ms;
}
