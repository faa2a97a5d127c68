/*
 * dps_client.c - one registration = one operation object with its own TLS
 * connection (libevent can't reconnect an SSL bufferevent), a poll timer and
 * a deadline. States: PUT -> (WAIT -> POLL)* -> DONE. The connection is freed
 * from a deferred event, never inside its own request callback.
 */
#include "dps_client.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "log.h"
#include "tls.h"

#define DPS_API_VERSION "2019-03-31"
#define DPS_DEFAULT_POLL_S 2
#define DPS_MAX_POLL_S 10

enum dps_op_state { OP_PUT, OP_WAIT, OP_POLL, OP_DONE };

struct dps_op;
LIST_HEAD(dps_op_list, dps_op);

struct dps_client {
    struct event_base *base;
    SSL_CTX *ctx;
    int timeout_ms;
    struct dps_op_list live;   /* operations in flight, freed with the client */
};

struct dps_op {
    LIST_ENTRY(dps_op) link;
    struct dps_client *c;
    enum dps_op_state state;
    char host[256];
    int port;
    char hostport[300];
    char scope[80], regid[140], sas[700], operation_id[200];
    char *body;                    /* the PUT body */
    struct evhttp_connection *conn;
    struct event *poll_timer, *deadline, *reap;
    struct dps_outcome out;
    json_t *reply;                 /* the last answer's JSON (owned) */
    dps_cb cb;
    void *arg;
};

static void op_send(struct dps_op *op);

static void op_free(struct dps_op *op)
{
    LIST_REMOVE(op, link);
    if (op->conn) evhttp_connection_free(op->conn);
    event_free(op->poll_timer);
    event_free(op->deadline);
    event_free(op->reap);
    json_decref(op->reply);
    free(op->body);
    free(op);
}

/* Runs from the loop: report, then free everything. */
static void op_on_reap(evutil_socket_t fd, short what, void *arg)
{
    struct dps_op *op = arg;
    (void)fd; (void)what;
    op->out.registration_state = json_object_get(op->reply, "registrationState");
    op->cb(&op->out, op->arg);
    op_free(op);
}

static void op_finish(struct dps_op *op, enum dps_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void op_finish(struct dps_op *op, enum dps_status st, const char *fmt, ...)
{
    va_list ap;
    if (op->state == OP_DONE)
        return;
    op->state = OP_DONE;
    op->out.status = st;
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(op->out.error, sizeof op->out.error, fmt, ap);
        va_end(ap);
    }
    event_del(op->poll_timer);
    event_del(op->deadline);
    event_active(op->reap, EV_TIMEOUT, 1);
}

static void op_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    op_finish(arg, DPS_UNREACHABLE, "the DPS did not finish the registration in time");
}

static void op_on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    struct dps_op *op = arg;
    (void)fd; (void)what;
    op->state = OP_POLL;
    op_send(op);
}

static int op_retry_after(struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Retry-After");
    int64_t s;
    if (!h || !util_parse_int64(h, 0, 3600, &s))
        return -1;
    return (int)s;
}

static void op_read_state(struct dps_op *op, json_t *rs)
{
    const char *hub = json_string_value(json_object_get(rs, "assignedHub"));
    const char *dev = json_string_value(json_object_get(rs, "deviceId"));
    const char *sub = json_string_value(json_object_get(rs, "substatus"));
    const char *msg = json_string_value(json_object_get(rs, "errorMessage"));
    snprintf(op->out.assigned_hub, sizeof op->out.assigned_hub, "%s", hub ? hub : "");
    snprintf(op->out.device_id, sizeof op->out.device_id, "%s", dev ? dev : "");
    snprintf(op->out.substatus, sizeof op->out.substatus, "%s", sub ? sub : "");
    if (msg)
        snprintf(op->out.error, sizeof op->out.error, "%s", msg);
}

static void op_on_reply(struct evhttp_request *req, void *arg)
{
    struct dps_op *op = arg;
    struct evbuffer *in;
    const char *status, *opid;
    size_t len;
    int code, ra;
    json_t *j;

    if (op->state == OP_DONE)
        return;
    if (!req || (code = evhttp_request_get_response_code(req)) == 0) {
        op_finish(op, DPS_UNREACHABLE, "no answer from the DPS at %s (connection or TLS failure)", op->hostport);
        return;
    }
    op->out.http_status = code;
    ra = op_retry_after(req);
    if (code == 429) {
        op->out.retry_after_s = ra > 0 ? ra : 1;
        op_finish(op, DPS_THROTTLED, "the DPS is throttling registrations");
        return;
    }
    if (code == 401 || code == 403 || code == 404) {
        op_finish(op, DPS_REJECTED, "the DPS refused the registration (HTTP %d)", code);
        return;
    }
    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    j = len > 0 && len < 1024 * 1024 ? json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len), len, 0, NULL) : NULL;
    if (code >= 300 || !json_is_object(j)) {
        json_decref(j);
        op_finish(op, DPS_UNREACHABLE, "unexpected answer from the DPS (HTTP %d)", code);
        return;
    }
    json_decref(op->reply);
    op->reply = j;
    status = json_string_value(json_object_get(j, "status"));
    opid = json_string_value(json_object_get(j, "operationId"));
    op_read_state(op, json_object_get(j, "registrationState"));
    if (status && strcasecmp(status, "assigned") == 0) {
        op_finish(op, DPS_ASSIGNED, NULL);
    } else if (status && strcasecmp(status, "failed") == 0) {
        op_finish(op, DPS_FAILED, op->out.error[0] ? NULL : "the DPS could not allocate the device");
    } else if (status && strcasecmp(status, "disabled") == 0) {
        op_finish(op, DPS_DISABLED, "the device's enrollment or registration is disabled");
    } else if (status && strcasecmp(status, "assigning") == 0) {
        struct timeval tv = {ra >= 0 ? (ra > DPS_MAX_POLL_S ? DPS_MAX_POLL_S : ra) : DPS_DEFAULT_POLL_S, 0};
        if (opid && strlen(opid) < sizeof op->operation_id && !strchr(opid, '/') && !strchr(opid, '?'))
            snprintf(op->operation_id, sizeof op->operation_id, "%s", opid);
        else
            op->operation_id[0] = '\0';   /* no operation id: re-send the PUT, as the SDK does */
        op->state = OP_WAIT;
        event_add(op->poll_timer, &tv);
    } else {
        op_finish(op, DPS_UNREACHABLE, "the DPS answered status '%s'", status ? status : "(none)");
    }
}

