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

#include "log.h"
#include "tls.h"
#include "util.h"

#define DPS_WEBHOOK_MAX_ANSWER (96 * 1024)

struct dps_webhook {
    struct event_base *base;
    SSL_CTX *tls;                          /* created on the first https call */
};

/* The process's allowance: set once from the config before any call. */
static bool dps_webhook_private_ok;

void dps_webhook_set_allow_private(bool allow)
{
    dps_webhook_private_ok = allow;
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

void dps_webhook_cancel(struct dps_webhook_call *c)
{
    http_call_cancel((struct http_call *)c);
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

/* Resolve u->host (blocking, as libevent's own resolution without a DNS
 * base is) and check every address; the numeric address to connect to in
 * addr, or false with why filled. */
static bool dps_webhook_resolve(const struct dps_webhook_url *u, bool allow_private, char *addr, size_t addrlen,
                                char *why, size_t whylen)
{
    struct addrinfo hints, *res = NULL, *ai;
    bool priv = false;
    int rc;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    if ((rc = getaddrinfo(u->host, NULL, &hints, &res)) != 0 || !res) {
        snprintf(why, whylen, "the webhook host does not resolve (%s)", gai_strerror(rc));
        return false;
    }
    for (ai = res; ai; ai = ai->ai_next)
        priv = priv || dps_webhook_addr_is_private(ai->ai_addr);
    if (getnameinfo(res->ai_addr, res->ai_addrlen, addr, (socklen_t)addrlen, NULL, 0, NI_NUMERICHOST) != 0) {
        freeaddrinfo(res);
        snprintf(why, whylen, "the webhook host's address is not usable");
        return false;
    }
    freeaddrinfo(res);
    if (priv && !allow_private) {
        snprintf(why, whylen, "the webhook host resolves to a loopback, private or link-local address, which this "
                              "stamp does not call");
        return false;
    }
    if (!u->https && !(allow_private && priv)) {
        snprintf(why, whylen, "the webhook URL must use https");
        return false;
    }
    return true;
}

struct dps_webhook_call *dps_webhook_post(struct dps_webhook *w, const char *url, const char *body,
                                          int timeout_ms, dps_webhook_cb cb, void *arg)
{
    static const char *const headers[] = {"Content-Type", "application/json; charset=utf-8",
                                          "Accept", "application/json", "Connection", "close", NULL};
    struct dps_webhook_url u;
    struct http_call *c;
    char hostport[300], addr[64], why[200], err[200];
    const char *bracket;

    if (!dps_webhook_parse(url, &u, why, sizeof why) ||
        !dps_webhook_resolve(&u, dps_webhook_private_ok, addr, sizeof addr, why, sizeof why)) {
        log_warn("event=webhook_refused host=\"%.200s\" reason=\"%s\"", u.host, why);
        free(u.target);
        return (struct dps_webhook_call *)http_call_failed(w->base, why, cb, arg);
    }
    if (u.https && !w->tls && !(w->tls = tls_client_ctx_new(NULL, err, sizeof err))) {
        log_error("event=webhook_tls_setup_failed error=\"%s\"", err);
        free(u.target);
        return (struct dps_webhook_call *)http_call_failed(w->base, "TLS could not be set up", cb, arg);
    }
    bracket = strchr(u.host, ':') ? "[" : "";
    if ((u.https && u.port == 443) || (!u.https && u.port == 80))
        snprintf(hostport, sizeof hostport, "%s%s%s", bracket, u.host, *bracket ? "]" : "");
    else
        snprintf(hostport, sizeof hostport, "%s%s%s:%d", bracket, u.host, *bracket ? "]" : "", u.port);
    c = http_call_start_at(w->base, u.https ? w->tls : NULL, u.host, addr, u.port, hostport, EVHTTP_REQ_POST,
                           u.target, headers, body, timeout_ms, DPS_WEBHOOK_MAX_ANSWER, cb, arg);
    free(u.target);
    return (struct dps_webhook_call *)c;
}
