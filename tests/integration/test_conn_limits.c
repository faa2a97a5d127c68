/*
 * test_conn_limits - bounded resources on both daemons' listeners
 * (common/connguard.c), the webhook target rules of the stamp
 * (stamp-agent/dps_webhook.c) and the outbound answer limit
 * (common/http_call.c), over real sockets:
 *
 *   - connection cap: with maxConnections N held open, N more connections
 *     are answered 503 (error body, Retry-After, then closed); the held
 *     connections keep working; once they close a new client gets 200;
 *   - slowloris: connections trickling a head one byte at a time are
 *     answered 408 and closed at headerTimeoutMs from their first byte, one
 *     trickling a body is cut at requestTimeoutMs, while another client keeps
 *     getting 200 (control plane over plain HTTP, stamp over TLS);
 *   - idle keep-alive connections are closed after idleTimeoutMs;
 *   - a Content-Length over the limit is answered 413 before any body byte
 *     is sent; a device request without credentials (and, at the control
 *     plane, with a malformed, expired or misdirected SAS token) is answered
 *     401 before its body; a request that passes the check is served on the
 *     same connection, so are a chunked request and two pipelined ones;
 *   - webhook URLs: http:// refused, loopback/private/link-local refused
 *     without provisioning.webhookAllowPrivate and accepted with it; at call
 *     time a host name that resolves to loopback is refused too;
 *   - http_call against an in-process server sending an endless body (read
 *     until close, chunked, a huge Content-Length): the call ends with "the
 *     answer is larger than N bytes" long before the server runs out.
 */
#define _GNU_SOURCE   /* strcasestr */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "dns.h"
#include "dps_webhook.h"
#include "http_call.h"
#include "ts.h"
#include "ts_stamp.h"

#define CAP 6
#define HEAD_MS 1500
#define REQ_MS 3000
#define IDLE_MS 2500
#define SLACK_MS 4000      /* scheduling slack on a busy machine (parallel ctest, ASan) */
#define SCOPE "0ne000LIM01"
#define HUB_A "hub-a.limits.test.net"

static struct ts_cp *cp;
static struct ts_stamp *st;        /* provisioning.webhookAllowPrivate true (the test support's default) */
static struct ts_stamp *strict;    /* without the allowance */

/* ---- raw connections (plain or TLS) ---- */

struct rc {
    int fd;
    SSL *ssl;
    bool closed;
};

static SSL_CTX *cli_ctx;

static struct rc *rc_open(int port, bool tls)
{
    struct rc *c = ts_keep(calloc(1, sizeof *c));
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0)
        ts_fail("connect to %d: %s", port, strerror(errno));
    if (tls) {
        if (!cli_ctx) {
            cli_ctx = SSL_CTX_new(TLS_client_method());
            SSL_CTX_set_verify(cli_ctx, SSL_VERIFY_NONE, NULL);
        }
        c->ssl = SSL_new(cli_ctx);
        SSL_set_fd(c->ssl, c->fd);
        if (SSL_connect(c->ssl) != 1)
            ts_fail("TLS handshake with %d failed", port);
        /* non-blocking from here: SSL_read must not wait for application data
         * after a TLS 1.3 session ticket */
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    }
    return c;
}

