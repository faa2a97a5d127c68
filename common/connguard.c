/*
 * connguard.c - the connection guard of an evhttp listener: connection cap,
 * per-request read deadlines, idle keep-alive bound and a header check before
 * the body, as a bufferevent filter under evhttp (see connguard.h).
 *
 * Per connection the filter is in one of four states:
 *   BETWEEN  no byte of a request yet (idle, or its answer is being made)
 *   HEAD     reading a head, held back here until its empty line
 *   BODY     passing the body through (Content-Length or chunked framing)
 *   DISCARD  refused or cut: every further byte is dropped
 * One timer per connection carries the deadline of the current state.
 */
#include "connguard.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define CG_MARKER "X-Stampcp-Guard"
#define CG_OVERCAP_GRACE_MS 2000    /* an over-cap connection's head must come within this */
#define CG_RELEASE_POLL_MS 50       /* fallback poll: a drained transport releases a held head at once */
#define CG_LINGER_MS 2000           /* a refused connection's input is drained this long after its answer */

enum cg_state { CG_BETWEEN, CG_HEAD, CG_BODY, CG_DISCARD };
enum cg_timer { CG_T_NONE, CG_T_IDLE, CG_T_HEAD, CG_T_BODY, CG_T_CUT, CG_T_RELEASE };
enum cg_chunk { CK_SIZE, CK_EXT, CK_DATA, CK_DATA_END, CK_TRAILER };

struct cg_linger;

struct connguard {
    struct event_base *base;
    LIST_HEAD(, cg_linger) lingering;   /* refused connections being drained */
    struct connguard_opts o;
    char name[32];
    struct connguard_stats st;
    int64_t last_cap_log_ms;
    bool freeing;                   /* connguard_free ran: the last connection frees the guard */
};

struct cg_conn {
    struct connguard *g;
    struct bufferevent *bev;        /* the filter; owned by evhttp, owns this */
    struct bufferevent *transport;  /* under the filter; freed with it */
    struct event *timer;
    enum cg_timer timer_kind;
    enum cg_state state;
    bool over_cap;                  /* every head is answered 503 */
    bool refused;                   /* a refusal was handed to evhttp: linger after the close */
    bool awaiting;                  /* a request was handed to evhttp, no answer byte yet */
    bool head_started;              /* a non-CR/LF byte of the current head was seen */
    bool owe_write;                 /* evhttp wrote; its write callback waits for the transport to drain */
    int64_t owe_since_ms;           /* when owe_write was set: a client that stops reading is cut */
    struct evbuffer_cb_entry *out_cb;   /* on the transport's output */
    struct evbuffer_cb_entry *wrote_cb; /* on the filter's output (what evhttp writes) */
    struct event *kick;             /* moves evhttp's output on from the loop */
    struct evbuffer *head;          /* the head being read */
    size_t line_len;
    unsigned char last;
    struct evbuffer *pending;       /* a complete head held until the previous answer is out */
    enum cg_state pending_next;
    int64_t req_start_ms;
    int64_t body_left;              /* Content-Length framing */
    bool chunked;
    enum cg_chunk ck;
    int64_t ck_left;
    size_t ck_line;
    int ck_digits;
};

static const char *const cg_methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS",
                                         "TRACE", "CONNECT", "PATCH", NULL};

int connguard_status(enum connguard_reason r)
{
    switch (r) {
    case CONNGUARD_OK: return 200;
    case CONNGUARD_OVERLOADED: return 503;
    case CONNGUARD_TOO_LARGE: return 413;
    case CONNGUARD_HEAD_TOO_LARGE: return 431;
    case CONNGUARD_BAD_REQUEST: return 400;
    case CONNGUARD_TIMEOUT: return 408;
    case CONNGUARD_UNAUTHORIZED: return 401;
    case CONNGUARD_NOT_IMPLEMENTED: return 501;
    }
    return 400;
}

const char *connguard_default_code(enum connguard_reason r)
{
    switch (r) {
    case CONNGUARD_OK: return "ok";
    case CONNGUARD_OVERLOADED: return "overloaded";
    case CONNGUARD_TOO_LARGE: return "body_too_large";
    case CONNGUARD_HEAD_TOO_LARGE: return "headers_too_large";
    case CONNGUARD_BAD_REQUEST: return "bad_request";
    case CONNGUARD_TIMEOUT: return "request_timeout";
    case CONNGUARD_UNAUTHORIZED: return "unauthorized";
    case CONNGUARD_NOT_IMPLEMENTED: return "not_implemented";
    }
    return "bad_request";
}

