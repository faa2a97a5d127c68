/*
 * ratelimit.h - each DPS instance's registrations/minute limit as a token
 * bucket in Redis, shared by every control plane instance, and in the same
 * atomic step the tenant's own bucket (quotas.maxProvisionsPerMinute) and its
 * device quota (quotas.maxDevices).
 *
 * One EVAL tries the candidates in order and takes a token from the first
 * bucket that has one, atomically, on Redis's own clock: two routers can
 * never jointly exceed a bucket. Bucket size = the per-minute limit (a full
 * minute's allowance may be used at once); refill = limit / 60 s.
 *
 * With a tenant: a DPS token is taken only if the tenant's bucket also has
 * one (both are taken, or neither), so one tenant cannot take more of a
 * shared DPS's bucket than its own per-minute allowance.
 *
 * The device quota (first placements only), over two sorted sets per tenant:
 * "placing" (placements admitted or being checked, not yet settled; score =
 * expiry) and "placed" (settled ones that added a device; score = when, on
 * Redis's clock, kept a minute):
 *   1. ratelimit_quota_reserve() puts the request in "placing" and answers
 *      Redis's time T0;
 *   2. the caller counts the tenant's assigned devices C in the geography
 *      databases (the count's snapshot is taken after T0);
 *   3. ratelimit_take() admits only if C + P < maxDevices, where P = the
 *      others in "placing" + those in "placed" since T0 (a device settled
 *      before T0 committed before the count began, so C has it; any other may
 *      be missing from C and is counted in P). Not admitted: the request
 *      leaves "placing" in the same step. More than
 *      RATELIMIT_QUOTA_MAX_WINDOW_MS after T0 it is refused as stale.
 *   4. ratelimit_quota_settle(): moved to "placed" if its statement added a
 *      device, else removed.
 * After Redis loses its data (a restart without persistence, a failover to
 * a replica that had not caught up): a missing bucket would start full and
 * let a whole minute's allowance through on top of what was just spent. The
 * script keeps an epoch (dps:@epoch:bucket: a random id and when it began,
 * on Redis's clock); every router remembers the epoch it saw last and sends
 * it. An epoch re-created while a router remembers another one is "cold":
 * a bucket missing then starts with the tokens it would have refilled since
 * the epoch began (empty, refilling at limit/60 s), not full, so the minute
 * after the loss admits at most one minute's allowance. A Redis that keeps
 * its data (appendonly yes, or a replica promoted by Sentinel that had the
 * writes) keeps the buckets themselves. Every router restarting along with Redis
 * is covered too: the epoch is also kept in the global catalog
 * (ratelimit_epoch.c), which a router reads at start.
 *
 * Every admission happens in one script that sees every earlier admission,
 * so the committed devices never exceed maxDevices (docs/api.md "Quotas"
 * states the assumptions: Redis keeps its data; an assignment commits
 * within RATELIMIT_QUOTA_RESERVE_MS of its reservation).
 */
#ifndef CP_RATELIMIT_H
#define CP_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "layout.h"
#include "redisbus.h"

/* RL_TENANT_THROTTLED: the tenant's own bucket is empty (no DPS token was
 * taken); RL_QUOTA_PENDING: committed devices are below maxDevices but with
 * the tenant's placements in flight they would reach it; RL_QUOTA_STALE: the
 * count took longer than RATELIMIT_QUOTA_MAX_WINDOW_MS (or the reservation is
 * gone): count again. */
enum ratelimit_status {
    RL_ADMITTED, RL_THROTTLED, RL_UNAVAILABLE, RL_TENANT_THROTTLED, RL_QUOTA_PENDING, RL_QUOTA_STALE
};

/* admitted: index into cands of the DPS that gave a token; throttled: wait_ms
 * until the first bucket refills one token. Called exactly once, possibly
 * before ratelimit_take returns (when Redis is down). */
typedef void (*ratelimit_cb)(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg);

#define RATELIMIT_MAX 16
/* A reservation in "placing" lives this long (an assignment statement ends
 * well within it: pgbatch queue timeout + statement). */
#define RATELIMIT_QUOTA_RESERVE_MS 60000
/* From the reservation to the admission, at most (else RL_QUOTA_STALE). */
#define RATELIMIT_QUOTA_MAX_WINDOW_MS 5000

/* The tenant's part of the step (borrowed strings). */
struct ratelimit_tenant {
    const char *id;
    int64_t per_minute;       /* <= 0: no tenant bucket */
    int64_t max_devices;      /* < 0: no device quota */
    int64_t devices;          /* committed assigned devices, counted after the reservation */
    const char *reservation;  /* the member ratelimit_quota_reserve() added */
    int64_t reserved_at;      /* ... and the T0 it answered */
};

/* tenant may be NULL (no tenant limits). */
void ratelimit_take(struct redisbus *bus, const struct layout_dps *const *cands, int ncand,
                    const struct ratelimit_tenant *tenant, ratelimit_cb cb, void *arg);

/* Give back the token ratelimit_take took from dps (and the tenant's bucket,
 * when tenant_per_minute > 0) for an assignment that was not performed: the
 * deadline passed before it was queued or while it waited, the database was
 * unavailable, or the statement placed nothing (the DPS filled, the
 * registration id was taken) and placement is tried again. Fire and forget:
 * a lost refund leaves the token spent (conservative). */
void ratelimit_refund(struct redisbus *bus, const struct layout_dps *dps, const char *tenant_id,
                      int64_t tenant_per_minute);

/* Step 1 of the device quota: t0 = Redis's time in ms, or -1 (Redis
 * unavailable). Called exactly once, possibly before this returns. */
typedef void (*ratelimit_reserve_cb)(int64_t t0, void *arg);
void ratelimit_quota_reserve(struct redisbus *bus, const char *tenant_id, const char *reservation,
                             ratelimit_reserve_cb cb, void *arg);

/* Step 4: the placement reserved under `reservation` is over: committed (its
 * statement added a device) or not. Fire and forget: a lost command leaves
 * the reservation to expire (RATELIMIT_QUOTA_RESERVE_MS). */
void ratelimit_quota_settle(struct redisbus *bus, const char *tenant_id, const char *reservation, bool committed);

#endif
