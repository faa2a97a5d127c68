/*
 * ts_http.c - a small blocking HTTP/1.1 client with one deadline per request,
 * over TCP or TLS.
 *
 * TLS: a port registered with ts_http_use_tls() (the control plane's, by
 * ts_controlplane_spawn) is spoken to over TLS, verifying the server against
 * the registered CA and the address 127.0.0.1; ts_http_ex() and ts_conn_*
 * choose per call (plain on purpose, another CA, a client certificate).
 *
 * One connection per request ("Connection: close"), except ts_conn_*. The answer is complete at
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

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static int g_timeout_ms = 10000;

static void tls_ports_free(void);

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
    tls_ports_free();
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

/* ---------------------------------------------------------------- TLS */

#define TS_TLS_MAX_PORTS 64

/* Ports to speak TLS to: written by the main thread before any worker thread
 * starts, read by all (ts_rt_post_mt). */
static struct {
    int port;
    SSL_CTX *ctx;
} g_tls_ports[TS_TLS_MAX_PORTS];
static int g_ntls_ports;

static SSL_CTX *tls_ctx_new(const char *ca, const char *cert, const char *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if ((ca && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) || (!ca && SSL_CTX_set_default_verify_paths(ctx) != 1)) {
        snprintf(err, errlen, "cannot load CA %s", ca ? ca : "(system)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (cert && (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
                 SSL_CTX_use_PrivateKey_file(ctx, key ? key : cert, SSL_FILETYPE_PEM) != 1)) {
        snprintf(err, errlen, "cannot load client certificate %s", cert);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void ts_http_use_tls(int port, const char *ca_file)
{
    char err[160];
    SSL_CTX *ctx = tls_ctx_new(ca_file, NULL, NULL, err, sizeof err);
    if (!ctx)
        ts_fail("ts_http_use_tls: %s", err);
    for (int i = 0; i < g_ntls_ports; i++) {
        if (g_tls_ports[i].port == port) {
            SSL_CTX_free(g_tls_ports[i].ctx);
            g_tls_ports[i].ctx = ctx;
            return;
        }
    }
    if (g_ntls_ports == TS_TLS_MAX_PORTS)
        ts_fail("ts_http_use_tls: more than %d TLS ports", TS_TLS_MAX_PORTS);
    g_tls_ports[g_ntls_ports].port = port;
    g_tls_ports[g_ntls_ports++].ctx = ctx;
}

void ts_http_forget_tls(int port)
{
    for (int i = 0; i < g_ntls_ports; i++) {
        if (g_tls_ports[i].port == port) {
            SSL_CTX_free(g_tls_ports[i].ctx);
            g_tls_ports[i] = g_tls_ports[--g_ntls_ports];
            return;
        }
    }
}

static SSL_CTX *tls_ctx_for_port(int port)
{
    for (int i = 0; i < g_ntls_ports; i++)
        if (g_tls_ports[i].port == port)
            return g_tls_ports[i].ctx;
    return NULL;
}

static void tls_ports_free(void)
{
    for (int i = 0; i < g_ntls_ports; i++)
        SSL_CTX_free(g_tls_ports[i].ctx);
    g_ntls_ports = 0;
}

/* One connection: TCP, and TLS over it when ssl != NULL. */
struct ts_io {
    int fd;
    SSL *ssl;
    SSL_CTX *own_ctx;   /* made for this connection (ts_http_ex), freed with it */
};

static void io_close(struct ts_io *io)
{
    if (io->ssl)
        SSL_free(io->ssl);
    if (io->own_ctx)
        SSL_CTX_free(io->own_ctx);
    if (io->fd >= 0)
        close(io->fd);
    io->ssl = NULL;
    io->own_ctx = NULL;
    io->fd = -1;
}

/* Wait for what an SSL call wants (or for fd events without TLS); false on timeout. */
static bool io_wait(const struct ts_io *io, int want, int64_t deadline)
{
    struct pollfd p = { io->fd, (short)(want == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0 };
    int left = remaining(deadline);
    return left > 0 && poll(&p, 1, left) > 0;
}

static const char *tls_why(SSL *ssl, char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (vr != X509_V_OK)
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
    else if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "connection closed during the handshake");
    ERR_clear_error();
    return buf;
}

static bool io_open(struct ts_io *io, int port, const struct ts_http_opts *o, int64_t deadline, char *err,
                    size_t errlen)
{
    SSL_CTX *ctx = NULL;
    io->fd = -1;
    io->ssl = NULL;
    io->own_ctx = NULL;
    if (o && (o->tls == TS_HTTP_TLS || o->ca || o->cert)) {
        if (!(ctx = io->own_ctx = tls_ctx_new(o->ca, o->cert, o->key, err, errlen)))
            return false;
    } else if (!o || o->tls == TS_HTTP_AUTO) {
        ctx = tls_ctx_for_port(port);
    }
    io->fd = connect_deadline(port, deadline, err, errlen);
    if (io->fd < 0) {
        io_close(io);
        return false;
    }
    if (!ctx)
        return true;
    if (!(io->ssl = SSL_new(ctx)) || X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(io->ssl), "127.0.0.1") != 1 ||
        SSL_set_fd(io->ssl, io->fd) != 1) {
        snprintf(err, errlen, "tls: SSL setup failed");
        io_close(io);
        return false;
    }
    for (;;) {
        int rc = SSL_connect(io->ssl), e;
        char why[200];
        if (rc == 1)
            return true;
        e = SSL_get_error(io->ssl, rc);
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && io_wait(io, e, deadline))
            continue;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            snprintf(err, errlen, "tls: timeout in the handshake");
        else
            snprintf(err, errlen, "tls: %s", tls_why(io->ssl, why, sizeof why));
        io_close(io);
        return false;
    }
}