static void cg_verdict(struct connguard_verdict *v, enum connguard_reason r, const char *code, const char *msg)
{
    v->reason = r;
    snprintf(v->code, sizeof v->code, "%s", code ? code : "");
    snprintf(v->message, sizeof v->message, "%s", msg ? msg : "");
}

/* ---- timers ---- */

static void cg_arm(struct cg_conn *c, enum cg_timer kind, int64_t ms)
{
    struct timeval tv;
    if (ms < 0) ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    c->timer_kind = kind;
    event_add(c->timer, &tv);
}

static void cg_disarm(struct cg_conn *c)
{
    c->timer_kind = CG_T_NONE;
    event_del(c->timer);
}

/* Close the connection without an answer: evhttp frees it (and c) from
 * its error callback, so c must not be used after this. */
static void cg_cut(struct cg_conn *c, short what)
{
    c->state = CG_DISCARD;
    bufferevent_trigger_event(c->bev, (short)(BEV_EVENT_READING | what), 0);
}

/* ---- request heads ---- */

static bool cg_is_token_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

const char *connguard_head_get(const struct connguard_head *h, const char *name)
{
    for (int i = 0; i < h->n; i++)
        if (strcasecmp(h->names[i], name) == 0)
            return h->values[i];
    return NULL;
}

/* Split s (the head, NUL-terminated, modified in place) into h; false with v
 * filled when the head is one the guard will not pass on. */
static bool cg_parse_head(char *s, struct connguard_head *h, struct connguard_verdict *v)
{
    char *line = s, *next, *sp1, *sp2;
    int n_cl = 0;
    const char *te = NULL;

    memset(h, 0, sizeof *h);
    h->content_length = -1;
    /* request line */
    next = strchr(line, '\n');
    if (next) *next++ = '\0';
    if (*line && line[strlen(line) - 1] == '\r') line[strlen(line) - 1] = '\0';
    sp1 = strchr(line, ' ');
    sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || sp1 == line || sp2 == sp1 + 1 || strchr(sp2 + 1, ' ') ||
        strncmp(sp2 + 1, "HTTP/1.", 7) != 0 || !(sp2[8] >= '0' && sp2[8] <= '9') || sp2[9] != '\0') {
        cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "the request line is malformed");
        return false;
    }
    *sp1 = *sp2 = '\0';
    h->method = line;
    h->target = sp1 + 1;
    for (const char *p = h->target; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "the request target is malformed");
            return false;
        }
    /* header lines */
    for (line = next; line && *line; line = next) {
        char *colon, *val, *end;
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (*line && line[strlen(line) - 1] == '\r') line[strlen(line) - 1] = '\0';
        if (*line == '\0')
            break;
        if (*line == ' ' || *line == '\t') {
            cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "folded header lines are not accepted");
            return false;
        }
        colon = strchr(line, ':');
        if (!colon || colon == line) {
            cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "a header line is malformed");
            return false;
        }
        for (const char *p = line; p < colon; p++)
            if (!cg_is_token_char((unsigned char)*p)) {
                cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "a header name is malformed");
                return false;
            }
        *colon = '\0';
        val = colon + 1;
        while (*val == ' ' || *val == '\t') val++;
        end = val + strlen(val);
        while (end > val && (end[-1] == ' ' || end[-1] == '\t')) *--end = '\0';
        if (h->n == CONNGUARD_MAX_HEADERS) {
            cg_verdict(v, CONNGUARD_HEAD_TOO_LARGE, NULL, "too many header lines");
            return false;
        }
        if (strcasecmp(line, CG_MARKER) == 0) {
            cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "a reserved header was sent");
            return false;
        }
        if (strcasecmp(line, "Content-Length") == 0) {
            int64_t cl;
            if (++n_cl > 1 || !util_parse_int64(val, 0, INT64_MAX / 2, &cl) || val[0] < '0' || val[0] > '9') {
                cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "Content-Length is malformed or repeated");
                return false;
            }
            h->content_length = cl;
        }
        if (strcasecmp(line, "Transfer-Encoding") == 0) {
            if (te) {
                cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "Transfer-Encoding is repeated");
                return false;
            }
            te = val;
        }
        h->names[h->n] = line;
        h->values[h->n] = val;
        h->n++;
    }
    if (te) {
        if (strcasecmp(te, "chunked") != 0) {
            cg_verdict(v, CONNGUARD_NOT_IMPLEMENTED, NULL, "only the chunked transfer coding is accepted");
            return false;
        }
        if (n_cl) {
            cg_verdict(v, CONNGUARD_BAD_REQUEST, NULL, "Content-Length and Transfer-Encoding together");
            return false;
        }
        h->chunked = true;
    }
    for (const char *const *m = cg_methods; *m; m++)
        if (strcmp(*m, h->method) == 0)
            return true;
    cg_verdict(v, CONNGUARD_NOT_IMPLEMENTED, NULL, "unknown method");
    return false;
}

