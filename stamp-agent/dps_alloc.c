/*
 * dps_alloc.c - the built-in allocation policies.
 */
#include "dps_alloc.h"

#include <math.h>
#include <string.h>

enum dps_policy dps_policy_parse(const char *s)
{
    if (!s || !*s || strcmp(s, "hashed") == 0)
        return DPS_POLICY_HASHED;
    if (strcmp(s, "static") == 0)
        return DPS_POLICY_STATIC;
    if (strcmp(s, "geoLatency") == 0)
        return DPS_POLICY_GEO;
    if (strcmp(s, "custom") == 0)
        return DPS_POLICY_CUSTOM;
    return DPS_POLICY_INVALID;
}

bool dps_alloc_eligible(const struct dps_alloc_hub *h)
{
    return !h->excluded && h->devices < h->max_devices && h->weight > 0;
}

/* FNV-1a over id, a separator and host, then a splitmix64 finaliser so that
 * ids differing in their last byte spread over the whole range. */
static uint64_t dps_alloc_hash(const char *id, const char *host)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    h = (h ^ 0xff) * 0x100000001b3ULL;
    for (const unsigned char *p = (const unsigned char *)host; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

double dps_alloc_score(const char *registration_id, const char *host, int64_t weight)
{
    /* u uniform in (0,1); -w/ln(u) is the weighted rendezvous score: the
     * maximum over hubs lands on hub i with probability w_i / sum w. */
    double u = ((double)(dps_alloc_hash(registration_id, host) >> 11) + 0.5) / 9007199254740992.0;
    return -(double)weight / log(u);
}

int dps_alloc_hashed(const struct dps_alloc_hub *hubs, size_t n, const char *registration_id)
{
    int best = -1;
    double best_score = 0;
    for (size_t i = 0; i < n; i++) {
        double s;
        if (!dps_alloc_eligible(&hubs[i]))
            continue;
        s = dps_alloc_score(registration_id, hubs[i].host, hubs[i].weight);
        if (best < 0 || s > best_score) {
            best = (int)i;
            best_score = s;
        }
    }
    return best;
}

int dps_alloc_static(const struct dps_alloc_hub *hubs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (dps_alloc_eligible(&hubs[i]))
            return (int)i;
    return -1;
}

int dps_alloc_least_filled(const struct dps_alloc_hub *hubs, size_t n)
{
    int best = -1;
    double best_fill = 0;
    for (size_t i = 0; i < n; i++) {
        double fill;
        if (!dps_alloc_eligible(&hubs[i]))
            continue;
        fill = (double)hubs[i].devices / (double)hubs[i].max_devices;
        if (best < 0 || fill < best_fill) {
            best = (int)i;
            best_fill = fill;
        }
    }
    return best;
}

int dps_alloc_pick(enum dps_policy p, const struct dps_alloc_hub *hubs, size_t n, const char *registration_id)
{
    switch (p) {
    case DPS_POLICY_HASHED: return dps_alloc_hashed(hubs, n, registration_id);
    case DPS_POLICY_STATIC: return dps_alloc_static(hubs, n);
    case DPS_POLICY_GEO:    return dps_alloc_least_filled(hubs, n);
    default:                return -1;
    }
}
