/*
 * dps_device.c - the Azure DPS device API of the stamp (placeholder until the
 * device API lands: every call answers 501).
 */
#include <stdlib.h>

#include "dps_server.h"

struct dps_device {
    struct dps_server *srv;
};

struct dps_device *dps_device_new(struct dps_server *s)
{
    struct dps_device *d = calloc(1, sizeof *d);
    if (d) d->srv = s;
    return d;
}

void dps_device_free(struct dps_device *d)
{
    free(d);
}

void dps_device_handle(struct dps_req *r)
{
    dps_reply_error(r, 501, 501000, "the device API is not implemented yet");
}
