/*
 * sd_ev.c - libstampdevice: the libevent driver for many devices (sd_ev.h).
 *
 * Owns: the per-device bookkeeping (where each device is: idle, sleeping,
 * waiting for a connection, or with a request on the wire), the timer heap
 * and its one libevent timer, the endpoints with their connection pools and
 * FIFOs, and the connections (bufferevent, plain or OpenSSL, plus one
 * sd_http parser each). The machines stay the caller's; this file only feeds
 * them events and carries out their actions.
 *
 * A request is matched to its device by (index, seq): every event the
 * driver delivers from outside (boot, reprovision, network) bumps the
 * device's seq, so an answer to a request the device has abandoned is
 * recognised and dropped instead of being fed to a machine that no longer
 * waits for it.
 */
#include "sd_ev.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/x509v3.h>

#include "sd_http.h"

#define SD_EV_DEFAULT_CONNS 64
#define SD_EV_DEFAULT_IDLE_MS 20000
#define SD_EV_TIMER_BATCH 50000  /* timers handled per callback before I/O gets a turn */
#define SD_EV_REQ_BUF 4096

enum dev_where { W_IDLE, W_SLEEP, W_QUEUED, W_INFLIGHT };

/* Per device: 8 bytes. */
struct sd_ev_dev {
    uint32_t heap_pos; /* 1-based index in the timer heap, 0: not sleeping */
    uint8_t seq;       /* bumped by every external event: stale answers are dropped */
    uint8_t where;     /* enum dev_where */
    uint8_t pad[2];
};

struct heap_ent {
    int64_t at;
    uint32_t dev;
};

/* A device waiting for a connection. */
struct qent {
    uint32_t dev;
    uint32_t timeout_ms;
    uint8_t seq;
    uint8_t kind;
    uint8_t fresh; /* a resend after a reused connection failed: needs a new connection */
};

struct fifo {
    struct qent *v;
    size_t cap, head, len;
};

enum conn_state { C_IDLE, C_BUSY };

struct endpoint;

struct conn {
    struct endpoint *ep;
    struct bufferevent *bev;
    struct event *timer;        /* request timeout while busy, idle timeout while idle */
    struct sd_http_parser *parser;
    struct conn *prev, *next;   /* in ep->idle or ep->busy */
    uint32_t dev;
    uint32_t timeout_ms;
    uint32_t served;            /* requests sent on it so far */
    uint8_t seq;
    uint8_t kind;
    uint8_t state;              /* enum conn_state */
    bool connected;
    bool got_bytes;             /* of the current answer */
    bool retry;                 /* the current request is already a resend */
};

struct endpoint {
    struct sd_ev *ev;
    struct endpoint *next;
    char host[SD_HOST_MAX];     /* "host:port" as the machine names it */
    char name[SD_HOST_MAX];     /* host part (TLS verification) */
    bool tls;
    bool resolved;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct conn *idle, *busy;
    uint32_t nconns;
    struct fifo q;
    bool pumping;
};

struct sd_ev {
    struct event_base *base;
    struct sd_machine *m;
    uint32_t n;
    struct sd_ev_dev *d;
    struct heap_ent *heap;
    size_t hlen, hcap;
    struct event *timer;
    bool timer_armed;
    int64_t timer_at;
    struct endpoint *eps;
    struct sd_ev_options opt;
    struct sd_ev_hooks h;
    struct sd_ev_stats st;
    char *body;                 /* a copy of the answer being delivered */
    size_t body_cap;
};

static void dev_step(struct sd_ev *ev, uint32_t dev, struct sd_event *e);
static void pump(struct endpoint *ep);

int64_t sd_ev_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

size_t sd_ev_bytes_per_device(void)
{
    return sizeof(struct sd_ev_dev);
}

static struct sd_event event_of(enum sd_event_type type)
{
    struct sd_event e;
    memset(&e, 0, sizeof e);
    e.type = type;
    e.now_ms = sd_ev_now_ms();
    e.wall_s = (int64_t)time(NULL);
    e.retry_after_s = -1;
    return e;
}

