/*
 * dps_webhook.c - custom allocation webhook calls: the URL checked against
 * the target rules (dps_webhook.h), its host resolved and every address
 * checked, then one common/http_call request to the checked address (one
 * connection per call; webhooks are rare).
 */
#include "dps_webhook.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dns.h"
#include "log.h"
#include "tls.h"
#include "util.h"

#define DPS_WEBHOOK_MAX_ANSWER (96 * 1024)

struct dps_webhook {
    struct event_base *base;
    SSL_CTX *tls;                          /* created on the first https call */
};

/* The process's allowance and resolver: set once at start, before any call. */
static bool dps_webhook_private_ok;
static struct dns *dps_webhook_dns;

void dps_webhook_set_allow_private(bool allow)
{
    dps_webhook_private_ok = allow;
}

void dps_webhook_set_dns(struct dns *d)
{
    dps_webhook_dns = d;
}

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

static bool dps_webhook_v4_private(uint32_t a)
{
    return (a >> 24) == 0 ||                      /* 0.0.0.0/8 "this network" */
           (a >> 24) == 10 ||                     /* 10/8 */
           (a >> 22) == ((100u << 2) | 1) ||      /* 100.64/10 shared address space */
           (a >> 24) == 127 ||                    /* loopback */
           (a >> 16) == ((169u << 8) | 254) ||    /* 169.254/16 link-local */
           (a >> 20) == ((172u << 4) | 1) ||      /* 172.16/12 */
           (a >> 8) == ((192u << 16) | 0) ||      /* 192.0.0/24 protocol assignments */
           (a >> 16) == ((192u << 8) | 168) ||    /* 192.168/16 */
           (a >> 17) == ((198u << 7) | 9) ||      /* 198.18/15 benchmarking */
           (a >> 28) >= 14;                       /* 224/4 multicast, 240/4 reserved, broadcast */
}

bool dps_webhook_addr_is_private(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return dps_webhook_v4_private(ntohl(in->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        static const unsigned char zero[15] = {0};
        if (memcmp(b, mapped, 12) == 0)          /* ::ffff:a.b.c.d */
            return dps_webhook_v4_private(((uint32_t)b[12] << 24) | ((uint32_t)b[13] << 16) |
                                          ((uint32_t)b[14] << 8) | b[15]);
        if (memcmp(b, zero, 15) == 0)            /* :: and ::1 */
            return b[15] <= 1;
        return (b[0] & 0xfe) == 0xfc ||          /* fc00::/7 unique local */
               (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) ||   /* fe80::/10 link-local */
               (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) ||   /* fec0::/10 site-local */
               b[0] == 0xff;                     /* multicast */
    }
    return true;   /* anything else is not a web address */
}

/* The URL's parts, or false with why filled. host is without IPv6 brackets. */
struct dps_webhook_url {
    bool https;
    char host[256];
    int port;
    char *target;                   /* path and query, malloc'ed */
};

static bool dps_webhook_parse(const char *url, struct dps_webhook_url *u, char *why, size_t whylen)
{
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    size_t hl;

    memset(u, 0, sizeof *u);
    if (!uri || !scheme || !host || !*host || (strcasecmp(scheme, "https") != 0 && strcasecmp(scheme, "http") != 0)) {
        snprintf(why, whylen, "the webhook URL must be an absolute https:// URL");
        if (uri) evhttp_uri_free(uri);
        return false;
    }
    u->https = strcasecmp(scheme, "https") == 0;
    hl = strlen(host);
    if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
        host++;
        hl -= 2;
    }
    if (hl >= sizeof u->host || evhttp_uri_get_userinfo(uri)) {
        snprintf(why, whylen, "the webhook URL's host is not usable");
        evhttp_uri_free(uri);
        return false;
    }
    memcpy(u->host, host, hl);
    u->host[hl] = '\0';
    u->port = evhttp_uri_get_port(uri);
    if (u->port < 0)
        u->port = u->https ? 443 : 80;
    u->target = xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    evhttp_uri_free(uri);
    return true;
}

/* Whether host names a refused target without asking DNS: a literal
 * address (any form getaddrinfo takes as numeric) or localhost. */
static bool dps_webhook_literal_private(const char *host)
{
    struct addrinfo hints, *res = NULL, *ai;
    size_t n = strlen(host);
    bool priv = false;
    if (strcasecmp(host, "localhost") == 0 || (n > 10 && strcasecmp(host + n - 10, ".localhost") == 0))
        return true;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0)
        return false;   /* a name: checked when it is called */
    for (ai = res; ai; ai = ai->ai_next)
        priv = priv || dps_webhook_addr_is_private(ai->ai_addr);
    freeaddrinfo(res);
    return priv;
}

bool dps_webhook_url_check(const char *url, bool allow_private, char *why, size_t whylen)
{
    struct dps_webhook_url u;
    bool priv;
    if (!dps_webhook_parse(url, &u, why, whylen))
        return false;
    free(u.target);
    priv = dps_webhook_literal_private(u.host);
    if (priv && !allow_private) {
        snprintf(why, whylen, "the webhook URL targets a loopback, private or link-local address, which this "
                              "stamp does not call");
        return false;
    }
    if (!u.https && !(allow_private && priv)) {
        snprintf(why, whylen, "the webhook URL must use https");
        return false;
    }
    return true;
}

