/*
 * dps_webhook.c - custom allocation webhook calls (one connection per call:
 * libevent can't reconnect an SSL bufferevent, and webhooks are rare).
 */
#include "dps_webhook.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "log.h"
#include "tls.h"
#include "util.h"

struct dps_webhook_call {
    LIST_ENTRY(dps_webhook_call) link;
    struct dps_webhook *w;
    struct evhttp_connection *conn;
    struct event *deadline, *reap;
    int status;
    json_t *body;
    char error[160];
    bool done;
    dps_webhook_cb cb;
    void *arg;
};

struct dps_webhook {
    struct event_base *base;
    SSL_CTX *tls;                          /* created on the first https call */
    LIST_HEAD(, dps_webhook_call) live;
};

struct dps_webhook *dps_webhook_new(struct event_base *base)
{
    struct dps_webhook *w = xcalloc(1, sizeof *w);
    w->base = base;
    LIST_INIT(&w->live);
    return w;
}

static void dps_webhook_call_free(struct dps_webhook_call *c)
{
    LIST_REMOVE(c, link);
    if (c->conn) evhttp_connection_free(c->conn);
    event_free(c->deadline);
    event_free(c->reap);
    json_decref(c->body);
    free(c);
}

void dps_webhook_cancel(struct dps_webhook_call *c)
{
    if (c)
        dps_webhook_call_free(c);
}

void dps_webhook_free(struct dps_webhook *w)
{
    if (!w) return;
    while (!LIST_EMPTY(&w->live))
        dps_webhook_call_free(LIST_FIRST(&w->live));
    if (w->tls) SSL_CTX_free(w->tls);
    free(w);
}

static void dps_webhook_on_reap(evutil_socket_t fd, short what, void *arg)
{
    struct dps_webhook_call *c = arg;
    struct dps_webhook_result res = {c->status, c->body, c->error[0] ? c->error : NULL};
    (void)fd; (void)what;
    c->cb(&res, c->arg);
    dps_webhook_call_free(c);
}

/* Settle once; the callback runs from its own event, never inside libevent's
 * request callback (the connection is freed after it). */
static void dps_webhook_finish(struct dps_webhook_call *c, const char *error)
{
    if (c->done)
        return;
    c->done = true;
    if (error)
        snprintf(c->error, sizeof c->error, "%s", error);
    event_del(c->deadline);
    event_active(c->reap, EV_TIMEOUT, 1);
}

static void dps_webhook_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    dps_webhook_finish(arg, "the webhook did not answer before the deadline");
}

static void dps_webhook_on_reply(struct evhttp_request *req, void *arg)
{
    struct dps_webhook_call *c = arg;
    struct evbuffer *in;
    size_t len;
    if (c->done)
        return;
    if (!req || evhttp_request_get_response_code(req) == 0) {
        dps_webhook_finish(c, "the webhook could not be reached (connection or TLS failure)");
        return;
    }
    c->status = evhttp_request_get_response_code(req);
    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    if (len > 0 && len <= 96 * 1024)
        c->body = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len), len, 0, NULL);
    dps_webhook_finish(c, NULL);
}

struct dps_webhook_call *dps_webhook_post(struct dps_webhook *w, const char *url, const char *body,
                                          int timeout_ms, dps_webhook_cb cb, void *arg)
{
    struct dps_webhook_call *c = xcalloc(1, sizeof *c);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    int port = uri ? evhttp_uri_get_port(uri) : -1;
    bool tls = scheme && strcasecmp(scheme, "https") == 0;
    struct bufferevent *bev = NULL;
    struct evhttp_request *req;
    char hostport[300], err[200];
    char *target = NULL;

    c->w = w;
    c->cb = cb;
    c->arg = arg;
    LIST_INSERT_HEAD(&w->live, c, link);
    c->deadline = event_new(w->base, -1, 0, dps_webhook_on_deadline, c);
    c->reap = event_new(w->base, -1, 0, dps_webhook_on_reap, c);
    if (!c->deadline || !c->reap) {
        log_error("event=out_of_memory what=webhook_events");
        abort();
    }
    event_add(c->deadline, &tv);
    if (!uri || !scheme || !host || !*host || (!tls && strcasecmp(scheme, "http") != 0)) {
        dps_webhook_finish(c, "the webhook URL is not an http:// or https:// URL");
        goto out;
    }
    if (port < 0)
        port = tls ? 443 : 80;
    if (tls) {
        if (!w->tls && !(w->tls = tls_client_ctx_new(NULL, err, sizeof err))) {
            log_error("event=webhook_tls_setup_failed error=\"%s\"", err);
            dps_webhook_finish(c, "TLS could not be set up for the webhook");
            goto out;
        }
        bev = tls_client_bev(w->base, w->tls, host);
    } else {
        bev = bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    c->conn = bev ? evhttp_connection_base_bufferevent_new(w->base, NULL, bev, host, (ev_uint16_t)port) : NULL;
    if (!c->conn) {
        if (bev) bufferevent_free(bev);
        dps_webhook_finish(c, "could not open a connection to the webhook");
        goto out;
    }
    evhttp_connection_set_timeout(c->conn, (timeout_ms + 999) / 1000);
    evhttp_connection_set_retries(c->conn, 0);
    if (!(req = evhttp_request_new(dps_webhook_on_reply, c))) {
        dps_webhook_finish(c, "out of memory");
        goto out;
    }
    if ((tls && port == 443) || (!tls && port == 80))
        snprintf(hostport, sizeof hostport, "%s", host);
    else
        snprintf(hostport, sizeof hostport, "%s:%d", host, port);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", hostport);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json; charset=utf-8");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Accept", "application/json");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    target = xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    if (evhttp_make_request(c->conn, req, EVHTTP_REQ_POST, target) != 0)
        dps_webhook_finish(c, "could not send the webhook request");
out:
    free(target);
    if (uri) evhttp_uri_free(uri);
    return c;
}