/* Like send(2)/recv(2) on the connection, waiting up to deadline: > 0 bytes,
 * 0 at EOF (recv), -1 on an error (err set), -2 on timeout. */
static ssize_t io_send(struct ts_io *io, const char *buf, size_t len, int64_t deadline, char *err, size_t errlen)
{
    for (;;) {
        ssize_t n;
        int e;
        if (!io->ssl) {
            n = send(io->fd, buf, len, MSG_NOSIGNAL);
            if (n >= 0)
                return n;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                struct pollfd p = { io->fd, POLLOUT, 0 };
                if (poll(&p, 1, remaining(deadline)) <= 0)
                    return -2;
                continue;
            }
            snprintf(err, errlen, "send: %s", strerror(errno));
            return -1;
        }
        n = SSL_write(io->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
        if (n > 0)
            return n;
        e = SSL_get_error(io->ssl, (int)n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (!io_wait(io, e, deadline))
                return -2;
            continue;
        }
        snprintf(err, errlen, "tls send failed");
        ERR_clear_error();
        return -1;
    }
}

static ssize_t io_recv(struct ts_io *io, char *buf, size_t len, int64_t deadline, char *err, size_t errlen)
{
    for (;;) {
        ssize_t n;
        int e;
        if (!io->ssl) {
            n = recv(io->fd, buf, len, 0);
            if (n >= 0)
                return n;
            if (errno == ECONNRESET)
                return 0;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                struct pollfd p = { io->fd, POLLIN, 0 };
                if (remaining(deadline) == 0 || poll(&p, 1, remaining(deadline)) == 0)
                    return -2;
                continue;
            }
            snprintf(err, errlen, "recv: %s", strerror(errno));
            return -1;
        }
        n = SSL_read(io->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
        if (n > 0)
            return n;
        e = SSL_get_error(io->ssl, (int)n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (!io_wait(io, e, deadline))
                return -2;
            continue;
        }
        ERR_clear_error();
        return 0;   /* close_notify, a dirty close or a reset: the end of the stream */
    }
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

struct ts_resp *ts_http_parse_raw(const char *buf, size_t len)
{
    struct ts_resp *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    if (parse_answer(r, "POST", buf, len, true) != 1) {
        resp_destroy(r);
        return NULL;
    }
    return r;
}

void ts_http_answer_free(struct ts_resp *r)
{
    if (r)
        resp_destroy(r);
}

/*
 * Send req on io and read one answer into r: 1 when complete, -1 malformed or
 * failed, -2 timeout (r->err says why).
 */
static int io_exchange(struct ts_io *io, const char *method, const char *req, size_t reqlen, int64_t deadline,
                       struct ts_resp *r)
{
    char *buf = NULL;
    size_t len = 0, cap = 0, off = 0;
    int rc = 0;

    while (off < reqlen) {
        ssize_t n = io_send(io, req + off, reqlen - off, deadline, r->err, sizeof r->err);
        if (n == -2)
            snprintf(r->err, sizeof r->err, "timeout sending");
        /* The server may answer (413, 400) and close before reading it all:
         * stop sending and read what it said. */
        if (n < 0)
            break;
        off += (size_t)n;
    }
    for (;;) {
        ssize_t n;
        if (cap - len < 16384) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap + 1);
            if (!buf)
                abort();
        }
        n = io_recv(io, buf + len, cap - len, deadline, r->err, sizeof r->err);
        if (n > 0) {
            len += (size_t)n;
            rc = parse_answer(r, method, buf, len, false);
            if (rc != 0)
                break;
            continue;
        }
        if (n == 0) {
            rc = parse_answer(r, method, buf ? buf : "", len, true);
            if (rc < 0 && len == 0) {
                char prev[sizeof r->err];
                memcpy(prev, r->err, sizeof prev);
                snprintf(r->err, sizeof r->err, "connection closed without an answer%s%.100s",
                         prev[0] ? " after " : "", prev);
            }
            break;
        }
        if (n == -2) {
            snprintf(r->err, sizeof r->err, "timeout after %d ms (%zu bytes read)", g_timeout_ms, len);
            rc = -2;
            break;
        }
        rc = -1;
        break;
    }
    if (rc == -1 && len > 0)
        snprintf(r->err, sizeof r->err, "malformed answer (%zu bytes)", len);
    free(buf);
    return rc;
}