/* ------------------------------------------------------------------ timer heap */

static void heap_place(struct sd_ev *ev, size_t i, struct heap_ent e)
{
    ev->heap[i] = e;
    ev->d[e.dev].heap_pos = (uint32_t)i + 1;
}

static void heap_up(struct sd_ev *ev, size_t i)
{
    struct heap_ent e = ev->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (ev->heap[parent].at <= e.at)
            break;
        heap_place(ev, i, ev->heap[parent]);
        i = parent;
    }
    heap_place(ev, i, e);
}

static void heap_down(struct sd_ev *ev, size_t i)
{
    struct heap_ent e = ev->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, min = i;
        int64_t min_at = e.at;
        if (l < ev->hlen && ev->heap[l].at < min_at)
            min = l, min_at = ev->heap[l].at;
        if (r < ev->hlen && ev->heap[r].at < min_at)
            min = r;
        if (min == i)
            break;
        heap_place(ev, i, ev->heap[min]);
        i = min;
    }
    heap_place(ev, i, e);
}

static void heap_remove(struct sd_ev *ev, uint32_t dev)
{
    size_t i = ev->d[dev].heap_pos;
    if (i == 0)
        return;
    i--;
    ev->d[dev].heap_pos = 0;
    ev->hlen--;
    if (i == ev->hlen)
        return;
    heap_place(ev, i, ev->heap[ev->hlen]);
    heap_up(ev, i);
    heap_down(ev, (size_t)ev->d[ev->heap[i].dev].heap_pos - 1);
}

static bool heap_push(struct sd_ev *ev, uint32_t dev, int64_t at)
{
    if (ev->hlen == ev->hcap) {
        size_t cap = ev->hcap ? ev->hcap * 2 : 1024;
        struct heap_ent *nh = realloc(ev->heap, cap * sizeof *nh);
        if (!nh)
            return false;
        ev->heap = nh;
        ev->hcap = cap;
    }
    struct heap_ent e = {at, dev};
    ev->heap[ev->hlen++] = e;
    heap_up(ev, ev->hlen - 1);
    return true;
}

/* Point the one libevent timer at the earliest deadline. */
static void timer_arm(struct sd_ev *ev)
{
    if (ev->hlen == 0) {
        if (ev->timer_armed)
            evtimer_del(ev->timer);
        ev->timer_armed = false;
        return;
    }
    int64_t at = ev->heap[0].at;
    if (ev->timer_armed && at == ev->timer_at)
        return;
    int64_t delay = at - sd_ev_now_ms();
    if (delay < 0)
        delay = 0;
    struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)((delay % 1000) * 1000)};
    evtimer_add(ev->timer, &tv);
    ev->timer_armed = true;
    ev->timer_at = at;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sd_ev *ev = arg;
    int64_t now = sd_ev_now_ms();
    (void)fd;
    (void)what;
    ev->timer_armed = false;
    for (int i = 0; i < SD_EV_TIMER_BATCH && ev->hlen > 0 && ev->heap[0].at <= now; i++) {
        uint32_t dev = ev->heap[0].dev;
        heap_remove(ev, dev);
        ev->d[dev].where = W_IDLE;
        struct sd_event e = event_of(SD_EV_TIMER);
        dev_step(ev, dev, &e);
    }
    timer_arm(ev);
}

/* ------------------------------------------------------------------ FIFO */

static bool fifo_grow(struct fifo *f)
{
    size_t cap = f->cap ? f->cap * 2 : 256;
    struct qent *nv = malloc(cap * sizeof *nv);
    if (!nv)
        return false;
    for (size_t i = 0; i < f->len; i++)
        nv[i] = f->v[(f->head + i) % f->cap];
    free(f->v);
    f->v = nv;
    f->cap = cap;
    f->head = 0;
    return true;
}

static bool fifo_push(struct fifo *f, struct qent e, bool front)
{
    if (f->len == f->cap && !fifo_grow(f))
        return false;
    if (front) {
        f->head = (f->head + f->cap - 1) % f->cap;
        f->v[f->head] = e;
    } else {
        f->v[(f->head + f->len) % f->cap] = e;
    }
    f->len++;
    return true;
}

