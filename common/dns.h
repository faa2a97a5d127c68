/*
 * dns.h - asynchronous host name resolution on the event loop (libevent's
 * evdns), for everything a daemon connects to by name: Redis and outbound
 * HTTP. getaddrinfo() blocks the loop for as long as the resolver takes;
 * nothing on the loop may call it.
 *
 * The resolver reads a resolv.conf (the system's, or one named in the
 * daemon's config: "dns.resolvConf") for its name servers and options
 * (timeout, attempts, ...), and /etc/hosts. It keeps no cache: each
 * resolution asks again, so a name that moves is followed at the next
 * connect.
 *
 * Ownership: struct dns owns the evdns base (dns_evdns() lends it, e.g. to
 * evhttp_connection_base_new). A struct dns_req belongs to this module; the
 * caller's handle is valid until its callback has run or dns_cancel().
 * Free every user of the dns (cancel their requests) before dns_free().
 */
#ifndef STAMPCP_DNS_H
#define STAMPCP_DNS_H

#include <event2/event.h>

#include "jsonv.h"
#include "util.h"

struct dns;
struct dns_req;
struct evdns_base;

/* The longest numeric address text dns_cb receives, with its NUL (INET6_ADDRSTRLEN). */
#define DNS_ADDR_MAX 46

/*
 * A resolver on base. resolv_conf: the file to read, or NULL for the
 * system's (/etc/resolv.conf; a missing system file means 127.0.0.1, as
 * libc does). Returns NULL, after logging why, when a named file can't be
 * read or holds no name server, or libevent fails.
 */
struct dns *dns_new(struct event_base *base, const char *resolv_conf) MUSTCHECK;
/* Free the resolver (NULL-safe). Requests still pending are dropped without callbacks. */
void dns_free(struct dns *d);
/* The evdns base, for libevent APIs that resolve by themselves (evhttp). */
struct evdns_base *dns_evdns(struct dns *d);

/*
 * err: 0 on success, else an EVUTIL_EAI_* code (dns_strerror() says it in
 * words). addr: the numeric address text (IPv4 preferred over IPv6 when
 * the name has both), valid only during the callback; NULL on error.
 */
typedef void (*dns_cb)(int err, const char *addr, void *arg);

/*
 * Resolve host (a name, or a numeric IPv4/IPv6 address, which is answered
 * without any query). cb runs exactly once, always from the event loop and
 * never inside this call, unless dns_cancel() comes first. Never NULL.
 */
struct dns_req *dns_resolve(struct dns *d, const char *host, dns_cb cb, void *arg);
/* Forget a pending request: its callback will not run. NULL-safe. */
void dns_cancel(struct dns_req *r);

/*
 * Parse the optional object root["dns"] of a daemon's config:
 *   {"resolvConf": "/etc/stampcp/resolv.conf"}
 * Unknown keys are errors. *resolv_conf: a fresh copy of the path, or NULL
 * (the key or the object absent: the system's file).
 */
bool dns_config_parse(json_t *root, char **resolv_conf, struct jv_err *e) MUSTCHECK;

/* The text for a dns_cb error code. */
const char *dns_strerror(int err);

#endif
