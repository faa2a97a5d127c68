/*
 * http_server.c - evhttp setup and routing.
 *
 * Routes:  GET /healthz, GET /readyz  (no token)
 *          /v1/<collection>[/<id>]     (operator token)
 * The token is checked before the route is looked up, so an unauthenticated
 * caller learns nothing about which routes exist.
 */
#include "http_server.h"

#include <string.h>

#include "api_catalog.h"
#include "api_devices.h"
#include "api_inventory.h"
#include "api_probes.h"
#include "api_tenants.h"
#include "http_req.h"
#include "log.h"

/* GET /v1/dps-instances/{id}/enrollment-sync: the reconciler's last word on it. */
static void http_sync_status(struct cp_req *r, const char *id)
{
    json_t *st;
    if (r->method != EVHTTP_REQ_GET) {
        cpreq_add_header(r, "Allow", "GET");
        cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET");
        return;
    }
    if (!(st = enroll_sync_status(r->cp->sync, id))) {
        cpreq_reply_error(r, 404, "not_found", NULL,
                          "no enrollment sync state for '%.64s' (unknown, no service credentials, or no pass yet)", id);
        return;
    }
    cpreq_reply_json(r, 200, st);
}

static void http_route(struct cp_req *r)
{
    const struct catalog_resource *res;

    if (r->nsegs == 1 && (strcmp(r->segs[0], "healthz") == 0 || strcmp(r->segs[0], "readyz") == 0)) {
        if (r->method != EVHTTP_REQ_GET) {
            cpreq_add_header(r, "Allow", "GET");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET");
        } else if (r->segs[0][0] == 'h') {
            api_probes_healthz(r);
        } else {
            api_probes_readyz(r);
        }
        return;
    }
    /* Devices authenticate themselves (SAS, installer token) on their own routes. */
    if (r->nsegs >= 4 && strcmp(r->segs[0], "v1") == 0 && strcmp(r->segs[1], "tenants") == 0 &&
        strcmp(r->segs[3], "registrations") == 0) {
        api_devices_registration(r, r->segs[2], r->segs + 3, r->nsegs - 3);
        return;
    }
    if (r->nsegs >= 1 && strcmp(r->segs[0], "v1") == 0) {
        if (!cpreq_is_operator(r)) {
            cpreq_add_header(r, "WWW-Authenticate", "Bearer");
            cpreq_reply_error(r, 401, "unauthorized", NULL,
                              "a valid operator token is required (Authorization: Bearer <token>)");
            return;
        }
        if (r->nsegs == 4 && strcmp(r->segs[1], "tenants") == 0 && strcmp(r->segs[3], "devices") == 0) {
            api_inventory_devices(r, r->segs[2]);
            return;
        }
        if (r->nsegs >= 4 && strcmp(r->segs[1], "tenants") == 0 && strcmp(r->segs[3], "devices") == 0) {
            api_devices_admin(r, r->segs[2], r->segs + 3, r->nsegs - 3);
            return;
        }
        if (r->nsegs == 4 && strcmp(r->segs[1], "dps-instances") == 0 && strcmp(r->segs[3], "enrollment-sync") == 0) {
            http_sync_status(r, r->segs[2]);
            return;
        }
        if (r->nsegs == 2 && strcmp(r->segs[1], "inventory") == 0) {
            api_inventory_counts(r);
            return;
        }
        if (r->nsegs >= 2 && strcmp(r->segs[1], "tenants") == 0) {
            api_tenants_handle(r, r->segs + 2, r->nsegs - 2);
            return;
        }
        if ((r->nsegs == 2 || r->nsegs == 3) && (res = catalog_find(r->segs[1])) != NULL) {
            api_catalog_handle(r, res, r->nsegs == 3 ? r->segs[2] : NULL);
            return;
        }
    }
    cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
}

static void http_on_request(struct evhttp_request *ev, void *arg)
{
    struct cp *cp = arg;
    struct cp_req *r = cpreq_new(cp, ev);
    if (!r)
        return;   /* answered already (malformed path, oversized body, ...) */
    if (cp->shutting_down) {
        cpreq_add_header(r, "Connection", "close");
        cpreq_add_header(r, "Retry-After", "1");
        cpreq_reply_error(r, 503, "shutting_down", NULL, "the server is shutting down");
        return;
    }
    http_route(r);
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
    cp->listener = evhttp_bind_socket_with_handle(cp->http, cp->cfg.listen_host,
                                                  (ev_uint16_t)cp->cfg.listen_port);
    if (!cp->listener) {
        log_error("event=listen_failed addr=%s:%d", cp->cfg.listen_host, cp->cfg.listen_port);
        return false;
    }
    log_info("event=listening addr=%s:%d", cp->cfg.listen_host, cp->cfg.listen_port);
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
}