static struct qent *fifo_front(struct fifo *f)
{
    return f->len ? &f->v[f->head] : NULL;
}

static void fifo_pop(struct fifo *f)
{
    f->head = (f->head + 1) % f->cap;
    f->len--;
}

/* ------------------------------------------------------------------ endpoints */

static bool split_host(const char *hostport, char *name, size_t namelen, char *port, size_t portlen)
{
    const char *colon = strrchr(hostport, ':');
    const char *h = hostport;
    size_t hl;
    if (!colon || colon[1] == '\0')
        return false;
    hl = (size_t)(colon - hostport);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']')
        h++, hl -= 2;
    if (hl == 0 || hl >= namelen || strlen(colon + 1) >= portlen)
        return false;
    memcpy(name, h, hl);
    name[hl] = '\0';
    snprintf(port, portlen, "%s", colon + 1);
    return true;
}

/* Resolve once (numeric addresses in practice: the stack runs on loopback). */
static bool endpoint_resolve(struct endpoint *ep)
{
    char port[16];
    struct addrinfo hints, *res = NULL;
    if (ep->resolved)
        return true;
    if (!split_host(ep->host, ep->name, sizeof ep->name, port, sizeof port))
        return false;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(ep->name, port, &hints, &res) != 0 || !res)
        return false;
    memcpy(&ep->addr, res->ai_addr, res->ai_addrlen);
    ep->addrlen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    ep->resolved = true;
    return true;
}

static struct endpoint *endpoint_get(struct sd_ev *ev, const char *host, bool tls)
{
    struct endpoint *ep;
    for (ep = ev->eps; ep; ep = ep->next)
        if (ep->tls == tls && strcmp(ep->host, host) == 0)
            return ep;
    if (strlen(host) >= sizeof ep->host)
        return NULL;
    ep = calloc(1, sizeof *ep);
    if (!ep)
        return NULL;
    ep->ev = ev;
    ep->tls = tls;
    snprintf(ep->host, sizeof ep->host, "%s", host);
    ep->next = ev->eps;
    ev->eps = ep;
    return ep;
}

static bool kind_is_cp(enum sd_req_kind k)
{
    return k == SD_REQ_LOOKUP || k == SD_REQ_LOCATE || k == SD_REQ_PROVISION || k == SD_REQ_REPROVISION;
}

/*
 * Where the device's pending request goes, without building it (that costs
 * a SAS signature and waits for a connection). Checked against the built
 * request in conn_send.
 */
static struct endpoint *endpoint_for(struct sd_ev *ev, uint32_t dev, enum sd_req_kind kind)
{
    const struct sd_machine *m = &ev->m[dev];
    const struct sd_config *c = m->cfg;
    if (kind_is_cp(kind))
        return c->cp_host ? endpoint_get(ev, c->cp_host, c->cp_tls) : NULL;
    const char *host = c->dps_host_override ? c->dps_host_override : sd_machine_state(m)->dps_endpoint;
    return host[0] ? endpoint_get(ev, host, true) : NULL;
}

/* ------------------------------------------------------------------ connections */

