/*
 * dps_webhook.c - custom allocation webhook calls: the URL parsed into a
 * common/http_call request (one connection per call; webhooks are rare).
 */
#include "dps_webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "tls.h"
#include "util.h"

#define DPS_WEBHOOK_MAX_ANSWER (96 * 1024)

struct dps_webhook {
    struct event_base *base;
    SSL_CTX *tls;                          /* created on the first https call */
};

struct dps_webhook *dps_webhook_new(struct event_base *base)
{
    struct dps_webhook *w = xcalloc(1, sizeof *w);
    w->base = base;
    return w;
}

void dps_webhook_free(struct dps_webhook *w)
{
    if (!w) return;
    if (w->tls) SSL_CTX_free(w->tls);
    free(w);
}

void dps_webhook_cancel(struct dps_webhook_call *c)
{
    http_call_cancel((struct http_call *)c);
}

/* A call that can't start (bad URL, no TLS): a request to port 0 fails at
 * once through the same path, so the callback still comes from the loop. */
struct dps_webhook_call *dps_webhook_post(struct dps_webhook *w, const char *url, const char *body,
                                          int timeout_ms, dps_webhook_cb cb, void *arg)
{
    static const char *const headers[] = {"Content-Type", "application/json; charset=utf-8",
                                          "Accept", "application/json", "Connection", "close", NULL};
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    int port = uri ? evhttp_uri_get_port(uri) : -1;
    bool tls = scheme && strcasecmp(scheme, "https") == 0;
    bool usable = uri && scheme && host && *host && (tls || strcasecmp(scheme, "http") == 0);
    struct http_call *c;
    char hostport[300], err[200];
    char *target;

    if (usable && tls && !w->tls && !(w->tls = tls_client_ctx_new(NULL, err, sizeof err))) {
        log_error("event=webhook_tls_setup_failed error=\"%s\"", err);
        usable = false;
    }
    if (!usable)
        log_warn("event=webhook_url_unusable url=\"%.200s\"", url);
    if (port < 0)
        port = tls ? 443 : 80;
    if ((tls && port == 443) || (!tls && port == 80))
        snprintf(hostport, sizeof hostport, "%s", usable ? host : "invalid");
    else
        snprintf(hostport, sizeof hostport, "%s:%d", usable ? host : "invalid", port);
    target = xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    c = http_call_start(w->base, tls && usable ? w->tls : NULL, usable ? host : "127.0.0.1", usable ? port : 0,
                        hostport, EVHTTP_REQ_POST, target, headers, body, timeout_ms, DPS_WEBHOOK_MAX_ANSWER,
                        cb, arg);
    free(target);
    if (uri) evhttp_uri_free(uri);
    return (struct dps_webhook_call *)c;
}
