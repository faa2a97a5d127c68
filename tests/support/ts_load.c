/*
 * ts_load.c - the open-loop load driver and the watcher of ts_load.h.
 *
 * The driver owns one thread, one epoll set and a fixed table of connection
 * slots. Requests in flight are kept in a list in the order they were due,
 * which is also the order of their deadlines (one timeout for all), so the
 * expired ones are always at its head. Nothing here touches the support
 * library's main-thread state (ts_str, ts_fail, cmocka): a failure to set up
 * a socket is a FAILED record, never an abort of the test from this thread.
 */
#define _GNU_SOURCE 1 /* strcasestr */
#include "ts_load.h"

#include "ts.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LOAD_DEFAULT_CONNS 2048
#define LOAD_OUT_CAP 4096
#define LOAD_IN_CAP 8192

enum lconn_state { LC_FREE = 0, LC_IDLE, LC_CONNECTING, LC_BUSY };

struct lconn {
    int fd;
    enum lconn_state st;
    int req;                       /* index of the request in flight, -1 */
    int64_t deadline_us;
    struct lconn *prev, *next;     /* the in-flight list */
    struct lconn *idle_next;       /* the idle stack, or the free stack */
    size_t outlen, outoff, inlen;
    char out[LOAD_OUT_CAP];
    char in[LOAD_IN_CAP];
};

struct ts_load {
    struct ts_load_opts o;
    struct ts_load_rec *recs;
    int ndue;                      /* requests that will become due */
    pthread_t th;
    int ep;
    struct lconn *conns;           /* max_conns slots */
    struct lconn *idle, *free;     /* stacks (LIFO: reuse the warmest connection) */
    struct lconn *head, *tail;     /* in flight, by deadline */
    int open;
    int64_t t0_us;
    struct ts_load_summary s;
};

static int64_t load_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The due time of request k, on the monotonic clock in µs. */
static int64_t load_due_us(const struct ts_load *l, int k)
{
    return l->t0_us + (int64_t)((double)k * 1e6 / l->o.rate);
}

/* ---- the in-flight list ---- */

static void inflight_push(struct ts_load *l, struct lconn *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
}

static void inflight_remove(struct ts_load *l, struct lconn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
}

/* ---- connections ---- */

static void conn_watch(struct ts_load *l, struct lconn *c, bool want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    (void)epoll_ctl(l->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct ts_load *l, struct lconn *c)
{
    if (c->st == LC_IDLE) {
        /* unlink it from the idle stack */
        for (struct lconn **p = &l->idle; *p; p = &(*p)->idle_next)
            if (*p == c) {
                *p = c->idle_next;
                break;
            }
    }
    (void)epoll_ctl(l->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->st = LC_FREE;
    c->req = -1;
    c->idle_next = l->free;
    l->free = c;
    l->open--;
}

/* End the request on c with outcome (and close c unless it may carry another). */
static void conn_end(struct ts_load *l, struct lconn *c, enum ts_load_outcome outcome, bool keep)
{
    struct ts_load_rec *r = &l->recs[c->req];
    r->outcome = (unsigned char)outcome;
    if (outcome == TS_LOAD_ANSWERED) {
        l->s.answered++;
        if (r->status >= 100 && r->status < 600)
            l->s.by_class[r->status / 100]++;
    } else if (outcome == TS_LOAD_TIMEOUT) {
        l->s.timeouts++;
    } else {
        l->s.failed++;
    }
    inflight_remove(l, c);
    if (!keep) {
        conn_close(l, c);
        return;
    }
    c->st = LC_IDLE;
    c->req = -1;
    c->inlen = c->outlen = c->outoff = 0;
    c->idle_next = l->idle;
    l->idle = c;
}

static void conn_fail(struct ts_load *l, struct lconn *c, const char *what, int err)
{
    struct ts_load_rec *r = &l->recs[c->req];
    snprintf(r->body, sizeof r->body, "%s: %s", what, err ? strerror(err) : "closed");
    conn_end(l, c, TS_LOAD_FAILED, false);
}

static struct lconn *conn_open(struct ts_load *l, int *err)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)l->o.port)};
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP};
    struct lconn *c = l->free;
    int fd, one = 1;

    *err = 0;
    if (!c)
        return NULL;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return NULL;
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        *err = errno;
        close(fd);
        return NULL;
    }
    ev.data.ptr = c;
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        *err = errno;
        close(fd);
        return NULL;
    }
    l->free = c->idle_next;
    c->idle_next = NULL;
    c->fd = fd;
    c->st = LC_CONNECTING;
    c->inlen = c->outlen = c->outoff = 0;
    l->open++;
    l->s.conns_opened++;
    if (l->open > l->s.conns_peak)
        l->s.conns_peak = l->open;
    return c;
}

