/*
 * cpload.c - a load generator for the router's device routes.
 *
 *   cpload --url http://127.0.0.1:PORT --tenant ID --key ENROLLMENTKEY_B64 --devices N
 *          [--prefix dev-] [--start K] [--concurrency 64] [--requests M | --duration S]
 *          [--max-seconds S] [--timeout-ms MS] [--mode locate] [--json] [--allow-errors]
 *
 * Request k goes to device start + (k mod N), so "--requests N" asks every
 * device once (first-time provisions) and "--duration S" cycles over the
 * devices again and again (repeat lookups of placed devices).
 *
 * One libevent loop drives --concurrency keep-alive connections, each with one
 * request in flight.  Requests are raw HTTP/1.1 written from buffers prepared
 * before the clock starts (SAS tokens included: HMAC work on the generator's
 * side would otherwise be measured as server latency), and answers are parsed
 * here (status line, Content-Length or chunked body).  The run is bounded by
 * the request count, the duration and --max-seconds (default 600), whichever
 * comes first, so it always stops by itself.
 *
 * Exit status: 0 when every answer was 200 (or --allow-errors), 1 otherwise,
 * 2 on a usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "sas.h"
#include "util.h"

#define MAX_STATUS 600

enum parse_state { P_STATUS, P_HEADERS, P_BODY, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_CRLF, P_TRAILERS };

struct load;

struct conn {
    struct load *L;
    struct bufferevent *bev;
    bool connected;
    bool counted;         /* its first connect counted towards the start */
    bool busy;            /* a request is in flight */
    int64_t sent_us;
    enum parse_state ps;
    int status;
    int64_t body_left;    /* Content-Length or current chunk */
    bool chunked;
    bool close_after;     /* the server said Connection: close */
    struct event *retry;  /* reconnect after a failed connect */
};

struct load {
    struct event_base *base;
    struct sockaddr_storage addr;
    socklen_t addrlen;

    /* the prepared requests, one per device */
    char **req;
    size_t *reqlen;
    int64_t ndev, start;

    int concurrency;
    int64_t max_requests;  /* 0: unbounded (duration mode) */
    double duration_s;     /* 0: none */
    double max_seconds;
    int timeout_ms;

    struct conn *conns;
    int connected, open_conns;
    bool running, stopping, aborted;
    int64_t issued, completed;
    int64_t t0_us, tlast_us;
    uint64_t status_count[MAX_STATUS];
    uint64_t transport_errors;  /* answers that never came: reset, timeout, garbage */
    uint64_t connect_errors;
    uint64_t reconnects;
    uint32_t *lat_us;
    size_t nlat, caplat;
    struct event *stop_timer, *grace_timer, *sig_int, *sig_term;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void conn_open(struct conn *c);
static void conn_send_next(struct conn *c);
static void load_maybe_done(struct load *L);

/* ---------------------------------------------------------------- bookkeeping */

static void record(struct load *L, int status, int64_t lat)
{
    if (L->nlat == L->caplat) {
        L->caplat = L->caplat ? L->caplat * 2 : 65536;
        L->lat_us = xrealloc(L->lat_us, L->caplat * sizeof *L->lat_us);
    }
    L->lat_us[L->nlat++] = (uint32_t)(lat < 0 ? 0 : lat > UINT32_MAX ? UINT32_MAX : lat);
    if (status > 0 && status < MAX_STATUS)
        L->status_count[status]++;
    else
        L->transport_errors++;
    L->completed++;
    L->tlast_us = now_us();
}

static void conn_close(struct conn *c)
{
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        c->L->open_conns--;
    }
    c->connected = false;
    c->busy = false;
}

/* The request in flight (if any) failed without an answer; reconnect unless the run is over. */
static void conn_fail(struct conn *c)
{
    struct load *L = c->L;
    bool was_busy = c->busy;
    if (was_busy)
        record(L, 0, now_us() - c->sent_us);
    conn_close(c);
    if (!L->stopping && !L->aborted) {
        L->reconnects++;
        conn_open(c);
    }
    load_maybe_done(L);
}

