/*
 * cpload.c - a load generator for the router's device routes.
 *
 *   cpload --url http[s]://127.0.0.1:PORT [--ca CA.pem] --tenant ID --key ENROLLMENTKEY_B64 --devices N
 *          [--prefix dev-] [--start K] [--concurrency 64] [--requests M | --duration S]
 *          [--max-seconds S] [--timeout-ms MS] [--mode locate] [--json] [--allow-errors]
 *
 * Request k goes to device start + (k mod N), so "--requests N" asks every
 * device once (first-time provisions) and "--duration S" cycles over the
 * devices again and again (repeat lookups of placed devices).
 *
 * One libevent loop drives --concurrency keep-alive connections (plain
 * non-blocking sockets, no bufferevents: the generator shares the machine with
 * the server, so it must cost little), each with one request in flight.
 * Requests are raw HTTP/1.1 written from buffers prepared
 * before the clock starts (SAS tokens included: HMAC work on the generator's
 * side would otherwise be measured as server latency), and answers are parsed
 * here (status line, Content-Length or chunked body).  The run is bounded by
 * the request count, the duration and --max-seconds (default 600), whichever
 * comes first, so it always stops by itself.
 *
 * https:// URLs: every connection does its TLS handshake (verified against
 * --ca, or the system store, and the URL's host) before the clock starts,
 * like the TCP connect, so the measured window holds requests on keep-alive
 * TLS connections only; a connection reopened during the run (the server
 * closed it) handshakes again inside the window and is counted in reconnects.
 *
 * Exit status: 0 when every answer was 200 (or --allow-errors), 1 otherwise,
 * 2 on a usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "sas.h"
#include "tls.h"
#include "util.h"

#define MAX_STATUS 600

enum parse_state { P_HEAD, P_BODY, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_CRLF, P_TRAILERS };

#define CONN_BUF 16384

struct load;

/* One client connection: a non-blocking socket watched by one persistent
 * read event (its timeout is the request timeout) and, only while a request
 * could not be written at once, a write event. */
struct conn {
    struct load *L;
    int fd;
    struct event *rev, *wev;
    bool connected;
    bool counted;         /* its first connect counted towards the start */
    bool busy;            /* a request is in flight */
    int64_t sent_us;
    const char *out;      /* the request being written */
    size_t outlen, outoff;
    enum parse_state ps;
    int status;
    int64_t body_left;    /* Content-Length or current chunk */
    bool chunked;
    bool close_after;     /* the server said Connection: close */
    struct event *retry;  /* reconnect after a failed connect */
    SSL *ssl;             /* https: the connection's TLS session */
    bool handshaking;     /* TCP is up, the TLS handshake is not done yet */
    size_t len;           /* bytes in buf */
    char buf[CONN_BUF];
};

struct load {
    struct event_base *base;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    SSL_CTX *tls;          /* https: verifies the server; NULL: plain HTTP */
    char tls_host[256];    /* the URL's host, checked against the certificate */

    /* the prepared requests, one per device */
    char **req;
    size_t *reqlen;
    int64_t ndev, start;

    int concurrency;
    int64_t max_requests;  /* 0: unbounded (duration mode) */
    double duration_s;     /* 0: none */
    double max_seconds;
    int timeout_ms;

