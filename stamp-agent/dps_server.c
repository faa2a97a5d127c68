/*
 * dps_server.c - HTTPS listener, request context and routing for the stamp's
 * provisioning service.
 *
 * Routes:  /{idScope}/registrations/{id}/register           PUT   device API
 *          /{idScope}/registrations/{id}/operations/{op}     GET   device API
 *          /{idScope}/registrations/{id}                     POST  device API (status lookup)
 *          /enrollmentGroups/…, /enrollments/…, /registrations/…   service API
 *          /healthz
 * Collection names of the service API match case-insensitively (the SDK
 * sends both enrollmentGroups and enrollmentgroups).
 */
#include "dps_server.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "httputil.h"
#include "log.h"
#include "tls.h"
#include "util.h"

/* The client certificate is requested but never required (symmetric-key
 * devices share the port), and its chain is checked per request against the
 * matching enrollment's CAs, not against a fixed trust store: accept here. */
static int dps_verify_any(int ok, X509_STORE_CTX *ctx)
{
    (void)ok; (void)ctx;
    return 1;
}

static void dps_req_free(struct dps_req *r)
{
    for (int i = 0; i < r->nsegs; i++)
        free(r->segs[i]);
    evhttp_clear_headers(&r->query);
    free(r->body);
    r->srv->inflight--;
    free(r);
}

static void dps_finish(struct dps_req *r, int status, struct evbuffer *buf)
{
    char path[160];
    evhttp_add_header(evhttp_request_get_output_headers(r->ev), "x-ms-request-id", r->id);
    evhttp_send_reply(r->ev, status, NULL, buf);
    if (log_enabled(LOG_DEBUG) || status >= 400)
        log_write(status >= 500 ? LOG_WARN : LOG_INFO, r->id, "event=dps_request method=%d path=%s status=%d ms=%lld",
                  (int)r->method, log_quote(evhttp_request_get_uri(r->ev), path, sizeof path), status,
                  (long long)(util_mono_ms() - r->start_ms));
    dps_req_free(r);
}

void dps_add_header(struct dps_req *r, const char *name, const char *value)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->ev), name, value);
}

void dps_reply_json(struct dps_req *r, int status, json_t *body)
{
    struct evbuffer *buf;
    char *text;
    if (!body) {
        /* A builder that got NULL columns (json_pack fails): a bug, not a crash. */
        log_write(LOG_ERROR, r->id, "event=reply_without_body status=%d", status);
        dps_reply_error(r, 500, 500001, "internal error");
        return;
    }
    buf = evbuffer_new();
    text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!buf || !text) {
        log_error("event=out_of_memory");
        abort();
    }
    evbuffer_add(buf, text, strlen(text));
    free(text);
    dps_add_header(r, "Content-Type", "application/json; charset=utf-8");
    dps_finish(r, status, buf);
    evbuffer_free(buf);
}

void dps_reply_empty(struct dps_req *r, int status)
{
    dps_finish(r, status, NULL);
}

void dps_reply_error(struct dps_req *r, int status, int error_code, const char *fmt, ...)
{
    char msg[512], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    util_format_time(util_wall_ms(), ts, sizeof ts);
    dps_reply_json(r, status, json_pack("{s:i, s:s, s:s, s:s}", "errorCode", error_code, "trackingId", r->id,
                                        "message", msg, "timestampUtc", ts));
}

const char *dps_req_header(struct dps_req *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->ev), name);
}

const char *dps_req_query(struct dps_req *r, const char *name)
{
    return evhttp_find_header(&r->query, name);
}

static SSL *dps_req_ssl(struct dps_req *r)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(r->ev);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    return bev ? bufferevent_openssl_get_ssl(bev) : NULL;
}

STACK_OF(X509) *dps_req_peer_chain(struct dps_req *r)
{
    SSL *ssl = dps_req_ssl(r);
    return ssl ? SSL_get_peer_cert_chain(ssl) : NULL;
}

X509 *dps_req_peer_cert(struct dps_req *r)
{
    SSL *ssl = dps_req_ssl(r);
    return ssl ? SSL_get0_peer_certificate(ssl) : NULL;
}

/*
 * libevent 2.1's evhttp never reads a body on GET, but the DPS SDKs send
 * "{}" on the operation-status GET; left in the stream it would be parsed as
 * the start of the next request on the keep-alive connection. The body is in
 * the connection's input buffer (sent with the headers): take it from there.
 */
static bool dps_take_get_body(struct dps_req *r)
{
    const char *cl = dps_req_header(r, "Content-Length");
    struct evhttp_connection *conn = evhttp_request_get_connection(r->ev);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    struct evbuffer *in;
    int64_t n;
    if (!cl)
        return true;
    if (!util_parse_int64(cl, 0, DPS_MAX_BODY, &n) || !bev)
        return false;
    if (n == 0)
        return true;
    /* libevent 2.1.12 (Debian 12) does read a GET body that Content-Length
     * announces, into the request; older 2.1 left it on the connection */
    in = evhttp_request_get_input_buffer(r->ev);
    if (evbuffer_get_length(in) < (size_t)n)
        in = bufferevent_get_input(bev);
    if (evbuffer_get_length(in) < (size_t)n)
        return false;   /* not all here: we can't keep framing, so close after answering */
    r->body = xmalloc((size_t)n + 1);
    evbuffer_remove(in, r->body, (size_t)n);
    r->body[n] = '\0';
    r->body_len = (size_t)n;
    return true;
}