static void rc_close(struct rc *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static bool rc_send(struct rc *c, const void *b, size_t n)
{
    if (c->ssl) {
        for (int tries = 0; tries < 100; tries++) {
            int w = SSL_write(c->ssl, b, (int)n);
            if (w == (int)n)
                return true;
            if (SSL_get_error(c->ssl, w) != SSL_ERROR_WANT_WRITE && SSL_get_error(c->ssl, w) != SSL_ERROR_WANT_READ)
                return false;
            ts_sleep_ms(10);
        }
        return false;
    }
    return send(c->fd, b, n, MSG_NOSIGNAL) == (ssize_t)n;
}

/* Read what arrives within timeout_ms (stops early at EOF/reset: c->closed,
 * or once a whole answer is in when want_answer). NUL-terminated. */
static size_t rc_read(struct rc *c, char *buf, size_t cap, int timeout_ms, bool want_answer)
{
    size_t got = 0;
    int64_t end = ts_now_ms() + timeout_ms;
    while (got + 1 < cap && !c->closed) {
        int n;
        if (!(c->ssl && SSL_pending(c->ssl))) {
            struct pollfd p = {c->fd, POLLIN, 0};
            int left = (int)(end - ts_now_ms());
            if (poll(&p, 1, left > 0 ? left : 0) <= 0)
                break;
        }
        n = c->ssl ? SSL_read(c->ssl, buf + got, (int)(cap - 1 - got)) : (int)recv(c->fd, buf + got, cap - 1 - got, 0);
        if (n <= 0) {
            if (!c->ssl && n < 0 && errno == EINTR)
                continue;
            if (c->ssl && (SSL_get_error(c->ssl, n) == SSL_ERROR_WANT_READ ||
                           SSL_get_error(c->ssl, n) == SSL_ERROR_WANT_WRITE))
                continue;   /* a handshake message (session ticket), no data yet */
            c->closed = true;
            break;
        }
        got += (size_t)n;
        buf[got] = '\0';
        if (want_answer) {
            const char *he = strstr(buf, "\r\n\r\n"), *cl = strcasestr(buf, "\r\nContent-Length:");
            if (he && cl && cl < he && got >= (size_t)(he + 4 - buf) + strtoul(cl + 17, NULL, 10))
                break;
        }
    }
    buf[got] = '\0';
    return got;
}

/* Whether the connection is closed by the server within timeout_ms (draining what comes). */
static bool rc_wait_closed(struct rc *c, int timeout_ms)
{
    char buf[8192];
    int64_t end = ts_now_ms() + timeout_ms;
    while (!c->closed && ts_now_ms() < end)
        rc_read(c, buf, sizeof buf, (int)(end - ts_now_ms()), false);
    return c->closed;
}

static int answer_status(const char *a)
{
    int code = 0;
    if (sscanf(a, "HTTP/1.%*d %d", &code) != 1)
        return 0;
    return code;
}

static const char *answer_body(const char *a)
{
    const char *he = strstr(a, "\r\n\r\n");
    return he ? he + 4 : "";
}

/* ---- the daemons ---- */

static const char *limits_json(void)
{
    return ts_str("\"http\":{\"maxConnections\":%d,\"headerTimeoutMs\":%d,\"requestTimeoutMs\":%d,"
                  "\"idleTimeoutMs\":%d}", CAP, HEAD_MS, REQ_MS, IDLE_MS);
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    struct ts_cp_opts co = {.name = "limits-cp", .plain_http = true, .extra_json = limits_json()};
    cp = ts_controlplane_start(&co);
    struct ts_stamp_opts so = {
        .name = "limits",
        .inst = { { .id = "lim-dps", .scope = SCOPE } },
        .hubs = { { .id = "hub-a", .host = HUB_A } },
        .prov_extra_json = limits_json(),
    };
    st = ts_stamp_start(&so);
    struct ts_stamp_opts so2 = {
        .name = "limits-strict",
        .inst = { { .id = "lim-dps2", .scope = "0ne000LIM02" } },
        .hubs = { { .id = "hub-a", .host = HUB_A } },
        .webhook_strict = true,
    };
    strict = ts_stamp_start(&so2);
    return 0;
}

static struct ts_resp *probe(int port, bool tls)
{
    struct ts_http_opts o = {.tls = tls ? TS_HTTP_TLS : TS_HTTP_PLAIN, .ca = tls ? ts_pki_ca() : NULL};
    return ts_http_ex(port, &o, "GET", "/healthz", NULL, NULL, 0);
}

/* ---- connection cap ---- */

static void check_cap(int port, bool tls, const char *what)
{
    struct rc *held[CAP], *extra[3];
    char buf[8192];
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    /* CAP connections, each proven admitted by an answer on it */
    for (int i = 0; i < CAP; i++) {
        held[i] = rc_open(port, tls);
        if (!rc_send(held[i], req, strlen(req)))
            ts_fail("%s: send on held connection %d", what, i);
        rc_read(held[i], buf, sizeof buf, 5000, true);
        if (answer_status(buf) != 200)
            ts_fail("%s: held connection %d got %s", what, i, buf);
    }
    /* beyond the cap: 503 with the error body, then closed */
    for (int i = 0; i < 3; i++) {
        extra[i] = rc_open(port, tls);
        if (!rc_send(extra[i], req, strlen(req)))
            ts_fail("%s: send on extra connection %d", what, i);
        rc_read(extra[i], buf, sizeof buf, 5000, true);
        if (answer_status(buf) != 503)
            ts_fail("%s: connection %d over the cap got '%s', expected 503", what, i, buf);
        if (!(strcasestr(buf, "\r\nRetry-After: 1\r\n") || strcasestr(buf, "\r\nRetry-After: 2\r\n")) ||
            !strcasestr(buf, "\r\nConnection: close"))
            ts_fail("%s: 503 without Retry-After/Connection: close: %s", what, buf);
        if (tls ? !strstr(answer_body(buf), "\"errorCode\":503002") : !strstr(answer_body(buf), "\"overloaded\""))
            ts_fail("%s: 503 without the error body: %s", what, answer_body(buf));
        if (!rc_wait_closed(extra[i], 5000))
            ts_fail("%s: the refused connection %d stayed open", what, i);
    }
    /* the held ones still work */
    if (!rc_send(held[0], req, strlen(req)))
        ts_fail("%s: send on held connection 0 after the refusals", what);
    rc_read(held[0], buf, sizeof buf, 5000, true);
    if (answer_status(buf) != 200)
        ts_fail("%s: held connection 0 after the refusals got %s", what, buf);
    for (int i = 0; i < CAP; i++)
        rc_close(held[i]);
    for (int i = 0; i < 3; i++)
        rc_close(extra[i]);
    /* capacity comes back once they are gone */
    struct ts_resp *r = NULL;
    for (int64_t dl = ts_now_ms() + 5000; ts_now_ms() < dl;) {
        r = probe(port, tls);
        if (r->status == 200)
            break;
        ts_sleep_ms(100);
    }
    if (!r || r->status != 200)
        ts_fail("%s: after closing, /healthz got %d (%s)", what, r ? r->status : 0, r ? r->err : "");
}

static void test_cap_controlplane(void **state)
{
    (void)state;
    check_cap(cp->port, false, "controlplane");
}

static void test_cap_stamp(void **state)
{
    (void)state;
    check_cap(st->port, true, "stamp");
}

/* ---- slowloris ---- */

struct slow {
    struct rc *c;
    size_t sent;
    int64_t start_ms, end_ms;
    char answer[4096];
};

/*
 * n connections each send data one byte per step_ms; a prompt client probes
 * /healthz meanwhile. Returns when every slow connection is closed (or after
 * max_ms); end_ms is when each was seen closed.
 */
static void slowloris(int port, bool tls, const char *data, int n, int step_ms, int max_ms, struct slow *s,
                      int *probe_status)
{
    int64_t t0 = ts_now_ms(), next = t0;
    bool probed = false;
    size_t len = strlen(data);
    for (int i = 0; i < n; i++) {
        memset(&s[i], 0, sizeof s[i]);
        s[i].c = rc_open(port, tls);
    }
    *probe_status = 0;
    for (;;) {
        int open = 0;
        int64_t now = ts_now_ms();
        for (int i = 0; i < n; i++) {
            struct slow *x = &s[i];
            if (x->end_ms)
                continue;
            size_t have = strlen(x->answer);
            rc_read(x->c, x->answer + have, sizeof x->answer - have, 0, false);
            if (x->c->closed) {
                x->end_ms = ts_now_ms();
                continue;
            }
            open++;
            if (now >= next && x->sent < len) {
                if (x->sent == 0)
                    x->start_ms = now;
                if (!rc_send(x->c, data + x->sent, 1)) {
                    x->end_ms = ts_now_ms();
                    x->c->closed = true;
                    continue;
                }
                x->sent++;
            }
        }
        if (now >= next)
            next = now + step_ms;
        if (!probed && now - t0 >= step_ms * 2) {
            /* another client, while the slow ones hold their connections */
            struct ts_resp *r = probe(port, tls);
            *probe_status = r->status;
            if (r->status != 200)
                ts_log("probe during the slow heads: %d %s %s", r->status, r->err, ts_resp_str(r));
            probed = true;
        }
        if (open == 0 || now - t0 > max_ms)
            break;
        ts_sleep_ms(20);
    }
    for (int i = 0; i < n; i++)
        if (!s[i].end_ms)
            ts_fail("slow connection %d still open after %d ms (%zu bytes sent)", i, max_ms, s[i].sent);
}

static void check_slow_head(int port, bool tls, const char *what)
{
    struct slow s[3];
    int ps;
    const char *head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    slowloris(port, tls, head, 3, 250, HEAD_MS + SLACK_MS + 2000, s, &ps);
    if (ps != 200)
        ts_fail("%s: a prompt client got %d while the slow heads were held", what, ps);
    for (int i = 0; i < 3; i++) {
        int64_t held = s[i].end_ms - s[i].start_ms;
        ts_log("%s: slow head %d cut after %lld ms, %zu of %zu bytes sent", what, i, (long long)held, s[i].sent,
               strlen(head));
        if (s[i].sent >= strlen(head))
            ts_fail("%s: the slow head %d was sent whole before the deadline", what, i);
        if (held < HEAD_MS - 100 || held > HEAD_MS + SLACK_MS)
            ts_fail("%s: slow head %d cut after %lld ms; the deadline is %d ms", what, i, (long long)held, HEAD_MS);
        if (answer_status(s[i].answer) != 408)
            ts_fail("%s: slow head %d got '%s', expected a 408", what, i, s[i].answer);
        if (tls ? !strstr(s[i].answer, "\"errorCode\":408001") : !strstr(s[i].answer, "\"request_timeout\""))
            ts_fail("%s: the 408 has no error body: %s", what, s[i].answer);
        rc_close(s[i].c);
    }
}

static void check_slow_body(int port, bool tls, const char *path, const char *auth, const char *what)
{
    int ps;
    char body[400];
    memset(body, 'x', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    /* the head at once, then the body one byte at a time */
    const char *head = ts_str("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\n\r\n", path, auth, strlen(body));
    struct rc *pre[2];
    for (int i = 0; i < 2; i++) {
        pre[i] = rc_open(port, tls);
        if (!rc_send(pre[i], head, strlen(head)))
            ts_fail("%s: sending the head", what);
    }
    /* reuse slowloris' loop over the already-open connections: body bytes only */
    int64_t t0 = ts_now_ms();
    size_t sent[2] = {0, 0};
    int64_t end[2] = {0, 0};
    bool probed = false;
    ps = 0;
    while ((!end[0] || !end[1]) && ts_now_ms() - t0 < REQ_MS + SLACK_MS + 2000) {
        for (int i = 0; i < 2; i++) {
            char tmp[4096];
            if (end[i])
                continue;
            rc_read(pre[i], tmp, sizeof tmp, 0, false);
            if (pre[i]->closed || !rc_send(pre[i], body + sent[i], 1)) {
                end[i] = ts_now_ms();
                continue;
            }
            sent[i]++;
        }
        if (!probed && ts_now_ms() - t0 > 500) {
            ps = probe(port, tls)->status;
            probed = true;
        }
        ts_sleep_ms(250);
    }
    if (ps != 200)
        ts_fail("%s: a prompt client got %d while the slow bodies were held", what, ps);
    for (int i = 0; i < 2; i++) {
        int64_t held = end[i] - t0;
        ts_log("%s: slow body %d cut after %lld ms, %zu of %zu body bytes sent", what, i, (long long)held, sent[i],
               strlen(body));
        if (!end[i])
            ts_fail("%s: slow body %d still open", what, i);
        if (held < REQ_MS - 300 || held > REQ_MS + SLACK_MS)
            ts_fail("%s: slow body %d cut after %lld ms; the deadline is %d ms", what, i, (long long)held, REQ_MS);
        rc_close(pre[i]);
    }
}

static void test_slowloris_controlplane(void **state)
{
    (void)state;
    check_slow_head(cp->port, false, "controlplane");
    check_slow_body(cp->port, false, "/v1/geographies", ts_str("Bearer %s", cp->token), "controlplane");
}

static void test_slowloris_stamp(void **state)
{
    (void)state;
    check_slow_head(st->port, true, "stamp");
    check_slow_body(st->port, true, "/enrollments/slow-1?api-version=2021-10-01",
                    ts_stamp_service_sas(st, NULL), "stamp");
}

/* ---- idle keep-alive ---- */

static void check_idle(int port, bool tls, const char *what)
{
    char buf[8192];
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    struct rc *c = rc_open(port, tls);
    if (!rc_send(c, req, strlen(req)))
        ts_fail("%s: send", what);
    rc_read(c, buf, sizeof buf, 5000, true);
    if (answer_status(buf) != 200)
        ts_fail("%s: keep-alive request got %s", what, buf);
    int64_t t0 = ts_now_ms();
    if (!rc_wait_closed(c, IDLE_MS + SLACK_MS))
        ts_fail("%s: an idle keep-alive connection stayed open past %d ms", what, IDLE_MS + SLACK_MS);
    int64_t held = ts_now_ms() - t0;
    ts_log("%s: idle keep-alive connection closed after %lld ms", what, (long long)held);
    if (held < IDLE_MS - 200)
        ts_fail("%s: idle connection closed after %lld ms, before idleTimeoutMs %d", what, (long long)held, IDLE_MS);
    rc_close(c);
}

static void test_idle(void **state)
{
    (void)state;
    check_idle(cp->port, false, "controlplane");
    check_idle(st->port, true, "stamp");
}

/* ---- refused before the body ---- */

/* Send only a head that announces a body; the answer must come without it. */
static const char *head_only(int port, bool tls, const char *head, int want_status)
{
    char *buf = ts_keep(malloc(16384));
    struct rc *c = rc_open(port, tls);
    if (!rc_send(c, head, strlen(head)))
        ts_fail("sending a head");
    rc_read(c, buf, 16384, 5000, true);
    if (answer_status(buf) != want_status)
        ts_fail("head '%.80s...': got '%s', expected %d before any body byte", head, buf, want_status);
    if (!strcasestr(buf, "\r\nConnection: close") || !rc_wait_closed(c, 5000))
        ts_fail("the refusal before the body did not close the connection: %s", buf);
    rc_close(c);
    return answer_body(buf);
}

/* A head with a NUL (or another control byte) in it: the guard reads heads
 * as C strings and evhttp line by line, so such a head would be two
 * different requests to them. Refused with 400 and closed, on both daemons. */
static void check_head_control_byte(int port, bool tls, const char *what)
{
    static const char heads[][96] = {
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\0b\r\nContent-Length: 50\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\0\r\nPUT /v1/tenants HTTP/1.1\r\nContent-Length: 9\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n",
    };
    static const size_t lens[] = {62, 82, 40};
    char buf[8192];
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        struct rc *c = rc_open(port, tls);
        if (!rc_send(c, heads[i], lens[i]))
            ts_fail("%s: sending head %zu", what, i);
        rc_read(c, buf, sizeof buf, 5000, true);
        if (answer_status(buf) != 400 || !rc_wait_closed(c, 5000))
            ts_fail("%s: head %zu with a control byte: expected 400 and a close, got '%s'", what, i, buf);
        if (strstr(buf, "HTTP/1.1 2") || strstr(buf + 4, "HTTP/1."))
            ts_fail("%s: head %zu was answered as more than one request: '%s'", what, i, buf);
        rc_close(c);
    }
}

static void test_head_control_bytes(void **state)
{
    (void)state;
    check_head_control_byte(cp->port, false, "control plane");
    check_head_control_byte(st->port, true, "stamp");
}

static void test_before_body_controlplane(void **state)
{
    (void)state;
    int p = cp->port;
    const char *b;
    long long now = (long long)time(NULL);
    /* an oversized Content-Length (operator token valid) */
    b = head_only(p, false, ts_str("POST /v1/geographies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                                   "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n", cp->token),
                  413);
    if (!strstr(b, "\"body_too_large\""))
        ts_fail("413 without code body_too_large: %s", b);
    /* admin route, no token */
    b = head_only(p, false, "POST /v1/geographies HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n", 401);
    if (!strstr(b, "\"unauthorized\""))
        ts_fail("admin 401 without code unauthorized: %s", b);
    /* device routes */
    const char *dev = "/v1/tenants/acme/registrations/dev-1/provision";
    b = head_only(p, false, ts_str("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n", dev), 401);
    if (!strstr(b, "\"unauthorized\""))
        ts_fail("device request without credentials: %s", b);
    b = head_only(p, false, ts_str("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: SharedAccessSignature garbage\r\n"
                                   "Content-Length: 20\r\n\r\n", dev), 401);
    if (!strstr(b, "\"malformed_token\""))
        ts_fail("malformed SAS: %s", b);
    b = head_only(p, false, ts_str("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: SharedAccessSignature "
                                   "sr=acme%%2Fregistrations%%2Fdev-1&sig=AAAA&se=%lld&skn=registration\r\n"
                                   "Content-Length: 20\r\n\r\n", dev, now - 60), 401);
    if (!strstr(b, "\"expired_token\""))
        ts_fail("expired SAS: %s", b);
    b = head_only(p, false, ts_str("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: SharedAccessSignature "
                                   "sr=acme%%2Fregistrations%%2Fdev-2&sig=AAAA&se=%lld&skn=registration\r\n"
                                   "Content-Length: 20\r\n\r\n", dev, now + 600), 401);
    if (!strstr(b, "\"wrong_resource\""))
        ts_fail("SAS for another device: %s", b);
    /* a header the guard reserves for itself */
    head_only(p, false, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Stampcp-Guard: 1 - forged\r\n\r\n", 400);

    /* what passes the check is read and served on the same connection */
    char buf[8192];
    struct rc *c = rc_open(p, false);
    const char *req = ts_str("POST /v1/geographies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                             "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", cp->token);
    for (int i = 0; i < 2; i++) {
        if (!rc_send(c, req, strlen(req)))
            ts_fail("send on the keep-alive connection");
        rc_read(c, buf, sizeof buf, 5000, true);
        if (answer_status(buf) != 400 || strcasestr(buf, "Connection: close"))
            ts_fail("a checked request (%d) was not served by the route on a kept connection: %s", i, buf);
    }
    /* a chunked body is framed the way evhttp frames it: the next request on the connection is served */
    const char *chunked = ts_str("POST /v1/geographies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                                 "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "1\r\n{\r\n1\r\n}\r\n0\r\n\r\n", cp->token);
    if (!rc_send(c, chunked, strlen(chunked)))
        ts_fail("send chunked");
    rc_read(c, buf, sizeof buf, 5000, true);
    if (answer_status(buf) != 400)
        ts_fail("a chunked request was not served by the route: %s", buf);
    if (!rc_send(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 35))
        ts_fail("send after chunked");
    rc_read(c, buf, sizeof buf, 5000, true);
    if (answer_status(buf) != 200)
        ts_fail("the request after a chunked one got: %s", buf);
    rc_close(c);

    /* pipelined requests: the second is held until the first answer is out, then served */
    c = rc_open(p, false);
    const char *two = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    if (!rc_send(c, two, strlen(two)))
        ts_fail("send pipelined");
    size_t got = 0;
    int answers = 0;
    for (int64_t dl = ts_now_ms() + 5000; answers < 2 && ts_now_ms() < dl && !c->closed;) {
        got += rc_read(c, buf + got, sizeof buf - got, 200, false);
        answers = 0;
        for (const char *q = buf; (q = strstr(q, "HTTP/1.1 ")) != NULL; q++)
            answers++;
    }
    if (answers != 2 || answer_status(buf) != 200)
        ts_fail("pipelined requests got %d answers: %s", answers, buf);
    rc_close(c);
}

static void test_before_body_stamp(void **state)
{
    (void)state;
    int p = st->port;
    const char *b;
    b = head_only(p, true, ts_str("PUT /%s/registrations/dev-1/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n"
                                  "Authorization: %s\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n",
                                  SCOPE, ts_device_sas(SCOPE, "dev-1", ts_random_key(32), 0)),
                  413);
    if (!strstr(b, "\"errorCode\":413001"))
        ts_fail("stamp 413 without errorCode 413001: %s", b);
    b = head_only(p, true, ts_str("PUT /%s/registrations/dev-1/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Type: application/json\r\nContent-Length: 30\r\n\r\n", SCOPE),
                  401);
    if (!strstr(b, "\"errorCode\":401001"))
        ts_fail("device request without credentials: %s", b);
    b = head_only(p, true, "PUT /enrollments/x-1?api-version=2021-10-01 HTTP/1.1\r\nHost: x\r\n"
                           "Content-Type: application/json\r\nContent-Length: 30\r\n\r\n",
                  401);
    if (!strstr(b, "\"errorCode\":401002"))
        ts_fail("service request without Authorization: %s", b);
    /* with a client certificate the device request goes on to the route (which reads the body) */
    const char *ca_crt, *ca_key, *leaf, *leaf_key;
    ts_pki_make_ca("lim-ca", "limits test CA", &ca_crt, &ca_key);
    ts_pki_make_leaf("lim-leaf", "dev-x-1", ca_crt, ca_key, &leaf, &leaf_key);
    struct ts_resp *r = ts_https(p, "PUT", ts_str("/%s/registrations/dev-x-1/register?api-version=2021-06-01", SCOPE),
                                 (const char *const[]){"Content-Type: application/json", NULL},
                                 "{\"registrationId\":\"dev-x-1\"}", strlen("{\"registrationId\":\"dev-x-1\"}"),
                                 leaf, leaf_key);
    if (r->status == 0 || (r->json && ts_jint(r->json, "errorCode", 0) == 401001))
        ts_fail("a device with a client certificate was refused as having no credential: %s", ts_resp_str(r));
}

/* ---- webhook URLs ---- */

static struct ts_resp *custom_group_key(struct ts_stamp *s, const char *id, const char *url, const char *gkey)
{
    return ts_stamp_service(s, NULL, "PUT", ts_str("/enrollmentGroups/%s?api-version=2021-10-01", id),
                            ts_json("{'enrollmentGroupId':'%s','attestation':{'type':'symmetricKey',"
                                    "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}},"
                                    "'allocationPolicy':'custom','customAllocationDefinition':"
                                    "{'webhookUrl':'%s','apiVersion':'2021-10-01'}}",
                                    id, gkey, ts_random_key(64), url));
}

static struct ts_resp *custom_group(struct ts_stamp *s, const char *id, const char *url)
{
    return custom_group_key(s, id, url, ts_random_key(64));
}

static void expect_url(struct ts_stamp *s, const char *url, bool ok, const char *what)
{
    static int n;
    struct ts_resp *r = custom_group(s, ts_str("wh-%d", ++n), url);
    if (ok && r->status != 200)
        ts_fail("%s: webhook URL %s refused: %s", what, url, ts_resp_str(r));
    if (!ok && (r->status != 400 || !ts_is_dps_error(r, 400) || !strstr(ts_resp_str(r), "webhookUrl")))
        ts_fail("%s: webhook URL %s not refused with a 400 DPS error: %s", what, url, ts_resp_str(r));
}

static void test_webhook_urls(void **state)
{
    (void)state;
    /* without the allowance */
    expect_url(strict, "http://203.0.113.7/alloc", false, "strict, http");
    expect_url(strict, "https://127.0.0.1:9/alloc", false, "strict, loopback");
    expect_url(strict, "https://127.1/alloc", false, "strict, loopback short form");
    expect_url(strict, "https://localhost:9/alloc", false, "strict, localhost");
    expect_url(strict, "https://[::1]:9/alloc", false, "strict, IPv6 loopback");
    expect_url(strict, "https://10.1.2.3/alloc", false, "strict, 10/8");
    expect_url(strict, "https://192.168.1.1/alloc", false, "strict, 192.168/16");
    expect_url(strict, "https://172.16.0.1/alloc", false, "strict, 172.16/12");
    expect_url(strict, "https://169.254.169.254/latest", false, "strict, link-local (metadata)");
    expect_url(strict, "https://[fe80::1]/alloc", false, "strict, IPv6 link-local");
    expect_url(strict, "https://[::ffff:127.0.0.1]/alloc", false, "strict, IPv4-mapped loopback");
    expect_url(strict, "ftp://203.0.113.7/alloc", false, "strict, not http");
    expect_url(strict, "https://203.0.113.7/alloc", true, "strict, public address");
    expect_url(strict, "https://alloc.example.com/alloc", true, "strict, a host name (checked at call time)");
    /* with it (the stack's and the tests' loopback webhooks) */
    expect_url(st, "https://127.0.0.1:9/alloc", true, "allowed, loopback https");
    expect_url(st, "http://127.0.0.1:9/alloc", true, "allowed, loopback http");
    expect_url(st, "https://10.1.2.3/alloc", true, "allowed, private");
    expect_url(st, "http://203.0.113.7/alloc", false, "allowed, public http");
}

/* At call time: the webhook client checks every address the host resolves to. */
struct wh_call {
    struct event_base *base;
    bool done;
    int status;
    char err[200];
};

static void wh_done(const struct http_result *res, void *arg)
{
    struct wh_call *w = arg;
    w->done = true;
    w->status = res->status;
    snprintf(w->err, sizeof w->err, "%s", res->error ? res->error : "");
    event_base_loopexit(w->base, NULL);
}

static const char *wh_post(const char *url, bool allow_private)
{
    struct wh_call w;
    memset(&w, 0, sizeof w);
    w.base = event_base_new();
    struct dns *dns = dns_new(w.base, NULL);   /* as the agent: hosts resolved on the loop */
    struct dps_webhook *c = dps_webhook_new(w.base);
    assert_non_null(dns);
    dps_webhook_set_dns(dns);
    http_call_set_dns(dns_evdns(dns));
    dps_webhook_set_allow_private(allow_private);
    (void)dps_webhook_post(c, url, "{}", 5000, wh_done, &w);
    event_base_dispatch(w.base);
    dps_webhook_free(c);
    http_call_set_dns(NULL);
    dps_webhook_set_dns(NULL);
    dns_free(dns);
    for (int i = 0; i < 2; i++)
        event_base_loop(w.base, EVLOOP_NONBLOCK);
    event_base_free(w.base);
    dps_webhook_set_allow_private(false);
    if (!w.done)
        ts_fail("webhook call to %s: no callback", url);
    ts_log("webhook call to %s (allowance %d): status %d, '%s'", url, allow_private, w.status, w.err);
    return ts_str("%d %s", w.status, w.err);
}

static void test_webhook_call_time(void **state)
{
    (void)state;
    static const char *const names[] = {"runsc", "vm", "ip6-localhost", "localhost6", NULL};
    const char *name = NULL, *r;
    /* a URL that got in before the rules (or by hand) is refused at the call */
    r = wh_post("https://127.0.0.1:9/alloc", false);
    if (strncmp(r, "0 ", 2) != 0 || !strstr(r, "loopback"))
        ts_fail("a loopback webhook was called without the allowance: %s", r);
    r = wh_post("http://203.0.113.7/alloc", false);
    if (strncmp(r, "0 ", 2) != 0 || !strstr(r, "https"))
        ts_fail("a plain-http public webhook was called: %s", r);
    /* with the allowance the same loopback target is called (nothing listens: a connection failure) */
    r = wh_post(ts_str("https://127.0.0.1:%d/alloc", ts_free_port()), true);
    if (strncmp(r, "0 ", 2) != 0 || strstr(r, "loopback"))
        ts_fail("with the allowance a loopback webhook was refused by the rules: %s", r);
    /* a host name that resolves to loopback (DNS rebinding) */
    for (const char *const *n = names; *n && !name; n++) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(*n, NULL, &hints, &res) == 0 && res) {
            if (res->ai_family == AF_INET &&
                (ntohl(((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr) >> 24) == 127)
                name = *n;
            freeaddrinfo(res);
        }
    }
    if (!name) {
        ts_log("no host name other than localhost resolves to 127/8 here: the rebinding case is not exercised");
        return;
    }
    /* accepted at write time (a name) ... */
    TS_EXPECT_STATUS(custom_group(strict, "wh-rebind", ts_str("https://%s:9/alloc", name)), 200);
    /* ... and refused at the call, on the address it resolves to */
    r = wh_post(ts_str("https://%s:9/alloc", name), false);
    if (strncmp(r, "0 ", 2) != 0 || !strstr(r, "resolves to a loopback"))
        ts_fail("a webhook host resolving to loopback was called: %s", r);
}

/* ---- outbound answers stop at their limit ---- */

enum endless_kind { ENDLESS_CLOSE, ENDLESS_CHUNKED, ENDLESS_HUGE_CL };

struct endless {
    struct event_base *base;
    enum endless_kind kind;
    uint64_t written;
    struct bufferevent *bev;
    struct evconnlistener *lst;
    bool done;
    struct http_result res;
    char error[200];
};

static void endless_write(struct bufferevent *bev, void *arg)
{
    struct endless *e = arg;
    char chunk[16384];
    memset(chunk, '7', sizeof chunk);
    if (e->written > (uint64_t)1 << 30)
        return;   /* 1 GiB: give up (the test fails on it) */
    if (e->kind == ENDLESS_CHUNKED)
        evbuffer_add_printf(bufferevent_get_output(bev), "%zx\r\n", sizeof chunk);
    bufferevent_write(bev, chunk, sizeof chunk);
    if (e->kind == ENDLESS_CHUNKED)
        bufferevent_write(bev, "\r\n", 2);
    e->written += sizeof chunk;
}

static void endless_event(struct bufferevent *bev, short what, void *arg)
{
    struct endless *e = arg;
    (void)what;
    bufferevent_free(bev);
    e->bev = NULL;
}

static void endless_read(struct bufferevent *bev, void *arg)
{
    struct endless *e = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (evbuffer_search(in, "\r\n\r\n", 4, NULL).pos < 0)
        return;
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_setcb(bev, NULL, endless_write, endless_event, e);
    if (e->kind == ENDLESS_CLOSE)
        evbuffer_add_printf(bufferevent_get_output(bev), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                                         "Connection: close\r\n\r\n");
    else if (e->kind == ENDLESS_CHUNKED)
        evbuffer_add_printf(bufferevent_get_output(bev), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                                         "Transfer-Encoding: chunked\r\n\r\n");
    else
        evbuffer_add_printf(bufferevent_get_output(bev), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                                         "Content-Length: 1000000000000\r\n\r\n");
    endless_write(bev, e);
}

static void endless_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    struct endless *e = arg;
    (void)l; (void)sa; (void)len;
    e->bev = bufferevent_socket_new(e->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(e->bev, endless_read, NULL, endless_event, e);
    bufferevent_enable(e->bev, EV_READ | EV_WRITE);
}

static void endless_done(const struct http_result *res, void *arg)
{
    struct endless *e = arg;
    e->done = true;
    e->res = *res;
    snprintf(e->error, sizeof e->error, "%s", res->error ? res->error : "");
    e->res.error = e->error;
    e->res.body = NULL;
    event_base_loopexit(e->base, NULL);
}

static void check_endless(enum endless_kind kind, const char *what)
{
    struct endless e;
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    memset(&e, 0, sizeof e);
    e.kind = kind;
    e.base = event_base_new();
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    e.lst = evconnlistener_new_bind(e.base, endless_accept, &e, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                    (struct sockaddr *)&a, sizeof a);
    if (!e.lst)
        ts_fail("listen");
    getsockname(evconnlistener_get_fd(e.lst), (struct sockaddr *)&a, &alen);
    int port = ntohs(a.sin_port);
    const size_t limit = 64 * 1024;
    (void)http_call_start(e.base, NULL, "127.0.0.1", port, ts_str("127.0.0.1:%d", port), EVHTTP_REQ_GET, "/",
                          NULL, NULL, 20000, limit, endless_done, &e);
    event_base_dispatch(e.base);
    ts_log("%s: call ended with status %d error '%s' after the server wrote %llu bytes", what, e.res.status, e.error,
           (unsigned long long)e.written);
    if (!e.done)
        ts_fail("%s: the callback never ran", what);
    if (e.res.status != 0 || !strstr(e.error, "larger than 65536"))
        ts_fail("%s: expected the size-limit error, got status %d error '%s'", what, e.res.status, e.error);
    if (e.written > 64ull * 1024 * 1024)
        ts_fail("%s: the client read on to %llu bytes", what, (unsigned long long)e.written);
    if (e.bev)
        bufferevent_free(e.bev);
    evconnlistener_free(e.lst);
    event_base_free(e.base);
}

static void test_outbound_limit(void **state)
{
    (void)state;
    check_endless(ENDLESS_CLOSE, "read until close");
    check_endless(ENDLESS_CHUNKED, "chunked");
    check_endless(ENDLESS_HUGE_CL, "huge Content-Length");
}

int main(void)
{
    ts_init("test_conn_limits");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outbound_limit),
        cmocka_unit_test(test_cap_controlplane),
        cmocka_unit_test(test_cap_stamp),
        cmocka_unit_test(test_before_body_controlplane),
        cmocka_unit_test(test_before_body_stamp),
        cmocka_unit_test(test_head_control_bytes),
        cmocka_unit_test(test_slowloris_controlplane),
        cmocka_unit_test(test_slowloris_stamp),
        cmocka_unit_test(test_idle),
        cmocka_unit_test(test_webhook_urls),
        cmocka_unit_test(test_webhook_call_time),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