static void resp_finish(struct ts_resp *r, int rc, int64_t start)
{
    if (rc != 1) {
        r->status = 0;
    } else {
        r->err[0] = '\0';
        if (r->body_len > 0) {
            json_error_t je;
            r->json = json_loadb(r->body, r->body_len, 0, &je);
        }
    }
    r->elapsed_ms = ts_now_ms() - start;
    if (!r->body) {
        r->body = strdup("");
        r->body_len = 0;
    }
}

static struct ts_resp *exchange(int port, const struct ts_http_opts *o, const char *method, const char *req,
                                size_t reqlen)
{
    struct ts_resp *r = calloc(1, sizeof *r);
    int64_t start = ts_now_ms();
    int64_t deadline = start + g_timeout_ms;
    struct ts_io io;
    int rc = -1;

    if (!r)
        abort();
    track(r);
    if (io_open(&io, port, o, deadline, r->err, sizeof r->err)) {
        rc = io_exchange(&io, method, req, reqlen, deadline, r);
        io_close(&io);
    }
    resp_finish(r, rc, start);
    return r;
}

/* "METHOD path HTTP/1.1" with Host, Connection (close unless keep_alive), headers and body; malloc'd. */
static char *format_request(int port, const char *method, const char *path, const char *const *headers,
                            const void *body, size_t body_len, bool keep_alive, size_t *outlen)
{
    size_t cap = 1024 + strlen(path) + body_len;
    char *req;
    size_t n;

    for (const char *const *h = headers; h && *h; h++)
        cap += strlen(*h) + 2;
    req = malloc(cap);
    if (!req)
        abort();
    n = (size_t)snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: %s\r\n", method, path,
                         port, keep_alive ? "keep-alive" : "close");
    for (const char *const *h = headers; h && *h; h++)
        n += (size_t)snprintf(req + n, cap - n, "%s\r\n", *h);
    if (body)
        n += (size_t)snprintf(req + n, cap - n, "Content-Length: %zu\r\n", body_len);
    n += (size_t)snprintf(req + n, cap - n, "\r\n");
    if (body && body_len) {
        memcpy(req + n, body, body_len);
        n += body_len;
    }
    *outlen = n;
    return req;
}

struct ts_resp *ts_http_ex(int port, const struct ts_http_opts *o, const char *method, const char *path,
                           const char *const *headers, const void *body, size_t body_len)
{
    size_t n;
    char *req = format_request(port, method, path, headers, body, body_len, false, &n);
    struct ts_resp *r = exchange(port, o, method, req, n);
    free(req);
    return r;
}

/* ---------------------------------------------------------------- keep-alive connections */

struct ts_conn {
    int port;
    struct ts_io io;
    char err[160];
};