/* The synthetic request that carries a refusal to the daemon's callback. */
static void cg_refusal_head(struct evbuffer *out, const char *method, const char *target,
                            const struct connguard_verdict *v)
{
    char msg[sizeof v->message];
    size_t i;
    static const char *const keep[] = {"GET", "POST", "PUT", "DELETE", "PATCH", NULL};
    const char *m = "GET";
    for (const char *const *k = keep; method && *k; k++)
        if (strcmp(*k, method) == 0) m = *k;
    if (!target || target[0] != '/' || strlen(target) > 1024)
        target = "/";
    for (const char *t = target; *t; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f) {
            target = "/";
            break;
        }
    for (i = 0; v->message[i] && i + 1 < sizeof msg; i++)
        msg[i] = (v->message[i] >= 0x20 && v->message[i] < 0x7f) ? v->message[i] : '?';
    msg[i] = '\0';
    evbuffer_add_printf(out, "%s %s HTTP/1.1\r\nHost: guard\r\nConnection: close\r\n" CG_MARKER ": %d %s %s\r\n\r\n",
                        m, target, (int)v->reason, v->code[0] ? v->code : "-", msg);
}

static bool cg_method_has_body(const char *m)
{
    return strcmp(m, "HEAD") != 0 && strcmp(m, "TRACE") != 0;
}

/* Hand over what is in out (a head, or a refusal) and move to state next;
 * held in c->pending instead while evhttp still owes the previous answer. */
static bool cg_hand(struct cg_conn *c, struct evbuffer *out, struct evbuffer *dst, enum cg_state next)
{
    struct connguard *g = c->g;
    c->state = next;
    if (c->awaiting) {
        c->pending = out;
        c->pending_next = next;
        cg_disarm(c);
        return false;
    }
    evbuffer_add_buffer(dst, out);
    evbuffer_free(out);
    if (next == CG_BETWEEN) {
        c->awaiting = true;
        cg_disarm(c);
    } else if (next == CG_BODY) {
        cg_arm(c, CG_T_BODY, c->req_start_ms + g->o.request_timeout_ms - util_mono_ms());
    } else if (next == CG_DISCARD) {
        /* evhttp answers and closes; this only backs that up */
        c->refused = true;
        cg_arm(c, CG_T_CUT, g->o.request_timeout_ms);
    }
    return true;
}

/* The head in c->head is complete: check it and hand it (or a refusal) on.
 * Returns whether bytes went to dst. */