    struct conn *conns;
    int connected, open_conns;
    bool running, stopping, aborted;
    int64_t issued, completed;
    int64_t t0_us, tlast_us;
    uint64_t status_count[MAX_STATUS];
    uint64_t transport_errors;  /* answers that never came: reset, timeout, garbage */
    uint64_t connect_errors;
    uint64_t reconnects;
    uint32_t *lat_us;
    size_t nlat, caplat;
    struct event *stop_timer, *grace_timer, *sig_int, *sig_term;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void conn_open(struct conn *c);
static void conn_send_next(struct conn *c);
static void load_maybe_done(struct load *L);

/* ---------------------------------------------------------------- bookkeeping */

static void record(struct load *L, int status, int64_t lat)
{
    if (L->nlat == L->caplat) {
        L->caplat = L->caplat ? L->caplat * 2 : 65536;
        L->lat_us = xrealloc(L->lat_us, L->caplat * sizeof *L->lat_us);
    }
    L->lat_us[L->nlat++] = (uint32_t)(lat < 0 ? 0 : lat > UINT32_MAX ? UINT32_MAX : lat);
    if (status > 0 && status < MAX_STATUS)
        L->status_count[status]++;
    else
        L->transport_errors++;
    L->completed++;
    L->tlast_us = now_us();
}

static void conn_close(struct conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    c->handshaking = false;
    if (c->fd >= 0) {
        event_del(c->rev);
        event_del(c->wev);
        close(c->fd);
        c->fd = -1;
        c->L->open_conns--;
    }
    c->connected = false;
    c->busy = false;
    c->len = 0;
}

/* The request in flight (if any) failed without an answer; reconnect unless the run is over. */
static void conn_fail(struct conn *c)
{
    struct load *L = c->L;
    if (c->busy)
        record(L, 0, now_us() - c->sent_us);
    conn_close(c);
    if (!L->stopping && !L->aborted) {
        L->reconnects++;
        conn_open(c);
    }
    load_maybe_done(L);
}

static void load_stop(struct load *L)
{
    struct timeval tv;
    if (L->stopping)
        return;
    L->stopping = true;
    /* wait for the answers in flight, but not forever */
    tv.tv_sec = L->timeout_ms / 1000;
    tv.tv_usec = (L->timeout_ms % 1000) * 1000;
    evtimer_add(L->grace_timer, &tv);
    for (int i = 0; i < L->concurrency; i++) {
        struct conn *c = &L->conns[i];
        evtimer_del(c->retry);
        if (!c->busy)
            conn_close(c);
    }
    load_maybe_done(L);
}

static void load_maybe_done(struct load *L)
{
    if (L->stopping && L->open_conns == 0)
        event_base_loopbreak(L->base);
}

/* ---------------------------------------------------------------- responses */

/* Returns false when the connection is gone (closed or reopened). */
static bool on_answer(struct conn *c)
{
    struct load *L = c->L;
    record(L, c->status, now_us() - c->sent_us);
    c->busy = false;
    if (c->close_after) {
        conn_close(c);
        if (!L->stopping) {
            L->reconnects++;
            conn_open(c);
        }
        load_maybe_done(L);
        return false;
    }
    conn_send_next(c);
    return c->fd >= 0 && c->connected;
}

/* Whether the header value v holds the token word (case-insensitively). */
static bool has_token(const char *v, const char *end, const char *word)
{
    size_t n = strlen(word);
    for (; v + n <= end; v++)
        if (strncasecmp(v, word, n) == 0)
            return true;
    return false;
}

/* Find "\r\n" in [p, end); NULL if absent. */
static const char *find_crlf(const char *p, const char *end)
{
    for (; p + 1 < end; p++)
        if (p[0] == '\r' && p[1] == '\n')
            return p;
    return NULL;
}

/* Parse the status line and headers in [p, end) (end is the blank line's "\r\n"). */
static bool parse_head(struct conn *c, const char *p, const char *end)
{
    const char *eol = find_crlf(p, end + 2);
    if (!eol || eol - p < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return false;
    if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
        return false;
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    c->close_after = p[7] == '0';   /* HTTP/1.0 closes unless told otherwise */
    c->body_left = -1;
    c->chunked = false;
    for (p = eol + 2; p < end; p = eol + 2) {
        const char *colon, *v;
        size_t n;
        eol = find_crlf(p, end + 2);
        colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon)
            return false;
        n = (size_t)(colon - p);
        for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++)
            ;
        if (n == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
            int64_t cl = 0;
            if (v == eol)
                return false;
            for (; v < eol && *v >= '0' && *v <= '9'; v++)
                cl = cl * 10 + (*v - '0');
            c->body_left = cl;
        } else if (n == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
            c->chunked = has_token(v, eol, "chunked");
        } else if (n == 10 && strncasecmp(p, "Connection", 10) == 0) {
            if (has_token(v, eol, "close"))
                c->close_after = true;
            else if (has_token(v, eol, "keep-alive"))
                c->close_after = false;
        }
    }
    return true;
}

