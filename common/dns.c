/*
 * dns.c - owns the daemon's evdns base and the requests made through it
 * (dns.h): numeric hosts answered without a query, names resolved by evdns
 * (A and AAAA together, the IPv4 answer preferred), every answer delivered
 * from an event of its own so that no callback ever runs inside
 * dns_resolve() (evdns answers /etc/hosts names and errors synchronously).
 *
 * A cancelled request that evdns still works on stays allocated until evdns
 * calls back (it always does, with EVUTIL_EAI_CANCEL at the latest), and the
 * evdns base outlives every such request: dns_free() only frees it once
 * evdns owes nothing, since its deferred callbacks read the base.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "log.h"

struct dns_req {
    LIST_ENTRY(dns_req) link;                /* in dns.live until answered or cancelled */
    struct dns *d;
    struct evdns_getaddrinfo_request *gai;   /* while evdns owes a callback */
    bool in_evdns;
    bool cancelled;                          /* the caller forgot it: free when evdns answers */
    struct event *done;                      /* delivers the answer from the loop */
    dns_cb cb;
    void *arg;
    int err;
    char addr[DNS_ADDR_MAX];
};

struct dns {
    struct event_base *base;
    struct evdns_base *evdns;
    LIST_HEAD(, dns_req) live;
    unsigned owed;        /* requests evdns still owes a callback, cancelled ones included */
    bool freeing;         /* dns_free() came while owed > 0 */
};

static void dns_destroy(struct dns *d)
{
    evdns_base_free(d->evdns, 0);
    free(d);
}

/* Load the name servers and options. A missing system file is not fatal
 * (libevent then asks 127.0.0.1, as libc does); a named one must work. */
static bool dns_configure(struct dns *d, const char *resolv_conf)
{
    const char *path = resolv_conf ? resolv_conf : "/etc/resolv.conf";
    int rc = evdns_base_resolv_conf_parse(d->evdns, DNS_OPTIONS_ALL, path);
    static const char *const why[] = {"", "cannot open the file", "cannot stat the file", "the file is too large",
                                      "out of memory", "short read", "no nameserver line"};
    if (rc == 0)
        return true;
    if (!resolv_conf && (rc == 1 || rc == 6)) {
        log_warn("event=dns_system_config path=%s problem=\"%s\" using=127.0.0.1", path,
                 rc >= 0 && rc <= 6 ? why[rc] : "unknown");
        return true;
    }
    log_error("event=dns_config_failed path=\"%.200s\" error=\"%s\"", path,
              rc >= 0 && rc <= 6 ? why[rc] : "unknown");
    return false;
}

struct dns *dns_new(struct event_base *base, const char *resolv_conf)
{
    struct dns *d = xcalloc(1, sizeof *d);
    d->base = base;
    LIST_INIT(&d->live);
    /* DISABLE_WHEN_INACTIVE: an idle resolver keeps no events in the loop. */
    d->evdns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!d->evdns) {
        log_error("event=dns_init_failed");
        free(d);
        return NULL;
    }
    if (!dns_configure(d, resolv_conf)) {
        dns_destroy(d);
        return NULL;
    }
    return d;
}

struct evdns_base *dns_evdns(struct dns *d)
{
    return d->evdns;
}

static void dns_req_free(struct dns_req *r)
{
    if (r->done)
        event_free(r->done);
    free(r);
}

/* The answer's moment: the request is the module's no longer, then the caller hears. */
static void dns_on_done(evutil_socket_t fd, short what, void *arg)
{
    struct dns_req *r = arg;
    dns_cb cb = r->cb;
    void *cb_arg = r->arg;
    int err = r->err;
    char addr[DNS_ADDR_MAX];
    (void)fd; (void)what;
    memcpy(addr, r->addr, sizeof addr);
    LIST_REMOVE(r, link);
    dns_req_free(r);
    cb(err, err ? NULL : addr, cb_arg);
}