/* No byte below 0x20 but CR, LF and HTAB, and no DEL. */
static bool cg_head_clean(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if ((ch < 0x20 && ch != '\r' && ch != '\n' && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

static bool cg_head_done(struct cg_conn *c, struct evbuffer *dst)
{
    struct connguard *g = c->g;
    size_t len = evbuffer_get_length(c->head);
    char *work = xmalloc(len + 1);
    struct connguard_head h;
    struct connguard_verdict v;
    struct evbuffer *out = evbuffer_new();
    bool ok, gave;

    if (!out) {
        log_error("event=out_of_memory");
        abort();
    }
    evbuffer_copyout(c->head, work, len);
    work[len] = '\0';
    memset(&v, 0, sizeof v);
    memset(&h, 0, sizeof h);
    /* The guard reads the head as a C string, evhttp line by line: a NUL (or
     * another control byte) would make them see two different requests. */
    ok = cg_head_clean(work, len);
    if (!ok)
        cg_verdict(&v, CONNGUARD_BAD_REQUEST, NULL, "the request head holds a control character");
    else
        ok = cg_parse_head(work, &h, &v);
    h.transport = c->transport;
    if (ok && c->over_cap) {
        cg_verdict(&v, CONNGUARD_OVERLOADED, NULL, "the server is at its connection limit; retry later");
        ok = false;
    }
    if (ok && cg_method_has_body(h.method) && h.content_length > g->o.max_body_bytes) {
        char msg[120];
        snprintf(msg, sizeof msg, "the request body is %lld bytes; the limit is %lld",
                 (long long)h.content_length, (long long)g->o.max_body_bytes);
        cg_verdict(&v, CONNGUARD_TOO_LARGE, NULL, msg);
        g->st.refused_size++;
        ok = false;
    }
    if (ok && g->o.check && !g->o.check(g->o.check_arg, &h, &v)) {
        g->st.refused_check++;
        ok = false;
    }
    if (ok) {
        evbuffer_add_buffer(out, c->head);
        if (!cg_method_has_body(h.method) || (!h.chunked && h.content_length <= 0)) {
            gave = cg_hand(c, out, dst, CG_BETWEEN);
        } else {
            c->chunked = h.chunked;
            c->body_left = h.content_length;
            c->ck = CK_SIZE;
            c->ck_left = 0;
            c->ck_line = 0;
            c->ck_digits = 0;
            gave = cg_hand(c, out, dst, CG_BODY);
        }
    } else {
        if (log_enabled(LOG_DEBUG))
            log_debug("event=request_refused listener=%s status=%d code=%s", g->name, connguard_status(v.reason),
                      v.code[0] ? v.code : connguard_default_code(v.reason));
        evbuffer_drain(c->head, len);
        cg_refusal_head(out, h.method, h.target, &v);
        gave = cg_hand(c, out, dst, CG_DISCARD);
    }
    free(work);
    c->head_started = false;
    c->line_len = 0;
    c->last = 0;
    return gave;
}

/* Move head bytes from src into c->head up to the end of the head. */
static bool cg_read_head(struct cg_conn *c, struct evbuffer *src, struct evbuffer *dst)
{
    struct connguard *g = c->g;
    size_t have = evbuffer_get_length(c->head);
    size_t n = evbuffer_get_length(src), i, from = 0;
    size_t room = g->o.max_header_bytes + 1 > have ? g->o.max_header_bytes + 1 - have : 1;
    const unsigned char *p;
    bool end = false;

    if (n > room) n = room;
    p = evbuffer_pullup(src, (ev_ssize_t)n);
    for (i = 0; i < n && !end; i++) {
        unsigned char ch = p[i];
        if (!c->head_started) {
            if (ch == '\r' || ch == '\n') {   /* empty lines before a request are ignored */
                from = i + 1;
                continue;
            }
            c->head_started = true;
        }
        if (ch == '\n') {
            end = c->line_len == 0 || (c->line_len == 1 && c->last == '\r');
            c->line_len = 0;
        } else {
            c->line_len++;
        }
        c->last = ch;
    }
    if (i > from)
        evbuffer_add(c->head, p + from, i - from);
    evbuffer_drain(src, i);
    if (evbuffer_get_length(c->head) > g->o.max_header_bytes) {
        struct connguard_verdict v;
        struct evbuffer *out = evbuffer_new();
        if (!out) {
            log_error("event=out_of_memory");
            abort();
        }
        cg_verdict(&v, CONNGUARD_HEAD_TOO_LARGE, NULL, "the request head is over the limit");
        evbuffer_drain(c->head, evbuffer_get_length(c->head));
        cg_refusal_head(out, NULL, NULL, &v);
        return cg_hand(c, out, dst, CG_DISCARD);
    }
    return end ? cg_head_done(c, dst) : false;
}

static int cg_hex(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* The request was read whole: evhttp owes the answer. */
static void cg_body_done(struct cg_conn *c)
{
    c->state = CG_BETWEEN;
    c->awaiting = true;
    cg_disarm(c);
}

/* Pass body bytes through; false if the chunk framing is broken (cut). */
static bool cg_read_body(struct cg_conn *c, struct evbuffer *src, struct evbuffer *dst)
{
    size_t n = evbuffer_get_length(src), i = 0;
    const unsigned char *p;
    if (!c->chunked) {
        if ((int64_t)n > c->body_left) n = (size_t)c->body_left;
        evbuffer_remove_buffer(src, dst, n);
        c->body_left -= (int64_t)n;
        if (c->body_left == 0)
            cg_body_done(c);
        return true;
    }
    p = evbuffer_pullup(src, (ev_ssize_t)n);
    while (i < n && c->state == CG_BODY) {
        unsigned char ch = p[i];
        switch (c->ck) {
        case CK_SIZE:
            if (cg_hex(ch) >= 0 && c->ck_digits < 15) {
                c->ck_left = c->ck_left * 16 + cg_hex(ch);
                c->ck_digits++;
            } else if (c->ck_digits > 0 && (ch == ';' || ch == ' ' || ch == '\t' || ch == '\r')) {
                c->ck = CK_EXT;
            } else if (c->ck_digits > 0 && ch == '\n') {
                c->ck = c->ck_left ? CK_DATA : CK_TRAILER;
                c->ck_line = 0;
            } else {
                return false;
            }
            i++;
            break;
        case CK_EXT:
            if (ch == '\n') {
                c->ck = c->ck_left ? CK_DATA : CK_TRAILER;
                c->ck_line = 0;
            } else if (++c->ck_line > 1024) {
                return false;
            }
            i++;
            break;
        case CK_DATA: {
            size_t take = n - i;
            if ((int64_t)take > c->ck_left) take = (size_t)c->ck_left;
            c->ck_left -= (int64_t)take;
            i += take;
            if (c->ck_left == 0) {
                c->ck = CK_DATA_END;
                c->ck_line = 0;
            }
            break;
        }
        case CK_DATA_END:       /* the CRLF after a chunk's data */
            if (ch == '\n') {
                c->ck = CK_SIZE;
                c->ck_digits = 0;
                c->ck_left = 0;
            } else if (ch != '\r' || ++c->ck_line > 1) {
                return false;
            }
            i++;
            break;
        case CK_TRAILER:
            if (ch == '\n') {
                if (c->ck_line == 0) {
                    i++;
                    evbuffer_remove_buffer(src, dst, i);
                    cg_body_done(c);
                    return true;
                }
                c->ck_line = 0;
            } else if (ch != '\r') {
                if (++c->ck_line > 8192)
                    return false;
            }
            i++;
            break;
        }
    }
    evbuffer_remove_buffer(src, dst, i);
    return true;
}

/* The input filter: transport -> evhttp. */
static enum bufferevent_filter_result cg_in(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
                                            enum bufferevent_flush_mode mode, void *ctx)
{
    struct cg_conn *c = ctx;
    struct connguard *g = c->g;
    bool gave = false;
    (void)limit; (void)mode;

    while (evbuffer_get_length(src) > 0 && !c->pending) {
        switch (c->state) {
        case CG_DISCARD:
            evbuffer_drain(src, evbuffer_get_length(src));
            break;
        case CG_BETWEEN:
            /* the first byte of a request starts its deadline */
            c->state = CG_HEAD;
            c->req_start_ms = util_mono_ms();
            c->head_started = false;
            c->line_len = 0;
            if (!c->over_cap)   /* an over-cap connection keeps its deadline from accept */
                cg_arm(c, CG_T_HEAD, g->o.header_timeout_ms);
            break;
        case CG_HEAD:
            if (cg_read_head(c, src, dst))
                gave = true;
            break;
        case CG_BODY:
            if (!cg_read_body(c, src, dst)) {
                /* broken chunk framing: evhttp sees it, fails the request and closes */
                evbuffer_add_buffer(dst, src);
                c->state = CG_DISCARD;
                gave = true;
                break;
            }
            gave = true;
            break;
        }
    }
    return gave ? BEV_OK : BEV_NEED_MORE;
}

/*
 * The output filter: evhttp -> transport, noting when an answer starts.
 * It never reports progress to the filter machinery (BEV_NEED_MORE), which
 * would run evhttp's write callback as soon as the bytes sit in the
 * transport's buffer - and evhttp frees a "Connection: close" connection
 * from that callback, dropping them. cg_transport_drained() runs it once
 * the transport has really written everything.
 */
static enum bufferevent_filter_result cg_out(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
                                             enum bufferevent_flush_mode mode, void *ctx)
{
    struct cg_conn *c = ctx;
    size_t n = evbuffer_get_length(src);
    (void)limit; (void)mode;
    if (n == 0)
        return BEV_NEED_MORE;
    if (evbuffer_add_buffer(dst, src) != 0)
        return BEV_ERROR;
    if (!c->owe_write)
        c->owe_since_ms = util_mono_ms();
    c->owe_write = true;
    if (c->awaiting) {
        c->awaiting = false;
        if (c->pending)
            cg_arm(c, CG_T_RELEASE, CG_RELEASE_POLL_MS);
        else if (c->state == CG_BETWEEN)
            cg_arm(c, CG_T_IDLE, c->g->o.idle_timeout_ms);
    } else if (c->state == CG_BETWEEN && c->timer_kind == CG_T_IDLE) {
        cg_arm(c, CG_T_IDLE, c->g->o.idle_timeout_ms);
    }
    return BEV_NEED_MORE;
}

/* evhttp added output. The filter machinery moves it only while EV_WRITE is
 * enabled, and evhttp writes a response before enabling it (and enabling
 * does not move anything): flush it from the loop. */
static void cg_output_added(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct cg_conn *c = arg;
    (void)buf;
    if (info->n_added > 0)
        event_active(c->kick, EV_TIMEOUT, 1);
}

static void cg_on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct cg_conn *c = arg;
    (void)fd; (void)what;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
        bufferevent_flush(c->bev, EV_WRITE, BEV_FLUSH);
}

/* The transport's output shrank: once it is empty, what evhttp wrote is out. */
static void cg_transport_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct cg_conn *c = arg;
    if (info->n_deleted == 0 || evbuffer_get_length(buf) > 0 || !c->owe_write)
        return;
    c->owe_write = false;
    if (c->state == CG_BETWEEN && c->timer_kind == CG_T_IDLE)
        cg_arm(c, CG_T_IDLE, c->g->o.idle_timeout_ms);
    if (c->pending && c->timer_kind == CG_T_RELEASE)
        cg_arm(c, CG_T_RELEASE, 0);     /* from the loop: cg_release may free c */
    /* deferred: evhttp may free the connection from it */
    bufferevent_trigger(c->bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
}

static bool cg_output_drained(struct cg_conn *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 &&
           evbuffer_get_length(bufferevent_get_output(c->transport)) == 0;
}

/* The previous answer is out: give evhttp the head it was waiting for,
 * then whatever followed it. c may be freed on return. */
static void cg_release(struct cg_conn *c)
{
    struct bufferevent *bev = c->bev;
    struct evbuffer *out = c->pending;
    enum cg_state next = c->pending_next;
    c->pending = NULL;
    c->state = next;
    c->req_start_ms = util_mono_ms();   /* its body deadline starts now, not while it was held */
    (void)cg_hand(c, out, bufferevent_get_input(bev), next);
    if (evbuffer_get_length(bufferevent_get_input(c->transport)) > 0)
        (void)cg_in(bufferevent_get_input(c->transport), bufferevent_get_input(bev), -1, BEV_NORMAL, c);
    bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
}

/* An answer that has not left within requestTimeoutMs: the client stopped
 * reading (evhttp's own write timeout never runs, the guard takes its output
 * at once). Cut the connection; true when it was cut (c is then gone). */
static bool cg_write_overdue(struct cg_conn *c)
{
    if (!c->owe_write || util_mono_ms() - c->owe_since_ms < c->g->o.request_timeout_ms)
        return false;
    c->g->st.timeouts_body++;
    log_info("event=response_write_timeout listener=%s ms=%d", c->g->name, c->g->o.request_timeout_ms);
    cg_cut(c, BEV_EVENT_TIMEOUT);
    return true;
}

static void cg_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct cg_conn *c = arg;
    struct connguard *g = c->g;
    enum cg_timer kind = c->timer_kind;
    (void)fd; (void)what;

    c->timer_kind = CG_T_NONE;
    switch (kind) {
    case CG_T_NONE:
        return;
    case CG_T_IDLE:
        if (c->state != CG_BETWEEN || c->awaiting || c->pending)
            return;
        if (!cg_output_drained(c)) {
            if (cg_write_overdue(c))
                return;
            cg_arm(c, CG_T_IDLE, g->o.idle_timeout_ms);
            return;
        }
        g->st.idle_closed++;
        cg_cut(c, BEV_EVENT_EOF);
        return;
    case CG_T_HEAD:
        g->st.timeouts_head++;
        if (c->state == CG_HEAD && !c->awaiting && !c->pending && !c->over_cap) {
            /* nothing of this request reached evhttp yet: answer 408 */
            struct connguard_verdict v;
            struct evbuffer *out = evbuffer_new();
            struct bufferevent *bev = c->bev;
            if (!out) {
                log_error("event=out_of_memory");
                abort();
            }
            log_info("event=request_head_timeout listener=%s ms=%d", g->name, g->o.header_timeout_ms);
            cg_verdict(&v, CONNGUARD_TIMEOUT, NULL, "the request headers did not arrive in time");
            evbuffer_drain(c->head, evbuffer_get_length(c->head));
            cg_refusal_head(out, NULL, NULL, &v);
            (void)cg_hand(c, out, bufferevent_get_input(bev), CG_DISCARD);
            bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
            return;
        }
        cg_cut(c, BEV_EVENT_TIMEOUT);
        return;
    case CG_T_BODY:
        g->st.timeouts_body++;
        log_info("event=request_body_timeout listener=%s ms=%d", g->name, g->o.request_timeout_ms);
        cg_cut(c, BEV_EVENT_TIMEOUT);
        return;
    case CG_T_CUT:
        cg_cut(c, BEV_EVENT_EOF);
        return;
    case CG_T_RELEASE:
        if (!c->pending)
            return;
        if (!cg_output_drained(c)) {
            if (cg_write_overdue(c))
                return;
            cg_arm(c, CG_T_RELEASE, CG_RELEASE_POLL_MS);
            return;
        }
        cg_release(c);
        return;
    }
}

/* ---- connections ---- */

/*
 * Lingering close of a refused connection: evhttp has sent the answer and
 * shut the socket down for writing; the client may still be sending the
 * body it announced. Closing now would answer those bytes with a reset,
 * which can destroy the answer in the client's receive queue before it is
 * read. So a duplicate of the socket keeps it open and drains (discards) its
 * input until EOF or CG_LINGER_MS.
 */
struct cg_linger {
    LIST_ENTRY(cg_linger) link;
    struct connguard *g;
    int fd;
    struct event *ev;
};

static void cg_linger_end(struct cg_linger *l)
{
    LIST_REMOVE(l, link);
    event_free(l->ev);
    close(l->fd);
    l->g->st.lingering--;
    free(l);
}

static void cg_on_linger(evutil_socket_t fd, short what, void *arg)
{
    struct cg_linger *l = arg;
    char buf[4096];
    ssize_t n = 0;
    if (what & EV_READ) {
        while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
            ;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;   /* more may come: the persistent timeout ends it */
    }
    cg_linger_end(l);
}

static void cg_linger(struct cg_conn *c)
{
    struct connguard *g = c->g;
    struct timeval tv = {CG_LINGER_MS / 1000, (CG_LINGER_MS % 1000) * 1000};
    evutil_socket_t fd = bufferevent_getfd(c->transport);
    struct cg_linger *l;
    int dupfd;
    if (fd < 0 || g->st.lingering >= g->o.max_connections || (dupfd = dup(fd)) < 0)
        return;
    (void)shutdown(dupfd, SHUT_WR);
    l = xcalloc(1, sizeof *l);
    l->g = g;
    l->fd = dupfd;
    l->ev = event_new(g->base, dupfd, EV_READ | EV_PERSIST, cg_on_linger, l);
    if (!l->ev || event_add(l->ev, &tv) != 0) {
        if (l->ev) event_free(l->ev);
        close(dupfd);
        free(l);
        return;
    }
    LIST_INSERT_HEAD(&g->lingering, l, link);
    g->st.lingering++;
}

static void cg_conn_free(void *arg)
{
    struct cg_conn *c = arg;
    /* the transport outlives this by a moment (the filter holds it until after) */
    if (c->out_cb)
        evbuffer_remove_cb_entry(bufferevent_get_output(c->transport), c->out_cb);
    event_free(c->kick);
    if (c->refused && !c->g->freeing)
        cg_linger(c);
    if (c->over_cap)
        c->g->st.refusing--;
    else
        c->g->st.open--;
    event_free(c->timer);
    evbuffer_free(c->head);
    if (c->pending)
        evbuffer_free(c->pending);
    /* At shutdown the daemon frees the guard before the event base frees the
     * connections still open: the last of them frees the guard. */
    if (c->g->freeing && c->g->st.open <= 0 && c->g->st.refusing <= 0)
        free(c->g);
    free(c);
}

struct bufferevent *connguard_wrap(struct connguard *g, struct event_base *base, struct bufferevent *transport)
{
    struct cg_conn *c = xcalloc(1, sizeof *c);
    int64_t now = util_mono_ms();

    c->g = g;
    if (!transport)
        transport = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->transport = transport;
    c->head = evbuffer_new();
    c->timer = event_new(base, -1, 0, cg_on_timer, c);
    c->bev = transport && c->head && c->timer
                 ? bufferevent_filter_new(transport, cg_in, cg_out, BEV_OPT_CLOSE_ON_FREE, cg_conn_free, c)
                 : NULL;
    if (!c->bev) {
        log_error("event=out_of_memory where=connguard_wrap");
        abort();
    }
    c->out_cb = evbuffer_add_cb(bufferevent_get_output(transport), cg_transport_drained, c);
    c->wrote_cb = evbuffer_add_cb(bufferevent_get_output(c->bev), cg_output_added, c);
    c->kick = event_new(base, -1, 0, cg_on_kick, c);
    if (!c->out_cb || !c->wrote_cb || !c->kick) {
        log_error("event=out_of_memory where=connguard_wrap");
        abort();
    }
    /* a client that sends heads faster than they are answered stops being read here */
    bufferevent_setwatermark(transport, EV_READ, 0, g->o.max_header_bytes + 64 * 1024);
    if (g->st.open < g->o.max_connections) {
        g->st.open++;
        cg_arm(c, CG_T_IDLE, g->o.idle_timeout_ms);
        return c->bev;
    }
    c->over_cap = true;
    g->st.refusing++;
    if (now - g->last_cap_log_ms >= 10000) {
        g->last_cap_log_ms = now;
        log_warn("event=connection_cap_reached listener=%s max_connections=%d refused_so_far=%llu",
                 g->name, g->o.max_connections, (unsigned long long)(g->st.refused_cap + g->st.cut_cap));
    }
    if (g->st.refusing <= g->o.max_connections) {
        /* answered 503 once its head is in (answering before it could
         * reset the connection under the client's own request) */
        g->st.refused_cap++;
        cg_arm(c, CG_T_HEAD, g->o.header_timeout_ms < CG_OVERCAP_GRACE_MS ? g->o.header_timeout_ms
                                                                          : CG_OVERCAP_GRACE_MS);
    } else {
        g->st.cut_cap++;
        cg_arm(c, CG_T_CUT, 0);
    }
    return c->bev;
}

struct bufferevent *connguard_bevcb(struct event_base *base, void *arg)
{
    return connguard_wrap(arg, base, NULL);
}

struct bufferevent *connguard_transport(struct bufferevent *bev)
{
    struct bufferevent *under = bev ? bufferevent_get_underlying(bev) : NULL;
    return under ? under : bev;
}

bool connguard_refusal(struct evhttp_request *req, struct connguard_verdict *v, int *status)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), CG_MARKER);
    int reason, used = 0;
    char code[sizeof v->code];
    if (!h || sscanf(h, "%d %47s %n", &reason, code, &used) < 2 || reason <= CONNGUARD_OK ||
        reason > CONNGUARD_NOT_IMPLEMENTED)
        return false;
    v->reason = (enum connguard_reason)reason;
    snprintf(v->code, sizeof v->code, "%s", strcmp(code, "-") == 0 ? connguard_default_code(v->reason) : code);
    snprintf(v->message, sizeof v->message, "%s", used > 0 ? h + used : "");
    *status = connguard_status(v->reason);
    return true;
}