/* The resolved address's turn: the target rules on the address the call
 * will connect to; false with why filled. */
static bool dps_webhook_check_addr(const struct dps_webhook_url *u, const char *addr, char *why, size_t whylen)
{
    struct sockaddr_storage ss;
    bool priv;
    memset(&ss, 0, sizeof ss);
    if (evutil_inet_pton(AF_INET, addr, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ss.ss_family = AF_INET;
    } else if (evutil_inet_pton(AF_INET6, addr, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ss.ss_family = AF_INET6;
    } else {
        snprintf(why, whylen, "the webhook host's address is not usable");
        return false;
    }
    priv = dps_webhook_addr_is_private((const struct sockaddr *)&ss);
    if (priv && !dps_webhook_private_ok) {
        snprintf(why, whylen, "the webhook host resolves to a loopback, private or link-local address, which this "
                              "stamp does not call");
        return false;
    }
    if (!u->https && !(dps_webhook_private_ok && priv)) {
        snprintf(why, whylen, "the webhook URL must use https");
        return false;
    }
    return true;
}

/* One POST: its host resolving (dreq), then its HTTP call (call). */
struct dps_webhook_call {
    struct dps_webhook *w;
    struct dps_webhook_url u;
    struct dns_req *dreq;
    struct http_call *call;
    char *body;
    int timeout_ms;
    dps_webhook_cb cb;
    void *arg;
};

static void dps_webhook_call_free(struct dps_webhook_call *c)
{
    free(c->u.target);
    free(c->body);
    free(c);
}

/* The HTTP call's answer: the handle goes, then the caller hears. */
static void dps_webhook_on_result(const struct http_result *res, void *arg)
{
    struct dps_webhook_call *c = arg;
    dps_webhook_cb cb = c->cb;
    void *cb_arg = c->arg;
    dps_webhook_call_free(c);
    cb(res, cb_arg);
}

static void dps_webhook_fail(struct dps_webhook_call *c, const char *why)
{
    log_warn("event=webhook_refused host=\"%.200s\" reason=\"%s\"", c->u.host, why);
    c->call = http_call_failed(c->w->base, why, dps_webhook_on_result, c);
}

static void dps_webhook_on_resolved(int err, const char *addr, void *arg)
{
    static const char *const headers[] = {"Content-Type", "application/json; charset=utf-8",
                                          "Accept", "application/json", "Connection", "close", NULL};
    struct dps_webhook_call *c = arg;
    struct dps_webhook *w = c->w;
    char hostport[300], why[200], errbuf[200];
    const char *bracket;
    c->dreq = NULL;
    if (err) {
        snprintf(why, sizeof why, "the webhook host does not resolve (%s)", dns_strerror(err));
        dps_webhook_fail(c, why);
        return;
    }
    if (!dps_webhook_check_addr(&c->u, addr, why, sizeof why)) {
        dps_webhook_fail(c, why);
        return;
    }
    if (c->u.https && !w->tls && !(w->tls = tls_client_ctx_new(NULL, errbuf, sizeof errbuf))) {
        log_error("event=webhook_tls_setup_failed error=\"%s\"", errbuf);
        c->call = http_call_failed(w->base, "TLS could not be set up", dps_webhook_on_result, c);
        return;
    }
    bracket = strchr(c->u.host, ':') ? "[" : "";
    if ((c->u.https && c->u.port == 443) || (!c->u.https && c->u.port == 80))
        snprintf(hostport, sizeof hostport, "%s%s%s", bracket, c->u.host, *bracket ? "]" : "");
    else
        snprintf(hostport, sizeof hostport, "%s%s%s:%d", bracket, c->u.host, *bracket ? "]" : "", c->u.port);
    /* Connect to the address checked above, so that DNS can't swap in another. */
    c->call = http_call_start_at(w->base, c->u.https ? w->tls : NULL, c->u.host, addr, c->u.port, hostport,
                                 EVHTTP_REQ_POST, c->u.target, headers, c->body, c->timeout_ms,
                                 DPS_WEBHOOK_MAX_ANSWER, dps_webhook_on_result, c);
}

struct dps_webhook_call *dps_webhook_post(struct dps_webhook *w, const char *url, const char *body,
                                          int timeout_ms, dps_webhook_cb cb, void *arg)
{
    struct dps_webhook_call *c = xcalloc(1, sizeof *c);
    char why[200];
    c->w = w;
    c->cb = cb;
    c->arg = arg;
    c->timeout_ms = timeout_ms;
    c->body = xstrdup(body ? body : "");
    if (!dps_webhook_parse(url, &c->u, why, sizeof why)) {
        dps_webhook_fail(c, why);
    } else if (!dps_webhook_dns) {
        dps_webhook_fail(c, "no resolver");
    } else {
        /* Resolved on the loop (dns.c): the call starts when the answer comes. */
        c->dreq = dns_resolve(dps_webhook_dns, c->u.host, dps_webhook_on_resolved, c);
    }
    return c;
}

void dps_webhook_cancel(struct dps_webhook_call *c)
{
    if (!c)
        return;
    dns_cancel(c->dreq);
    http_call_cancel(c->call);
    dps_webhook_call_free(c);
}