static void op_send(struct dps_op *op)
{
    struct evhttp_request *req = evhttp_request_new(op_on_reply, op);
    struct evkeyvalq *h;
    char path[512];
    bool put = op->state == OP_PUT || op->operation_id[0] == '\0';

    if (!req) {
        op_finish(op, DPS_UNREACHABLE, "out of memory");
        return;
    }
    h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", op->hostport);
    evhttp_add_header(h, "Accept", "application/json");
    evhttp_add_header(h, "Content-Type", "application/json; charset=utf-8");
    evhttp_add_header(h, "Authorization", op->sas);
    evhttp_add_header(h, "User-Agent", "stampcp-controlplane");
    if (put) {
        snprintf(path, sizeof path, "/%s/registrations/%s/register?api-version=" DPS_API_VERSION, op->scope, op->regid);
        evbuffer_add(evhttp_request_get_output_buffer(req), op->body, strlen(op->body));
    } else {
        /* No body: the SDK sends "{}" on this GET, but servers built on
         * libevent 2.1's evhttp never read a GET body and lose framing. */
        snprintf(path, sizeof path, "/%s/registrations/%s/operations/%s?api-version=" DPS_API_VERSION, op->scope,
                 op->regid, op->operation_id);
    }
    if (evhttp_make_request(op->conn, req, put ? EVHTTP_REQ_PUT : EVHTTP_REQ_GET, path) != 0)
        op_finish(op, DPS_UNREACHABLE, "could not send to the DPS at %s", op->hostport);
}

struct dps_client *dps_client_new(struct event_base *base, const char *ca_file, int timeout_ms,
                                  char *err, size_t errlen)
{
    struct dps_client *c;
    SSL_CTX *ctx = tls_client_ctx_new(ca_file, err, errlen);
    if (!ctx)
        return NULL;
    c = xcalloc(1, sizeof *c);
    c->base = base;
    c->ctx = ctx;
    c->timeout_ms = timeout_ms;
    LIST_INIT(&c->live);
    return c;
}

void dps_client_free(struct dps_client *c)
{
    if (!c) return;
    /* Only at shutdown, with the loop stopped: their callbacks never run. */
    while (!LIST_EMPTY(&c->live))
        op_free(LIST_FIRST(&c->live));
    SSL_CTX_free(c->ctx);
    free(c);
}

void dps_register(struct dps_client *c, const char *endpoint, const char *id_scope, const char *regid,
                  const char *sas, json_t *payload, dps_cb cb, void *arg)
{
    struct dps_op *op = xcalloc(1, sizeof *op);
    struct timeval dl = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
    struct bufferevent *bev;
    json_t *body;

    op->c = c;
    LIST_INSERT_HEAD(&c->live, op, link);
    op->cb = cb;
    op->arg = arg;
    op->state = OP_PUT;
    op->poll_timer = event_new(c->base, -1, 0, op_on_poll_timer, op);
    op->deadline = event_new(c->base, -1, 0, op_on_deadline, op);
    op->reap = event_new(c->base, -1, 0, op_on_reap, op);
    if (!op->poll_timer || !op->deadline || !op->reap) {
        log_error("event=event_new_failed");
        abort();
    }
    snprintf(op->scope, sizeof op->scope, "%s", id_scope);
    snprintf(op->regid, sizeof op->regid, "%s", regid);
    snprintf(op->sas, sizeof op->sas, "%s", sas);
    snprintf(op->hostport, sizeof op->hostport, "%s", endpoint);
    body = json_pack("{s:s}", "registrationId", regid);
    if (payload)
        json_object_set(body, "payload", payload);
    op->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    event_add(op->deadline, &dl);
    if (!util_parse_hostport(endpoint, op->host, sizeof op->host, &op->port) || op->port == 0) {
        op_finish(op, DPS_UNREACHABLE, "the DPS endpoint '%s' is not host:port", endpoint);
        return;
    }
    bev = tls_client_bev(c->base, c->ctx, op->host);
    op->conn = bev ? evhttp_connection_base_bufferevent_new(c->base, NULL, bev, op->host, (ev_uint16_t)op->port) : NULL;
    if (!op->conn) {
        if (bev) bufferevent_free(bev);
        op_finish(op, DPS_UNREACHABLE, "could not open a connection to %s", endpoint);
        return;
    }
    evhttp_connection_set_timeout(op->conn, (c->timeout_ms + 999) / 1000);
    evhttp_connection_set_retries(op->conn, 0);
    op_send(op);
}