/* The first IPv4 address of the list, else the first IPv6 one, as text. */
static int dns_pick(const struct evutil_addrinfo *ai, char *out, size_t outlen)
{
    const struct evutil_addrinfo *best = NULL;
    for (const struct evutil_addrinfo *p = ai; p; p = p->ai_next) {
        if (p->ai_family == AF_INET) {
            best = p;
            break;
        }
        if (p->ai_family == AF_INET6 && !best)
            best = p;
    }
    if (!best)
        return EVUTIL_EAI_NODATA;
    if (best->ai_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)best->ai_addr;
        return evutil_inet_ntop(AF_INET, &sin->sin_addr, out, outlen) ? 0 : EVUTIL_EAI_FAIL;
    }
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)best->ai_addr;
    return evutil_inet_ntop(AF_INET6, &sin6->sin6_addr, out, outlen) ? 0 : EVUTIL_EAI_FAIL;
}

/* evdns's answer: possibly synchronous (inside dns_resolve), possibly for a
 * cancelled request, possibly after dns_free(). */
static void dns_on_gai(int result, struct evutil_addrinfo *ai, void *arg)
{
    struct dns_req *r = arg;
    struct dns *d = r->d;
    r->in_evdns = false;
    r->gai = NULL;
    d->owed--;
    if (r->cancelled) {
        dns_req_free(r);
    } else {
        r->err = result ? result : dns_pick(ai, r->addr, sizeof r->addr);
        event_active(r->done, EV_TIMEOUT, 1);
    }
    if (ai)
        evutil_freeaddrinfo(ai);
    if (d->freeing && d->owed == 0)
        dns_destroy(d);
}

/* A numeric address, normalised (e.g. "::0001" -> "::1"); false for a name. */
static bool dns_numeric(const char *host, char *out, size_t outlen)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (evutil_inet_pton(AF_INET, host, buf) == 1)
        return evutil_inet_ntop(AF_INET, buf, out, outlen) != NULL;
    if (evutil_inet_pton(AF_INET6, host, buf) == 1)
        return evutil_inet_ntop(AF_INET6, buf, out, outlen) != NULL;
    return false;
}

struct dns_req *dns_resolve(struct dns *d, const char *host, dns_cb cb, void *arg)
{
    struct dns_req *r = xcalloc(1, sizeof *r);
    struct evutil_addrinfo hints;
    r->d = d;
    r->cb = cb;
    r->arg = arg;
    r->done = event_new(d->base, -1, 0, dns_on_done, r);
    if (!r->done) {
        log_error("event=event_new_failed");
        abort();
    }
    LIST_INSERT_HEAD(&d->live, r, link);
    if (dns_numeric(host, r->addr, sizeof r->addr)) {
        event_active(r->done, EV_TIMEOUT, 1);
        return r;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    r->in_evdns = true;
    d->owed++;
    /* NULL: evdns has answered already (dns_on_gai armed r->done). */
    r->gai = evdns_getaddrinfo(d->evdns, host, NULL, &hints, dns_on_gai, r);
    return r;
}

void dns_cancel(struct dns_req *r)
{
    if (!r)
        return;
    LIST_REMOVE(r, link);
    event_free(r->done);
    r->done = NULL;
    if (!r->in_evdns) {
        free(r);
        return;
    }
    r->cancelled = true;
    /* Last: evdns calls dns_on_gai (later, with EVUTIL_EAI_CANCEL), which frees r. */
    evdns_getaddrinfo_cancel(r->gai);
}

void dns_free(struct dns *d)
{
    if (!d)
        return;
    while (!LIST_EMPTY(&d->live))
        dns_cancel(LIST_FIRST(&d->live));
    if (d->owed == 0)
        dns_destroy(d);
    else
        d->freeing = true;   /* the last dns_on_gai frees it */
}

const char *dns_strerror(int err)
{
    return err == 0 ? "ok" : evutil_gai_strerror(err);
}

bool dns_config_parse(json_t *root, char **resolv_conf, struct jv_err *e)
{
    static const char *const keys[] = {"resolvConf", NULL};
    json_t *obj = NULL;
    const char *path = NULL;
    *resolv_conf = NULL;
    if (!jv_object(root, "", "dns", false, &obj, e))
        return false;
    if (!obj)
        return true;
    if (!jv_only_keys(obj, "dns", keys, e) || !jv_string(obj, "dns", "resolvConf", false, 1, 4096, &path, e))
        return false;
    if (path)
        *resolv_conf = xstrdup(path);
    return true;
}