/* Consume what buf holds; returns false on a protocol error.  Sets *gone when
 * the connection was closed or reopened meanwhile (then buf is not ours). */
static bool conn_parse(struct conn *c, bool *gone)
{
    size_t pos = 0;
    *gone = false;
    while (pos < c->len) {
        const char *p = c->buf + pos, *end = c->buf + c->len, *eol;
        if (!c->busy)
            return false;   /* bytes nobody asked for */
        switch (c->ps) {
        case P_HEAD: {
            const char *q = p;
            for (;;) {
                eol = find_crlf(q, end);
                if (!eol)
                    goto need_more;
                if (eol == q && q != p)
                    break;   /* the blank line */
                if (eol == p)
                    return false;
                q = eol + 2;
            }
            if (!parse_head(c, p, eol))
                return false;
            pos = (size_t)(eol + 2 - c->buf);
            if (c->chunked) {
                c->ps = P_CHUNK_SIZE;
            } else if (c->body_left > 0) {
                c->ps = P_BODY;
            } else if (c->body_left < 0 && c->status != 204 && c->status != 304) {
                return false;   /* a body delimited by close: not a keep-alive peer */
            } else {
                c->len -= pos;
                memmove(c->buf, c->buf + pos, c->len);
                pos = 0;
                if (!on_answer(c)) {
                    *gone = true;
                    return true;
                }
            }
            break;
        }
        case P_BODY:
        case P_CHUNK_DATA: {
            size_t have = (size_t)(end - p);
            size_t take = have < (size_t)c->body_left ? have : (size_t)c->body_left;
            pos += take;
            c->body_left -= (int64_t)take;
            if (c->body_left > 0)
                break;
            if (c->ps == P_CHUNK_DATA) {
                c->ps = P_CHUNK_CRLF;
                break;
            }
            c->len -= pos;
            memmove(c->buf, c->buf + pos, c->len);
            pos = 0;
            if (!on_answer(c)) {
                *gone = true;
                return true;
            }
            break;
        }
        case P_CHUNK_SIZE:
        case P_CHUNK_CRLF:
        case P_TRAILERS:
            eol = find_crlf(p, end);
            if (!eol)
                goto need_more;
            pos = (size_t)(eol + 2 - c->buf);
            if (c->ps == P_CHUNK_SIZE) {
                int64_t sz = 0;
                int digits = 0;
                for (; p < eol; p++, digits++) {
                    int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                                                              : *p >= 'A' && *p <= 'F' ? *p - 'A' + 10 : -1;
                    if (d < 0)
                        break;
                    sz = sz * 16 + d;
                }
                if (!digits || digits > 12)
                    return false;
                c->body_left = sz;
                c->ps = sz == 0 ? P_TRAILERS : P_CHUNK_DATA;
            } else if (c->ps == P_CHUNK_CRLF) {
                if (eol != p)
                    return false;
                c->ps = P_CHUNK_SIZE;
            } else if (eol == p) {   /* the end of the trailers */
                c->len -= pos;
                memmove(c->buf, c->buf + pos, c->len);
                pos = 0;
                if (!on_answer(c)) {
                    *gone = true;
                    return true;
                }
            }
            break;
        }
        continue;
    need_more:
        break;
    }
    c->len -= pos;
    memmove(c->buf, c->buf + pos, c->len);
    if (c->len == sizeof c->buf)
        return false;   /* a header block over CONN_BUF */
    return true;
}

