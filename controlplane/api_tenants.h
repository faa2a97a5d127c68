/*
 * api_tenants.h - tenant onboarding (admin, operator token): create, get,
 * list tenants, and issue installer tokens for low-touch provisioning.
 */
#ifndef CP_API_TENANTS_H
#define CP_API_TENANTS_H

#include "http_req.h"

/* /v1/tenants[/<id>[/installer-tokens]]: segs are the path after "tenants". Replies once. */
void api_tenants_handle(struct cp_req *r, char **segs, int nsegs);

#endif