static void load_stop(struct load *L)
{
    struct timeval tv;
    if (L->stopping)
        return;
    L->stopping = true;
    /* wait for the answers in flight, but not forever */
    tv.tv_sec = L->timeout_ms / 1000;
    tv.tv_usec = (L->timeout_ms % 1000) * 1000;
    evtimer_add(L->grace_timer, &tv);
    for (int i = 0; i < L->concurrency; i++) {
        struct conn *c = &L->conns[i];
        if (c->retry)
            evtimer_del(c->retry);
        if (!c->busy)
            conn_close(c);
    }
    load_maybe_done(L);
}

static void load_maybe_done(struct load *L)
{
    if (L->stopping && L->open_conns == 0)
        event_base_loopbreak(L->base);
}

/* ---------------------------------------------------------------- responses */

static void on_answer(struct conn *c)
{
    struct load *L = c->L;
    record(L, c->status, now_us() - c->sent_us);
    c->busy = false;
    if (c->close_after) {
        conn_close(c);
        if (!L->stopping) {
            L->reconnects++;
            conn_open(c);
        }
        load_maybe_done(L);
        return;
    }
    conn_send_next(c);
}

static bool parse_status_line(struct conn *c, const char *line)
{
    /* HTTP/1.x NNN reason */
    if (strncmp(line, "HTTP/1.", 7) != 0 || strlen(line) < 12 || line[8] != ' ')
        return false;
    if (line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' || line[11] < '0' || line[11] > '9')
        return false;
    c->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    c->close_after = line[7] == '0';   /* HTTP/1.0 closes unless told otherwise */
    c->body_left = -1;
    c->chunked = false;
    return true;
}

/* Whether the header value v holds the token word (case-insensitively). */
static bool has_token(const char *v, const char *word)
{
    size_t n = strlen(word);
    for (; *v; v++)
        if (strncasecmp(v, word, n) == 0)
            return true;
    return false;
}

static bool parse_header(struct conn *c, const char *line)
{
    const char *colon = strchr(line, ':');
    const char *v;
    size_t n;
    if (!colon)
        return false;
    n = (size_t)(colon - line);
    v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (n == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
        char *end;
        long long cl = strtoll(v, &end, 10);
        if (end == v || cl < 0)
            return false;
        c->body_left = cl;
    } else if (n == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
        if (has_token(v, "chunked"))
            c->chunked = true;
    } else if (n == 10 && strncasecmp(line, "Connection", 10) == 0) {
        if (has_token(v, "close"))
            c->close_after = true;
        else if (has_token(v, "keep-alive"))
            c->close_after = false;
    }
    return true;
}

/* Consume what the input holds; returns false on a protocol error. */
static bool conn_parse(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        char *line;
        size_t n;
        switch (c->ps) {
        case P_STATUS:
        case P_HEADERS:
        case P_CHUNK_SIZE:
        case P_CHUNK_CRLF:
        case P_TRAILERS:
            line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
            if (!line) {
                if (evbuffer_get_length(in) > 65536)
                    return false;
                return true;
            }
            if (!c->busy) {
                free(line);
                return false;   /* bytes nobody asked for */
            }
            if (c->ps == P_STATUS) {
                bool ok = parse_status_line(c, line);
                free(line);
                if (!ok)
                    return false;
                c->ps = P_HEADERS;
            } else if (c->ps == P_HEADERS) {
                if (n == 0) {
                    free(line);
                    if (c->chunked) {
                        c->ps = P_CHUNK_SIZE;
                    } else if (c->body_left > 0) {
                        c->ps = P_BODY;
                    } else if (c->body_left < 0 && c->status >= 200 && c->status != 204 && c->status != 304) {
                        return false;   /* a body delimited by close: not a keep-alive peer */
                    } else {
                        c->ps = P_STATUS;
                        on_answer(c);
                        return true;
                    }
                } else {
                    bool ok = parse_header(c, line);
                    free(line);
                    if (!ok)
                        return false;
                }
            } else if (c->ps == P_CHUNK_SIZE) {
                char *end;
                long long sz = strtoll(line, &end, 16);
                bool ok = end != line && sz >= 0;
                free(line);
                if (!ok)
                    return false;
                c->body_left = sz;
                c->ps = sz == 0 ? P_TRAILERS : P_CHUNK_DATA;
            } else if (c->ps == P_CHUNK_CRLF) {
                free(line);
                if (n != 0)
                    return false;
                c->ps = P_CHUNK_SIZE;
            } else {   /* P_TRAILERS */
                free(line);
                if (n == 0) {
                    c->ps = P_STATUS;
                    on_answer(c);
                    return true;
                }
            }
            break;
        case P_BODY:
        case P_CHUNK_DATA: {
            size_t have = evbuffer_get_length(in);
            size_t take = have < (size_t)c->body_left ? have : (size_t)c->body_left;
            evbuffer_drain(in, take);
            c->body_left -= (int64_t)take;
            if (c->body_left > 0)
                return true;
            if (c->ps == P_CHUNK_DATA) {
                c->ps = P_CHUNK_CRLF;
                break;
            }
            c->ps = P_STATUS;
            on_answer(c);
            return true;
        }
        }
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    (void)bev;
    if (!conn_parse(c))
        conn_fail(c);
}

/* ---------------------------------------------------------------- requests */

static void conn_send_next(struct conn *c)
{
    struct load *L = c->L;
    int64_t k, dev;
    if (L->stopping || !L->running) {
        if (L->stopping)
            conn_close(c);
        load_maybe_done(L);
        return;
    }
    if (L->max_requests > 0 && L->issued >= L->max_requests) {
        conn_close(c);
        if (L->open_conns == 0)
            load_stop(L);
        return;
    }
    k = L->issued++;
    dev = k % L->ndev;
    c->busy = true;
    c->ps = P_STATUS;
    c->sent_us = now_us();
    if (bufferevent_write(c->bev, L->req[dev], L->reqlen[dev]) != 0)
        conn_fail(c);
}

static void load_begin(struct load *L)
{
    L->running = true;
    L->t0_us = L->tlast_us = now_us();
    if (L->duration_s > 0 || L->max_seconds > 0) {
        double s = L->duration_s > 0 && L->duration_s < L->max_seconds ? L->duration_s : L->max_seconds;
        struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
        evtimer_add(L->stop_timer, &tv);
    }
    for (int i = 0; i < L->concurrency; i++)
        if (L->conns[i].connected)
            conn_send_next(&L->conns[i]);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    struct load *L = c->L;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        (void)setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->connected = true;
        if (!L->running) {
            if (!c->counted) {
                c->counted = true;
                L->connected++;
            }
            if (L->connected == L->concurrency)
                load_begin(L);
        } else {
            conn_send_next(c);
        }
        return;
    }
    if (!c->connected) {
        /* connect failed: try again shortly (the run's deadline bounds this) */
        L->connect_errors++;
        conn_close(c);
        if (!L->running && L->connect_errors > (uint64_t)L->concurrency * 5) {
            fprintf(stderr, "cpload: cannot connect (%s)\n", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
            L->aborted = true;
            event_base_loopbreak(L->base);
            return;
        }
        if (!L->stopping) {
            struct timeval tv = {0, 100000};
            evtimer_add(c->retry, &tv);
        }
        load_maybe_done(L);
        return;
    }
    /* EOF, error or read timeout on an established connection */
    if (!c->busy && !L->stopping) {
        conn_close(c);   /* the server closed an idle keep-alive connection */
        L->reconnects++;
        conn_open(c);
        return;
    }
    conn_fail(c);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_open(arg);
}

static void conn_open(struct conn *c)
{
    struct load *L = c->L;
    struct timeval tv = {L->timeout_ms / 1000, (L->timeout_ms % 1000) * 1000};
    c->bev = bufferevent_socket_new(L->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        fprintf(stderr, "cpload: bufferevent_socket_new failed\n");
        exit(1);
    }
    L->open_conns++;
    c->connected = false;
    c->busy = false;
    c->ps = P_STATUS;
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&L->addr, (int)L->addrlen) != 0)
        on_event(c->bev, BEV_EVENT_ERROR, c);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    load_stop(arg);
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    (void)fd;
    (void)what;
    /* answers still missing: count them as transport errors */
    for (int i = 0; i < L->concurrency; i++) {
        struct conn *c = &L->conns[i];
        if (c->busy)
            record(L, 0, now_us() - c->sent_us);
        conn_close(c);
    }
    event_base_loopbreak(L->base);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    load_stop(arg);
}

