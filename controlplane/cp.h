/*
 * cp.h - the control plane daemon's one context object, passed explicitly to
 * every module instead of living in globals.
 */
#ifndef CP_CP_H
#define CP_CP_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>

#include "assign_cache.h"
#include "cp_config.h"
#include "dps_client.h"
#include "enroll_sync.h"
#include "layout.h"
#include "loadtable.h"
#include "pgbatch.h"
#include "pgpool.h"
#include "redisfeed.h"
#include "tenants.h"

struct cp {
    struct event_base *base;
    struct cp_config cfg;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct pgpool *global;
    struct pgpool *geo[CP_MAX_GEOGRAPHIES];   /* same order as cfg.geos */
    struct pgbatch *geo_lookup[CP_MAX_GEOGRAPHIES];   /* device lookups on geo[i], batched */
    struct pgbatch *geo_assign[CP_MAX_GEOGRAPHIES];   /* first assignments on geo[i], batched */
    struct loadtable *lt;
    struct redisfeed *feed;
    struct tenants *tenants;
    struct layouts *layouts;
    struct assign_cache *cache;
    struct dps_client *dps;                   /* proxy provisioning; NULL if it could not be set up */
    struct enroll_sync *sync;                 /* enrollment groups in the stamps' DPS instances */
    char *geo_ids[CP_MAX_GEOGRAPHIES];        /* borrowed from cfg.geos, for modules that take arrays */
    int inflight;                /* requests accepted and not yet answered */
    bool shutting_down;
    int64_t shutdown_deadline_ms;
    struct event *sig_term, *sig_int, *sig_hup, *drain_timer;
};

#endif
