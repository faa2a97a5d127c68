/*
 * dps_alloc.h - choosing a hub for a device: the built-in DPS allocation
 * policies as pure functions over a candidate list (the custom policy's
 * webhook is dps_webhook.h; the caller builds the candidates).
 *
 *   hashed     weighted rendezvous hashing: hub i wins for id x with
 *              probability weight_i / sum(weights), the same hub for the same
 *              id while the eligible set is unchanged, and removing a hub
 *              moves only that hub's devices.
 *   static     the first eligible candidate (the caller lists the
 *              enrollment's iotHubs in order).
 *   geoLatency all of a stamp's hubs are in its region, so latency can't tell
 *              them apart: the least-filled eligible hub (devices/maxDevices),
 *              ties to the earlier candidate.
 */
#ifndef STAMPAGENT_DPS_ALLOC_H
#define STAMPAGENT_DPS_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dps_policy { DPS_POLICY_HASHED, DPS_POLICY_STATIC, DPS_POLICY_GEO, DPS_POLICY_CUSTOM, DPS_POLICY_INVALID };

struct dps_alloc_hub {
    const char *host;        /* hostName, the hash input together with the id */
    int64_t weight;          /* allocationWeight, >= 1 */
    int64_t devices;         /* devices assigned now */
    int64_t max_devices;     /* full when devices >= max_devices */
    bool excluded;           /* not a candidate at all (policy, enrollment's iotHubs) */
};

/* "hashed" (also NULL/empty: the DPS default), "static", "geoLatency", "custom". */
enum dps_policy dps_policy_parse(const char *s);

/* Whether candidate i can take a device. */
bool dps_alloc_eligible(const struct dps_alloc_hub *h);

/* The chosen index, or -1 when no candidate is eligible. CUSTOM/INVALID: -1. */
int dps_alloc_pick(enum dps_policy p, const struct dps_alloc_hub *hubs, size_t n, const char *registration_id);

int dps_alloc_hashed(const struct dps_alloc_hub *hubs, size_t n, const char *registration_id);
int dps_alloc_static(const struct dps_alloc_hub *hubs, size_t n);
int dps_alloc_least_filled(const struct dps_alloc_hub *hubs, size_t n);

/* The rendezvous score of (id, host) with weight w (higher wins); exposed for tests. */
double dps_alloc_score(const char *registration_id, const char *host, int64_t weight);

#endif