/* ---------------------------------------------------------------- setup and report */

static void usage(void)
{
    fprintf(stderr,
            "usage: cpload --url http://HOST:PORT --tenant ID --key ENROLLMENTKEY_B64 --devices N\n"
            "              [--prefix dev-] [--start K] [--concurrency 64] [--requests M | --duration S]\n"
            "              [--max-seconds 600] [--timeout-ms 10000] [--mode locate] [--json] [--allow-errors]\n"
            "  --requests M   stop after M requests (default: N, each device once)\n"
            "  --duration S   stop after S seconds (devices are asked again and again)\n");
    exit(2);
}

static int64_t arg_int(const char *name, const char *v, int64_t min, int64_t max)
{
    int64_t x;
    if (!v || !util_parse_int64(v, min, max, &x)) {
        fprintf(stderr, "cpload: %s wants an integer in [%" PRId64 ", %" PRId64 "]\n", name, min, max);
        exit(2);
    }
    return x;
}

static double arg_seconds(const char *name, const char *v)
{
    char *end;
    double d;
    if (!v)
        usage();
    d = strtod(v, &end);
    if (end == v || *end || !(d > 0) || d > 86400) {
        fprintf(stderr, "cpload: %s wants seconds in (0, 86400]\n", name);
        exit(2);
    }
    return d;
}

