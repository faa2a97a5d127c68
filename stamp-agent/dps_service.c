/*
 * dps_service.c - the DPS service API of the stamp (placeholder until the
 * service API lands: every call answers 501).
 */
#include <stdlib.h>

#include "dps_server.h"

struct dps_service {
    struct dps_server *srv;
};

struct dps_service *dps_service_new(struct dps_server *s)
{
    struct dps_service *sv = calloc(1, sizeof *sv);
    if (sv) sv->srv = s;
    return sv;
}

void dps_service_free(struct dps_service *sv)
{
    free(sv);
}

void dps_service_handle(struct dps_req *r)
{
    dps_reply_error(r, 501, 501000, "the service API is not implemented yet");
}