struct ts_conn *ts_conn_open(int port, const struct ts_http_opts *o)
{
    struct ts_conn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->port = port;
    if (!io_open(&c->io, port, o, ts_now_ms() + g_timeout_ms, c->err, sizeof c->err)) {
        char err[sizeof c->err];
        memcpy(err, c->err, sizeof err);
        free(c);
        ts_fail("cannot open a connection to port %d: %s", port, err);
    }
    return c;
}

struct ts_resp *ts_conn_request(struct ts_conn *c, const char *method, const char *path,
                                const char *const *headers, const void *body, size_t body_len)
{
    struct ts_resp *r = calloc(1, sizeof *r);
    int64_t start = ts_now_ms();
    size_t n;
    char *req;
    int rc = -1;

    if (!r)
        abort();
    track(r);
    if (c->io.fd < 0) {
        snprintf(r->err, sizeof r->err, "connection already closed");
    } else {
        req = format_request(c->port, method, path, headers, body, body_len, true, &n);
        rc = io_exchange(&c->io, method, req, n, start + g_timeout_ms, r);
        free(req);
        if (rc != 1)
            io_close(&c->io);
    }
    resp_finish(r, rc, start);
    return r;
}

const char *ts_conn_peer_fingerprint(struct ts_conn *c)
{
    X509 *peer;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (!c->io.ssl || !(peer = SSL_get0_peer_certificate(c->io.ssl)) ||
        X509_digest(peer, EVP_sha256(), md, &mdlen) != 1)
        return NULL;
    for (unsigned int i = 0; i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return ts_str("%s", hex);
}

void ts_conn_close(struct ts_conn *c)
{
    if (!c)
        return;
    io_close(&c->io);
    free(c);
}

const char *ts_cert_fingerprint(const char *pem_path)
{
    FILE *f = fopen(pem_path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (f)
        fclose(f);
    if (!x || X509_digest(x, EVP_sha256(), md, &mdlen) != 1)
        ts_fail("cannot read a certificate from %s", pem_path);
    X509_free(x);
    for (unsigned int i = 0; i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return ts_str("%s", hex);
}

/* Thread-safe: the port's TLS registration, no library-owned memory. */
bool ts_http_exchange_mt(int port, const char *req, size_t reqlen, int timeout_ms, char *out, size_t outcap,
                         size_t *outlen, char *err, size_t errlen)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    struct ts_io io;
    size_t len = 0, off = 0;
    bool ok = true;

    *outlen = 0;
    if (!io_open(&io, port, NULL, deadline, err, errlen))
        return false;
    while (off < reqlen) {
        ssize_t n = io_send(&io, req + off, reqlen - off, deadline, err, errlen);
        if (n < 0)
            break;   /* read what the server said anyway */
        off += (size_t)n;
    }
    while (len < outcap - 1) {
        ssize_t n = io_recv(&io, out + len, outcap - 1 - len, deadline, err, errlen);
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        if (n == -2) {
            snprintf(err, errlen, "timeout after %d ms (%zu bytes)", timeout_ms, len);
            ok = false;
        }
        break;
    }
    io_close(&io);
    out[len] = '\0';
    *outlen = len;
    return ok;
}

struct ts_resp *ts_http(int port, const char *method, const char *path,
                        const char *const *headers, const void *body, size_t body_len)
{
    return ts_http_ex(port, NULL, method, path, headers, body, body_len);
}

struct ts_resp *ts_http_raw(int port, const void *bytes, size_t len)
{
    const char *b = bytes;
    /* HEAD answers have no body: recognise the method for framing. */
    return exchange(port, NULL, len >= 5 && strncmp(b, "HEAD ", 5) == 0 ? "HEAD" : "GET", b, len);
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

bool ts_retry_after_is(const char *value, long base)
{
    char *end = NULL;
    long v, spread = base / 2 > 1 ? base / 2 : 1;
    if (!value || !*value)
        return false;
    v = strtol(value, &end, 10);
    return *end == '\0' && v >= base && v <= base + spread;
}

void ts_expect_retry_after(const struct ts_resp *r, long base)
{
    const char *v = ts_header(r, "Retry-After");
    if (!ts_retry_after_is(v, base))
        ts_fail("Retry-After \"%s\" is not %ld jittered (%ld .. %ld): %s", v ? v : "(none)", base, base,
                base + (base / 2 > 1 ? base / 2 : 1), ts_resp_str(r));
}
