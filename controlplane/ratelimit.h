/*
 * ratelimit.h - each DPS instance's registrations/minute limit as a token
 * bucket in Redis, shared by every control plane instance.
 *
 * One EVAL tries the candidates in order and takes a token from the first
 * bucket that has one, atomically, on Redis's own clock: two routers can
 * never jointly exceed a bucket. Bucket size = the per-minute limit (a full
 * minute's allowance may be used at once); refill = limit / 60 s.
 */
#ifndef CP_RATELIMIT_H
#define CP_RATELIMIT_H

#include <stdint.h>

#include "layout.h"
#include "redisfeed.h"

enum ratelimit_status { RL_ADMITTED, RL_THROTTLED, RL_UNAVAILABLE };

/* admitted: index into cands of the DPS that gave a token; throttled: wait_ms
 * until the first bucket refills one token. Called exactly once, possibly
 * before ratelimit_take returns (when Redis is down). */
typedef void (*ratelimit_cb)(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg);

#define RATELIMIT_MAX 16

void ratelimit_take(struct redisfeed *feed, const struct layout_dps *const *cands, int ncand,
                    ratelimit_cb cb, void *arg);

/* Retry-After seconds for a wait: the refill time plus random jitter of up to
 * half of it (at least one second), so throttled devices don't return in step. */
int64_t ratelimit_retry_after_s(int64_t wait_ms);

#endif