/* ---------------------------------------------------------------- I/O */

/* Write what is left of the request; false on an error. */
static bool conn_flush(struct conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t n;
        if (c->ssl) {
            /* blocking semantics per record: all of it, or WANT_* and the same call again */
            int w = SSL_write(c->ssl, c->out + c->outoff, (int)(c->outlen - c->outoff));
            int e = w > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, w);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                event_add(c->wev, NULL);
                return true;
            }
            if (w <= 0) {
                ERR_clear_error();
                return false;
            }
            c->outoff += (size_t)w;
            continue;
        }
        n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                event_add(c->wev, NULL);
                return true;
            }
            return false;
        }
        c->outoff += (size_t)n;
    }
    return true;
}

static void conn_send_next(struct conn *c)
{
    struct load *L = c->L;
    int64_t k, dev;
    if (L->stopping || !L->running) {
        if (L->stopping)
            conn_close(c);
        load_maybe_done(L);
        return;
    }
    if (L->max_requests > 0 && L->issued >= L->max_requests) {
        conn_close(c);
        if (L->open_conns == 0)
            load_stop(L);
        return;
    }
    k = L->issued++;
    dev = k % L->ndev;
    c->busy = true;
    c->ps = P_HEAD;
    c->out = L->req[dev];
    c->outlen = L->reqlen[dev];
    c->outoff = 0;
    c->sent_us = now_us();
    if (!conn_flush(c))
        conn_fail(c);
}

static void load_begin(struct load *L)
{
    double s = L->duration_s > 0 && L->duration_s < L->max_seconds ? L->duration_s : L->max_seconds;
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    L->running = true;
    L->t0_us = L->tlast_us = now_us();
    evtimer_add(L->stop_timer, &tv);
    for (int i = 0; i < L->concurrency; i++)
        if (L->conns[i].connected)
            conn_send_next(&L->conns[i]);
}

static void on_connected(struct conn *c)
{
    struct load *L = c->L;
    struct timeval tv = {L->timeout_ms / 1000, (L->timeout_ms % 1000) * 1000};
    c->connected = true;
    event_add(c->rev, &tv);
    if (!L->running) {
        if (!c->counted) {
            c->counted = true;
            L->connected++;
        }
        if (L->connected == L->concurrency)
            load_begin(L);
    } else {
        conn_send_next(c);
    }
}

static void on_connect_failed(struct conn *c)
{
    struct load *L = c->L;
    L->connect_errors++;
    conn_close(c);
    if (!L->running && L->connect_errors > (uint64_t)L->concurrency * 5) {
        fprintf(stderr, "cpload: cannot connect\n");
        L->aborted = true;
        event_base_loopbreak(L->base);
        return;
    }
    if (!L->stopping) {
        struct timeval tv = {0, 100000};
        evtimer_add(c->retry, &tv);
    }
    load_maybe_done(L);
}

/* Drive the TLS handshake; on_connected once it is done. */
static void conn_handshake(struct conn *c)
{
    struct load *L = c->L;
    int r = SSL_connect(c->ssl), e;
    if (r == 1) {
        c->handshaking = false;
        on_connected(c);
        return;
    }
    e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        struct timeval tv = {L->timeout_ms / 1000, (L->timeout_ms % 1000) * 1000};
        event_add(c->rev, &tv);
    } else if (e == SSL_ERROR_WANT_WRITE) {
        event_add(c->wev, NULL);
    } else {
        char why[256];
        long vr = SSL_get_verify_result(c->ssl);
        if (L->connect_errors == 0)
            fprintf(stderr, "cpload: TLS handshake failed: %s\n",
                    vr != X509_V_OK ? X509_verify_cert_error_string(vr) : tls_last_error(why, sizeof why));
        ERR_clear_error();
        on_connect_failed(c);
    }
}