/* Write what is pending; false when the connection failed (request ended). */
static bool conn_flush(struct ts_load *l, struct lconn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n > 0) {
            c->outoff += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_watch(l, c, true);
            return true;
        }
        if (n < 0 && errno == EINTR)
            continue;
        conn_fail(l, c, "send", n < 0 ? errno : 0);
        return false;
    }
    conn_watch(l, c, false);
    return true;
}

/* ---- answers ---- */

/* The value of header name in head (NUL-terminated, ending at the blank
 * line) into out; false when absent. */
static bool head_value(const char *head, const char *name, char *out, size_t cap)
{
    char pat[64];
    const char *p, *v;
    size_t n;
    snprintf(pat, sizeof pat, "\r\n%s:", name);
    if (!(p = strcasestr(head, pat)))
        return false;
    v = p + strlen(pat);
    while (*v == ' ' || *v == '\t')
        v++;
    n = strcspn(v, "\r\n");
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), v);
    return true;
}

/* A complete answer may be in c->in: record it and end the request. */
static void conn_parse(struct ts_load *l, struct lconn *c)
{
    struct ts_load_rec *r = &l->recs[c->req];
    char *hend, val[64];
    size_t hlen, blen;
    long clen;
    bool close_after;

    c->in[c->inlen] = '\0';
    if (!(hend = strstr(c->in, "\r\n\r\n")))
        return;   /* the head is not complete yet */
    hlen = (size_t)(hend - c->in) + 4;
    *hend = '\0';
    if (strncmp(c->in, "HTTP/1.", 7) != 0 || c->inlen < 12) {
        snprintf(r->body, sizeof r->body, "not an HTTP answer: %.60s", c->in);
        conn_end(l, c, TS_LOAD_FAILED, false);
        return;
    }
    if (!head_value(c->in, "Content-Length", val, sizeof val) || (clen = strtol(val, NULL, 10)) < 0) {
        snprintf(r->body, sizeof r->body, "answer without Content-Length: %.60s", c->in);
        conn_end(l, c, TS_LOAD_FAILED, false);
        return;
    }
    blen = c->inlen - hlen;
    if (blen < (size_t)clen) {
        *hend = '\r';   /* not all of the body yet: keep the head as it came */
        if (hlen + (size_t)clen >= LOAD_IN_CAP) {
            snprintf(r->body, sizeof r->body, "answer of %ld bytes is too long", clen);
            conn_end(l, c, TS_LOAD_FAILED, false);
        }
        return;
    }
    r->status = (short)atoi(c->in + 9);
    r->latency_ms = (int)((load_now_us() - (c->deadline_us - (int64_t)l->o.timeout_ms * 1000)) / 1000);
    if (!head_value(c->in, "Retry-After", r->retry_after, sizeof r->retry_after))
        r->retry_after[0] = '\0';
    close_after = head_value(c->in, "Connection", val, sizeof val) && strcasecmp(val, "close") == 0;
    snprintf(r->body, sizeof r->body, "%.*s", (int)clen, c->in + hlen);
    if (blen > (size_t)clen) {
        /* one request at a time: bytes beyond the answer are a protocol error */
        conn_end(l, c, TS_LOAD_ANSWERED, false);
        return;
    }
    conn_end(l, c, TS_LOAD_ANSWERED, !close_after);
}

static void conn_on_read(struct ts_load *l, struct lconn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->inlen, LOAD_IN_CAP - 1 - c->inlen, 0);
        if (n > 0) {
            c->inlen += (size_t)n;
            if (c->st != LC_BUSY) {
                conn_close(l, c);   /* bytes nobody asked for */
                return;
            }
            conn_parse(l, c);
            if (c->st != LC_BUSY || c->inlen >= LOAD_IN_CAP - 1)
                return;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && errno == EINTR)
            continue;
        /* closed or reset */
        if (c->st == LC_BUSY || c->st == LC_CONNECTING)
            conn_fail(l, c, "recv", n < 0 ? errno : 0);
        else
            conn_close(l, c);
        return;
    }
}

static void conn_on_event(struct ts_load *l, struct lconn *c, uint32_t ev)
{
    if (c->st == LC_CONNECTING && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            conn_fail(l, c, "connect", err ? err : errno);
            return;
        }
        c->st = LC_BUSY;
    }
    if (c->st == LC_BUSY && (ev & EPOLLOUT) && c->outoff < c->outlen && !conn_flush(l, c))
        return;
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        conn_on_read(l, c);
}