static void list_add(struct conn **head, struct conn *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

static void list_del(struct conn **head, struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void conn_close(struct conn *c)
{
    struct endpoint *ep = c->ep;
    list_del(c->state == C_IDLE ? &ep->idle : &ep->busy, c);
    ep->nconns--;
    ep->ev->st.conns--;
    if (c->timer)
        event_free(c->timer);
    if (c->bev)
        bufferevent_free(c->bev);
    sd_http_parser_free(c->parser);
    free(c);
}

static void timer_ms(struct event *t, uint32_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(t, &tv);
}

static void conn_to_idle(struct conn *c)
{
    struct endpoint *ep = c->ep;
    if (c->state == C_BUSY) {
        list_del(&ep->busy, c);
        list_add(&ep->idle, c);
        c->state = C_IDLE;
    }
    timer_ms(c->timer, ep->ev->opt.idle_timeout_ms);
}

static void dev_io_error(struct sd_ev *ev, uint32_t dev, enum sd_req_kind kind, const char *why)
{
    ev->st.io_errors++;
    if (ev->h.on_io_error)
        ev->h.on_io_error(ev->h.ctx, dev, kind, why);
    ev->d[dev].where = W_IDLE;
    struct sd_event e = event_of(SD_EV_IO_ERROR);
    dev_step(ev, dev, &e);
}

static bool conn_current(const struct conn *c)
{
    const struct sd_ev_dev *d = &c->ep->ev->d[c->dev];
    return d->where == W_INFLIGHT && d->seq == c->seq;
}

/*
 * The request on c failed. A reused connection that failed before any byte
 * of the answer may simply have been closed by the server while idle: the
 * request goes once more, on a fresh connection. Otherwise the device sees
 * IO_ERROR. Either way c is closed.
 */
static void conn_fail(struct conn *c, const char *why, bool timeout)
{
    struct endpoint *ep = c->ep;
    struct sd_ev *ev = ep->ev;
    if (c->state == C_IDLE) {
        conn_close(c);
        pump(ep);
        return;
    }
    bool current = conn_current(c);
    bool resend = !timeout && c->served > 1 && !c->got_bytes && !c->retry;
    struct qent q = {c->dev, c->timeout_ms, c->seq, c->kind, 1};
    if (!c->connected)
        ev->st.conn_failures++;
    if (timeout)
        ev->st.timeouts++;
    conn_close(c);
    if (!current) {
        pump(ep);
        return;
    }
    if (resend && fifo_push(&ep->q, q, true)) {
        ev->st.retries++;
        ev->d[q.dev].where = W_QUEUED;
        pump(ep);
        return;
    }
    dev_io_error(ev, q.dev, (enum sd_req_kind)q.kind, why);
    pump(ep);
}

static bool ensure_body(struct sd_ev *ev, size_t len)
{
    if (len + 1 <= ev->body_cap)
        return true;
    size_t cap = ev->body_cap ? ev->body_cap : 4096;
    while (cap < len + 1)
        cap *= 2;
    char *nb = realloc(ev->body, cap);
    if (!nb)
        return false;
    ev->body = nb;
    ev->body_cap = cap;
    return true;
}

/* A complete answer on c: give the connection back (or close it), then the device sees it. */
static void conn_done(struct conn *c, bool keep)
{
    struct endpoint *ep = c->ep;
    struct sd_ev *ev = ep->ev;
    uint32_t dev = c->dev;
    enum sd_req_kind kind = (enum sd_req_kind)c->kind;
    bool current = conn_current(c);
    size_t blen;
    const char *body = sd_http_body(c->parser, &blen);
    struct sd_event e = event_of(SD_EV_RESPONSE);

    ev->st.responses++;
    e.status = sd_http_status(c->parser);
    e.retry_after_s = sd_http_retry_after(c->parser);
    /* The body is copied so that the connection can serve the next request at once. */
    if (blen && !ensure_body(ev, blen)) {
        conn_close(c);
        if (current)
            dev_io_error(ev, dev, kind, "out of memory");
        pump(ep);
        return;
    }
    if (blen)
        memcpy(ev->body, body, blen);
    e.body = blen ? ev->body : NULL;
    e.body_len = blen;
    if (keep)
        conn_to_idle(c);
    else
        conn_close(c);
    if (!current) {
        ev->st.stale++;
    } else {
        ev->d[dev].where = W_IDLE;
        if (ev->h.on_response)
            ev->h.on_response(ev->h.ctx, dev, kind, e.status, e.retry_after_s, e.body, e.body_len);
        dev_step(ev, dev, &e);
    }
    pump(ep);
}

static void conn_readcb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in), used = 0;
    if (len == 0)
        return;
    if (c->state != C_BUSY) {
        conn_fail(c, "bytes on an idle connection", false); /* closes it */
        return;
    }
    c->got_bytes = true;
    const char *data = (const char *)evbuffer_pullup(in, -1);
    enum sd_http_state st = sd_http_parser_feed(c->parser, data, len, false, &used);
    evbuffer_drain(in, used);
    if (st == SD_HTTP_ERROR) {
        conn_fail(c, sd_http_error(c->parser), false);
    } else if (st == SD_HTTP_DONE) {
        /* bytes beyond the answer belong to no request of ours: do not reuse */
        bool keep = sd_http_keep_alive(c->parser) && evbuffer_get_length(in) == 0;
        conn_done(c, keep);
    }
}

