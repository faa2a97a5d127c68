/*
 * placement.h - where a device may go, and in which order to try: the pure
 * decision (no I/O, no clock of its own) behind the router.
 *
 * Filters, in order, each recorded per stamp in the decision record:
 *   residency  the tenant's allowed geographies (and regions, if listed) - a
 *              hard rule, never relaxed
 *   tenancy    pooled tenants use pooled stamps; dedicated tenants only theirs
 *   health     the stamp's live health is "healthy"
 *   status     the stamp is not draining
 *   enrollment the tenant's enrollment group cannot exist in the DPS instance
 *              (the reconciler found it over the group quota, or refused):
 *              such an instance is skipped; a stamp left with none fails here
 *   capacity   the stamp has hubs with room, and a DPS below its limit
 *   excluded   the caller ruled the DPS out (full or registration id taken)
 * Survivors are ordered by headroom band, then by a per-device stable hash;
 * see docs/architecture.md "Placement".
 */
#ifndef CP_PLACEMENT_H
#define CP_PLACEMENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "layout.h"
#include "loadtable.h"
#include "tenants.h"

#define PLACEMENT_MAX_CANDIDATES 64
#define PLACEMENT_BANDS 20

enum placement_outcome {
    PLACE_OK,                 /* at least one candidate */
    PLACE_NO_ELIGIBLE,        /* residency/tenancy leave no stamp: never placeable as configured */
    PLACE_NO_HEALTHY,         /* eligible stamps exist but none is healthy and active now */
    PLACE_CAPACITY_EXHAUSTED, /* eligible, healthy stamps are all full */
};

struct placement_input {
    const struct tenant *tenant;
    const struct layout *layout;
    const struct loadtable *loads;
    int64_t now_mono_ms;
    const char *registration_id;     /* seeds the stable tie-break */
    const char *const *exclude_dps;  /* DPS ids ruled out by the caller */
    int nexclude;
    const char *avoid_stamp;         /* reprovision: do not pick this stamp */
    const char *only_geo;            /* reprovision: stay in the device's geography database */
    /* Why the tenant's enrollment group cannot exist in a DPS instance, or
     * NULL (eligible); NULL function: every instance eligible. */
    const char *(*group_refused)(void *arg, const char *dps_id, const char *tenant_id);
    void *group_refused_arg;
    /* This router's own registrations not in the snapshot yet (layouts_delta);
     * NULL: none. */
    const struct layouts *local;
};

struct placement_result {
    enum placement_outcome outcome;
    int ncand;
    const struct layout_dps *cand[PLACEMENT_MAX_CANDIDATES];
    json_t *decision;                /* owned by the result */
    bool enrollment_only;            /* capacity_exhausted only because of the enrollment rule */
};

void placement_run(const struct placement_input *in, struct placement_result *out);
void placement_result_clear(struct placement_result *out);
/* The API error code of a failed outcome. */
const char *placement_outcome_code(enum placement_outcome o);
/* Whether residency and tenancy let the tenant's devices onto this stamp at all
 * (fixed by configuration, not by load): the stamps that need its enrollment group. */
bool placement_policy_admits(const struct tenant *t, const struct layout_stamp *st);
/* Whether a stamp is a valid home for the tenant's device right now (for reprovision):
 * sets *rule to the first filter it fails. */
bool placement_stamp_valid(const struct tenant *t, const struct layout_stamp *st,
                           const struct loadtable *loads, int64_t now_mono_ms, const char **rule);

#endif
