/*
 * device_store.h - the router's statements on a geography database: device
 * lookups and first assignments (each through its batcher, pgbatch.h),
 * detail reads, moves, releases, the hub record of proxy provisioning and
 * the per-tenant device count. The SQL lives here and in schema/geo; the
 * router (router.c) decides what to run and reads the rows back with
 * device_store_row_read.
 *
 * Every statement answers through its callback exactly once, never from
 * inside the call (pgpool.h, pgbatch.h); values are copied. deadline_ms is
 * the request's deadline (util_mono_ms() clock, 0: none): a statement still
 * queued when it passes is dropped, never sent (pgpool_query_until,
 * pgbatch_submit_until). The hub record has none: it records what the DPS
 * did already.
 */
#ifndef CP_DEVICE_STORE_H
#define CP_DEVICE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "pgbatch.h"
#include "pgpool.h"

struct cp;

/* A device as one geography database holds it. */
struct device_row {
    bool found;
    int geo;                   /* index into cfg.geos */
    char status[16];
    char region[64], stamp[64], dps[64], scope[72], endpoint[260], assigned_at[40];
    char etag[24];
    char hub[256], device_id[132];   /* lookups: what proxy provisioning recorded ("" if none) */
    char *detail;              /* admin GET: the full JSON (owned by the row's holder) */
};

/* The batchers of a geography's device lookups and first assignments, with
 * at most max_inflight batches of each at once, of at most max_batch items. */
struct pgbatch *device_store_lookup_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                            int max_inflight, int max_batch, int queue_timeout_ms);
struct pgbatch *device_store_assign_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                            int max_inflight, int max_batch, int queue_timeout_ms);

/* The index of geography id geo in cfg.geos, or -1. */
int device_store_geo_index(const struct cp *cp, const char *geo);

/* Columns 0..7 of row `row` (after `off` leading columns) into w. */
void device_store_row_read(struct device_row *w, const PGresult *res, int row, int off, int geo);

/*
 * Lookup (batched) and detail: result columns, after the batch's ordinal for
 * a lookup: the 8 row columns, then hub and device id (lookup) or the detail
 * JSON (detail), then the geography of the database that answered: geo when
 * its geo_identity says so, else "?" and what it says.
 */
void device_store_lookup(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, pgbatch_cb cb, void *arg);
void device_store_detail(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, pgpool_cb cb, void *arg);

/* First assignment (batched; cp_assign_device(s), schema/geo): columns after
 * the ordinal: outcome, then the 8 row columns. v: tenant, regid, region,
 * stamp, dps, idScope, endpoint, maxRegistrations, decision JSON, reason. */
void device_store_assign(struct cp *cp, int g, int64_t deadline_ms, const char *const v[10], pgbatch_cb cb, void *arg);
/* The same for one device alone, not batched: cp_assign_device, or (claim_token
 * not NULL: a tenant resident in several geographies, schema/geo/007)
 * cp_assign_claimed_device under that claim, which may also answer
 * 'claim_moved'. Columns as device_store_assign (a leading 1). */
void device_store_assign_one(struct cp *cp, int g, int64_t deadline_ms, const char *const v[10], const char *claim_token, pgpool_cb cb,
                             void *arg);
/* Claim the device for geography geo in its tenant's arbiter geography g
 * (cp_claim_device): one row: outcome ('claimed' or 'elsewhere'), the
 * claimed geography, its token. from_token: NULL, or a token this request
 * fenced, from which the claim may move on. */
void device_store_claim(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, const char *geo,
                        const char *from_token, pgpool_cb cb, void *arg);
/* Fence the claim of token in its claimed geography g (cp_fence_claim): one
 * row: 'fenced', or 'active' (the device is assigned there). */
void device_store_fence(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, const char *token,
                        pgpool_cb cb, void *arg);
/* Move (cp_move_device): outcome, then the 8 row columns. v: tenant, regid,
 * etag, then as assign from region on. */
void device_store_move(struct cp *cp, int g, int64_t deadline_ms, const char *const v[11], pgpool_cb cb, void *arg);
/* Deprovision or retire (cp_release_device): one row, the new status. */
void device_store_release(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, const char *regid, bool retire,
                          const char *reason, pgpool_cb cb, void *arg);
/* Record the hub and device id the DPS answered, if the assignment is still
 * the one of etag: one row updated, or none (moved or released meanwhile). */
void device_store_record_hub(struct cp *cp, int g, const char *tenant, const char *regid, const char *etag,
                             const char *hub, const char *device_id, pgpool_cb cb, void *arg);
/* The tenant's assigned devices in this geography: one row, one count. */
void device_store_count(struct cp *cp, int g, int64_t deadline_ms, const char *tenant, pgpool_cb cb, void *arg);

#endif
