/*
 * http_server.c - evhttp setup and routing.
 *
 * Every request goes through the gate (gate.h) to its route (routes.h);
 * this file owns the listener, its TLS and connection guard, and the
 * credential check made from the headers before a body is read.
 */
#include "http_server.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connguard.h"
#include "gate.h"
#include "http_req.h"
#include "httputil.h"
#include "log.h"
#include "sas.h"
#include "tls.h"

/* A request the connection guard refused before its body (connguard.h):
 * answered with the error contract, and the connection closes after it. */
static void http_refuse(struct cp_req *r, const struct connguard_verdict *v, int status)
{
    cpreq_add_header(r, "Connection", "close");
    if (status == 503)
        cpreq_add_header(r, "Retry-After", "1");
    if (status == 401)
        cpreq_add_header(r, "WWW-Authenticate", strcmp(v->code, "unauthorized") == 0 ? "Bearer" : "SharedAccessSignature");
    cpreq_reply_error(r, status, v->code, NULL, "%s", v->message[0] ? v->message : "the request was refused");
}

static void http_on_request(struct evhttp_request *ev, void *arg)
{
    struct cp *cp = arg;
    struct connguard_verdict gv;
    int gstatus;
    struct cp_req *r = cpreq_new(cp, ev);
    if (!r)
        return;   /* answered already (malformed path, oversized body, ...) */
    if (connguard_refusal(ev, &gv, &gstatus)) {
        http_refuse(r, &gv, gstatus);
        return;
    }
    if (cp->shutting_down) {
        cpreq_add_header(r, "Connection", "close");
        cpreq_add_header(r, "Retry-After", "1");
        cpreq_reply_error(r, 503, "shutting_down", NULL, "the server is shutting down");
        return;
    }
    gate_dispatch(r);
}

/*
 * Before the body: a request that announces one must show credentials its
 * route can accept, from the headers alone (the guard refuses it otherwise,
 * and the body is never read). Device routes: a SAS token whose claims hold
 * (well-formed, not expired, sr naming this tenant and device), verified
 * right here when the tenant is in the cache (a miss starts the fetch the
 * handler needs anyway, and the handler verifies); or a bearer token (the
 * operator's, an installer's or an API key: the gate and handler check it).
 * Other /v1 routes: the operator token or an API key not known to be bad
 * (gate_admin_token_plausible). Requests without a body go on to the gate,
 * which answers the same way.
 */
struct http_sas_probe {
    bool in_call;           /* still inside tenants_get: the answer is wanted */
    bool answered, found, verified;
    char regid[129];
    struct sas_token tok;
};

static void http_sas_probe_cb(struct tenant *t, enum tenant_status st, void *arg)
{
    struct http_sas_probe *p = arg;
    if (!p->in_call) {      /* a fetch that completed later: the request went on without it */
        free(p);
        return;
    }
    p->answered = true;
    p->found = st == TENANT_OK || st == TENANT_UNAVAILABLE;
    p->verified = st == TENANT_UNAVAILABLE || (st == TENANT_OK && tenant_verify_device_sas(t, p->regid, &p->tok));
}

static bool http_check_device_auth(struct cp *cp, const char *auth, struct bufferevent *transport, char **segs,
                                   int nsegs, struct connguard_verdict *v)
{
    struct http_sas_probe *p;
    enum sas_error se;
    bool ok;
    v->reason = CONNGUARD_UNAUTHORIZED;
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
        return true;
    if (!auth && tls_bev_peer_cert(transport))
        return true;   /* an X.509 device: the handler verifies its chain against the tenant's CAs */
    if (!auth || strncmp(auth, "SharedAccessSignature ", 22) != 0) {
        snprintf(v->code, sizeof v->code, "unauthorized");
        snprintf(v->message, sizeof v->message,
                 "a device SAS token, a bearer token or a client certificate is required");
        return false;
    }
    if (nsegs < 5)
        return true;   /* no device in the path: the route answers 404 */
    p = xcalloc(1, sizeof *p);
    snprintf(p->regid, sizeof p->regid, "%s", segs[4]);
    if ((se = sas_parse(auth, &p->tok)) != SAS_OK ||
        (se = sas_check_claims(&p->tok, segs[2], p->regid, util_wall_ms() / 1000)) != SAS_OK) {
        snprintf(v->code, sizeof v->code, "%s", sas_error_code(se));
        snprintf(v->message, sizeof v->message, "the credential was not accepted");
        free(p);
        return false;
    }
    if (!jv_valid_id(segs[2])) {
        free(p);
        return true;   /* the handler answers an impossible tenant id */
    }
    p->in_call = true;
    tenants_get(cp->tenants, segs[2], false, http_sas_probe_cb, p);
    p->in_call = false;
    if (!p->answered)
        return true;   /* not cached: the probe frees itself when the fetch ends */
    ok = p->verified;
    free(p);
    if (!ok) {
        snprintf(v->code, sizeof v->code, "invalid_signature");
        snprintf(v->message, sizeof v->message, "the credential was not accepted");
    }
    return ok;
}