static bool dps_is_service_collection(const char *seg)
{
    return strcasecmp(seg, "enrollmentGroups") == 0 || strcasecmp(seg, "enrollments") == 0 ||
           strcasecmp(seg, "registrations") == 0;
}

static void dps_on_request(struct evhttp_request *ev, void *arg)
{
    struct dps_server *s = arg;
    struct dps_req *r = xcalloc(1, sizeof *r);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ev);
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    struct evbuffer *in = evhttp_request_get_input_buffer(ev);

    r->srv = s;
    r->ev = ev;
    r->method = evhttp_request_get_command(ev);
    r->start_ms = util_mono_ms();
    r->dps_index = -1;
    TAILQ_INIT(&r->query);
    s->inflight++;
    util_random_hex(r->id, 16);
    if (r->method == EVHTTP_REQ_GET && !dps_take_get_body(r)) {
        dps_add_header(r, "Connection", "close");
        dps_reply_error(r, 400, 400004, "the request body could not be read");
        return;
    }
    if (r->method != EVHTTP_REQ_GET) {
        r->body_len = evbuffer_get_length(in);
        if (r->body_len > DPS_MAX_BODY) {
            dps_reply_error(r, 413, 413001, "the request body is larger than %d bytes", DPS_MAX_BODY);
            return;
        }
        if (r->body_len > 0) {
            r->body = xmalloc(r->body_len + 1);
            evbuffer_remove(in, r->body, r->body_len);
            r->body[r->body_len] = '\0';
        }
    }
    if (!uri || !httputil_split_path(evhttp_uri_get_path(uri), r->segs, DPS_MAX_SEGS, &r->nsegs) ||
        (query && evhttp_parse_query_str(query, &r->query) != 0)) {
        dps_reply_error(r, 400, 400001, "the request path or query is malformed");
        return;
    }
    if (r->nsegs == 1 && strcmp(r->segs[0], "healthz") == 0) {
        dps_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (r->nsegs >= 1 && dps_is_service_collection(r->segs[0])) {
        dps_service_handle(r);
        return;
    }
    if (r->nsegs >= 3 && strcasecmp(r->segs[1], "registrations") == 0) {
        for (size_t i = 0; i < s->cfg->prov.n_dps; i++)
            if (strcmp(s->cfg->prov.dps[i].id_scope, r->segs[0]) == 0) {
                r->dps = &s->cfg->prov.dps[i];
                r->dps_index = (int)i;
            }
        if (!r->dps) {
            dps_reply_error(r, 404, 404001, "unknown ID scope");
            return;
        }
        dps_device_handle(r);
        return;
    }
    dps_reply_error(r, 404, 404000, "no such route");
}

struct dps_server *dps_server_new(struct event_base *base, const struct agent_config *cfg,
                                  struct agent_load *load)
{
    const struct agent_provisioning_config *pc = &cfg->prov;
    struct dps_server *s = xcalloc(1, sizeof *s);
    struct pgpool_opts o = {
        .name = "stampDatabase", .conninfo = pc->database, .size = (int)pc->db_pool_size,
        .connect_timeout_ms = 3000, .query_timeout_ms = 10000, .queue_timeout_ms = 3000, .max_queue = 4096,
        .migrations = migrations_stamp, .n_migrations = migrations_stamp_count,
        .migrations_table = "stamp_schema_migrations",
    };
    char err[300];

    s->base = base;
    s->cfg = cfg;
    s->load = load;
    if (!(s->tls = tls_server_ctx_new(pc->tls_cert, pc->tls_key, err, sizeof err))) {
        log_error("event=tls_setup_failed error=\"%s\"", err);
        free(s);
        return NULL;
    }
    SSL_CTX_set_verify(s->tls, SSL_VERIFY_PEER, dps_verify_any);
    SSL_CTX_set_session_id_context(s->tls, (const unsigned char *)"stampdps", 8);
    s->pool = pgpool_new(base, &o);
    s->http = evhttp_new(base);
    if (!s->http) {
        dps_server_free(s);
        return NULL;
    }
    evhttp_set_bevcb(s->http, tls_server_bevcb, s->tls);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_HEAD);
    evhttp_set_max_body_size(s->http, DPS_MAX_BODY * 4);
    evhttp_set_max_headers_size(s->http, 32 * 1024);
    evhttp_set_timeout(s->http, 60);
    evhttp_set_gencb(s->http, dps_on_request, s);
    s->device = dps_device_new(s);
    s->service = dps_service_new(s);
    s->listener = evhttp_bind_socket_with_handle(s->http, pc->listen_host, (ev_uint16_t)pc->listen_port);
    if (!s->listener) {
        log_error("event=listen_failed addr=%s:%d", pc->listen_host, pc->listen_port);
        dps_server_free(s);
        return NULL;
    }
    log_info("event=dps_listening addr=%s:%d scopes=%zu", pc->listen_host, pc->listen_port, pc->n_dps);
    return s;
}

void dps_server_stop_accepting(struct dps_server *s)
{
    if (s && s->listener) {
        evhttp_del_accept_socket(s->http, s->listener);
        s->listener = NULL;
    }
}

void dps_server_free(struct dps_server *s)
{
    if (!s) return;
    if (s->http) evhttp_free(s->http);
    dps_device_free(s->device);
    dps_service_free(s->service);
    pgpool_free(s->pool);
    if (s->tls) SSL_CTX_free(s->tls);
    free(s);
}