/* ---- the schedule ---- */

static void load_dispatch(struct ts_load *l, int k, int64_t now)
{
    struct ts_load_rec *r = &l->recs[k];
    const struct ts_load_item *it = &l->o.items[k];
    struct lconn *c = l->idle;
    int n, err = 0;

    r->due_ms = (load_due_us(l, k) + 999) / 1000;
    if (now - load_due_us(l, k) > l->s.max_lag_ms * 1000)
        l->s.max_lag_ms = (now - load_due_us(l, k)) / 1000;
    if (c) {
        l->idle = c->idle_next;
        c->idle_next = NULL;
        c->st = LC_BUSY;
    } else if (!(c = conn_open(l, &err))) {
        r->outcome = err ? TS_LOAD_FAILED : TS_LOAD_NO_CONN;
        if (err) {
            snprintf(r->body, sizeof r->body, "connect: %s", strerror(err));
            l->s.failed++;
        } else {
            l->s.no_conn++;
        }
        return;
    }
    c->req = k;
    c->deadline_us = load_due_us(l, k) + (int64_t)l->o.timeout_ms * 1000;
    n = snprintf(c->out, sizeof c->out,
                 "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s%s%sContent-Length: 0\r\n\r\n", it->path, l->o.port,
                 it->authz ? "Authorization: " : "", it->authz ? it->authz : "", it->authz ? "\r\n" : "");
    inflight_push(l, c);
    if (n < 0 || (size_t)n >= sizeof c->out) {
        snprintf(r->body, sizeof r->body, "request too long");
        conn_end(l, c, TS_LOAD_FAILED, false);
        return;
    }
    c->outlen = (size_t)n;
    c->outoff = 0;
    c->inlen = 0;
    if (c->st == LC_BUSY)
        (void)conn_flush(l, c);
}

/* Requests whose deadline passed: closed, their answer would not count. */
static void load_expire(struct ts_load *l, int64_t now)
{
    while (l->head && l->head->deadline_us <= now)
        conn_end(l, l->head, TS_LOAD_TIMEOUT, false);
}

static void *load_run(void *arg)
{
    struct ts_load *l = arg;
    struct epoll_event evs[256];
    int next = 0;

    for (;;) {
        int64_t now = load_now_us(), wake = -1;
        int n, wait_ms;

        while (next < l->ndue && load_due_us(l, next) <= now)
            load_dispatch(l, next++, now);
        load_expire(l, now);
        if (next >= l->ndue && !l->head)
            break;
        if (next < l->ndue)
            wake = load_due_us(l, next);
        if (l->head && (wake < 0 || l->head->deadline_us < wake))
            wake = l->head->deadline_us;
        wait_ms = wake <= now ? 0 : (int)((wake - now + 999) / 1000);
        n = epoll_wait(l->ep, evs, (int)(sizeof evs / sizeof evs[0]), wait_ms);
        for (int i = 0; i < n; i++)
            conn_on_event(l, evs[i].data.ptr, evs[i].events);
    }
    l->s.end_ms = load_now_us() / 1000;
    {
        struct timespec cpu;
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) == 0)
            l->s.cpu_ms = (int64_t)cpu.tv_sec * 1000 + cpu.tv_nsec / 1000000;
    }
    return NULL;
}

struct ts_load *ts_load_start(const struct ts_load_opts *o, struct ts_load_rec *recs)
{
    struct ts_load *l = calloc(1, sizeof *l);
    int64_t want;

