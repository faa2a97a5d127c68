/*
 * dps_server.c - HTTPS listener, request context and routing for the stamp's
 * provisioning service.
 *
 * Routes:  /{idScope}/registrations/{id}/register           PUT   device API
 *          /{idScope}/registrations/{id}/operations/{op}     GET   device API
 *          /{idScope}/registrations/{id}                     POST  device API (status lookup)
 *          /enrollmentGroups/…, /enrollments/…, /registrations/…   service API
 *          /registrationSummary, /registrationIds                   service API (drift extension)
 *          Host: <a hub's hostName>  /devices/{id}                   that hub's registry
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

#include "connguard.h"
#include "dps_drift.h"
#include "dps_webhook.h"
#include "dps_secrets.h"
#include "httputil.h"
#include "hub_registry.h"
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

static void dps_tls_configure(SSL_CTX *ctx, void *arg)
{
    (void)arg;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, dps_verify_any);
}

/* The listener's identity: provisioning.tls.cert/key, reloadable (SIGHUP). */
static struct tls_server *dps_server_tls_new(const struct agent_provisioning_config *pc, char *err, size_t errlen)
{
    struct tls_server_opts o = {
        .cert_file = pc->tls_cert, .key_file = pc->tls_key,
        .configure = dps_tls_configure, .session_id_context = "stampdps",
    };
    return tls_server_new(&o, err, errlen);
}

bool dps_server_reload_tls(struct dps_server *s)
{
    char err[300];
    if (!s || !s->tls)
        return true;
    if (!tls_server_reload(s->tls, err, sizeof err)) {
        log_error("event=tls_reload_failed error=\"%s\" note=\"the previous certificate stays in use\"", err);
        return false;
    }
    log_info("event=tls_reloaded generation=%u", tls_server_generation(s->tls));
    return true;
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
    /* the connection's bufferevent is the guard's filter; TLS is under it */
    struct bufferevent *bev = conn ? connguard_transport(evhttp_connection_get_bufferevent(conn)) : NULL;
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
           strcasecmp(seg, "registrations") == 0 || dps_drift_is_route(seg);
}

/*
 * Before the body (connguard.h): a request that announces one must carry a
 * credential, from the headers alone - on the device API an Authorization
 * header or a client certificate from the handshake, on the service API an
 * Authorization header. The routes verify them after; without any, the body
 * is never read. Requests without a body go on to the routes as before.
 */
static bool dps_head_check(void *arg, const struct connguard_head *h, struct connguard_verdict *v)
{
    char path[2048], *segs[DPS_MAX_SEGS];
    int nsegs = 0;
    size_t plen = strcspn(h->target, "?");
    bool device, service, ok = true;
    SSL *ssl;
    (void)arg;

    if ((!h->chunked && h->content_length <= 0) || connguard_head_get(h, "Authorization") || plen >= sizeof path)
        return true;
    memcpy(path, h->target, plen);
    path[plen] = '\0';
    if (!httputil_split_path(path, segs, DPS_MAX_SEGS, &nsegs)) {
        for (int i = 0; i < nsegs; i++)
            free(segs[i]);
        return true;   /* answered 400 by the routes */
    }
    service = nsegs >= 1 && (strcasecmp(segs[0], "enrollmentGroups") == 0 || strcasecmp(segs[0], "enrollments") == 0 ||
                             strcasecmp(segs[0], "registrations") == 0);
    device = !service && nsegs >= 3 && strcasecmp(segs[1], "registrations") == 0;
    ssl = h->transport ? bufferevent_openssl_get_ssl(h->transport) : NULL;
    if (service || (device && !(ssl && SSL_get0_peer_certificate(ssl)))) {
        v->reason = CONNGUARD_UNAUTHORIZED;
        /* as the routes answer a missing credential: device API 401001, service API 401002 */
        snprintf(v->code, sizeof v->code, "%d", service ? 401002 : 401001);
        snprintf(v->message, sizeof v->message, "%s",
                 service ? "authorization failed: a SharedAccessSignature is required"
                         : "authorization failed: neither an Authorization header nor a client certificate was sent");
        ok = false;
    }
    for (int i = 0; i < nsegs; i++)
        free(segs[i]);
    return ok;
}

/* The DPS errorCode of a guard refusal: the one the check chose (401001/401002), 503002 at the
 * connection cap, else status * 1000 + 1. */
static void dps_refuse(struct dps_req *r, const struct connguard_verdict *v, int status)
{
    int64_t code;
    if (!util_parse_int64(v->code, 100000, 599999, &code))
        code = v->reason == CONNGUARD_OVERLOADED ? 503002   /* 503001 is "database unavailable" */
                                                 : (int64_t)status * 1000 + 1;
    dps_add_header(r, "Connection", "close");
    if (status == 503) {
        char ra[24];
        util_retry_after_text(ra, sizeof ra, 1000);   /* jittered: the refused don't return in step */
        dps_add_header(r, "Retry-After", ra);
    }
    dps_reply_error(r, status, (int)code, "%s", v->message[0] ? v->message : "the request was refused");
}

/* The listener's one bufferevent callback: TLS (the current identity, SIGHUP
 * reloads it) under the connection guard. Chain any other layer here. */
static struct bufferevent *dps_server_bevcb(struct event_base *base, void *arg)
{
    struct dps_server *s = arg;
    return connguard_wrap(s->guard, base, tls_server_reloadable_bevcb(base, s->tls));
}

