/*
 * http_req.c - request parsing, reply helpers and the access log line.
 */
#include "http_req.h"

#include <event2/buffer.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "audit.h"
#include "httputil.h"
#include "idempotency.h"
#include "log.h"
#include "routes.h"
#include "util.h"

static bool cpreq_valid_client_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static void cpreq_free(struct cp_req *r)
{
    for (int i = 0; i < r->nsegs; i++)
        free(r->segs[i]);
    if (r->query_parsed)
        evhttp_clear_headers(&r->query);
    free(r->body);
    free(r->json_text);
    json_decref(r->audit_before);
    idempotency_claim_free(r->idem);
    if (r->held_buf)
        evbuffer_free(r->held_buf);
    r->cp->inflight--;
    free(r);
}

const char *cpreq_method_name(enum evhttp_cmd_type m)
{
    return routes_method_name(m);
}

static void cpreq_send(struct cp_req *r, int status, struct evbuffer *buf)
{
    char path[160], safe[512];   /* safe: the uri with device ids as pseudonyms (pseudonym.h) */
    const char *uri = evhttp_request_get_uri(r->ev);
    evhttp_add_header(evhttp_request_get_output_headers(r->ev), "X-Request-Id", r->id);
    evhttp_send_reply(r->ev, status, NULL, buf);
    if (log_enabled(LOG_INFO) && (status >= 400 || log_enabled(LOG_DEBUG)))
        log_write(status >= 500 ? LOG_WARN : LOG_INFO, r->id,
                  "event=http_request method=%s path=%s status=%d ms=%lld",
                  cpreq_method_name(r->method),
                  log_quote(pseudonym_redact_path(&r->cp->pseudo, uri, safe, sizeof safe), path, sizeof path), status,
                  (long long)(util_mono_ms() - r->start_ms));
    cpreq_free(r);
}

/* A hook (audit, idempotency) is done with the held answer: the last one sends it. */
static void cpreq_hook_done(struct cp_req *r)
{
    if (--r->held_pending > 0)
        return;
    /* 204 and the like were held with no body: send them with none */
    cpreq_send(r, r->held_status, evbuffer_get_length(r->held_buf) ? r->held_buf : NULL);
}

/*
 * The answer is final. When the audit log or an Idempotency-Key wants it,
 * it is held (moved out of buf, which the caller frees) until both have
 * written it; the client sees the answer only after the entry committed.
 * A hook that fails logs why and lets the answer go: the change it answers
 * has committed already.
 */
static void cpreq_finish(struct cp_req *r, int status, struct evbuffer *buf)
{
    bool want_idem = idempotency_wanted(r, status), want_audit = audit_wanted(r, status);
    const char *text;
    size_t len;

    if (r->held || (!want_idem && !want_audit)) {
        cpreq_send(r, status, buf);
        return;
    }
    r->held = true;
    r->held_status = status;
    if (!(r->held_buf = evbuffer_new())) {
        log_error("event=out_of_memory");
        abort();
    }
    if (buf)
        evbuffer_add_buffer(r->held_buf, buf);
    len = evbuffer_get_length(r->held_buf);
    text = len ? (const char *)evbuffer_pullup(r->held_buf, -1) : "";
    r->held_pending = 1;   /* held by this function until both hooks started */
    if (want_idem) {
        r->held_pending++;
        idempotency_complete(r, status, text, len, cpreq_hook_done);
    }
    if (want_audit) {
        r->held_pending++;
        audit_record(r, status, text, len, cpreq_hook_done);
    }
    cpreq_hook_done(r);
}

const char *cpreq_header(struct cp_req *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->ev), name);
}

void cpreq_add_header(struct cp_req *r, const char *name, const char *value)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->ev), name, value);
}

void cpreq_retry_after(struct cp_req *r, int64_t wait_ms)
{
    char v[24];
    util_retry_after_text(v, sizeof v, wait_ms);
    cpreq_add_header(r, "Retry-After", v);
}

void cpreq_reply_text(struct cp_req *r, int status, const char *json_text, size_t len)
{
    struct evbuffer *buf = evbuffer_new();
    if (!buf) {
        log_error("event=out_of_memory");
        abort();
    }
    evbuffer_add(buf, json_text, len);
    evbuffer_add(buf, "\n", 1);
    cpreq_add_header(r, "Content-Type", "application/json; charset=utf-8");
    cpreq_finish(r, status, buf);
    evbuffer_free(buf);
}

void cpreq_reply_json(struct cp_req *r, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        log_error("event=out_of_memory");
        abort();
    }
    cpreq_reply_text(r, status, text, strlen(text));
    free(text);
}

void cpreq_reply_empty(struct cp_req *r, int status)
{
    cpreq_finish(r, status, NULL);
}

static void cpreq_reply_errorv(struct cp_req *r, int status, const char *code, const char *target,
                               const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));
static void cpreq_reply_errorv(struct cp_req *r, int status, const char *code, const char *target,
                               const char *fmt, va_list ap)
{
    char msg[512];
    json_t *err;
    vsnprintf(msg, sizeof msg, fmt, ap);
    err = json_pack("{s:s, s:s, s:s}", "code", code, "message", msg, "requestId", r->id);
    if (target && *target)
        json_object_set_new(err, "target", json_string(target));
    cpreq_reply_json(r, status, json_pack("{s:o}", "error", err));
}

