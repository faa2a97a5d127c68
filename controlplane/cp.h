/*
 * cp.h - the control plane daemon's one context object, passed explicitly to
 * every module instead of living in globals.
 */
#ifndef CP_CP_H
#define CP_CP_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>

#include "apikeys.h"
#include "assign_cache.h"
#include "cp_config.h"
#include "dps_client.h"
#include "enroll_sync.h"
#include "stamp_drift.h"
#include "envelope.h"
#include "jobs.h"
#include "layout.h"
#include "loadtable.h"
#include "pgbatch.h"
#include "pgpool.h"
#include "pseudonym.h"
#include "stamp_ops.h"
#include "redisbus.h"
#include "redisfeed.h"
#include "dns.h"
#include "invalidate.h"
#include "tenants.h"
#include "tls.h"

struct cp {
    struct event_base *base;
    struct dns *dns;                          /* the resolver for Redis and outbound HTTP (dns.h) */
    struct cp_config cfg;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct tls_server *tls;                  /* HTTPS identity (NULL: plainHttp); reloaded on SIGHUP */
    struct connguard *guard;                 /* connection cap and read deadlines of the listener (connguard.h) */
    struct pgpool *global;
    struct pgpool *geo[CP_MAX_GEOGRAPHIES];   /* same order as cfg.geos */
    struct pgbatch *geo_lookup[CP_MAX_GEOGRAPHIES];   /* device lookups on geo[i], batched */
    struct pgbatch *geo_assign[CP_MAX_GEOGRAPHIES];   /* first assignments on geo[i], batched */
    struct loadtable *lt;
    struct redisbus *redis;                   /* the cmd and sub Redis connections (redisbus.h) */
    struct redisfeed *feed;                   /* stamp load reports (redisfeed.h) */
    struct invalidate *inval;                 /* cache invalidations between instances (invalidate.h) */
    struct tenants *tenants;
    struct apikeys *keys;                     /* API key verification (apikeys.h) */
    struct layouts *layouts;
    struct assign_cache *cache;
    struct dps_client *dps;                   /* proxy provisioning; NULL if it could not be set up */
    struct enroll_sync *sync;                 /* enrollment groups in the stamps' DPS instances */
    struct stamp_drift *drift;                /* registration drift pass (stamp_drift.h); NULL: disabled */
    struct envelope *env;                     /* KEKs sealing secrets at rest (cfg.kek_file) */
    struct idempotency *idem;                 /* idempotency.c: the purge of expired Idempotency-Keys */
    struct cp_secrets *secrets;               /* cp_secrets.c: start-up sealing pass, KEK file watch, /v1/admin/kek */
    struct pseudonym pseudo;                  /* device ids in logs and Redis messages (pseudonym.h) */
    struct jobs *jobs;                        /* jobs.c: the job runner (offboarding), leases shared by instances */
    struct stampcheck *stampcheck;            /* stamps whose reports contradict the catalog (stampcheck.h) */
    struct stamp_ops *stamp_ops;              /* stamp_ops.c: the stamp-operation outbox's delivery; NULL if off */
    char *geo_ids[CP_MAX_GEOGRAPHIES];        /* borrowed from cfg.geos, for modules that take arrays */
    int inflight;                /* requests accepted and not yet answered */
    int lingering;               /* device requests answered by their deadline, still waiting for a callback (router_req.h) */
    bool shutting_down;
    int64_t shutdown_deadline_ms;
    struct event *sig_term, *sig_int, *sig_hup, *drain_timer;
};

#endif
