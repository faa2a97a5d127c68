/*
 * tenants.h - the tenants the router serves: a read-through cache over the
 * global catalog, holding what placement and device authentication need
 * (residency, tenancy, enrollment key, the live installer tokens, verified
 * and enabled X.509 CA certificates).
 *
 * Entries live for a few seconds and are dropped at once when any control
 * plane changes the tenant (invalidate.h), so a key rotation or residency
 * change takes effect everywhere promptly. While the global catalog can't be
 * read, an expired entry is still served for stale_on_error_ms, so devices of
 * known tenants are not refused because of a catalog outage; during that
 * time a failed re-read is retried at most once a second per tenant.
 *
 * Under a flood of made-up tenant ids (docs/security.md, "Control plane
 * under flood"):
 *  - ids the catalog does not have are remembered in a bounded LRU
 *    (negative cache: at most negative_cache_size entries, each for
 *    negative_ttl_ms);
 *  - concurrent fetches of one id share one query (the later callers wait
 *    for the first one's answer);
 *  - fetches of ids this process has never seen exist take a token from a
 *    bucket (unknown_rate per second, unknown_burst deep); with the bucket
 *    empty an untrusted caller gets TENANT_REFUSED at once, without a query.
 *    Ids that were found once (the known set, as large as the catalog) and
 *    trusted callers never need a token.
 *
 * Ownership: the cache owns its entries; a struct tenant handed to a
 * callback is borrowed (tenant_ref() to keep it).
 */
#ifndef CP_TENANTS_H
#define CP_TENANTS_H

#include <jansson.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgpool.h"
#include "envelope.h"
#include "sas.h"

#define TENANT_KEY_MAX 64

/* A live installer token (not revoked, not expired when the row was read):
 * what device authentication needs. Expiry is checked again at each use. */
struct tenant_installer {
    char sha256[65];            /* SHA-256 hex of the whole token */
    char id[17];                /* the public id (installer_tokens.h) */
    int64_t expires_wall_ms;
    char *prefix;               /* registrationIdPrefix, or NULL: any */
};

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
    struct tenant_installer *installers;
    int ninstaller;
    bool suspended;             /* status "suspended": device routes answer 403 tenant_suspended */
    int64_t max_devices;        /* quotas.maxDevices; -1: unlimited */
    int64_t max_per_minute;     /* quotas.maxProvisionsPerMinute; -1: unlimited */
    X509 **cas;                 /* verified, enabled X.509 CAs (tenant_cas), owned */
    int ncas;
    int64_t expires_mono_ms;
    int64_t retry_mono_ms;      /* served stale: no new catalog query before this */
};

/* TENANT_REFUSED: an id not known to exist, and the unknown-id fetch budget
 * is spent: no query was made. Answer it as a bad credential. */
enum tenant_status { TENANT_OK, TENANT_NOT_FOUND, TENANT_UNAVAILABLE, TENANT_REFUSED };

/* t is a borrowed reference: call tenant_ref() to keep it past the callback. */
typedef void (*tenants_cb)(struct tenant *t, enum tenant_status st, void *arg);

struct tenants;

struct tenants_opts {
    int ttl_ms;                  /* a found tenant is re-read after this */
    int negative_cache_size;     /* ids remembered as absent, at most (0: the default) */
    int negative_ttl_ms;         /* ... each for this long (0: the default) */
    double unknown_rate;         /* fetches of unknown ids per second (0: the default) */
    int unknown_burst;           /* ... and the bucket's depth (0: the default) */
    /* While the catalog can't be read, a tenant read at time T is still served
     * until T + ttl_ms + stale_on_error_ms (0: never past its TTL). */
    int64_t stale_on_error_ms;
};
#define TENANTS_DEFAULT_NEGATIVE_SIZE 10000
#define TENANTS_DEFAULT_NEGATIVE_TTL_MS 2000
#define TENANTS_DEFAULT_UNKNOWN_RATE 100.0
#define TENANTS_DEFAULT_UNKNOWN_BURST 200

struct tenants_stats {
    int64_t cached;              /* tenants in the cache */
    int64_t negative;            /* ids in the negative cache */
    int64_t negative_cap;
    int64_t negative_evictions;  /* pushed out by the LRU bound */
    int64_t queries;             /* catalog queries made */
    int64_t coalesced;           /* lookups that joined a query already running */
    int64_t refused;             /* unknown ids refused without a query */
    int64_t inflight;            /* queries running now */
    int64_t stale_served;        /* answers from an expired entry while the catalog failed */
};

struct tenants *tenants_new(struct pgpool *global, const struct tenants_opts *o);
void tenants_free(struct tenants *ts);
/* The keyring that opens sealed enrollment keys (borrowed; main.c owns it). */
void tenants_set_envelope(struct tenants *ts, struct envelope *env);

/* Look a tenant up; on a cache hit cb runs before tenants_get returns.
 * trusted: the caller is authenticated (operator): never TENANT_REFUSED. */
void tenants_get(struct tenants *ts, const char *id, bool trusted, tenants_cb cb, void *arg);
void tenants_stats(const struct tenants *ts, struct tenants_stats *out);
/* Whether any tenant could be answered now without the catalog (by the same
 * rules as a lookup: from the cache, or stale after a failed re-read): what
 * readiness needs while the catalog is down. O(cached tenants). */
bool tenants_any_servable(const struct tenants *ts);
/* Drop a cached tenant (after a change, or on an invalidation message). */
void tenants_forget(struct tenants *ts, const char *id);
void tenants_forget_all(struct tenants *ts);
/* Whenever trusted(arg) says false (the invalidation subscription is down or
 * not proven alive lately, so a change could go unheard), a cached tenant
 * answers only for TENANTS_DISTRUSTED_TTL_MS after it was read, and never
 * stale: a change made meanwhile is seen within that time, and a Redis
 * outage costs about one catalog read per tenant and second, not one per
 * request. trusted NULL: always trusted. arg is borrowed and outlives the
 * tenants (or the hook is reset first). */
#define TENANTS_DISTRUSTED_TTL_MS 1000
void tenants_set_trust(struct tenants *ts, bool (*trusted)(void *arg), void *arg);

void tenant_ref(struct tenant *t);
void tenant_unref(struct tenant *t);

bool tenant_allows_geo(const struct tenant *t, const char *geo);
bool tenant_allows_region(const struct tenant *t, const char *region);
bool tenant_has_stamp(const struct tenant *t, const char *stamp);
/* Whether a device SAS token (claims already checked) is signed with the key
 * derived for regid from the tenant's enrollment key or, after a rotation,
 * from the previous one (constant time per key). */
bool tenant_verify_device_sas(const struct tenant *t, const char *regid, const struct sas_token *tok);
/* The tenant's installer token whose SHA-256 hex is sha256hex, or NULL
 * (constant time per entry). Borrowed from t. The caller checks expiry. */
const struct tenant_installer *tenant_find_installer(const struct tenant *t, const char *sha256hex);

/* Build a tenant from the JSON row the catalog query returns (used by tests too).
 * The keys are opened with env (envelope.h, AAD "tenant:<id>:enrollment-key");
 * tenant_from_row() takes only clear keys (rows from before encryption, tests). */
struct tenant *tenant_from_row(json_t *row) MUSTCHECK;
struct tenant *tenant_from_row_env(json_t *row, struct envelope *env) MUSTCHECK;

#endif