void cpreq_reply_error(struct cp_req *r, int status, const char *code, const char *target,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cpreq_reply_errorv(r, status, code, target, fmt, ap);
    va_end(ap);
}

void cpreq_reply_jv(struct cp_req *r, const struct jv_err *e)
{
    cpreq_reply_error(r, 400, e->code, e->field, "%s", e->message);
}

void cpreq_reply_db_unavailable(struct cp_req *r, const struct pgq_result *res)
{
    log_write(LOG_WARN, r->id, "event=db_unavailable error=\"%.200s\"",
              res && res->message ? res->message : "");
    cpreq_retry_after(r, 1000);
    cpreq_reply_error(r, 503, "database_unavailable", NULL,
                      "the database is unavailable; retry later");
}

struct cp_req *cpreq_new(struct cp *cp, struct evhttp_request *ev)
{
    struct cp_req *r = xcalloc(1, sizeof *r);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ev);
    const char *given = evhttp_find_header(evhttp_request_get_input_headers(ev), "X-Request-Id");
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    struct evbuffer *in = evhttp_request_get_input_buffer(ev);

    r->cp = cp;
    r->ev = ev;
    r->method = evhttp_request_get_command(ev);
    r->start_ms = util_mono_ms();
    r->audit_geo = -1;
    cp->inflight++;
    if (given && cpreq_valid_client_id(given))
        snprintf(r->id, sizeof r->id, "%s", given);
    else
        util_request_id(r->id);

    if (!path || !httputil_split_path(path, r->segs, CPREQ_MAX_SEGS, &r->nsegs)) {
        cpreq_reply_error(r, 400, "invalid_path", NULL, "the request path is malformed");
        return NULL;
    }
    TAILQ_INIT(&r->query);
    r->query_parsed = true;
    if (query && evhttp_parse_query_str(query, &r->query) != 0) {
        cpreq_reply_error(r, 400, "invalid_query", NULL, "the query string is malformed");
        return NULL;
    }
    r->body_len = evbuffer_get_length(in);
    if (r->body_len > (size_t)cp->cfg.max_body_bytes) {
        cpreq_reply_error(r, 413, "body_too_large", NULL, "request body is %zu bytes; the limit is %lld",
                          r->body_len, (long long)cp->cfg.max_body_bytes);
        return NULL;
    }
    if (r->body_len > 0) {
        r->body = xmalloc(r->body_len + 1);
        if (evbuffer_remove(in, r->body, r->body_len) != (int)r->body_len) {
            cpreq_reply_error(r, 400, "invalid_body", NULL, "could not read the request body");
            return NULL;
        }
        r->body[r->body_len] = '\0';
    }
    return r;
}

bool cpreq_is_operator(struct cp_req *r)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(r->ev), "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    while (*h == ' ') h++;
    return util_secret_equal(h, r->cp->cfg.operator_token);
}

static bool cpreq_media_type_is(const char *ct, const char *want)
{
    size_t n = strlen(want);
    while (*ct == ' ') ct++;
    return strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

json_t *cpreq_json_body(struct cp_req *r, bool allow_merge_patch)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->ev), "Content-Type");
    struct jv_err e;
    json_t *body;
    if (!ct || !(cpreq_media_type_is(ct, "application/json") ||
                 (allow_merge_patch && cpreq_media_type_is(ct, "application/merge-patch+json")))) {
        cpreq_reply_error(r, 415, "unsupported_media_type", NULL,
                          "the body must be sent as Content-Type: application/json");
        return NULL;
    }
    body = jv_parse_object(r->body ? r->body : "", r->body_len, &e);
    if (!body) {
        cpreq_reply_error(r, 400, e.code, NULL, "%s", e.message);
        return NULL;
    }
    return body;
}

bool cpreq_check_query(struct cp_req *r, const char *const *allowed)
{
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, &r->query, next) {
        bool ok = false;
        int seen = 0;
        struct evkeyval *kv2;
        for (const char *const *a = allowed; a && *a; a++)
            if (strcmp(*a, kv->key) == 0) { ok = true; break; }
        if (!ok) {
            cpreq_reply_error(r, 400, "invalid_query", kv->key, "unknown query parameter '%.64s'", kv->key);
            return false;
        }
        TAILQ_FOREACH(kv2, &r->query, next)
            if (strcmp(kv2->key, kv->key) == 0) seen++;
        if (seen > 1) {
            cpreq_reply_error(r, 400, "invalid_query", kv->key, "query parameter '%.64s' is repeated", kv->key);
            return false;
        }
        if (!util_utf8_valid(kv->value, strlen(kv->value))) {
            cpreq_reply_error(r, 400, "invalid_query", kv->key, "query parameter '%.64s' is not valid UTF-8", kv->key);
            return false;
        }
    }
    return true;
}

const char *cpreq_query(struct cp_req *r, const char *name)
{
    return evhttp_find_header(&r->query, name);
}

void cpreq_reply_held(struct cp_req *r, int status, json_t *body)
{
    if (status == 204) {
        json_decref(body);
        cpreq_reply_empty(r, 204);
    } else {
        cpreq_reply_json(r, status, body);
    }
}