static void dps_server_guard_setup(struct dps_server *s)
{
    const struct agent_provisioning_config *pc = &s->cfg->prov;
    dps_webhook_set_allow_private(pc->webhook_allow_private);
    struct connguard_opts o = {
        .name = "dps",
        .max_connections = (int)pc->http_max_connections,
        .header_timeout_ms = (int)pc->http_header_timeout_ms,
        .request_timeout_ms = (int)pc->http_request_timeout_ms,
        .idle_timeout_ms = (int)pc->http_idle_timeout_ms,
        .max_header_bytes = 32 * 1024,
        .max_body_bytes = DPS_MAX_BODY,
        .check = dps_head_check,
        .check_arg = s,
    };
    s->guard = connguard_new(s->base, &o);
    evhttp_set_bevcb(s->http, dps_server_bevcb, s);
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
    {
        struct connguard_verdict gv;
        int gstatus;
        if (connguard_refusal(ev, &gv, &gstatus)) {
            dps_refuse(r, &gv, gstatus);
            return;
        }
    }
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
        /* A database of another geography is not served: say so to probes too. */
        if (strcmp(pgpool_state_word(s->pool), "wrong_geography") == 0) {
            dps_reply_json(r, 503, json_pack("{s:s}", "status", "wrong_geography"));
            return;
        }
        dps_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    /* a hub's host name: that hub's registry (hub_registry.h); any other
     * Host keeps the DPS routes */
    {
        int hub = hub_registry_hub_of(&s->cfg->prov, dps_req_header(r, "Host"));
        if (hub >= 0) {
            hub_registry_handle(r, hub);
            return;
        }
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

void dps_server_pool_opts(const struct agent_config *cfg, const char *conninfo, struct pgpool_opts *o)
{
    const struct agent_provisioning_config *pc = &cfg->prov;
    *o = (struct pgpool_opts){
        .name = "stampDatabase", .conninfo = conninfo, .size = (int)pc->db_pool_size,
        .connect_timeout_ms = 3000, .query_timeout_ms = 10000, .queue_timeout_ms = 3000, .max_queue = 4096,
        .migrations = migrations_stamp, .n_migrations = migrations_stamp_count,
        .migrations_table = "stamp_schema_migrations",
        .geography = pc->geography, .geography_check_only = true,
        /* server-side bounds, keepalives and cancel grace: pgpool's defaults from query_timeout_ms */
        .application_name = "stampcp-stamp-agent",
    };
}

/* A connection reached another geography's database (pgpool logged which).
 * Before the agent ever served: refuse to start. Later: pgpool serves 503
 * until a connection lands on the right database again. */
static void dps_on_wrong_geography(void *arg, bool ever_ready)
{
    struct dps_server *s = arg;
    if (ever_ready) {
        log_error("event=stamp_database_refused reason=wrong_geography geography=%s action=\"answering 503 until the "
                  "database is %s again\"", s->cfg->prov.geography, s->cfg->prov.geography);
        return;
    }
    if (s->fatal_exit)
        return;
    log_error("event=startup_refused reason=wrong_geography geography=%s exit_code=%d message=\"provisioning.database "
              "is not the database of geography %s (its geo_identity differs or is missing); refusing to serve it\"",
              s->cfg->prov.geography, DPS_EXIT_WRONG_DATABASE, s->cfg->prov.geography);
    s->fatal_exit = DPS_EXIT_WRONG_DATABASE;
    if (event_base_loopexit(s->base, NULL) != 0)
        log_error("event=loopexit_failed");
}

struct dps_server *dps_server_new(struct event_base *base, const struct agent_config *cfg,
                                  struct agent_load *load, struct dns *dns)
{
    const struct agent_provisioning_config *pc = &cfg->prov;
    struct dps_server *s = xcalloc(1, sizeof *s);
    struct pgpool_opts o;
    char err[300];

    dps_server_pool_opts(cfg, pc->database, &o);
    o.on_wrong_geography = dps_on_wrong_geography;
    o.dns = dns;
    o.cb_arg = s;
    if (!pc->geography)
        log_warn("event=geography_unchecked message=\"provisioning.geography is not set: the database's geo_identity "
                 "is not checked\"");

    s->base = base;
    s->cfg = cfg;
    s->load = load;
    if (!(s->tls = dps_server_tls_new(pc, err, sizeof err))) {
        log_error("event=tls_setup_failed error=\"%s\"", err);
        free(s);
        return NULL;
    }
    s->pool = pgpool_new(base, &o);
    if (!(s->env = dps_secrets_load(cfg, err, sizeof err))) {
        log_error("event=kek_file_refused error=\"%s\"", err);
        dps_server_free(s);
        return NULL;
    }
    s->http = evhttp_new(base);
    if (!s->http) {
        dps_server_free(s);
        return NULL;
    }
    dps_server_guard_setup(s);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_HEAD);
    evhttp_set_max_body_size(s->http, DPS_MAX_BODY * 4);
    evhttp_set_max_headers_size(s->http, 32 * 1024);
    evhttp_set_timeout(s->http, 60);
    evhttp_set_gencb(s->http, dps_on_request, s);
    s->device = dps_device_new(s);
    s->service = dps_service_new(s);
    s->secrets = dps_secrets_new(s);
    s->listener = evhttp_bind_socket_with_handle(s->http, pc->listen_host, (ev_uint16_t)pc->listen_port);
    if (!s->listener) {
        log_error("event=listen_failed addr=%s:%d", pc->listen_host, pc->listen_port);
        dps_server_free(s);
        return NULL;
    }
    if (!util_tcp_nodelay(evhttp_bound_socket_get_fd(s->listener)))
        log_warn("event=tcp_nodelay_failed note=\"TLS answers may wait for delayed ACKs\"");
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
    connguard_free(s->guard);   /* after evhttp_free: its connections used it */
    dps_device_free(s->device);
    dps_service_free(s->service);
    dps_secrets_free(s->secrets);   /* before the pool: cancels a pass in flight */
    pgpool_free(s->pool);
    envelope_free(s->env);
    tls_server_free(s->tls);
    free(s);
}
