/*
 * dps_limits.h - the DPS rate limits as pure, clock-injected arithmetic (the
 * caller passes now_ms, monotonic): a token bucket for registrations and
 * status lookups per minute, a GCRA limiter for the per-device operation
 * polls ("5 per 10 s"), and a one-minute sliding counter for the load report.
 * Everything here is in memory: this agent is the only server of its DPS
 * instances, so no other process takes tokens.
 */
#ifndef STAMPAGENT_DPS_LIMITS_H
#define STAMPAGENT_DPS_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* A bucket of `capacity` tokens refilled at capacity per period_ms
 * (registrationsPerMinute: capacity = N, period = 60,000 ms): a full minute's
 * worth may come as a burst, then the steady rate applies. */
struct dps_bucket {
    double tokens;
    double capacity;
    double per_ms;          /* refill rate */
    int64_t last_ms;
};

void dps_bucket_init(struct dps_bucket *b, int64_t capacity, int64_t period_ms, int64_t now_ms);
/* Take one token; false (nothing taken) when the bucket is empty. */
bool dps_bucket_take(struct dps_bucket *b, int64_t now_ms) MUSTCHECK;
/* Milliseconds until one token is available (0 if one is now). */
int64_t dps_bucket_wait_ms(struct dps_bucket *b, int64_t now_ms);

/* GCRA: at most `limit` events per window_ms per key, evenly refilled
 * (emission interval window/limit); state is one timestamp. */
struct dps_gcra {
    int64_t tat_ms;         /* theoretical arrival time; 0 = fresh */
};

/* Admit one event: true and state advanced, or false with *retry_ms (>0) until
 * the next would be admitted (state unchanged). */
bool dps_gcra_admit(struct dps_gcra *g, int64_t limit, int64_t window_ms, int64_t now_ms,
                    int64_t *retry_ms) MUSTCHECK;
/* Whether the state has fully recovered (forgetting it changes nothing). */
bool dps_gcra_idle(const struct dps_gcra *g, int64_t now_ms);

/* Events in the last 60 s, per-second resolution. */
struct dps_minute {
    int64_t sec[60];
    uint32_t count[60];
};

void dps_minute_add(struct dps_minute *m, int64_t now_ms);
uint64_t dps_minute_sum(const struct dps_minute *m, int64_t now_ms);

/* A wait in ms as whole seconds: rounded up, at least 1 (the header adds
 * jitter: util_retry_after_s). */
int dps_retry_after_s(int64_t wait_ms);

/*
 * Per-key GCRA states (the poll limit per device), forgotten once idle.
 * Keys are "instance/registrationId".
 */
struct dps_keyed_gcra;

struct dps_keyed_gcra *dps_keyed_gcra_new(void);
void dps_keyed_gcra_free(struct dps_keyed_gcra *k);
bool dps_keyed_gcra_admit(struct dps_keyed_gcra *k, const char *key, int64_t limit, int64_t window_ms,
                          int64_t now_ms, int64_t *retry_ms) MUSTCHECK;
/* Whether one event for key would be admitted now, without recording it
 * (*retry_ms as for admit). A key never seen is admitted. */
bool dps_keyed_gcra_peek(const struct dps_keyed_gcra *k, const char *key, int64_t limit, int64_t window_ms,
                         int64_t now_ms, int64_t *retry_ms);
/* Drop idle states (call periodically); returns how many remain. */
size_t dps_keyed_gcra_sweep(struct dps_keyed_gcra *k, int64_t now_ms);
/* Forget the least recently used states beyond max (a map keyed by client
 * addresses must not grow without bound); returns how many remain. */
size_t dps_keyed_gcra_trim(struct dps_keyed_gcra *k, size_t max);

#endif
