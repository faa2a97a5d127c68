/*
 * ts_tcpproxy.c - owns the test's TCP proxies (ts.h, "TCP proxy"): a
 * listener on a free loopback port relaying every accepted connection to one
 * target, on a thread of its own (poll), with the failure modes a test
 * switches at any time: PASS, CUT (every connection closed, new ones closed
 * at once) and STALL (connections kept open, not a byte relayed: a silent
 * partition).
 *
 * The thread owns the connections; the test thread only sets the wanted mode
 * and waits until the thread has applied it (a generation counter under a
 * mutex), so when ts_tcpproxy_set_mode returns, a CUT has closed everything.
 *
 * Every descriptor is close-on-exec: the test forks daemons while the proxy
 * runs, and a child holding a copy of a relayed socket would keep it open
 * through a CUT.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* accept4, pipe2 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ts_internal.h"

#define TP_MAX_CONNS 64
#define TP_BUF 65536

/* One direction of a relayed connection: bytes read from `from`, not yet written to `to`. */
struct tp_pipe {
    char buf[TP_BUF];
    size_t len;
};

struct tp_conn {
    int client, upstream;       /* -1: free slot */
    struct tp_pipe up, down;    /* client -> upstream, upstream -> client */
};

struct ts_tcpproxy {
    char addr[64];              /* "127.0.0.1:PORT" */
    int port;
    char target_host[64];
    int target_port;
    int listen_fd;
    int wake[2];                /* the test thread wakes the loop */
    pthread_t thread;
    bool running;

    pthread_mutex_t mu;
    pthread_cond_t applied_cv;
    enum ts_proxy_mode want;    /* under mu */
    unsigned want_gen, applied_gen;
    bool stop;
    int live;                   /* relayed connections open (under mu) */
    long accepted;              /* connections accepted in total (under mu) */

    enum ts_proxy_mode mode;    /* the thread's copy */
    struct tp_conn conns[TP_MAX_CONNS];
};

static void tp_close_conn(struct tp_conn *c)
{
    if (c->client >= 0)
        close(c->client);
    if (c->upstream >= 0)
        close(c->upstream);
    c->client = c->upstream = -1;
    c->up.len = c->down.len = 0;
}

static int tp_count_live(const struct ts_tcpproxy *p)
{
    int n = 0;
    for (int i = 0; i < TP_MAX_CONNS; i++)
        n += p->conns[i].client >= 0;
    return n;
}

/* A blocking connect to the target (loopback: immediate), then non-blocking. */
static int tp_connect_upstream(const struct ts_tcpproxy *p)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)p->target_port);
    if (inet_pton(AF_INET, p->target_host, &a.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void tp_accept(struct ts_tcpproxy *p)
{
    int fd = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    int slot = -1;
    if (fd < 0)
        return;
    pthread_mutex_lock(&p->mu);
    p->accepted++;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < TP_MAX_CONNS && slot < 0; i++)
        if (p->conns[i].client < 0)
            slot = i;
    /* CUT refuses: accepted (the kernel did already) and closed at once. */
    if (p->mode == TS_PROXY_CUT || slot < 0) {
        close(fd);
        return;
    }
    p->conns[slot].client = fd;
    if (p->mode == TS_PROXY_HOLD)   /* connected to the target when PASS comes back */
        return;
    p->conns[slot].upstream = tp_connect_upstream(p);
    if (p->conns[slot].upstream < 0)
        tp_close_conn(&p->conns[slot]);
}

/* Move bytes for one direction; false when the connection is over. */
static bool tp_read_into(int fd, struct tp_pipe *pp)
{
    ssize_t n = read(fd, pp->buf + pp->len, sizeof pp->buf - pp->len);
    if (n > 0) {
        pp->len += (size_t)n;
        return true;
    }
    return n < 0 && (errno == EAGAIN || errno == EINTR);
}

static bool tp_write_from(int fd, struct tp_pipe *pp)
{
    ssize_t n = write(fd, pp->buf, pp->len);
    if (n > 0) {
        memmove(pp->buf, pp->buf + n, pp->len - (size_t)n);
        pp->len -= (size_t)n;
        return true;
    }
    return n < 0 && (errno == EAGAIN || errno == EINTR);
}

/* Apply the wanted mode (called by the thread when woken). */
static void tp_apply_mode(struct ts_tcpproxy *p)
{
    pthread_mutex_lock(&p->mu);
    p->mode = p->want;
    if (p->mode == TS_PROXY_CUT)
        for (int i = 0; i < TP_MAX_CONNS; i++)
            tp_close_conn(&p->conns[i]);
    if (p->mode == TS_PROXY_PASS)   /* connections a HOLD accepted reach the target now */
        for (int i = 0; i < TP_MAX_CONNS; i++)
            if (p->conns[i].client >= 0 && p->conns[i].upstream < 0 &&
                (p->conns[i].upstream = tp_connect_upstream(p)) < 0)
                tp_close_conn(&p->conns[i]);
    p->live = tp_count_live(p);
    p->applied_gen = p->want_gen;
    pthread_cond_broadcast(&p->applied_cv);
    pthread_mutex_unlock(&p->mu);
}

/* The pollfds of a connection: none at all while stalled (fd -1 is ignored,
 * so a peer's hang-up can't make poll spin either). */
static void tp_fill(const struct ts_tcpproxy *p, const struct tp_conn *c, struct pollfd *cl, struct pollfd *up)
{
    *cl = (struct pollfd){.fd = -1};
    *up = (struct pollfd){.fd = -1};
    if (c->client < 0 || p->mode != TS_PROXY_PASS)
        return;
    cl->fd = c->client;
    up->fd = c->upstream;
    cl->events = (short)((c->up.len < TP_BUF ? POLLIN : 0) | (c->down.len ? POLLOUT : 0));
    up->events = (short)((c->down.len < TP_BUF ? POLLIN : 0) | (c->up.len ? POLLOUT : 0));
}

static bool tp_serve(struct tp_conn *c, short cl_rev, short up_rev)
{
    if ((cl_rev & POLLOUT) && !tp_write_from(c->client, &c->down))
        return false;
    if ((up_rev & POLLOUT) && !tp_write_from(c->upstream, &c->up))
        return false;
    if ((cl_rev & (POLLIN | POLLHUP | POLLERR)) && !tp_read_into(c->client, &c->up))
        return false;
    if ((up_rev & (POLLIN | POLLHUP | POLLERR)) && !tp_read_into(c->upstream, &c->down))
        return false;
    return true;
}

static void *tp_thread(void *arg)
{
    struct ts_tcpproxy *p = arg;
    struct pollfd fds[2 + 2 * TP_MAX_CONNS];
    for (;;) {
        char drain[64];
        fds[0] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
        fds[1] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
        for (int i = 0; i < TP_MAX_CONNS; i++)
            tp_fill(p, &p->conns[i], &fds[2 + 2 * i], &fds[3 + 2 * i]);
        if (poll(fds, 2 + 2 * TP_MAX_CONNS, 1000) < 0 && errno != EINTR)
            break;
        if (fds[0].revents & POLLIN) {
            bool stop;
            while (read(p->wake[0], drain, sizeof drain) > 0)
                ;
            pthread_mutex_lock(&p->mu);
            stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop)
                break;
            tp_apply_mode(p);
            continue;   /* the pollfds were built for the old mode */
        }
        if (fds[1].revents & POLLIN)
            tp_accept(p);
        for (int i = 0; i < TP_MAX_CONNS; i++)
            if (fds[2 + 2 * i].fd >= 0 && !tp_serve(&p->conns[i], fds[2 + 2 * i].revents, fds[3 + 2 * i].revents))
                tp_close_conn(&p->conns[i]);
        pthread_mutex_lock(&p->mu);
        p->live = tp_count_live(p);
        pthread_mutex_unlock(&p->mu);
    }
    for (int i = 0; i < TP_MAX_CONNS; i++)
        tp_close_conn(&p->conns[i]);
    return NULL;
}

