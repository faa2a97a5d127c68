/*
 * tenants.h - the tenants the router serves: a read-through cache over the
 * global catalog, holding what placement and device authentication need
 * (residency, tenancy, enrollment key, installer token hashes).
 *
 * Entries live for a few seconds and are dropped at once when any control
 * plane changes the tenant (Redis channel cp:tenants), so a key rotation or
 * residency change takes effect everywhere promptly.
 */
#ifndef CP_TENANTS_H
#define CP_TENANTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgpool.h"
#include "sas.h"

#define TENANT_KEY_MAX 64

struct tenant {
    int refs;
    char *id;
    json_t *json;               /* the public representation (no key) */
    char **geos;                /* residency: allowed geographies */
    int ngeos;
    char **regions;             /* residency: allowed regions (none: any in the geographies) */
    int nregions;
    char **lookup_geos;         /* every geography its devices may be in */
    int nlookup;
    bool dedicated;
    char **stamps;              /* dedicated stamps */
    int nstamps;
    unsigned char key[TENANT_KEY_MAX];   /* enrollment key, raw (the primary) */
    int keylen;
    unsigned char prev_key[TENANT_KEY_MAX];   /* the key before the last rotation, still valid */
    int prev_keylen;                          /* 0: never rotated */
    char **installer_hashes;    /* SHA-256 hex of installer tokens */
    int ninstaller;
    int64_t expires_mono_ms;
};

enum tenant_status { TENANT_OK, TENANT_NOT_FOUND, TENANT_UNAVAILABLE };

/* t is a borrowed reference: call tenant_ref() to keep it past the callback. */
typedef void (*tenants_cb)(struct tenant *t, enum tenant_status st, void *arg);

struct tenants;

struct tenants *tenants_new(struct pgpool *global, int ttl_ms);
void tenants_free(struct tenants *ts);

/* Look a tenant up; on a cache hit cb runs before tenants_get returns. */
void tenants_get(struct tenants *ts, const char *id, tenants_cb cb, void *arg);
/* Drop a cached tenant (after a change, or on an invalidation message). */
void tenants_forget(struct tenants *ts, const char *id);
void tenants_forget_all(struct tenants *ts);

void tenant_ref(struct tenant *t);
void tenant_unref(struct tenant *t);

bool tenant_allows_geo(const struct tenant *t, const char *geo);
bool tenant_allows_region(const struct tenant *t, const char *region);
bool tenant_has_stamp(const struct tenant *t, const char *stamp);
/* Whether a device SAS token (claims already checked) is signed with the key
 * derived for regid from the tenant's enrollment key or, after a rotation,
 * from the previous one (constant time per key). */
bool tenant_verify_device_sas(const struct tenant *t, const char *regid, const struct sas_token *tok);
/* Whether sha256hex is one of the tenant's installer tokens (constant time per entry). */
bool tenant_has_installer(const struct tenant *t, const char *sha256hex);

/* Build a tenant from the JSON row the catalog query returns (used by tests too). */
struct tenant *tenant_from_row(json_t *row) MUSTCHECK;

#endif
