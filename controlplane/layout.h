/*
 * layout.h - an immutable, refcounted snapshot of the geode layout the router
 * places devices on: stamps with their region, geography, status, tenancy and
 * hub capacity; DPS instances with their limits and registrations held.
 *
 * The catalog part is re-read from the global database every second (and at
 * once after a catalog write); registrations held come from each geography's
 * dps_usage table. Placement reads a snapshot; the exact capacity check is
 * made again, atomically, by the geography database when assigning.
 */
#ifndef CP_LAYOUT_H
#define CP_LAYOUT_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgpool.h"

struct layout_stamp;

struct layout_dps {
    char *id;
    char *id_scope;
    char *endpoint;
    int64_t max_registrations;
    int64_t per_minute;
    int64_t registrations;       /* held, from dps_usage (may lag by a refresh) */
    struct layout_stamp *stamp;
};

struct layout_stamp {
    char *id;
    char *region;
    char *geo;
    bool draining;
    bool dedicated;
    int nhubs;
    int64_t hub_capacity;        /* sum of its hubs' maxDevices */
    int64_t devices;             /* sum of its DPS instances' registrations */
    int first_dps, ndps;         /* range in layout.dps */
};

struct layout {
    int refs;
    struct layout_stamp *stamps;
    int nstamps;
    struct layout_dps *dps;
    int ndps;
    int64_t built_mono_ms;
};

void layout_ref(struct layout *l);
void layout_unref(struct layout *l);
const struct layout_stamp *layout_find_stamp(const struct layout *l, const char *id);
const struct layout_dps *layout_find_dps(const struct layout *l, const char *id);

/* Build the catalog part from the JSON the catalog query returns (tests use it directly). */
struct layout *layout_from_json(json_t *root) MUSTCHECK;

struct layouts;

/* geo_pools[i] serves geography geo_ids[i]. */
struct layouts *layouts_new(struct event_base *base, struct pgpool *global, struct pgpool **geo_pools,
                            char **geo_ids, int ngeos, int refresh_ms);
void layouts_free(struct layouts *ls);
/* The current snapshot (NULL until the first load); a borrowed reference. */
struct layout *layouts_current(struct layouts *ls);
/* This router committed (delta > 0) or released (< 0) registrations on a DPS:
 * placement counts them at once (layouts_delta) rather than at the next
 * refresh, so that a released registration can be reused right away. The
 * snapshots are not changed: the count is kept beside them until a refresh
 * has read the usage it is part of. */
void layouts_count(struct layouts *ls, const char *dps_id, int delta);
/* Registrations this router counted on a DPS that its snapshot doesn't hold
 * yet (may be negative); ls NULL: 0. */
int64_t layouts_delta(const struct layouts *ls, const char *dps_id);
/* cb(arg) runs (from the loop) right after a new snapshot is published in
 * which a DPS instance of the previous one has another idScope or endpoint:
 * devices are told the catalog's address as it is now, so answers cached
 * before must go. */
typedef void (*layouts_address_cb)(void *arg);
void layouts_on_address(struct layouts *ls, layouts_address_cb cb, void *arg);
/* Re-read as soon as possible (after a catalog change). */
void layouts_refresh_soon(struct layouts *ls);

#endif
