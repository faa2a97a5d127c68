/*
 * dps_client.c - a device registration at a DPS as a small poll loop over
 * https_call(): PUT register, then (after Retry-After) GET the operation until
 * it is no longer "assigning", all under one deadline. States:
 * PUT -> (WAIT -> POLL)* -> DONE.
 */
#include "dps_client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "http_call.h"
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
    char endpoint[300];
    char scope[80], regid[140], sas[700], operation_id[200];
    char *body;                    /* the PUT body */
    int64_t deadline_ms;
    struct event *poll_timer, *reap;
    struct dps_outcome out;
    json_t *reply;                 /* the last answer's JSON (owned) */
    dps_cb cb;
    void *arg;
};

static void op_send(struct dps_op *op);

static void op_free(struct dps_op *op)
{
    LIST_REMOVE(op, link);
    event_free(op->poll_timer);
    event_free(op->reap);
    json_decref(op->reply);
    free(op->body);
    free(op);
}

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
    event_active(op->reap, EV_TIMEOUT, 1);
}

static void op_on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    struct dps_op *op = arg;
    (void)fd; (void)what;
    op->state = OP_POLL;
    op_send(op);
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

static void op_wait(struct dps_op *op, int retry_after_s, const char *opid)
{
    int s = retry_after_s >= 0 ? (retry_after_s > DPS_MAX_POLL_S ? DPS_MAX_POLL_S : retry_after_s) : DPS_DEFAULT_POLL_S;
    struct timeval tv = {s, 0};
    if (util_mono_ms() + s * 1000 >= op->deadline_ms) {
        op_finish(op, DPS_UNREACHABLE, "the DPS did not finish the registration in time");
        return;
    }
    /* An operation id goes into the path: refuse anything that isn't a plain segment.
     * Without one, the SDKs send the PUT again; so do we. */
    if (opid && strlen(opid) < sizeof op->operation_id && !strpbrk(opid, "/?#%"))
        snprintf(op->operation_id, sizeof op->operation_id, "%s", opid);
    else
        op->operation_id[0] = '\0';
    op->state = OP_WAIT;
    event_add(op->poll_timer, &tv);
}

static void op_on_reply(const struct http_result *res, void *arg)
{
    struct dps_op *op = arg;
    const char *status, *opid;

    if (op->state == OP_DONE)
        return;
    op->out.http_status = res->status;
    if (res->status == 0) {
        op_finish(op, DPS_UNREACHABLE, "no answer from the DPS at %s: %s", op->endpoint, res->error ? res->error : "");
        return;
    }
    if (res->status == 429) {
        op->out.retry_after_s = res->retry_after_s > 0 ? res->retry_after_s : 1;
        op_finish(op, DPS_THROTTLED, "the DPS is throttling registrations");
        return;
    }
    if (res->status == 401 || res->status == 403 || res->status == 404) {
        op_finish(op, DPS_REJECTED, "the DPS refused the registration (HTTP %d)", res->status);
        return;
    }
    if (res->status >= 300 || !json_is_object(res->body)) {
        op_finish(op, DPS_UNREACHABLE, "unexpected answer from the DPS (HTTP %d)", res->status);
        return;
    }
    json_decref(op->reply);
    op->reply = json_incref(res->body);
    status = json_string_value(json_object_get(res->body, "status"));
    opid = json_string_value(json_object_get(res->body, "operationId"));
    op_read_state(op, json_object_get(res->body, "registrationState"));
    if (status && strcasecmp(status, "assigned") == 0)
        op_finish(op, DPS_ASSIGNED, NULL);
    else if (status && strcasecmp(status, "failed") == 0)
        op_finish(op, DPS_FAILED, op->out.error[0] ? NULL : "the DPS could not allocate the device");
    else if (status && strcasecmp(status, "disabled") == 0)
        op_finish(op, DPS_DISABLED, "the device's enrollment or registration is disabled");
    else if (status && strcasecmp(status, "assigning") == 0)
        op_wait(op, res->retry_after_s, opid);
    else
        op_finish(op, DPS_UNREACHABLE, "the DPS answered status '%s'", status ? status : "(none)");
}

static void op_send(struct dps_op *op)
{
    const char *h[] = {"Accept", "application/json", "Content-Type", "application/json; charset=utf-8",
                       "Authorization", op->sas, "User-Agent", "stampcp-controlplane", NULL};
    char path[512];
    bool put = op->state == OP_PUT || op->operation_id[0] == '\0';
    int left = (int)(op->deadline_ms - util_mono_ms());

    if (left <= 0) {
        op_finish(op, DPS_UNREACHABLE, "the DPS did not finish the registration in time");
        return;
    }
    if (put)
        snprintf(path, sizeof path, "/%s/registrations/%s/register?api-version=" DPS_API_VERSION, op->scope, op->regid);
    else
        /* No body: the SDK sends "{}" on this GET, but servers built on
         * libevent 2.1's evhttp never read a GET body and lose framing. */
        snprintf(path, sizeof path, "/%s/registrations/%s/operations/%s?api-version=" DPS_API_VERSION, op->scope,
                 op->regid, op->operation_id);
    https_call(op->c->base, op->c->ctx, op->endpoint, put ? EVHTTP_REQ_PUT : EVHTTP_REQ_GET, path, h,
               put ? op->body : NULL, left, op_on_reply, op);
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
    /* Only at shutdown, with the loop stopped: their callbacks never run
     * (http_call_abort_all() frees the calls they were waiting for). */
    while (!LIST_EMPTY(&c->live))
        op_free(LIST_FIRST(&c->live));
    SSL_CTX_free(c->ctx);
    free(c);
}

void dps_register(struct dps_client *c, int64_t deadline_ms, const char *endpoint, const char *id_scope,
                  const char *regid, const char *sas, json_t *payload, dps_cb cb, void *arg)
{
    struct dps_op *op = xcalloc(1, sizeof *op);
    json_t *body;

    op->c = c;
    LIST_INSERT_HEAD(&c->live, op, link);
    op->cb = cb;
    op->arg = arg;
    op->state = OP_PUT;
    op->deadline_ms = util_mono_ms() + c->timeout_ms;
    if (deadline_ms && deadline_ms < op->deadline_ms)
        op->deadline_ms = deadline_ms;   /* the caller's request ends first */
    op->poll_timer = event_new(c->base, -1, 0, op_on_poll_timer, op);
    op->reap = event_new(c->base, -1, 0, op_on_reap, op);
    if (!op->poll_timer || !op->reap) {
        log_error("event=event_new_failed");
        abort();
    }
    snprintf(op->endpoint, sizeof op->endpoint, "%s", endpoint);
    snprintf(op->scope, sizeof op->scope, "%s", id_scope);
    snprintf(op->regid, sizeof op->regid, "%s", regid);
    snprintf(op->sas, sizeof op->sas, "%s", sas);
    body = json_pack("{s:s}", "registrationId", regid);
    if (payload)
        json_object_set(body, "payload", payload);
    op->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    op_send(op);
}
