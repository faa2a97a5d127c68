/*
 * http_call.c - a single HTTP(S) request/answer with a deadline.
 */
#include "http_call.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"
#include "tls.h"
#include "util.h"

#define HTTP_CALL_MAX_HEADERS (64 * 1024)

struct http_call {
    LIST_ENTRY(http_call) link;
    struct evhttp_connection *conn;
    struct event *deadline, *reap;
    struct http_result res;
    json_t *body;
    char *continuation;
    size_t max_body;
    char error[160];
    enum evhttp_request_error req_error;   /* from libevent's error callback */
    bool req_failed;
    bool done;
    http_cb cb;
    void *arg;
};

/* Calls in flight: the daemons are single-threaded, so one list serves. */
static LIST_HEAD(, http_call) http_live = LIST_HEAD_INITIALIZER(http_live);
/* The process's resolver (dns.c's evdns base); NULL: libevent resolves with
 * a blocking getaddrinfo, which only numeric hosts may rely on. */
static struct evdns_base *http_dns;

void http_call_set_dns(struct evdns_base *dns)
{
    http_dns = dns;
}

static void http_call_free(struct http_call *c)
{
    LIST_REMOVE(c, link);
    if (c->conn) evhttp_connection_free(c->conn);
    event_free(c->deadline);
    event_free(c->reap);
    json_decref(c->body);
    free(c->continuation);
    free(c);
}

void http_call_cancel(struct http_call *c)
{
    if (c)
        http_call_free(c);
}

void http_call_abort_all(void)
{
    while (!LIST_EMPTY(&http_live))
        http_call_free(LIST_FIRST(&http_live));
}

static void http_call_on_reap(evutil_socket_t fd, short what, void *arg)
{
    struct http_call *c = arg;
    (void)fd; (void)what;
    c->res.body = c->body;
    c->res.continuation = c->continuation;
    c->res.error = c->error[0] ? c->error : NULL;
    c->cb(&c->res, c->arg);
    http_call_free(c);
}

/* Settle once; the callback runs from its own event, never inside libevent's
 * request callback (the connection is freed after it). */
static void http_call_finish(struct http_call *c, const char *error)
{
    if (c->done)
        return;
    c->done = true;
    if (error)
        snprintf(c->error, sizeof c->error, "%s", error);
    event_del(c->deadline);
    event_active(c->reap, EV_TIMEOUT, 1);
}

static void http_call_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    http_call_finish(arg, "no answer before the deadline");
}

static void http_call_on_reply(struct evhttp_request *req, void *arg)
{
    struct http_call *c = arg;
    struct evkeyvalq *h;
    struct evbuffer *in;
    const char *cont, *ra;
    int64_t ra_s;
    size_t len;
    if (c->done)
        return;
    if (!req || evhttp_request_get_response_code(req) == 0) {
        char why[120];
        if (c->req_failed && c->req_error == EVREQ_HTTP_DATA_TOO_LONG) {
            /* libevent stopped reading at the limit (headers or body) */
            snprintf(why, sizeof why, "the answer is larger than %zu bytes", c->max_body);
            http_call_finish(c, why);
            return;
        }
        http_call_finish(c, c->req_failed && c->req_error == EVREQ_HTTP_TIMEOUT ? "no answer before the deadline"
                                                                               : "connection or TLS failure");
        return;
    }
    c->res.status = evhttp_request_get_response_code(req);
    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    if (len > 0 && len <= c->max_body)
        c->body = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len), len, 0, NULL);
    h = evhttp_request_get_input_headers(req);
    if ((cont = evhttp_find_header(h, "x-ms-continuation")) != NULL)
        c->continuation = xstrdup(cont);
    if ((ra = evhttp_find_header(h, "Retry-After")) != NULL && util_parse_int64(ra, 0, 86400, &ra_s))
        c->res.retry_after_s = (int)ra_s;
    http_call_finish(c, NULL);
}

static struct http_call *http_call_new(struct event_base *base, int timeout_ms, size_t max_body, http_cb cb,
                                       void *arg)
{
    struct http_call *c = xcalloc(1, sizeof *c);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    c->cb = cb;
    c->arg = arg;
    c->max_body = max_body;
    c->res.retry_after_s = -1;
    LIST_INSERT_HEAD(&http_live, c, link);
    c->deadline = event_new(base, -1, 0, http_call_on_deadline, c);
    c->reap = event_new(base, -1, 0, http_call_on_reap, c);
    if (!c->deadline || !c->reap) {
        log_error("event=event_new_failed");
        abort();
    }
    event_add(c->deadline, &tv);
    return c;
}