static bool resolve(struct load *L, const char *url, char *hostport, size_t hplen)
{
    char host[256], portstr[16];
    int port;
    const char *p;
    size_t n;
    struct addrinfo hints, *res = NULL;
    if (strncmp(url, "http://", 7) != 0)
        return false;
    p = url + 7;
    n = strcspn(p, "/");
    if (n == 0 || n >= hplen)
        return false;
    memcpy(hostport, p, n);
    hostport[n] = '\0';
    if (p[n] && strcmp(p + n, "/") != 0)
        return false;   /* the path comes from --mode */
    if (!util_parse_hostport(hostport, host, sizeof host, &port))
        return false;
    snprintf(portstr, sizeof portstr, "%d", port);
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || !res)
        return false;
    memcpy(&L->addr, res->ai_addr, res->ai_addrlen);
    L->addrlen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const uint32_t *v, size_t n, double p)
{
    size_t i;
    if (n == 0)
        return 0;
    i = (size_t)(p / 100.0 * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i] / 1000.0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *tenant = NULL, *key_b64 = NULL, *prefix = "dev-", *mode = "locate";
    char hostport[300];
    unsigned char key[128];
    int keylen;
    bool json = false, allow_errors = false, have_requests = false;
    int64_t expiry;
    struct load L;
    uint64_t non200 = 0;
    double secs, rps;

    memset(&L, 0, sizeof L);
    L.ndev = -1;
    L.concurrency = 64;
    L.max_seconds = 600;
    L.timeout_ms = 10000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            json = true;
            continue;
        }
        if (strcmp(a, "--allow-errors") == 0) {
            allow_errors = true;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            usage();
        if (!v)
            usage();
        i++;
        if (strcmp(a, "--url") == 0)
            url = v;
        else if (strcmp(a, "--tenant") == 0)
            tenant = v;
        else if (strcmp(a, "--key") == 0)
            key_b64 = v;
        else if (strcmp(a, "--devices") == 0)
            L.ndev = arg_int(a, v, 1, 100000000);
        else if (strcmp(a, "--prefix") == 0)
            prefix = v;
        else if (strcmp(a, "--start") == 0)
            L.start = arg_int(a, v, 0, INT64_MAX / 2);
        else if (strcmp(a, "--concurrency") == 0)
            L.concurrency = (int)arg_int(a, v, 1, 10000);
        else if (strcmp(a, "--requests") == 0) {
            L.max_requests = arg_int(a, v, 1, INT64_MAX / 2);
            have_requests = true;
        } else if (strcmp(a, "--duration") == 0)
            L.duration_s = arg_seconds(a, v);
        else if (strcmp(a, "--max-seconds") == 0)
            L.max_seconds = arg_seconds(a, v);
        else if (strcmp(a, "--timeout-ms") == 0)
            L.timeout_ms = (int)arg_int(a, v, 1, 3600000);
        else if (strcmp(a, "--mode") == 0)
            mode = v;
        else {
            fprintf(stderr, "cpload: unknown option %s\n", a);
            usage();
        }
    }
    if (!url || !tenant || !key_b64 || L.ndev < 1)
        usage();
    if (have_requests && L.duration_s > 0) {
        fprintf(stderr, "cpload: --requests and --duration exclude each other\n");
        exit(2);
    }
    if (strcmp(mode, "locate") != 0) {
        fprintf(stderr, "cpload: unknown mode '%s' (known: locate)\n", mode);
        exit(2);
    }
    if (!have_requests && L.duration_s <= 0)
        L.max_requests = L.ndev;
    if (!resolve(&L, url, hostport, sizeof hostport)) {
        fprintf(stderr, "cpload: --url wants http://HOST:PORT (resolvable), got '%s'\n", url);
        exit(2);
    }
    keylen = sas_b64_decode(key_b64, key, sizeof key);
    if (keylen <= 0) {
        fprintf(stderr, "cpload: --key is not base64\n");
        exit(2);
    }
    if (strlen(tenant) > 64 || strlen(prefix) > 100) {
        fprintf(stderr, "cpload: tenant or prefix too long\n");
        exit(2);
    }

    /* Every request, prepared before the clock starts. */
    expiry = (int64_t)time(NULL) + 3600 + (int64_t)(L.duration_s > 0 ? L.duration_s : L.max_seconds);
    L.req = xcalloc((size_t)L.ndev, sizeof *L.req);
    L.reqlen = xcalloc((size_t)L.ndev, sizeof *L.reqlen);
    for (int64_t d = 0; d < L.ndev; d++) {
        char regid[160], sr[300], token[1200];
        unsigned char dk[SAS_KEY_LEN];
        snprintf(regid, sizeof regid, "%s%" PRId64, prefix, L.start + d);
        snprintf(sr, sizeof sr, "%s/registrations/%s", tenant, regid);
        sas_derive_key(key, (size_t)keylen, regid, dk);
        sas_build(sr, dk, sizeof dk, expiry, "registration", token, sizeof token);
        L.req[d] = xasprintf("POST /v1/tenants/%s/registrations/%s/%s HTTP/1.1\r\n"
                             "Host: %s\r\n"
                             "Authorization: %s\r\n"
                             "Content-Length: 0\r\n"
                             "\r\n",
                             tenant, regid, mode, hostport, token);
        L.reqlen[d] = strlen(L.req[d]);
    }

    signal(SIGPIPE, SIG_IGN);
    L.base = event_base_new();
    if (!L.base) {
        fprintf(stderr, "cpload: event_base_new failed\n");
        return 1;
    }
    L.stop_timer = evtimer_new(L.base, on_stop, &L);
    L.grace_timer = evtimer_new(L.base, on_grace, &L);
    L.sig_int = evsignal_new(L.base, SIGINT, on_signal, &L);
    L.sig_term = evsignal_new(L.base, SIGTERM, on_signal, &L);
    evsignal_add(L.sig_int, NULL);
    evsignal_add(L.sig_term, NULL);
    L.conns = xcalloc((size_t)L.concurrency, sizeof *L.conns);
    for (int i = 0; i < L.concurrency; i++) {
        L.conns[i].L = &L;
        L.conns[i].retry = evtimer_new(L.base, on_retry, &L.conns[i]);
    }
    for (int i = 0; i < L.concurrency; i++)
        conn_open(&L.conns[i]);
    event_base_dispatch(L.base);

    if (L.aborted)
        return 1;
    secs = (double)(L.tlast_us - L.t0_us) / 1e6;
    if (secs <= 0)
        secs = 1e-6;
    rps = (double)L.completed / secs;
    qsort(L.lat_us, L.nlat, sizeof *L.lat_us, cmp_u32);
    for (int s = 0; s < MAX_STATUS; s++)
        if (s != 200)
            non200 += L.status_count[s];
    non200 += L.transport_errors;

    if (json) {
        printf("{\"mode\":\"%s\",\"concurrency\":%d,\"devices\":%" PRId64 ",\"start\":%" PRId64
               ",\"requests\":%" PRId64 ",\"seconds\":%.3f,\"rps\":%.1f,"
               "\"latencyMs\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},\"status\":{",
               mode, L.concurrency, L.ndev, L.start, L.completed, secs, rps, pct_ms(L.lat_us, L.nlat, 50),
               pct_ms(L.lat_us, L.nlat, 90), pct_ms(L.lat_us, L.nlat, 99),
               L.nlat ? L.lat_us[L.nlat - 1] / 1000.0 : 0.0);
        bool first = true;
        for (int s = 0; s < MAX_STATUS; s++) {
            if (!L.status_count[s])
                continue;
            printf("%s\"%d\":%" PRIu64, first ? "" : ",", s, L.status_count[s]);
            first = false;
        }
        printf("},\"transportErrors\":%" PRIu64 ",\"connectErrors\":%" PRIu64 ",\"reconnects\":%" PRIu64
               ",\"non200\":%" PRIu64 "}\n",
               L.transport_errors, L.connect_errors, L.reconnects, non200);
    } else {
        printf("cpload %s: %s, tenant %s, devices %s%" PRId64 "..%s%" PRId64 ", %d connections\n", mode, url,
               tenant, prefix, L.start, prefix, L.start + L.ndev - 1, L.concurrency);
        printf("%10s %9s %10s %9s %9s %9s %9s\n", "requests", "seconds", "req/s", "p50 ms", "p90 ms", "p99 ms",
               "max ms");
        printf("%10" PRId64 " %9.2f %10.1f %9.2f %9.2f %9.2f %9.2f\n", L.completed, secs, rps,
               pct_ms(L.lat_us, L.nlat, 50), pct_ms(L.lat_us, L.nlat, 90), pct_ms(L.lat_us, L.nlat, 99),
               L.nlat ? L.lat_us[L.nlat - 1] / 1000.0 : 0.0);
        printf("status:");
        for (int s = 0; s < MAX_STATUS; s++)
            if (L.status_count[s])
                printf(" %d=%" PRIu64, s, L.status_count[s]);
        if (L.transport_errors)
            printf(" no-answer=%" PRIu64, L.transport_errors);
        printf("\n");
        if (L.connect_errors || L.reconnects)
            printf("connect errors %" PRIu64 ", reconnects %" PRIu64 "\n", L.connect_errors, L.reconnects);
    }

    for (int i = 0; i < L.concurrency; i++)
        if (L.conns[i].retry)
            event_free(L.conns[i].retry);
    event_free(L.stop_timer);
    event_free(L.grace_timer);
    event_free(L.sig_int);
    event_free(L.sig_term);
    event_base_free(L.base);
    for (int64_t d = 0; d < L.ndev; d++)
        free(L.req[d]);
    free(L.req);
    free(L.reqlen);
    free(L.lat_us);
    free(L.conns);
    if (L.completed == 0)
        return 1;
    return non200 == 0 || allow_errors ? 0 : 1;
}