static void conn_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    size_t used;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        evutil_socket_t fd = bufferevent_getfd(bev);
        if (fd >= 0)
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->connected = true;
        return;
    }
    if ((what & BEV_EVENT_EOF) && c->state == C_BUSY && c->got_bytes &&
        sd_http_parser_feed(c->parser, NULL, 0, true, &used) == SD_HTTP_DONE) {
        conn_done(c, false); /* a close-delimited answer */
        return;
    }
    conn_fail(c, (what & BEV_EVENT_EOF) ? "connection closed" : "connection error", false);
}

static void conn_timercb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == C_IDLE) {
        struct endpoint *ep = c->ep;
        conn_close(c);
        pump(ep);
        return;
    }
    conn_fail(c, "timeout", true);
}

static struct bufferevent *bev_new(struct endpoint *ep)
{
    struct sd_ev *ev = ep->ev;
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (!ep->tls)
        return bufferevent_socket_new(ev->base, -1, opts);
    if (!ev->opt.tls)
        return NULL;
    SSL *ssl = SSL_new(ev->opt.tls);
    unsigned char ip[16];
    if (!ssl)
        return NULL;
    if (inet_pton(AF_INET, ep->name, ip) == 1 || inet_pton(AF_INET6, ep->name, ip) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ep->name);
    } else {
        SSL_set_tlsext_host_name(ssl, ep->name);
        SSL_set1_host(ssl, ep->name);
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(ev->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    /* a server closing without close_notify is an EOF, as with plain TCP */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

/* A new connection (connecting), busy list, counted. NULL on immediate failure. */
static struct conn *conn_open(struct endpoint *ep)
{
    struct sd_ev *ev = ep->ev;
    struct conn *c;
    if (!endpoint_resolve(ep))
        return NULL;
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ep = ep;
    c->parser = sd_http_parser_new();
    c->timer = evtimer_new(ev->base, conn_timercb, c);
    c->bev = c->parser && c->timer ? bev_new(ep) : NULL;
    if (!c->bev) {
        if (c->timer)
            event_free(c->timer);
        sd_http_parser_free(c->parser);
        free(c);
        ev->st.conn_failures++;
        return NULL;
    }
    bufferevent_setcb(c->bev, conn_readcb, NULL, conn_eventcb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->state = C_BUSY;
    list_add(&ep->busy, c);
    ep->nconns++;
    ev->st.conns++;
    ev->st.conns_opened++;
    if (ev->st.conns > ev->st.peak_conns)
        ev->st.peak_conns = ev->st.conns;
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ep->addr, (int)ep->addrlen) < 0) {
        conn_close(c);
        ev->st.conn_failures++;
        return NULL;
    }
    return c;
}

static void enqueue(struct sd_ev *ev, uint32_t dev, enum sd_req_kind kind, uint32_t timeout_ms);

/*
 * Send the request of queue entry q on c (busy, or idle and now taken).
 * Builds the request now: the SAS token's expiry counts from the moment it
 * goes out, and a million queued devices hold no request bytes.
 */
static void conn_send(struct conn *c, const struct qent *q)
{
    struct endpoint *ep = c->ep;
    struct sd_ev *ev = ep->ev;
    struct sd_request rq;
    char buf[SD_EV_REQ_BUF];
    int n = -1;
    bool built = sd_machine_request(&ev->m[q->dev], (int64_t)time(NULL), &rq);

    if (c->state == C_IDLE) {
        list_del(&ep->idle, c);
        list_add(&ep->busy, c);
        c->state = C_BUSY;
    }
    if (built && (rq.tls != ep->tls || strcmp(rq.host, ep->host) != 0)) {
        /* the machine names another endpoint than predicted: queue it there */
        conn_to_idle(c);
        ev->d[q->dev].where = W_IDLE;
        enqueue(ev, q->dev, (enum sd_req_kind)q->kind, q->timeout_ms);
        return;
    }
    if (built)
        n = sd_http_format_request(&rq, true, buf, sizeof buf);
    if (n < 0 || bufferevent_write(c->bev, buf, (size_t)n) != 0) {
        conn_to_idle(c);
        dev_io_error(ev, q->dev, (enum sd_req_kind)q->kind, built ? "request too large" : "request not built");
        return;
    }
    sd_http_parser_reset(c->parser);
    c->dev = q->dev;
    c->seq = q->seq;
    c->kind = q->kind;
    c->timeout_ms = q->timeout_ms;
    c->retry = q->fresh;
    c->got_bytes = false;
    if (c->served++ > 0)
        ev->st.reused++;
    timer_ms(c->timer, q->timeout_ms ? q->timeout_ms : 30000);
    ev->d[q->dev].where = W_INFLIGHT;
    ev->st.requests++;
    if (ev->h.on_send)
        ev->h.on_send(ev->h.ctx, q->dev, (enum sd_req_kind)q->kind);
}

static bool qent_live(const struct sd_ev *ev, const struct qent *q)
{
    const struct sd_ev_dev *d = &ev->d[q->dev];
    return d->where == W_QUEUED && d->seq == q->seq;
}

/* A connection for the entry at the front, or NULL if it has to wait. */
static struct conn *conn_for(struct endpoint *ep, const struct qent *q, bool *failed)
{
    uint32_t cap = ep->ev->opt.max_conns;
    struct conn *c;
    *failed = false;
    if (q->fresh) {
        if (ep->nconns >= cap && ep->idle)
            conn_close(ep->idle); /* make room: an idle one is the likeliest to be stale anyway */
        if (ep->nconns >= cap)
            return NULL;
    } else if (ep->idle) {
        return ep->idle;
    } else if (ep->nconns >= cap) {
        return NULL;
    }
    c = conn_open(ep);
    *failed = c == NULL;
    return c;
}

/* Hand connections to waiting devices, in FIFO order, up to the cap. */
static void pump(struct endpoint *ep)
{
    struct sd_ev *ev = ep->ev;
    if (ep->pumping)
        return; /* the outer call goes on with whatever was queued meanwhile */
    ep->pumping = true;
    struct qent *front;
    while ((front = fifo_front(&ep->q)) != NULL) {
        struct qent q = *front;
        bool failed;
        if (!qent_live(ev, &q)) {
            fifo_pop(&ep->q);
            continue;
        }
        struct conn *c = conn_for(ep, &q, &failed);
        if (!c && !failed)
            break;
        fifo_pop(&ep->q);
        if (!c)
            dev_io_error(ev, q.dev, (enum sd_req_kind)q.kind, "cannot connect");
        else
            conn_send(c, &q);
    }
    ep->pumping = false;
    ev->st.queued = 0;
    for (struct endpoint *e = ev->eps; e; e = e->next)
        ev->st.queued += (uint32_t)e->q.len;
}

static void enqueue(struct sd_ev *ev, uint32_t dev, enum sd_req_kind kind, uint32_t timeout_ms)
{
    struct endpoint *ep = endpoint_for(ev, dev, kind);
    struct qent q = {dev, timeout_ms, ev->d[dev].seq, (uint8_t)kind, 0};
    if (!ep || !fifo_push(&ep->q, q, false)) {
        dev_io_error(ev, dev, kind, ep ? "out of memory" : "no endpoint for the request");
        return;
    }
    ev->d[dev].where = W_QUEUED;
    pump(ep);
}

/* ------------------------------------------------------------------ devices */

/* Carry out a machine's action; PERSIST is done at once and fed back. */
static void dev_apply(struct sd_ev *ev, uint32_t dev, struct sd_action *a)
{
    for (;;) {
        switch (a->type) {
        case SD_ACT_SEND:
            /* the device is W_IDLE here; declined, it stays so (the caller took it over) */
            if (ev->h.before_send && !ev->h.before_send(ev->h.ctx, dev, a->kind))
                return;
            enqueue(ev, dev, a->kind, a->timeout_ms);
            return;
        case SD_ACT_SLEEP:
            if (!heap_push(ev, dev, a->until_ms)) {
                /* no memory for the timer: count it as a failed step */
                dev_io_error(ev, dev, a->kind, "out of memory");
                return;
            }
            ev->d[dev].where = W_SLEEP;
            timer_arm(ev);
            return;
        case SD_ACT_PERSIST: {
            bool ok = ev->h.persist ? ev->h.persist(ev->h.ctx, dev, sd_machine_state(&ev->m[dev])) : true;
            struct sd_event e = event_of(SD_EV_PERSISTED);
            e.ok = ok;
            sd_machine_step(&ev->m[dev], &e, a);
            continue;
        }
        case SD_ACT_WAIT:
            return;
        case SD_ACT_READY:
        case SD_ACT_RETIRED:
        case SD_ACT_FAILED:
            if (ev->h.on_terminal)
                ev->h.on_terminal(ev->h.ctx, dev, a->type);
            return;
        }
        return;
    }
}

static void dev_step(struct sd_ev *ev, uint32_t dev, struct sd_event *e)
{
    struct sd_action a;
    sd_machine_step(&ev->m[dev], e, &a);
    dev_apply(ev, dev, &a);
}

/* Forget what the device was waiting for: its sleep or its request. */
static void dev_abandon(struct sd_ev *ev, uint32_t dev)
{
    struct sd_ev_dev *d = &ev->d[dev];
    if (d->where == W_SLEEP) {
        heap_remove(ev, dev);
        timer_arm(ev);
    }
    d->seq++;
    d->where = W_IDLE;
}

void sd_ev_boot(struct sd_ev *ev, uint32_t dev, const struct sd_state *st)
{
    if (dev >= ev->n)
        return;
    dev_abandon(ev, dev);
    struct sd_event e = event_of(SD_EV_BOOT);
    e.state = st;
    dev_step(ev, dev, &e);
}

void sd_ev_deliver(struct sd_ev *ev, uint32_t dev, enum sd_event_type type, const char *reason)
{
    if (dev >= ev->n)
        return;
    dev_abandon(ev, dev);
    struct sd_event e = event_of(type);
    e.reason = reason;
    dev_step(ev, dev, &e);
}

/* ------------------------------------------------------------------ life cycle */

struct sd_ev *sd_ev_new(struct event_base *base, struct sd_machine *machines, uint32_t n,
                        const struct sd_ev_options *opt, const struct sd_ev_hooks *hooks)
{
    struct sd_ev *ev = calloc(1, sizeof *ev);
    if (!ev)
        return NULL;
    ev->base = base;
    ev->m = machines;
    ev->n = n;
    if (opt)
        ev->opt = *opt;
    if (!ev->opt.max_conns)
        ev->opt.max_conns = SD_EV_DEFAULT_CONNS;
    if (!ev->opt.idle_timeout_ms)
        ev->opt.idle_timeout_ms = SD_EV_DEFAULT_IDLE_MS;
    if (hooks)
        ev->h = *hooks;
    ev->d = calloc(n ? n : 1, sizeof *ev->d);
    ev->timer = evtimer_new(base, on_timer, ev);
    if (!ev->d || !ev->timer) {
        sd_ev_free(ev);
        return NULL;
    }
    return ev;
}

void sd_ev_free(struct sd_ev *ev)
{
    if (!ev)
        return;
    while (ev->eps) {
        struct endpoint *ep = ev->eps;
        ev->eps = ep->next;
        while (ep->idle)
            conn_close(ep->idle);
        while (ep->busy)
            conn_close(ep->busy);
        free(ep->q.v);
        free(ep);
    }
    if (ev->timer)
        event_free(ev->timer);
    free(ev->heap);
    free(ev->d);
    free(ev->body);
    free(ev);
}

void sd_ev_get_stats(const struct sd_ev *ev, struct sd_ev_stats *out)
{
    *out = ev->st;
}
