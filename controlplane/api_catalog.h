/*
 * api_catalog.h - the admin REST handlers for the layout resources
 * (/v1/geographies, /v1/regions, /v1/stamps, /v1/dps-instances, /v1/hubs).
 */
#ifndef CP_API_CATALOG_H
#define CP_API_CATALOG_H

#include "catalog.h"
#include "http_req.h"

/* Handle a request on a collection (id == NULL) or one of its items.
 * Replies exactly once. */
void api_catalog_handle(struct cp_req *r, const struct catalog_resource *res, const char *id);

#endif
