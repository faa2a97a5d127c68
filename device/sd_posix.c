/*
 * sd_posix.c - libstampdevice: the blocking driver for one device
 * (sd_posix.h). Owns the loop that turns the machine's actions into
 * connect/TLS/write/read, sleeps and state-file writes, with every wait
 * bounded by poll() against a CLOCK_MONOTONIC deadline.
 */
#include "sd_posix.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "sd_http.h"
#include "sd_tls.h"

#define SD_POSIX_REQ_MAX 4096 /* path 512 + authorization 768 + body 320 + headers */

struct sd_posix {
    const struct sd_posix_opts *o;
    struct sd_posix_result *out;
    struct sd_machine m;
    SSL_CTX *tls;
    struct sd_http_parser *parser;
    int64_t start_ms;
    bool reprovision_sent;
};

/* One connection: the socket, the TLS session on it when any, the request's deadline. */
struct sd_posix_conn {
    int fd;
    SSL *ssl;
    int64_t deadline_ms;
};

static int64_t sd_posix_now_ms(void)
{
    struct timespec ts;
    /* cannot fail for CLOCK_MONOTONIC with a valid pointer (POSIX: EINVAL only) */
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool sd_posix_stopped(const struct sd_posix *d)
{
    return d->o->stop && *d->o->stop;
}

static void sd_posix_log(const struct sd_posix *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sd_posix_log(const struct sd_posix *d, const char *fmt, ...)
{
    va_list ap;
    if (!d->o->verbose)
        return;
    fprintf(stderr, "sd_posix %s +%lldms ", d->m.st.registration_id,
            (long long)(sd_posix_now_ms() - d->start_ms));
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ------------------------------------------------------------------ */
/* Connections                                                        */
/* ------------------------------------------------------------------ */

/* "host:port" or "[v6]:port" -> host and port; the port defaults by scheme. */
static bool sd_posix_split_host(const char *hostport, bool tls, char *host, size_t hostlen, char *port,
                                size_t portlen)
{
    const char *colon, *h = hostport;
    size_t n;

    if (*h == '[') {
        const char *close = strchr(h, ']');
        if (!close || (close[1] != '\0' && close[1] != ':'))
            return false;
        n = (size_t)(close - h - 1);
        colon = close[1] == ':' ? close + 1 : NULL;
        h++;
    } else {
        colon = strrchr(h, ':');
        n = colon ? (size_t)(colon - h) : strlen(h);
    }
    if (n == 0 || n >= hostlen)
        return false;
    memcpy(host, h, n);
    host[n] = '\0';
    if (!colon)
        return (size_t)snprintf(port, portlen, "%s", tls ? "443" : "80") < portlen;
    if (colon[1] == '\0' || strspn(colon + 1, "0123456789") != strlen(colon + 1))
        return false;
    return (size_t)snprintf(port, portlen, "%s", colon + 1) < portlen;
}

/* Wait for events on fd until the deadline: 1 ready, 0 timed out (or stopped), -1 error. */
static int sd_posix_wait(const struct sd_posix *d, int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = events, .revents = 0 };
        int64_t left = deadline_ms - sd_posix_now_ms();
        int rc;
        if (left <= 0 || sd_posix_stopped(d))
            return 0;
        /* wake up at least once a second to notice a stop request */
        rc = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/* Why sd_posix_wait gave 0: the deadline, or a stop request (which is not a timeout). */
static const char *sd_posix_wait_why(const struct sd_posix *d)
{
    return sd_posix_stopped(d) ? "stopped" : "timed out";
}

/* Non-blocking connect to one address, bounded by the deadline. Returns the fd or -1. */
static int sd_posix_connect_one(const struct sd_posix *d, const struct addrinfo *ai, int64_t deadline_ms,
                                char *err, size_t errlen)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    int soerr = 0, rc;
    socklen_t sl = sizeof soerr;

    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno != EINPROGRESS) {
        snprintf(err, errlen, "connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    rc = sd_posix_wait(d, fd, POLLOUT, deadline_ms);
    if (rc <= 0) {
        snprintf(err, errlen, "connect: %s", rc == 0 ? sd_posix_wait_why(d) : strerror(errno));
        close(fd);
        return -1;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0) {
        snprintf(err, errlen, "connect: %s", strerror(soerr ? soerr : errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Resolve and connect, trying each address in turn. Returns the fd or -1. */
static int sd_posix_connect(const struct sd_posix *d, const char *host, const char *port, int64_t deadline_ms,
                            char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    int fd = -1, rc;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    /* getaddrinfo has no timeout of its own; the resolver's (resolv.conf) applies */
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "resolve %s: %s", host, rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return -1;
    }
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = sd_posix_connect_one(d, ai, deadline_ms, err, errlen);
    freeaddrinfo(res);
    return fd;
}

/* Drive a non-blocking SSL call: wait for what it wants, until the deadline. */
static bool sd_posix_ssl_wait(const struct sd_posix *d, struct sd_posix_conn *c, int ret, const char *what,
                              char *err, size_t errlen)
{
    int e = SSL_get_error(c->ssl, ret);
    int rc;
    char why[400];

    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
            snprintf(err, errlen, "%s: %s", what, errno ? strerror(errno) : "connection closed");
        else
            snprintf(err, errlen, "%s: %s", what, sd_tls_describe(c->ssl, why, sizeof why));
        ERR_clear_error();
        return false;
    }
    rc = sd_posix_wait(d, c->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, c->deadline_ms);
    if (rc <= 0) {
        snprintf(err, errlen, "%s: %s", what, rc == 0 ? sd_posix_wait_why(d) : strerror(errno));
        return false;
    }
    return true;
}

static bool sd_posix_tls_start(const struct sd_posix *d, struct sd_posix_conn *c, const char *host, char *err,
                               size_t errlen)
{
    int ret;
    c->ssl = sd_tls_new(d->tls, host, c->fd, err, errlen);
    if (!c->ssl)
        return false;
    ERR_clear_error();
    while ((ret = SSL_connect(c->ssl)) != 1)
        if (!sd_posix_ssl_wait(d, c, ret, "TLS handshake", err, errlen))
            return false;
    return true;
}

static bool sd_posix_send_all(const struct sd_posix *d, struct sd_posix_conn *c, const char *buf, size_t len,
                              char *err, size_t errlen)
{
    size_t done = 0;
    while (done < len) {
        if (c->ssl) {
            int n = SSL_write(c->ssl, buf + done, (int)(len - done));
            if (n > 0)
                done += (size_t)n;
            else if (!sd_posix_ssl_wait(d, c, n, "write", err, errlen))
                return false;
            continue;
        }
        ssize_t n = send(c->fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n >= 0) {
            done += (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            int rc = sd_posix_wait(d, c->fd, POLLOUT, c->deadline_ms);
            if (rc <= 0) {
                snprintf(err, errlen, "write: %s", rc == 0 ? sd_posix_wait_why(d) : strerror(errno));
                return false;
            }
        } else {
            snprintf(err, errlen, "write: %s", strerror(errno));
            return false;
        }
    }
    return true;
}

/* Read what is there (waiting until the deadline): > 0 bytes, 0 the peer closed, -1 error. */
static ssize_t sd_posix_recv(const struct sd_posix *d, struct sd_posix_conn *c, char *buf, size_t cap, char *err,
                             size_t errlen)
{
    for (;;) {
        if (c->ssl) {
            int n = SSL_read(c->ssl, buf, (int)cap);
            if (n > 0)
                return n;
            if (SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN)
                return 0;
            if (!sd_posix_ssl_wait(d, c, n, "read", err, errlen))
                return -1;
            continue;
        }
        ssize_t n = recv(c->fd, buf, cap, 0);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            int rc = sd_posix_wait(d, c->fd, POLLIN, c->deadline_ms);
            if (rc <= 0) {
                snprintf(err, errlen, "read: %s", rc == 0 ? sd_posix_wait_why(d) : strerror(errno));
                return -1;
            }
            continue;
        }
        snprintf(err, errlen, "read: %s", strerror(errno));
        return -1;
    }
}

static void sd_posix_conn_close(struct sd_posix_conn *c)
{
    if (c->ssl) {
        /* one attempt at close_notify, never waiting for the peer's */
        (void)SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        ERR_clear_error();
    }
    if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* Read until the parser has one whole response. */
static bool sd_posix_read_response(const struct sd_posix *d, struct sd_posix_conn *c, char *err, size_t errlen)
{
    char buf[16384];
    for (;;) {
        ssize_t n = sd_posix_recv(d, c, buf, sizeof buf, err, errlen);
        enum sd_http_state st;
        if (n < 0)
            return false;
        st = sd_http_parser_feed(d->parser, buf, (size_t)n, n == 0, NULL);
        if (st == SD_HTTP_DONE)
            return true;
        if (st == SD_HTTP_ERROR) {
            snprintf(err, errlen, "bad response: %s", sd_http_error(d->parser));
            return false;
        }
        if (n == 0) { /* the parser always decides at EOF; belt and braces */
            snprintf(err, errlen, "connection closed mid-response");
            return false;
        }
    }
}

/* One request, one connection: connect, TLS, write, read the whole answer into d->parser. */
static bool sd_posix_exchange(struct sd_posix *d, const struct sd_request *rq, uint32_t timeout_ms, char *err,
                              size_t errlen)
{
    struct sd_posix_conn c = { .fd = -1, .ssl = NULL, .deadline_ms = sd_posix_now_ms() + timeout_ms };
    char host[SD_HOST_MAX], port[8], req[SD_POSIX_REQ_MAX];
    int len;
    bool ok = false;

    sd_http_parser_reset(d->parser);
    if (!sd_posix_split_host(rq->host, rq->tls, host, sizeof host, port, sizeof port)) {
        snprintf(err, errlen, "bad host:port '%s'", rq->host);
        return false;
    }
    len = sd_http_format_request(rq, false, req, sizeof req);
    if (len < 0) {
        snprintf(err, errlen, "request does not fit %d bytes", SD_POSIX_REQ_MAX);
        return false;
    }
    c.fd = sd_posix_connect(d, host, port, c.deadline_ms, err, errlen);
    if (c.fd < 0)
        return false;
    if ((!rq->tls || sd_posix_tls_start(d, &c, host, err, errlen)) &&
        sd_posix_send_all(d, &c, req, (size_t)len, err, errlen) && sd_posix_read_response(d, &c, err, errlen))
        ok = true;
    sd_posix_conn_close(&c);
    return ok;
}

/* ------------------------------------------------------------------ */
/* Actions                                                            */
/* ------------------------------------------------------------------ */

static void sd_posix_event(struct sd_event *ev, enum sd_event_type type)
{
    memset(ev, 0, sizeof *ev);
    ev->type = type;
    ev->now_ms = sd_posix_now_ms();
    ev->wall_s = (int64_t)time(NULL);
    ev->retry_after_s = -1;
}

/* SEND: build the request, exchange it, and fill in RESPONSE or IO_ERROR. */
static void sd_posix_send(struct sd_posix *d, const struct sd_action *act, struct sd_event *ev)
{
    struct sd_request rq;
    char err[512] = "";
    size_t blen = 0;

    d->out->requests[act->kind < SD_REQ_KIND_COUNT ? act->kind : 0]++;
    if (!sd_machine_request(&d->m, (int64_t)time(NULL), &rq)) {
        sd_posix_log(d, "send %s: the machine built no request", sd_req_kind_name(act->kind));
        d->out->io_errors++;
        sd_posix_event(ev, SD_EV_IO_ERROR);
        return;
    }
    sd_posix_log(d, "send %s: %s %s://%s%s", sd_req_kind_name(act->kind), rq.method, rq.tls ? "https" : "http",
                 rq.host, rq.path);
    if (!sd_posix_exchange(d, &rq, act->timeout_ms, err, sizeof err)) {
        sd_posix_log(d, "  -> no answer: %s", err);
        d->out->io_errors++;
        sd_posix_event(ev, SD_EV_IO_ERROR);
        return;
    }
    sd_posix_event(ev, SD_EV_RESPONSE);
    ev->status = sd_http_status(d->parser);
    ev->retry_after_s = sd_http_retry_after(d->parser);
    ev->body = sd_http_body(d->parser, &blen);
    ev->body_len = blen;
    if (ev->status == 429)
        d->out->throttled++;
    sd_posix_log(d, "  -> %d, %zu bytes body, retry-after %d", ev->status, blen, ev->retry_after_s);
}

/* SLEEP until the machine's deadline (CLOCK_MONOTONIC, absolute), or a stop. */
static void sd_posix_sleep(struct sd_posix *d, const struct sd_action *act, struct sd_event *ev)
{
    int64_t start = sd_posix_now_ms(), now = start;
    sd_posix_log(d, "sleep %lld ms (%s)", (long long)(act->until_ms - now), sd_phase_name(sd_machine_phase(&d->m)));
    while (now < act->until_ms && !sd_posix_stopped(d)) {
        /* in slices of at most a second, so that a stop request is seen */
        int64_t until = act->until_ms - now > 1000 ? now + 1000 : act->until_ms;
        struct timespec ts = { .tv_sec = (time_t)(until / 1000), .tv_nsec = (long)(until % 1000) * 1000000 };
        int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        if (rc != 0 && rc != EINTR) {
            sd_posix_log(d, "clock_nanosleep: %s", strerror(rc));
            break; /* the machine treats an early TIMER as "sleep again" */
        }
        now = sd_posix_now_ms();
    }
    d->out->slept_ms += now - start;
    sd_posix_event(ev, SD_EV_TIMER);
}

/* PERSIST: write the machine's state atomically (nowhere when no state file is configured). */
static void sd_posix_persist(struct sd_posix *d, struct sd_event *ev)
{
    char err[512] = "";
    enum sd_store_result r = SD_STORE_OK;

    d->out->persists++;
    if (d->o->state_path)
        r = sd_store_save(d->o->state_path, sd_machine_state(&d->m), NULL, err, sizeof err);
    if (r != SD_STORE_OK)
        fprintf(stderr, "sd_posix %s: state not saved: %s\n", d->m.st.registration_id, err);
    else
        sd_posix_log(d, "persisted%s%s", d->o->state_path ? " to " : " (no state file)",
                     d->o->state_path ? d->o->state_path : "");
    sd_posix_event(ev, SD_EV_PERSISTED);
    ev->ok = r == SD_STORE_OK;
}

/* BOOT with what the state file holds (a corrupt one: as if there were none). */
static void sd_posix_boot(struct sd_posix *d, struct sd_event *ev, struct sd_state *loaded)
{
    char err[512] = "";
    enum sd_store_result r = SD_STORE_ABSENT;

    if (d->o->state_path)
        r = sd_store_load(d->o->state_path, loaded, err, sizeof err);
    d->out->loaded = r;
    if (r == SD_STORE_CORRUPT || r == SD_STORE_IOERR)
        fprintf(stderr, "sd_posix %s: ignoring the state file (%s): %s\n", d->m.st.registration_id,
                sd_store_result_name(r), err);
    sd_posix_log(d, "boot: state %s", sd_store_result_name(r));
    sd_posix_event(ev, SD_EV_BOOT);
    ev->state = r == SD_STORE_OK ? loaded : NULL;
}

/* ------------------------------------------------------------------ */
/* The loop                                                           */
/* ------------------------------------------------------------------ */

static bool sd_posix_setup(struct sd_posix *d, const struct sd_config *cfg, const char *registration_id,
                           const unsigned char *key)
{
    struct sd_tls_opts t = { d->o->ca_file, d->o->cert_file, d->o->key_file };
    const char *why = sd_config_check(cfg);

    if (why) {
        snprintf(d->out->error, sizeof d->out->error, "config: %s", why);
        return false;
    }
    if (!sd_machine_init(&d->m, cfg, registration_id, key)) {
        snprintf(d->out->error, sizeof d->out->error, "%s", sd_machine_error(&d->m));
        return false;
    }
    d->tls = sd_tls_ctx_new(&t, d->out->error, sizeof d->out->error);
    if (!d->tls)
        return false;
    d->parser = sd_http_parser_new();
    if (!d->parser) {
        snprintf(d->out->error, sizeof d->out->error, "out of memory");
        return false;
    }
    return true;
}

/*
 * A terminal action: return it, unless the caller asked for one reprovision
 * after the first READY (then the machine gets that command and goes on).
 */
static bool sd_posix_finished(struct sd_posix *d, const struct sd_action *act, struct sd_event *ev)
{
    if (act->type == SD_ACT_READY && d->o->reprovision_reason && !d->reprovision_sent) {
        d->reprovision_sent = true;
        sd_posix_log(d, "ready; reprovision (%s)", d->o->reprovision_reason);
        sd_posix_event(ev, SD_EV_REPROVISION);
        ev->reason = d->o->reprovision_reason;
        return false;
    }
    return true;
}

static enum sd_action_type sd_posix_loop(struct sd_posix *d)
{
    struct sd_state loaded;
    struct sd_event ev;
    struct sd_action act;

    sd_posix_boot(d, &ev, &loaded);
    for (;;) {
        sd_machine_step(&d->m, &ev, &act);
        if (sd_posix_stopped(d)) {
            d->out->stopped = true;
            snprintf(d->out->error, sizeof d->out->error, "stopped in phase %s",
                     sd_phase_name(sd_machine_phase(&d->m)));
            return SD_ACT_FAILED;
        }
        switch (act.type) {
        case SD_ACT_SEND:
            sd_posix_send(d, &act, &ev);
            break;
        case SD_ACT_SLEEP:
            sd_posix_sleep(d, &act, &ev);
            break;
        case SD_ACT_PERSIST:
            sd_posix_persist(d, &ev);
            break;
        case SD_ACT_WAIT:
            /* only NET_DOWN leads here, and this driver never sends it */
            snprintf(d->out->error, sizeof d->out->error, "the machine waits for an event this driver never sends");
            return SD_ACT_FAILED;
        case SD_ACT_READY:
        case SD_ACT_RETIRED:
        case SD_ACT_FAILED:
            if (sd_posix_finished(d, &act, &ev)) {
                if (act.type == SD_ACT_FAILED)
                    snprintf(d->out->error, sizeof d->out->error, "%s", sd_machine_error(&d->m));
                sd_posix_log(d, "done: %s", act.type == SD_ACT_READY     ? "ready"
                                            : act.type == SD_ACT_RETIRED ? "retired"
                                                                         : "failed");
                return act.type;
            }
            break;
        }
    }
}

enum sd_action_type sd_posix_run(const struct sd_config *cfg, const char *registration_id,
                                 const unsigned char *key, const struct sd_posix_opts *opts,
                                 struct sd_posix_result *out)
{
    static const struct sd_posix_opts none;
    struct sd_posix *d = calloc(1, sizeof *d); /* the machine is ~1 KiB: not on a small thread's stack */

    memset(out, 0, sizeof *out);
    out->action = SD_ACT_FAILED;
    out->loaded = SD_STORE_ABSENT;
    if (!d) {
        snprintf(out->error, sizeof out->error, "out of memory");
        return out->action;
    }
    d->o = opts ? opts : &none;
    d->out = out;
    d->start_ms = sd_posix_now_ms();
    if (sd_posix_setup(d, cfg, registration_id, key))
        out->action = sd_posix_loop(d);
    out->state = *sd_machine_state(&d->m);
    out->elapsed_ms = sd_posix_now_ms() - d->start_ms;
    sd_http_parser_free(d->parser);
    SSL_CTX_free(d->tls);
    free(d);
    return out->action;
}
