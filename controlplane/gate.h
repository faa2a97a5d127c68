/*
 * gate.h - authentication and authorisation of every request against the
 * route table (routes.h), before any handler runs.
 *
 *  - public routes (probes): straight to the handler;
 *  - device routes: a bearer API key is verified here (tenant and the
 *    provision:on-behalf scope); any other credential is the handler's;
 *  - every other /v1 path: the caller must authenticate first (the operator
 *    token or an API key: 401 otherwise, before the route is even looked
 *    up, so an unauthenticated caller learns nothing about routes); then
 *    404 for a tenant it does not see (never 403: existence must not leak),
 *    403 insufficient_scope for a platform-only route or a missing scope.
 *
 * The request is owned by the handler it is passed to, or answered here.
 */
#ifndef CP_GATE_H
#define CP_GATE_H

#include <stdbool.h>

#include "http_req.h"

void gate_dispatch(struct cp_req *r);

/* Before a body is read: whether the bearer token may be a valid admin
 * credential (the operator token, or an API key not known to be bad). */
bool gate_admin_token_plausible(struct cp *cp, const char *authorization);

#endif
