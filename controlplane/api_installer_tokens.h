/*
 * api_installer_tokens.h - the admin routes of a tenant's installer tokens:
 *
 *   POST   /v1/tenants/{t}/installer-tokens        issue (the token is in this answer only)
 *   GET    /v1/tenants/{t}/installer-tokens        list (paged, never a secret)
 *   GET    /v1/tenants/{t}/installer-tokens/{id}   one token (never its secret)
 *   DELETE /v1/tenants/{t}/installer-tokens/{id}   revoke
 *
 * An issue or a revocation is answered once every control plane has been
 * told to drop its cached copy of the tenant (invalidate.h), so
 * a revoked token is refused everywhere from the answer on.
 */
#ifndef CP_API_INSTALLER_TOKENS_H
#define CP_API_INSTALLER_TOKENS_H

#include "http_req.h"

/* segs: the path after "installer-tokens" (0 or 1 of them). Replies exactly once. */
void api_installer_tokens_handle(struct cp_req *r, const char *tenant, char **segs, int nsegs);

#endif