static bool http_head_check(void *arg, const struct connguard_head *h, struct connguard_verdict *v)
{
    struct cp *cp = arg;
    const char *auth = connguard_head_get(h, "Authorization");
    char path[2048], *segs[CPREQ_MAX_SEGS];
    int nsegs = 0;
    size_t plen = strcspn(h->target, "?");
    bool ok = true;

    if (!h->chunked && h->content_length <= 0)
        return true;
    if (plen >= sizeof path)
        return true;   /* the handler refuses such a path */
    memcpy(path, h->target, plen);
    path[plen] = '\0';
    if (!httputil_split_path(path, segs, CPREQ_MAX_SEGS, &nsegs)) {
        for (int i = 0; i < nsegs; i++)
            free(segs[i]);
        return true;   /* answered 400 invalid_path by the handler, body unread or not */
    }
    if (nsegs >= 4 && strcmp(segs[0], "v1") == 0 && strcmp(segs[1], "tenants") == 0 &&
        strcmp(segs[3], "registrations") == 0) {
        ok = http_check_device_auth(cp, auth, h->transport, segs, nsegs, v);
    } else if (nsegs >= 1 && strcmp(segs[0], "v1") == 0) {
        if (!gate_admin_token_plausible(cp, auth)) {
            v->reason = CONNGUARD_UNAUTHORIZED;
            snprintf(v->code, sizeof v->code, "unauthorized");
            snprintf(v->message, sizeof v->message,
                     "a valid API key or the operator token is required (Authorization: Bearer <key>)");
            ok = false;
        }
    }
    for (int i = 0; i < nsegs; i++)
        free(segs[i]);
    return ok;
}

/*
 * The listener's one bufferevent callback, chaining its layers: the TLS
 * bufferevent of the current identity (none with plainHttp) under the
 * connection guard. Add any other layer here, not with another
 * evhttp_set_bevcb() (evhttp keeps only the last one).
 */
static struct bufferevent *http_server_bevcb(struct event_base *base, void *arg)
{
    struct cp *cp = arg;
    return connguard_wrap(cp->guard, base, cp->tls ? tls_server_reloadable_bevcb(base, cp->tls) : NULL);
}

static void http_server_guard_setup(struct cp *cp)
{
    struct connguard_opts o = {
        .name = "http",
        .max_connections = (int)cp->cfg.http_max_connections,
        .header_timeout_ms = (int)cp->cfg.http_header_timeout_ms,
        .request_timeout_ms = (int)cp->cfg.http_request_timeout_ms,
        .idle_timeout_ms = (int)cp->cfg.http_idle_timeout_ms,
        .max_header_bytes = 64 * 1024,
        .max_body_bytes = cp->cfg.max_body_bytes,
        .check = http_head_check,
        .check_arg = cp,
    };
    cp->guard = connguard_new(cp->base, &o);
    evhttp_set_bevcb(cp->http, http_server_bevcb, cp);
}

/*
 * HTTPS: every accepted connection gets a TLS bufferevent from the current
 * identity (tls_server_reloadable_bevcb); plainHttp leaves evhttp's plain
 * sockets. The only place the listener's bufferevents are set up.
 */
/* Any client certificate passes the handshake: the device routes check it
 * against the tenant's CAs (router_auth.c), every other route ignores it. */
static int http_server_accept_any_cert(int preverify_ok, X509_STORE_CTX *ctx)
{
    (void)preverify_ok;
    (void)ctx;
    return 1;
}

/* Without tls.clientCa: ask every client for a certificate, never require
 * one (X.509 devices present theirs; nobody else needs to). */
static void http_server_tls_request_cert(SSL_CTX *ctx, void *arg)
{
    (void)arg;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, http_server_accept_any_cert);
}

