/*
 * ratelimit.h - each DPS instance's registrations/minute limit as a token
 * bucket in Redis, shared by every control plane instance, and in the same
 * atomic step the tenant's own bucket (quotas.maxProvisionsPerMinute) and its
 * device quota's reservations (quotas.maxDevices).
 *
 * One EVAL tries the candidates in order and takes a token from the first
 * bucket that has one, atomically, on Redis's own clock: two routers can
 * never jointly exceed a bucket. Bucket size = the per-minute limit (a full
 * minute's allowance may be used at once); refill = limit / 60 s.
 *
 * With a tenant: a DPS token is taken only if the tenant's bucket also has
 * one (both are taken, or neither), so one tenant cannot empty a shared DPS's
 * bucket beyond its own per-minute allowance. With a device quota, the
 * script admits a first placement only if committed + reserved < maxDevices,
 * where committed is the caller's fresh count from the geography databases
 * and reserved the tenant's other placements in flight (a sorted set of
 * request ids scored by expiry): the admitted one is reserved in the same
 * step. ratelimit_quota_settle() then keeps a committed reservation for
 * RATELIMIT_QUOTA_HOLD_MS more (so a count taken before the commit still sees
 * it), or drops one that placed nothing. docs/api.md "Quotas" states the
 * guarantee.
 */
#ifndef CP_RATELIMIT_H
#define CP_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "layout.h"
#include "redisfeed.h"

/* RL_TENANT_THROTTLED: the tenant's own bucket is empty (no DPS token was
 * taken); RL_QUOTA_PENDING: committed devices are below maxDevices but the
 * tenant's placements in flight would reach it. */
enum ratelimit_status { RL_ADMITTED, RL_THROTTLED, RL_UNAVAILABLE, RL_TENANT_THROTTLED, RL_QUOTA_PENDING };

/* admitted: index into cands of the DPS that gave a token; throttled: wait_ms
 * until the first bucket refills one token. Called exactly once, possibly
 * before ratelimit_take returns (when Redis is down). */
typedef void (*ratelimit_cb)(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg);

#define RATELIMIT_MAX 16
/* A reservation of a placement in flight lives this long (an assignment
 * statement finishes well within it: pgbatch queue timeout + statement). */
#define RATELIMIT_QUOTA_RESERVE_MS 60000
/* ... and a committed one this long after the commit: a count that started
 * before the commit must reach the script within it (the caller refuses
 * slower ones, RATELIMIT_QUOTA_MAX_WINDOW_MS). */
#define RATELIMIT_QUOTA_HOLD_MS 10000
#define RATELIMIT_QUOTA_MAX_WINDOW_MS 5000

/* The tenant's part of the step (borrowed strings). */
struct ratelimit_tenant {
    const char *id;
    int64_t per_minute;       /* <= 0: no tenant bucket */
    int64_t max_devices;      /* < 0: no device quota (no reservation) */
    int64_t devices;          /* committed assigned devices, counted just before */
    const char *reservation;  /* unique per request: the reservation's member */
};

/* tenant may be NULL (no tenant limits). */
void ratelimit_take(struct redisfeed *feed, const struct layout_dps *const *cands, int ncand,
                    const struct ratelimit_tenant *tenant, ratelimit_cb cb, void *arg);

/* The placement reserved under `reservation` is over: committed (a device was
 * added: keep the reservation RATELIMIT_QUOTA_HOLD_MS more) or not (drop it).
 * Fire and forget: a lost command leaves the reservation to expire. */
void ratelimit_quota_settle(struct redisfeed *feed, const char *tenant_id, const char *reservation, bool committed);

/* Retry-After seconds for a wait: the refill time plus random jitter of up to
 * half of it (at least one second), so throttled devices don't return in step. */
int64_t ratelimit_retry_after_s(int64_t wait_ms);

#endif