    if (!l)
        abort();
    l->o = *o;
    if (l->o.max_conns <= 0)
        l->o.max_conns = LOAD_DEFAULT_CONNS;
    if (o->rate <= 0 || o->timeout_ms <= 0 || o->nitems <= 0)
        ts_fail("ts_load_start: rate, timeout_ms and nitems must be positive");
    l->recs = recs;
    memset(recs, 0, (size_t)o->nitems * sizeof *recs);
    want = (int64_t)(o->rate * o->duration_ms / 1000.0);
    l->ndue = want < o->nitems ? (int)want : o->nitems;
    l->conns = calloc((size_t)l->o.max_conns, sizeof *l->conns);
    if (!l->conns)
        abort();
    for (int i = l->o.max_conns - 1; i >= 0; i--) {
        l->conns[i].fd = -1;
        l->conns[i].req = -1;
        l->conns[i].idle_next = l->free;
        l->free = &l->conns[i];
    }
    if ((l->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        ts_fail("ts_load_start: epoll_create1: %s", strerror(errno));
    l->t0_us = load_now_us() + 20000;   /* the first request is due in 20 ms */
    l->s.t0_ms = l->t0_us / 1000;
    l->s.due = l->ndue;
    if (pthread_create(&l->th, NULL, load_run, l) != 0)
        ts_fail("ts_load_start: pthread_create failed");
    return l;
}

void ts_load_wait(struct ts_load *l, struct ts_load_summary *s)
{
    pthread_join(l->th, NULL);
    for (int i = 0; i < l->o.max_conns; i++)
        if (l->conns[i].st != LC_FREE)
            close(l->conns[i].fd);
    close(l->ep);
    if (s)
        *s = l->s;
    free(l->conns);
    free(l);
}

/* ---- the watcher ---- */

struct ts_watch {
    struct ts_watch_opts o;
    char path[256];
    pthread_t th;
    int stop;                      /* __atomic */
    struct ts_watch_sample *v;     /* owned by the thread until joined */
    int n, cap;
};

long ts_proc_rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    if (!(f = fopen(path, "r")))
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

int64_t ts_proc_cpu_ms(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut, st;
    long hz = sysconf(_SC_CLK_TCK);
    size_t n;
    FILE *f;
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    if (!(f = fopen(path, "r")))
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* after "pid (comm) ": state is field 3, utime and stime fields 14 and 15 */
    if (!(p = strrchr(buf, ')')) || hz <= 0 ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (int64_t)((ut + st) * 1000ULL / (unsigned long long)hz);
}

/* The body's "status":"word" (a flat search: the probes put it first). */
static void watch_word(const char *body, char *out, size_t cap)
{
    const char *p = strstr(body, "\"status\":\"");
    size_t n;
    out[0] = '\0';
    if (!p)
        return;
    p += 10;
    n = strcspn(p, "\"");
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), p);
}

static void watch_probe(struct ts_watch *w, struct ts_watch_sample *s)
{
    char req[512], out[16384], err[160];
    size_t len = 0;
    const char *hend;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", w->path,
                     w->o.port);

    s->at_ms = ts_now_ms();
    s->rss_kb = w->o.pid > 0 ? ts_proc_rss_kb(w->o.pid) : -1;
    s->cpu_ms = w->o.pid > 0 ? ts_proc_cpu_ms(w->o.pid) : -1;
    if (ts_http_exchange_mt(w->o.port, req, (size_t)n, w->o.timeout_ms, out, sizeof out, &len, err, sizeof err) &&
        len >= 12 && strncmp(out, "HTTP/1.", 7) == 0) {
        s->status = atoi(out + 9);
        if ((hend = strstr(out, "\r\n\r\n")) != NULL)
            watch_word(hend + 4, s->word, sizeof s->word);
    }
    s->latency_ms = (int)(ts_now_ms() - s->at_ms);
}

static void *watch_run(void *arg)
{
    struct ts_watch *w = arg;
    while (!__atomic_load_n(&w->stop, __ATOMIC_SEQ_CST)) {
        int64_t next = ts_now_ms() + w->o.interval_ms;
        if (w->n == w->cap) {
            int cap = w->cap ? w->cap * 2 : 256;
            struct ts_watch_sample *v = realloc(w->v, (size_t)cap * sizeof *v);
            if (!v)
                abort();
            w->v = v;
            w->cap = cap;
        }
        memset(&w->v[w->n], 0, sizeof w->v[0]);
        watch_probe(w, &w->v[w->n++]);
        while (!__atomic_load_n(&w->stop, __ATOMIC_SEQ_CST) && ts_now_ms() < next)
            ts_sleep_ms(5);
    }
    return NULL;
}

struct ts_watch *ts_watch_start(const struct ts_watch_opts *o)
{
    struct ts_watch *w = calloc(1, sizeof *w);
    if (!w)
        abort();
    w->o = *o;
    snprintf(w->path, sizeof w->path, "%s", o->path);
    w->o.path = w->path;
    if (w->o.interval_ms <= 0)
        w->o.interval_ms = 100;
    if (w->o.timeout_ms <= 0)
        w->o.timeout_ms = 2000;
    if (pthread_create(&w->th, NULL, watch_run, w) != 0)
        ts_fail("ts_watch_start: pthread_create failed");
    return w;
}

int ts_watch_stop(struct ts_watch *w, const struct ts_watch_sample **samples)
{
    int n;
    __atomic_store_n(&w->stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(w->th, NULL);
    n = w->n;
    *samples = w->v ? ts_keep(w->v) : NULL;
    free(w);
    return n;
}