struct http_call *http_call_failed(struct event_base *base, const char *error, http_cb cb, void *arg)
{
    struct http_call *c = http_call_new(base, 1000, 0, cb, arg);
    http_call_finish(c, error);
    return c;
}

static void http_call_on_error(enum evhttp_request_error err, void *arg)
{
    struct http_call *c = arg;
    c->req_failed = true;
    c->req_error = err;
}

struct http_call *http_call_start(struct event_base *base, SSL_CTX *tls, const char *host, int port,
                                  const char *host_header, enum evhttp_cmd_type method, const char *target,
                                  const char *const *headers, const char *body, int timeout_ms,
                                  size_t max_body, http_cb cb, void *arg)
{
    return http_call_start_at(base, tls, host, host, port, host_header, method, target, headers, body, timeout_ms,
                              max_body, cb, arg);
}

struct http_call *http_call_start_at(struct event_base *base, SSL_CTX *tls, const char *tls_name,
                                     const char *host, int port, const char *host_header,
                                     enum evhttp_cmd_type method, const char *target, const char *const *headers,
                                     const char *body, int timeout_ms, size_t max_body, http_cb cb, void *arg)
{
    struct http_call *c = http_call_new(base, timeout_ms, max_body, cb, arg);
    struct evhttp_request *req;
    struct bufferevent *bev;
    bev = tls ? tls_client_bev(base, tls, tls_name) : bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->conn = bev ? evhttp_connection_base_bufferevent_new(base, http_dns, bev, host, (ev_uint16_t)port) : NULL;
    if (!c->conn) {
        if (bev) bufferevent_free(bev);
        http_call_finish(c, "could not open a connection");
        return c;
    }
    evhttp_connection_set_timeout(c->conn, (timeout_ms + 999) / 1000);
    evhttp_connection_set_retries(c->conn, 0);
    /* Stop reading at the limit while the answer streams in: libevent checks
     * the body size on every read (Content-Length at once, each chunk's size,
     * read-until-close as it grows) and fails the request with
     * EVREQ_HTTP_DATA_TOO_LONG; the watermark bounds what a line that never
     * ends (a chunk-size line) can make it buffer before the deadline. */
    evhttp_connection_set_max_body_size(c->conn, (ev_ssize_t)max_body);
    evhttp_connection_set_max_headers_size(c->conn, HTTP_CALL_MAX_HEADERS);
    bufferevent_setwatermark(bev, EV_READ, 0, max_body + HTTP_CALL_MAX_HEADERS);
    if (!(req = evhttp_request_new(http_call_on_reply, c))) {
        http_call_finish(c, "out of memory");
        return c;
    }
    evhttp_request_set_error_cb(req, http_call_on_error);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", host_header);
    for (const char *const *h = headers; h && h[0]; h += 2)
        evhttp_add_header(evhttp_request_get_output_headers(req), h[0], h[1]);
    if (body)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    if (evhttp_make_request(c->conn, req, method, target) != 0)
        http_call_finish(c, "could not send the request");
    return c;
}

/* The callback of a call that never started (bad endpoint): answered from the loop. */
struct http_fail {
    http_cb cb;
    void *arg;
    struct event *ev;
};

static void https_call_on_fail(evutil_socket_t fd, short what, void *arg)
{
    struct http_fail *f = arg;
    struct http_result res = {0, NULL, NULL, -1, "the endpoint is not host:port"};
    (void)fd; (void)what;
    f->cb(&res, f->arg);
    event_free(f->ev);
    free(f);
}

void https_call(struct event_base *base, SSL_CTX *ctx, const char *hostport, enum evhttp_cmd_type method,
                const char *path, const char *const *headers, const char *body, int timeout_ms,
                http_cb cb, void *arg)
{
    char host[256];
    int port;
    if (!util_parse_hostport(hostport, host, sizeof host, &port) || port == 0) {
        struct http_fail *f = xcalloc(1, sizeof *f);
        f->cb = cb;
        f->arg = arg;
        f->ev = event_new(base, -1, 0, https_call_on_fail, f);
        if (!f->ev) {
            log_error("event=event_new_failed");
            abort();
        }
        event_active(f->ev, EV_TIMEOUT, 1);
        return;
    }
    http_call_start(base, ctx, host, port, hostport, method, path, headers, body, timeout_ms,
                    16 * 1024 * 1024, cb, arg);
}