struct connguard *connguard_new(struct event_base *base, const struct connguard_opts *o)
{
    struct connguard *g = xcalloc(1, sizeof *g);
    g->base = base;
    LIST_INIT(&g->lingering);
    g->o = *o;
    snprintf(g->name, sizeof g->name, "%s", o->name ? o->name : "http");
    g->o.name = g->name;
    if (g->o.max_connections < 1) g->o.max_connections = 1;
    if (g->o.header_timeout_ms < 1) g->o.header_timeout_ms = 1;
    if (g->o.request_timeout_ms < g->o.header_timeout_ms) g->o.request_timeout_ms = g->o.header_timeout_ms;
    if (g->o.idle_timeout_ms < 1) g->o.idle_timeout_ms = 1;
    if (g->o.max_header_bytes < 256) g->o.max_header_bytes = 256;
    return g;
}

void connguard_free(struct connguard *g)
{
    if (!g)
        return;
    while (!LIST_EMPTY(&g->lingering))
        cg_linger_end(LIST_FIRST(&g->lingering));
    if (g->st.open > 0 || g->st.refusing > 0) {
        g->freeing = true;          /* cg_conn_free of the last connection frees it */
        return;
    }
    free(g);
}

void connguard_stats(const struct connguard *g, struct connguard_stats *out)
{
    *out = g->st;
}