/* TCP is up: plain connections are ready, TLS ones start their handshake. */
static void conn_tcp_up(struct conn *c)
{
    struct load *L = c->L;
    if (!L->tls) {
        on_connected(c);
        return;
    }
    if (!(c->ssl = tls_client_ssl_new(L->tls, L->tls_host)) || SSL_set_fd(c->ssl, c->fd) != 1) {
        fprintf(stderr, "cpload: TLS setup failed\n");
        exit(1);
    }
    c->handshaking = true;
    conn_handshake(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    if (c->handshaking) {
        conn_handshake(c);
        return;
    }
    if (!c->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
            on_connect_failed(c);
        else
            conn_tcp_up(c);
        return;
    }
    if (!conn_flush(c))
        conn_fail(c);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    ssize_t n;
    bool gone;
    if (what & EV_TIMEOUT) {
        if (c->handshaking)
            on_connect_failed(c);   /* no handshake within the timeout */
        else if (c->busy)
            conn_fail(c);   /* no answer within the timeout */
        return;
    }
    if (c->handshaking) {
        conn_handshake(c);
        return;
    }
again:
    if (c->ssl) {
        int r = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof c->buf - c->len));
        int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return;
        if (r <= 0)
            ERR_clear_error();
        n = r > 0 ? r : 0;   /* close_notify, reset or a TLS error: the end of this connection */
    } else {
        n = recv(fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        /* EOF or reset: an idle keep-alive connection the server closed, or a lost answer */
        if (!c->busy && !c->L->stopping) {
            conn_close(c);
            c->L->reconnects++;
            conn_open(c);
            return;
        }
        conn_fail(c);
        return;
    }
    c->len += (size_t)n;
    if (!conn_parse(c, &gone) && !gone) {
        conn_fail(c);
        return;
    }
    /* TLS may hold decrypted bytes the socket will not signal again */
    if (!gone && c->ssl && c->fd >= 0 && SSL_pending(c->ssl) > 0)
        goto again;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_open(arg);
}

static void conn_open(struct conn *c)
{
    struct load *L = c->L;
    int one = 1;
    c->fd = socket(L->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, "cpload: socket: %s\n", strerror(errno));
        exit(1);
    }
    L->open_conns++;
    c->connected = false;
    c->busy = false;
    c->len = 0;
    c->ps = P_HEAD;
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    event_assign(c->rev, L->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(c->wev, L->base, c->fd, EV_WRITE, on_write, c);
    if (connect(c->fd, (struct sockaddr *)&L->addr, L->addrlen) == 0) {
        conn_tcp_up(c);
    } else if (errno == EINPROGRESS) {
        event_add(c->wev, NULL);
    } else {
        on_connect_failed(c);
    }
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    load_stop(arg);
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    (void)fd;
    (void)what;
    /* answers still missing: count them as transport errors */
    for (int i = 0; i < L->concurrency; i++) {
        struct conn *c = &L->conns[i];
        if (c->busy)
            record(L, 0, now_us() - c->sent_us);
        conn_close(c);
    }
    event_base_loopbreak(L->base);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    load_stop(arg);
}

/* ---------------------------------------------------------------- setup and report */

static void usage(void)
{
    fprintf(stderr,
            "usage: cpload --url http[s]://HOST:PORT [--ca CA.pem] --tenant ID --key ENROLLMENTKEY_B64 --devices N\n"
            "              [--prefix dev-] [--start K] [--concurrency 64] [--requests M | --duration S]\n"
            "              [--max-seconds 600] [--timeout-ms 10000] [--mode locate] [--json] [--allow-errors]\n"
            "  --requests M   stop after M requests (default: N, each device once)\n"
            "  --duration S   stop after S seconds (devices are asked again and again)\n"
            "  --ca FILE      https: the CA that signs the server (default: the system store)\n");
    exit(2);
}

