/*
 * https_call.c - a single HTTPS request/answer with a deadline.
 */
#include "https_call.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"
#include "tls.h"
#include "util.h"

struct hcall {
    LIST_ENTRY(hcall) link;
    struct evhttp_connection *conn;
    struct event *deadline, *reap;
    struct https_result res;
    json_t *body;
    char *continuation;
    char error[160];
    bool done;
    https_cb cb;
    void *arg;
};

/* Calls in flight: the daemon is single-threaded, so one list serves. */
static LIST_HEAD(, hcall) hcall_live = LIST_HEAD_INITIALIZER(hcall_live);

static void hcall_free(struct hcall *c)
{
    LIST_REMOVE(c, link);
    if (c->conn) evhttp_connection_free(c->conn);
    event_free(c->deadline);
    event_free(c->reap);
    json_decref(c->body);
    free(c->continuation);
    free(c);
}

static void hcall_on_reap(evutil_socket_t fd, short what, void *arg)
{
    struct hcall *c = arg;
    (void)fd; (void)what;
    c->res.body = c->body;
    c->res.continuation = c->continuation;
    c->res.error = c->error[0] ? c->error : NULL;
    c->cb(&c->res, c->arg);
    hcall_free(c);
}

void https_call_abort_all(void)
{
    while (!LIST_EMPTY(&hcall_live))
        hcall_free(LIST_FIRST(&hcall_live));
}

static void hcall_finish(struct hcall *c, const char *error)
{
    if (c->done)
        return;
    c->done = true;
    if (error)
        snprintf(c->error, sizeof c->error, "%s", error);
    event_del(c->deadline);
    event_active(c->reap, EV_TIMEOUT, 1);
}

static void hcall_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    hcall_finish(arg, "no answer before the deadline");
}

static void hcall_on_reply(struct evhttp_request *req, void *arg)
{
    struct hcall *c = arg;
    struct evbuffer *in;
    const char *cont, *ra;
    int64_t ra_s;
    size_t len;
    if (c->done)
        return;
    if (!req || evhttp_request_get_response_code(req) == 0) {
        hcall_finish(c, "connection or TLS failure");
        return;
    }
    c->res.status = evhttp_request_get_response_code(req);
    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    if (len > 0 && len < 16 * 1024 * 1024)
        c->body = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len), len, 0, NULL);
    cont = evhttp_find_header(evhttp_request_get_input_headers(req), "x-ms-continuation");
    if (cont)
        c->continuation = xstrdup(cont);
    if ((ra = evhttp_find_header(evhttp_request_get_input_headers(req), "Retry-After")) != NULL &&
        util_parse_int64(ra, 0, 86400, &ra_s))
        c->res.retry_after_s = (int)ra_s;
    hcall_finish(c, NULL);
}

void https_call(struct event_base *base, SSL_CTX *ctx, const char *hostport, enum evhttp_cmd_type method,
                const char *path, const char *const *headers, const char *body, int timeout_ms,
                https_cb cb, void *arg)
{
    struct hcall *c = xcalloc(1, sizeof *c);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    struct evhttp_request *req;
    struct bufferevent *bev;
    char host[256];
    int port;

    c->cb = cb;
    c->arg = arg;
    c->res.retry_after_s = -1;
    LIST_INSERT_HEAD(&hcall_live, c, link);
    c->deadline = event_new(base, -1, 0, hcall_on_deadline, c);
    c->reap = event_new(base, -1, 0, hcall_on_reap, c);
    if (!c->deadline || !c->reap) {
        log_error("event=event_new_failed");
        abort();
    }
    event_add(c->deadline, &tv);
    if (!util_parse_hostport(hostport, host, sizeof host, &port) || port == 0) {
        hcall_finish(c, "the endpoint is not host:port");
        return;
    }
    bev = tls_client_bev(base, ctx, host);
    c->conn = bev ? evhttp_connection_base_bufferevent_new(base, NULL, bev, host, (ev_uint16_t)port) : NULL;
    if (!c->conn) {
        if (bev) bufferevent_free(bev);
        hcall_finish(c, "could not open a connection");
        return;
    }
    evhttp_connection_set_timeout(c->conn, (timeout_ms + 999) / 1000);
    evhttp_connection_set_retries(c->conn, 0);
    req = evhttp_request_new(hcall_on_reply, c);
    if (!req) {
        hcall_finish(c, "out of memory");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", hostport);
    for (const char *const *h = headers; h && h[0]; h += 2)
        evhttp_add_header(evhttp_request_get_output_headers(req), h[0], h[1]);
    if (body)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    if (evhttp_make_request(c->conn, req, method, path) != 0)
        hcall_finish(c, "could not send the request");
}
