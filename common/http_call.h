/*
 * http_call.h - one HTTP(S) request with a JSON answer, on the event loop:
 * a fresh connection per call (libevent can't reconnect an SSL bufferevent),
 * TLS verified when a client context is given, a deadline, and a callback
 * that runs exactly once from the loop (never inside the starting call),
 * unless the call is cancelled first.
 */
#ifndef STAMPCP_HTTP_CALL_H
#define STAMPCP_HTTP_CALL_H

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <stddef.h>

struct http_result {
    int status;                  /* HTTP status; 0 when no answer came (connect, TLS, deadline) */
    json_t *body;                /* parsed JSON body or NULL; borrowed, valid during the callback */
    const char *continuation;    /* x-ms-continuation header, or NULL */
    int retry_after_s;           /* Retry-After in whole seconds, or -1 */
    const char *error;           /* why status is 0 */
};

typedef void (*http_cb)(const struct http_result *res, void *arg);

struct http_call;
struct evdns_base;

/* Resolve host names with this evdns base (dns_evdns(), borrowed: it
 * outlives every call), never with a blocking getaddrinfo on the loop. Set
 * once at start by each daemon. */
void http_call_set_dns(struct evdns_base *dns);

/*
 * Start a request to host:port. tls NULL: plain HTTP. host_header is sent
 * as Host. headers: NULL-terminated name, value pairs. body may be NULL.
 * Reading stops at max_body bytes of answer body (64 KiB of headers): a
 * longer answer ends the call with status 0 and error "the answer is larger
 * than N bytes", whatever its framing. The handle is valid until the
 * callback runs or http_call_cancel().
 */
struct http_call *http_call_start(struct event_base *base, SSL_CTX *tls, const char *host, int port,
                                  const char *host_header, enum evhttp_cmd_type method, const char *target,
                                  const char *const *headers, const char *body, int timeout_ms,
                                  size_t max_body, http_cb cb, void *arg);
/* The same, connecting to host (e.g. an address already resolved and
 * checked) while TLS verifies the peer as tls_name (and sends it as SNI). */
struct http_call *http_call_start_at(struct event_base *base, SSL_CTX *tls, const char *tls_name,
                                     const char *host, int port, const char *host_header,
                                     enum evhttp_cmd_type method, const char *target, const char *const *headers,
                                     const char *body, int timeout_ms, size_t max_body, http_cb cb, void *arg);
/* A call that fails without sending anything: the callback runs from the
 * loop with status 0 and error (copied, at most 159 bytes). */
struct http_call *http_call_failed(struct event_base *base, const char *error, http_cb cb, void *arg);
/* Free a call without running its callback. */
void http_call_cancel(struct http_call *c);
/* Free every call still in flight without running callbacks (shutdown). */
void http_call_abort_all(void);

/* HTTPS to "host:port" (verified with ctx), the answer capped at 16 MiB. */
void https_call(struct event_base *base, SSL_CTX *ctx, const char *hostport, enum evhttp_cmd_type method,
                const char *path, const char *const *headers, const char *body, int timeout_ms,
                http_cb cb, void *arg);

#endif