static struct tls_server *http_server_tls_new(const struct cp_config *cfg, char *err, size_t errlen)
{
    struct tls_server_opts o = {
        .cert_file = cfg->tls_cert, .key_file = cfg->tls_key,
        .client_ca_file = cfg->tls_client_ca, .session_id_context = "stampcp-cp",
        .configure = cfg->tls_client_ca ? NULL : http_server_tls_request_cert,
    };
    return tls_server_new(&o, err, errlen);
}

bool http_server_check_tls(const struct cp_config *cfg, char *err, size_t errlen)
{
    struct tls_server *t;
    if (cfg->plain_http)
        return true;
    if (!(t = http_server_tls_new(cfg, err, errlen)))
        return false;
    tls_server_free(t);
    return true;
}

static bool http_server_tls_setup(struct cp *cp)
{
    char err[300];
    if (cp->cfg.plain_http) {
        log_warn("event=plain_http note=\"no TLS on this listener: run it only behind a TLS terminator\"");
        return true;
    }
    if (!(cp->tls = http_server_tls_new(&cp->cfg, err, sizeof err))) {
        log_error("event=tls_setup_failed error=\"%s\"", err);
        return false;
    }
    return true;   /* http_server_bevcb() makes the TLS bufferevents */
}

bool http_server_reload_tls(struct cp *cp)
{
    char err[300];
    if (!cp->tls) {
        log_info("event=tls_reload_skipped reason=plain_http");
        return true;
    }
    if (!tls_server_reload(cp->tls, err, sizeof err)) {
        log_error("event=tls_reload_failed error=\"%s\" note=\"the previous certificate stays in use\"", err);
        return false;
    }
    log_info("event=tls_reloaded generation=%u", tls_server_generation(cp->tls));
    return true;
}

X509 *http_server_peer_cert(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    /* the connection's bufferevent is the guard's filter; TLS is under it */
    return conn ? tls_bev_peer_cert(connguard_transport(evhttp_connection_get_bufferevent(conn))) : NULL;
}

STACK_OF(X509) *http_server_peer_chain(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    return conn ? tls_bev_peer_chain(connguard_transport(evhttp_connection_get_bufferevent(conn))) : NULL;
}

bool http_server_start(struct cp *cp)
{
    /* evhttp's own limit sits above ours so that our JSON 413 is the one
     * callers normally see; beyond it evhttp drops the request itself. */
    ev_ssize_t hard_limit = (ev_ssize_t)cp->cfg.max_body_bytes * 16;
    cp->http = evhttp_new(cp->base);
    if (!cp->http) {
        log_error("event=evhttp_new_failed");
        return false;
    }
    evhttp_set_allowed_methods(cp->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                             EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(cp->http, hard_limit < 1048576 ? 1048576 : hard_limit);
    evhttp_set_max_headers_size(cp->http, 64 * 1024);
    evhttp_set_timeout(cp->http, 60);
    evhttp_set_gencb(cp->http, http_on_request, cp);
    if (!http_server_tls_setup(cp))
        return false;
    http_server_guard_setup(cp);
    cp->listener = evhttp_bind_socket_with_handle(cp->http, cp->cfg.listen_host,
                                                  (ev_uint16_t)cp->cfg.listen_port);
    if (!cp->listener) {
        log_error("event=listen_failed addr=%s:%d", cp->cfg.listen_host, cp->cfg.listen_port);
        return false;
    }
    if (!util_tcp_nodelay(evhttp_bound_socket_get_fd(cp->listener)))
        log_warn("event=tcp_nodelay_failed note=\"TLS answers may wait for delayed ACKs\"");
    log_info("event=listening addr=%s:%d scheme=%s%s", cp->cfg.listen_host, cp->cfg.listen_port,
             cp->tls ? "https" : "http", cp->cfg.tls_client_ca ? " client_certificates=required" : cp->tls ? " client_certificates=requested" : "");
    return true;
}

void http_server_stop_accepting(struct cp *cp)
{
    if (cp->listener) {
        evhttp_del_accept_socket(cp->http, cp->listener);
        cp->listener = NULL;
    }
}

void http_server_free(struct cp *cp)
{
    if (cp->http) {
        evhttp_free(cp->http);
        cp->http = NULL;
    }
    tls_server_free(cp->tls);
    cp->tls = NULL;
    connguard_free(cp->guard);   /* after evhttp_free: its connections used it */
    cp->guard = NULL;
}