static void tp_wake(struct ts_tcpproxy *p)
{
    char b = 1;
    if (write(p->wake[1], &b, 1) < 0 && errno != EAGAIN)
        ts_log("tcpproxy %s: wake failed: %s", p->addr, strerror(errno));
}

static void tp_cleanup(void *arg)
{
    ts_tcpproxy_stop(arg);
}

static int tp_listen(int *port)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

struct ts_tcpproxy *ts_tcpproxy_start(const char *target)
{
    struct ts_tcpproxy *p = calloc(1, sizeof *p);
    const char *colon = strrchr(target, ':');
    if (!p || !colon || (size_t)(colon - target) >= sizeof p->target_host)
        ts_fail("ts_tcpproxy_start: bad target %s (want IPv4:PORT)", target);
    memcpy(p->target_host, target, (size_t)(colon - target));
    p->target_port = atoi(colon + 1);
    for (int i = 0; i < TP_MAX_CONNS; i++)
        p->conns[i].client = p->conns[i].upstream = -1;
    p->wake[0] = p->wake[1] = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->applied_cv, NULL);
    p->listen_fd = tp_listen(&p->port);
    if (p->listen_fd < 0 || pipe2(p->wake, O_CLOEXEC | O_NONBLOCK) != 0)
        ts_fail("ts_tcpproxy_start: %s", strerror(errno));
    snprintf(p->addr, sizeof p->addr, "127.0.0.1:%d", p->port);
    if (pthread_create(&p->thread, NULL, tp_thread, p) != 0)
        ts_fail("ts_tcpproxy_start: pthread_create failed");
    p->running = true;
    ts_on_cleanup(tp_cleanup, p);
    ts_log("tcpproxy %s -> %s", p->addr, target);
    return p;
}

const char *ts_tcpproxy_addr(const struct ts_tcpproxy *p)
{
    return p->addr;
}

static const char *tp_mode_name(enum ts_proxy_mode m)
{
    return m == TS_PROXY_PASS ? "pass" : m == TS_PROXY_CUT ? "cut" : m == TS_PROXY_HOLD ? "hold" : "stall";
}

void ts_tcpproxy_set_mode(struct ts_tcpproxy *p, enum ts_proxy_mode mode)
{
    unsigned gen;
    pthread_mutex_lock(&p->mu);
    p->want = mode;
    gen = ++p->want_gen;
    pthread_mutex_unlock(&p->mu);
    tp_wake(p);
    pthread_mutex_lock(&p->mu);
    while (p->applied_gen < gen)
        pthread_cond_wait(&p->applied_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    ts_log("tcpproxy %s: %s", p->addr, tp_mode_name(mode));
}

int ts_tcpproxy_live(struct ts_tcpproxy *p)
{
    int n;
    pthread_mutex_lock(&p->mu);
    n = p->live;
    pthread_mutex_unlock(&p->mu);
    return n;
}

long ts_tcpproxy_accepted(struct ts_tcpproxy *p)
{
    long n;
    pthread_mutex_lock(&p->mu);
    n = p->accepted;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void ts_tcpproxy_stop(struct ts_tcpproxy *p)
{
    if (!p || !p->running)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_mutex_unlock(&p->mu);
    tp_wake(p);
    pthread_join(p->thread, NULL);
    p->running = false;
    close(p->listen_fd);
    close(p->wake[0]);
    close(p->wake[1]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->applied_cv);
    /* the cleanup registered at start still holds p: freed by ts_finish */
    ts_keep(p);
}
