/*
 * gate.c - the gate every request passes (gate.h): who is calling, and may
 * they call this route for this tenant.
 */
#include "gate.h"

#include <string.h>
#include <strings.h>

#include "apikeys.h"
#include "idempotency.h"
#include "log.h"
#include "routes.h"
#include "util.h"

/* The bearer token of the Authorization header, or NULL. */
static const char *gate_bearer(const char *h)
{
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

static void gate_unauthorized(struct cp_req *r, bool key_refused)
{
    cpreq_add_header(r, "WWW-Authenticate", key_refused ? "Bearer error=\"invalid_token\"" : "Bearer");
    cpreq_reply_error(r, 401, "unauthorized", NULL,
                      "a valid API key or the operator token is required (Authorization: Bearer <key>)");
}

/* No route for this method and path, for a caller who may know. */
static void gate_no_route(struct cp_req *r, bool path_known, const char *allow)
{
    if (path_known) {
        cpreq_add_header(r, "Allow", allow);
        cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use %s", allow);
    } else {
        cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
    }
}

/* The caller is known (r->who): find the route and apply its rule. */
static void gate_authorise(struct cp_req *r)
{
    char allow[64];
    bool known;
    const struct route *rt = routes_match(r->method, r->segs, r->nsegs, &known, allow, sizeof allow);
    if (!rt) {
        gate_no_route(r, known, allow);
        return;
    }
    if (rt->tenant_seg >= 0 && !principal_sees_tenant(&r->who, r->segs[rt->tenant_seg])) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no such tenant");
        return;
    }
    if ((rt->access == ROUTE_PLATFORM && !principal_is_platform(&r->who)) || !principal_has(&r->who, rt->scope)) {
        char words[200];
        principal_scope_words(rt->scope, words, sizeof words);
        cpreq_reply_error(r, 403, "insufficient_scope", NULL, "this route needs %s%s", words,
                          rt->access == ROUTE_PLATFORM ? " on a platform credential" : "");
        return;
    }
    r->route = rt;
    r->route_pattern = rt->pattern;
    if (rt->access == ROUTE_DEVICE)
        rt->handler(r);
    else
        idempotency_begin(r, rt->handler);   /* Idempotency-Key on creates: claim, replay or refuse (idempotency.h) */
}

static void gate_on_key(enum apikey_verdict v, const struct principal *p, void *arg)
{
    struct cp_req *r = arg;
    if (v == APIKEY_UNAVAILABLE) {
        cpreq_reply_db_unavailable(r, &(struct pgq_result){.status = PGQ_UNAVAILABLE});
        return;
    }
    if (v == APIKEY_BUSY) {
        cpreq_retry_after(r, 1000);
        cpreq_reply_error(r, 503, "overloaded", NULL, "too many unknown API keys at once; try again");
        return;
    }
    if (v != APIKEY_OK) {
        gate_unauthorized(r, true);
        return;
    }
    r->who = *p;
    gate_authorise(r);
}

void gate_dispatch(struct cp_req *r)
{
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(r->ev), "Authorization");
    const char *tok = gate_bearer(auth);
    char allow[64];
    bool known;
    const struct route *rt;

    /* probes and device routes: their own credentials */
    if (!(r->nsegs >= 1 && strcmp(r->segs[0], "v1") == 0) || routes_is_device_path(r->segs, r->nsegs)) {
        if (!(rt = routes_match(r->method, r->segs, r->nsegs, &known, allow, sizeof allow))) {
            gate_no_route(r, known, allow);
            return;
        }
        if (rt->access == ROUTE_DEVICE && tok && strncmp(tok, APIKEY_PREFIX, 4) == 0) {
            apikeys_verify(r->cp->keys, tok, gate_on_key, r);
            return;
        }
        r->route = rt;
        r->route_pattern = rt->pattern;
        rt->handler(r);
        return;
    }
    if (tok && r->cp->cfg.operator_token && util_secret_equal(tok, r->cp->cfg.operator_token)) {
        r->who.kind = PRINCIPAL_OPERATOR;
        r->who.scopes = SCOPE_ALL;
        snprintf(r->who.name, sizeof r->who.name, "operator token");
        gate_authorise(r);
        return;
    }
    if (tok && strncmp(tok, APIKEY_PREFIX, 4) == 0) {
        apikeys_verify(r->cp->keys, tok, gate_on_key, r);
        return;
    }
    gate_unauthorized(r, false);
}

bool gate_admin_token_plausible(struct cp *cp, const char *authorization)
{
    const char *tok = gate_bearer(authorization);
    if (!tok)
        return false;
    if (cp->cfg.operator_token && util_secret_equal(tok, cp->cfg.operator_token))
        return true;
    return apikeys_maybe_valid(cp->keys, tok);
}
