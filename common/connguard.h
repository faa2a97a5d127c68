/*
 * connguard.h - bounded resources for an evhttp listener (libevent 2.1):
 * a cap on open connections, an absolute deadline for reading each
 * request's headers and body whatever the trickle rate, a bound on how long
 * an idle keep-alive connection is held, and a check of every request's
 * headers before any byte of its body reaches evhttp.
 *
 * How: every accepted connection's bufferevent is a filter (installed
 * through evhttp_set_bevcb) over the transport (a plain socket, or the TLS
 * bufferevent another bevcb makes). The filter frames the requests itself
 * (head up to the empty line, then Content-Length or chunked), holds each
 * head back until it is complete, and only then hands it to evhttp. A head
 * that must be refused (over the connection cap, a body larger than the
 * limit, a failed check, a head deadline) is replaced by a short synthetic
 * request carrying the refusal in an X-Stampcp-Guard header and
 * "Connection: close"; the daemon's request callback answers it with its own
 * error body (connguard_refusal) and evhttp closes the connection after the
 * answer. The client's remaining bytes never reach evhttp; after the answer
 * the socket is shut down for writing and drained for up to 2 s (a lingering
 * close, so that a reset does not destroy the answer before the client reads
 * it). A body deadline or an idle keep-alive connection is cut (closed
 * without an answer). On the way out, evhttp's write callback runs only once
 * the transport has written everything (evhttp frees a closing connection
 * from it); a pipelined head is held until the previous answer is out.
 *
 * A client-sent X-Stampcp-Guard header is itself refused (400), so any such
 * header evhttp sees came from here.
 *
 * Ownership: the guard is owned by the daemon; each connection's state is
 * owned by its filter bufferevent (freed with it by evhttp). Free the guard
 * only after evhttp_free() of every evhttp using it. Single-threaded.
 */
#ifndef STAMPCP_CONNGUARD_H
#define STAMPCP_CONNGUARD_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Why a request was refused before evhttp read it. */
enum connguard_reason {
    CONNGUARD_OK = 0,
    CONNGUARD_OVERLOADED,       /* 503: the listener is at its connection cap */
    CONNGUARD_TOO_LARGE,        /* 413: Content-Length over the body limit */
    CONNGUARD_HEAD_TOO_LARGE,   /* 431: the head is over the header limit */
    CONNGUARD_BAD_REQUEST,      /* 400: framing the guard will not guess at */
    CONNGUARD_TIMEOUT,          /* 408: the head did not arrive before its deadline */
    CONNGUARD_UNAUTHORIZED,     /* 401: the route's check refused the credentials */
    CONNGUARD_NOT_IMPLEMENTED,  /* 501: an unknown method or transfer coding */
};

#define CONNGUARD_MAX_HEADERS 100

/* A complete request head, as the check callback sees it (valid during the call). */
struct connguard_head {
    const char *method;          /* "GET", "POST", ... */
    const char *target;          /* the request target as sent (path and query) */
    const char *names[CONNGUARD_MAX_HEADERS];
    const char *values[CONNGUARD_MAX_HEADERS];   /* without surrounding whitespace */
    int n;
    int64_t content_length;      /* -1: none */
    bool chunked;
    struct bufferevent *transport;   /* the connection's transport (TLS bufferevent or socket) */
};

/* The first header of that name (case-insensitive), or NULL. */
const char *connguard_head_get(const struct connguard_head *h, const char *name);

/* A refusal: reason, an error code for the daemon's body ("" for the
 * default of the reason) and a message (printable ASCII, may be ""). */
struct connguard_verdict {
    enum connguard_reason reason;
    char code[48];
    char message[200];
};

/* Route check, run once per request head before its body is read: return
 * true to let the request through, or fill v and return false. */
typedef bool (*connguard_check_fn)(void *arg, const struct connguard_head *h, struct connguard_verdict *v);

struct connguard_opts {
    const char *name;             /* for log lines: "http", "dps" */
    int max_connections;          /* admitted at once; as many more are answered 503, beyond that cut */
    int header_timeout_ms;        /* first byte of a request -> end of its head */
    int request_timeout_ms;       /* first byte of a request -> end of its body */
    int idle_timeout_ms;          /* keep-alive: answer sent -> first byte of the next request */
    size_t max_header_bytes;      /* the whole head */
    int64_t max_body_bytes;       /* a larger Content-Length is refused (413) before the body */
    connguard_check_fn check;     /* may be NULL */
    void *check_arg;
};

struct connguard_stats {
    int open;                     /* admitted connections open now */
    int refusing;                 /* over-cap connections being answered 503 now */
    int lingering;                /* refused connections drained before their close */
    uint64_t refused_cap, cut_cap, timeouts_head, timeouts_body, idle_closed, refused_check,
        refused_size;
};

struct connguard;

struct connguard *connguard_new(struct event_base *base, const struct connguard_opts *o) MUSTCHECK;
/* Free the guard; evhttp_free() every evhttp using it first. Connections
 * evhttp leaves to the event base (freed by event_base_free()) keep the guard
 * alive: the last of them frees it. */
void connguard_free(struct connguard *g);

/*
 * The filter over one accepted connection's transport. transport is the
 * bufferevent another layer made (e.g. TLS, with BEV_OPT_CLOSE_ON_FREE), or
 * NULL for a plain socket. Call it from the evhttp bevcb (the one function
 * that chains every layer); it never returns NULL (aborts on OOM).
 */
struct bufferevent *connguard_wrap(struct connguard *g, struct event_base *base, struct bufferevent *transport);
/* For evhttp_set_bevcb() when the guard is the only layer (plain HTTP): arg is the guard. */
struct bufferevent *connguard_bevcb(struct event_base *base, void *arg);

/* The transport under a connection's bufferevent (the filter): the TLS
 * bufferevent for bufferevent_openssl_get_ssl(), or bev itself if it is not a filter. */
struct bufferevent *connguard_transport(struct bufferevent *bev);

/* Whether req is a refusal made by a guard: fills v (status in *status). */
bool connguard_refusal(struct evhttp_request *req, struct connguard_verdict *v, int *status);
/* The HTTP status of a reason. */
int connguard_status(enum connguard_reason r);
/* A default error code for a reason ("overloaded", "body_too_large", ...). */
const char *connguard_default_code(enum connguard_reason r);

void connguard_stats(const struct connguard *g, struct connguard_stats *out);

#endif