static int64_t arg_int(const char *name, const char *v, int64_t min, int64_t max)
{
    int64_t x;
    if (!v || !util_parse_int64(v, min, max, &x)) {
        fprintf(stderr, "cpload: %s wants an integer in [%" PRId64 ", %" PRId64 "]\n", name, min, max);
        exit(2);
    }
    return x;
}

static double arg_seconds(const char *name, const char *v)
{
    char *end;
    double d;
    if (!v)
        usage();
    d = strtod(v, &end);
    if (end == v || *end || !(d > 0) || d > 86400) {
        fprintf(stderr, "cpload: %s wants seconds in (0, 86400]\n", name);
        exit(2);
    }
    return d;
}

static bool resolve(struct load *L, const char *url, char *hostport, size_t hplen)
{
    char host[256], portstr[16];
    int port;
    const char *p;
    size_t n;
    struct addrinfo hints, *res = NULL;
    if (strncmp(url, "https://", 8) == 0)
        p = url + 8;
    else if (strncmp(url, "http://", 7) == 0)
        p = url + 7;
    else
        return false;
    n = strcspn(p, "/");
    if (n == 0 || n >= hplen)
        return false;
    memcpy(hostport, p, n);
    hostport[n] = '\0';
    if (p[n] && strcmp(p + n, "/") != 0)
        return false;   /* the path comes from --mode */
    if (!util_parse_hostport(hostport, host, sizeof host, &port))
        return false;
    snprintf(L->tls_host, sizeof L->tls_host, "%s", host);
    snprintf(portstr, sizeof portstr, "%d", port);
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || !res)
        return false;
    memcpy(&L->addr, res->ai_addr, res->ai_addrlen);
    L->addrlen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const uint32_t *v, size_t n, double p)
{
    size_t i;
    if (n == 0)
        return 0;
    i = (size_t)(p / 100.0 * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i] / 1000.0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *tenant = NULL, *key_b64 = NULL, *prefix = "dev-", *mode = "locate", *ca = NULL;
    char hostport[300];
    unsigned char key[128];
    int keylen;
    bool json = false, allow_errors = false, have_requests = false;
    int64_t expiry;
    struct load L;
    uint64_t non200 = 0;
    double secs, rps;

    memset(&L, 0, sizeof L);
    L.ndev = -1;
    L.concurrency = 64;
    L.max_seconds = 600;
    L.timeout_ms = 10000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            json = true;
            continue;
        }
        if (strcmp(a, "--allow-errors") == 0) {
            allow_errors = true;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            usage();
        if (!v)
            usage();
        i++;
        if (strcmp(a, "--url") == 0)
            url = v;
        else if (strcmp(a, "--ca") == 0)
            ca = v;
        else if (strcmp(a, "--tenant") == 0)
            tenant = v;
        else if (strcmp(a, "--key") == 0)
            key_b64 = v;
        else if (strcmp(a, "--devices") == 0)
            L.ndev = arg_int(a, v, 1, 100000000);
        else if (strcmp(a, "--prefix") == 0)
            prefix = v;
        else if (strcmp(a, "--start") == 0)
            L.start = arg_int(a, v, 0, INT64_MAX / 2);
        else if (strcmp(a, "--concurrency") == 0)
            L.concurrency = (int)arg_int(a, v, 1, 10000);
        else if (strcmp(a, "--requests") == 0) {
            L.max_requests = arg_int(a, v, 1, INT64_MAX / 2);
            have_requests = true;
        } else if (strcmp(a, "--duration") == 0)
            L.duration_s = arg_seconds(a, v);
        else if (strcmp(a, "--max-seconds") == 0)
            L.max_seconds = arg_seconds(a, v);
        else if (strcmp(a, "--timeout-ms") == 0)
            L.timeout_ms = (int)arg_int(a, v, 1, 3600000);
        else if (strcmp(a, "--mode") == 0)
            mode = v;
        else {
            fprintf(stderr, "cpload: unknown option %s\n", a);
            usage();
        }
    }
    if (!url || !tenant || !key_b64 || L.ndev < 1)
        usage();
    if (have_requests && L.duration_s > 0) {
        fprintf(stderr, "cpload: --requests and --duration exclude each other\n");
        exit(2);
    }
    if (strcmp(mode, "locate") != 0) {
        fprintf(stderr, "cpload: unknown mode '%s' (known: locate)\n", mode);
        exit(2);
    }
    if (!have_requests && L.duration_s <= 0)
        L.max_requests = L.ndev;
    if (!resolve(&L, url, hostport, sizeof hostport)) {
        fprintf(stderr, "cpload: --url wants http://HOST:PORT or https://HOST:PORT (resolvable), got '%s'\n", url);
        exit(2);
    }
    if (strncmp(url, "https://", 8) == 0) {
        char err[300];
        if (!(L.tls = tls_client_ctx_new(ca, err, sizeof err))) {
            fprintf(stderr, "cpload: --ca: %s\n", err);
            exit(2);
        }
    } else if (ca) {
        fprintf(stderr, "cpload: --ca goes with an https:// URL\n");
        exit(2);
    }
    keylen = sas_b64_decode(key_b64, key, sizeof key);
    if (keylen <= 0) {
        fprintf(stderr, "cpload: --key is not base64\n");
        exit(2);
    }
    if (strlen(tenant) > 64 || strlen(prefix) > 100) {
        fprintf(stderr, "cpload: tenant or prefix too long\n");
        exit(2);
    }

    /* Every request, prepared before the clock starts. */
    expiry = (int64_t)time(NULL) + 3600 + (int64_t)(L.duration_s > 0 ? L.duration_s : L.max_seconds);
    L.req = xcalloc((size_t)L.ndev, sizeof *L.req);
    L.reqlen = xcalloc((size_t)L.ndev, sizeof *L.reqlen);
    for (int64_t d = 0; d < L.ndev; d++) {
        char regid[160], sr[300], token[1200];
        unsigned char dk[SAS_KEY_LEN];
        snprintf(regid, sizeof regid, "%s%" PRId64, prefix, L.start + d);
        snprintf(sr, sizeof sr, "%s/registrations/%s", tenant, regid);
        sas_derive_key(key, (size_t)keylen, regid, dk);
        sas_build(sr, dk, sizeof dk, expiry, "registration", token, sizeof token);
        L.req[d] = xasprintf("POST /v1/tenants/%s/registrations/%s/%s HTTP/1.1\r\n"
                             "Host: %s\r\n"
                             "Authorization: %s\r\n"
                             "Content-Length: 0\r\n"
                             "\r\n",
                             tenant, regid, mode, hostport, token);
        L.reqlen[d] = strlen(L.req[d]);
    }

    signal(SIGPIPE, SIG_IGN);
    L.base = event_base_new();
    if (!L.base) {
        fprintf(stderr, "cpload: event_base_new failed\n");
        return 1;
    }
    L.stop_timer = evtimer_new(L.base, on_stop, &L);
    L.grace_timer = evtimer_new(L.base, on_grace, &L);
    L.sig_int = evsignal_new(L.base, SIGINT, on_signal, &L);
    L.sig_term = evsignal_new(L.base, SIGTERM, on_signal, &L);
    evsignal_add(L.sig_int, NULL);
    evsignal_add(L.sig_term, NULL);
    L.conns = xcalloc((size_t)L.concurrency, sizeof *L.conns);
    for (int i = 0; i < L.concurrency; i++) {
        L.conns[i].L = &L;
        L.conns[i].fd = -1;
        L.conns[i].retry = evtimer_new(L.base, on_retry, &L.conns[i]);
        L.conns[i].rev = event_new(L.base, -1, 0, on_read, &L.conns[i]);
        L.conns[i].wev = event_new(L.base, -1, 0, on_write, &L.conns[i]);
    }
    for (int i = 0; i < L.concurrency; i++)
        conn_open(&L.conns[i]);
    event_base_dispatch(L.base);

    if (L.aborted)
        return 1;
    secs = (double)(L.tlast_us - L.t0_us) / 1e6;
    if (secs <= 0)
        secs = 1e-6;
    rps = (double)L.completed / secs;
    qsort(L.lat_us, L.nlat, sizeof *L.lat_us, cmp_u32);
    for (int s = 0; s < MAX_STATUS; s++)
        if (s != 200)
            non200 += L.status_count[s];
    non200 += L.transport_errors;

    if (json) {
        printf("{\"mode\":\"%s\",\"tls\":%s,\"concurrency\":%d,\"devices\":%" PRId64 ",\"start\":%" PRId64
               ",\"requests\":%" PRId64 ",\"seconds\":%.3f,\"rps\":%.1f,"
               "\"latencyMs\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},\"status\":{",
               mode, L.tls ? "true" : "false", L.concurrency, L.ndev, L.start, L.completed, secs, rps, pct_ms(L.lat_us, L.nlat, 50),
               pct_ms(L.lat_us, L.nlat, 90), pct_ms(L.lat_us, L.nlat, 99),
               L.nlat ? L.lat_us[L.nlat - 1] / 1000.0 : 0.0);
        bool first = true;
        for (int s = 0; s < MAX_STATUS; s++) {
            if (!L.status_count[s])
                continue;
            printf("%s\"%d\":%" PRIu64, first ? "" : ",", s, L.status_count[s]);
            first = false;
        }
        printf("},\"transportErrors\":%" PRIu64 ",\"connectErrors\":%" PRIu64 ",\"reconnects\":%" PRIu64
               ",\"non200\":%" PRIu64 "}\n",
               L.transport_errors, L.connect_errors, L.reconnects, non200);
    } else {
        printf("cpload %s: %s, tenant %s, devices %s%" PRId64 "..%s%" PRId64 ", %d connections\n", mode, url,
               tenant, prefix, L.start, prefix, L.start + L.ndev - 1, L.concurrency);
        printf("%10s %9s %10s %9s %9s %9s %9s\n", "requests", "seconds", "req/s", "p50 ms", "p90 ms", "p99 ms",
               "max ms");
        printf("%10" PRId64 " %9.2f %10.1f %9.2f %9.2f %9.2f %9.2f\n", L.completed, secs, rps,
               pct_ms(L.lat_us, L.nlat, 50), pct_ms(L.lat_us, L.nlat, 90), pct_ms(L.lat_us, L.nlat, 99),
               L.nlat ? L.lat_us[L.nlat - 1] / 1000.0 : 0.0);
        printf("status:");
        for (int s = 0; s < MAX_STATUS; s++)
            if (L.status_count[s])
                printf(" %d=%" PRIu64, s, L.status_count[s]);
        if (L.transport_errors)
            printf(" no-answer=%" PRIu64, L.transport_errors);
        printf("\n");
        if (L.connect_errors || L.reconnects)
            printf("connect errors %" PRIu64 ", reconnects %" PRIu64 "\n", L.connect_errors, L.reconnects);
    }

    for (int i = 0; i < L.concurrency; i++) {
        conn_close(&L.conns[i]);
        event_free(L.conns[i].retry);
        event_free(L.conns[i].rev);
        event_free(L.conns[i].wev);
    }
    event_free(L.stop_timer);
    event_free(L.grace_timer);
    event_free(L.sig_int);
    event_free(L.sig_term);
    event_base_free(L.base);
    if (L.tls)
        SSL_CTX_free(L.tls);
    for (int64_t d = 0; d < L.ndev; d++)
        free(L.req[d]);
    free(L.req);
    free(L.reqlen);
    free(L.lat_us);
    free(L.conns);
    if (L.completed == 0)
        return 1;
    return non200 == 0 || allow_errors ? 0 : 1;
}
