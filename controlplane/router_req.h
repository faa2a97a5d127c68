/*
 * router_req.h - one device request inside the router (router.c and the files
 * it is split into: router_auth.c, router_proxy.c). Not for other modules:
 * they use router.h.
 *
 * Ownership: a router_req is allocated by router.c for one cp_req and freed
 * by exactly one reply (router_error, router_unavailable,
 * router_reply_assignment, ...). Every function below that replies frees d:
 * the caller must not touch d afterwards.
 *
 * The deadline (http.requestDeadlineMs from when the request was read): when
 * it passes while d waits for a callback, the client is answered 503
 * deadline_exceeded at once and d->r is set to NULL (the cp_req is gone), but
 * d itself lives on: the callback it waits for (every database, Redis and
 * DPS call calls back exactly once) still arrives, does its bookkeeping (a
 * token spent or given back, a placement counted, a change announced), and
 * the next stage check (router_in_time) or reply frees d without answering.
 * So a callback must not touch d->r, only d->cp and d->id, until it has
 * passed router_in_time or replied.
 */
#ifndef CP_ROUTER_REQ_H
#define CP_ROUTER_REQ_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp.h"
#include "device_store.h"
#include "dps_client.h"
#include "http_req.h"
#include "installer_tokens.h"
#include "placement.h"
#include "ratelimit.h"
#include "sas.h"

#define ROUTER_MAX_ATTEMPTS 4
#define ROUTER_MAX_EXCLUDE 16

enum dev_kind { DEV_LOCATE, DEV_PROVISION, DEV_REPROVISION, DEV_ADMIN_GET, DEV_DEPROVISION, DEV_RETIRE };
enum dev_state { DS_AUTH, DS_LOOKUP, DS_COUNT, DS_RATE, DS_CLAIM, DS_ASSIGN, DS_DPS, DS_RECORD, DS_DONE };
enum dev_auth { AUTH_NONE, AUTH_SAS, AUTH_OPERATOR, AUTH_INSTALLER, AUTH_X509 };

struct router_req {
    struct cp_req *r;          /* NULL once the deadline answered the client (see above) */
    char id[65];               /* the request id, for logs also after that */
    int64_t deadline_ms;       /* util_mono_ms(): when the request's time is up */
    struct event *deadline_ev; /* answers 503 deadline_exceeded then */
    enum dev_kind kind;
    enum dev_state state;
    enum dev_auth auth;
    char tenant_id[64];
    char regid[132];
    struct sas_token sas;
    char bearer_sha[INSTALLER_SHA_HEX];
    X509 *cert;                /* AUTH_X509: the client certificate (a reference of ours) */
    STACK_OF(X509) *chain;     /* ... and the intermediates it sent (ours), or NULL */
    /* installer token (AUTH_INSTALLER): its public id, and its placement
     * count (installer_tokens.h): taken before a first placement, kept once
     * the assignment committed or when its outcome is unknown, else given back */
    char inst_id[INSTALLER_ID_LEN + 1];
    bool inst_reserved;
    bool inst_committed;
    bool inst_in_doubt;        /* an assignment statement is out without a definite answer */
    struct pgpool *global;     /* for the give-back, which can outlive d->r */
    char reason[160];
    struct tenant *t;
    struct layout *l;
    int pending;
    bool lookup_failed;
    char geo_unknown[72];      /* a row came from a database of no configured geography: what it said */
    struct device_row row;
    uint64_t epoch;
    struct placement_result pr;
    char exclude[ROUTER_MAX_EXCLUDE][64];
    const char *exclude_ptr[ROUTER_MAX_EXCLUDE];
    int nexclude;
    int attempts;
    const struct layout_dps *chosen;
    bool moving;               /* reprovision of an assigned device */
    bool placed_now;           /* a DPS token was taken for this request's placement */
    bool token_held;           /* ... and not yet used by a placement that happened (router_refund gives it back) */
    struct cp *cp;             /* outlives the request (router_free settles the quota reservation) */
    bool quota_reserved;       /* a reservation against maxDevices is held under `reservation` */
    char reservation[33];
    int64_t devices_counted;   /* COUNT: the tenant's assigned devices */
    int64_t reserved_at;       /* Redis's time when the reservation was made */
    bool count_failed;
    char old_dps[64];          /* reprovision: the DPS the device is leaving */
    int regid_conflicts;       /* DPS instances ruled out because another tenant's device has this id */
    bool admin_route;          /* /v1/tenants/{t}/devices/...: acts on existing devices only */
    json_t *payload;           /* provision: the device's payload for the DPS */
    struct dps_outcome dps;    /* provision: what the DPS answered */
    json_t *dps_state;         /* provision: its registrationState (owned) */
    void (*then)(struct router_req *);   /* what follows a confirmed invalidation */
    bool assign_alone;         /* its batch found every shard with room held ('busy'): assign it alone */
    /* One geography per device (schema/geo/007): a tenant resident in several
     * geographies claims a device's geography in its arbiter geography first. */
    bool claimed;              /* the claim names claim_geo, under claim_token */
    char claim_geo[64];        /* "" or the geography the claim names (placement keeps to it) */
    char claim_token[24];
    char fenced_token[24];     /* "" or a token this request fenced: the claim may move on from it */
};

void router_set_state(struct router_req *d, enum dev_state s);

/* Every stage starts with this (before a statement is queued, before the
 * rate step, before the DPS call): false when the request is over - its
 * deadline passed (503 deadline_exceeded is answered now unless it was
 * already) - and d is freed. */
bool router_in_time(struct router_req *d) MUSTCHECK;

/* Replies (each ends the request and frees d). */
void router_error(struct router_req *d, int status, const char *code, const char *target, const char *msg);
void router_unavailable(struct router_req *d, const struct pgq_result *q);
void router_unauthorized(struct router_req *d, const char *code);
/* The device's assignment in d->row: the answer (cache: may be cached for
 * locate; moved_reason: reprovision moved it). Provision goes on to the DPS. */
void router_reply_assignment(struct router_req *d, bool cache, const char *moved_reason);

/* Add a jittered Retry-After for a wait of about wait_ms (cpreq_retry_after;
 * nothing once the client was answered). */
void router_retry_after(struct router_req *d, int64_t wait_ms);
/* The rate step said no (Redis unavailable: 503; the DPS bucket empty: 429
 * throttled with that message; the tenant's own limits: 429): replies and
 * returns true; else false and d is untouched. */
bool router_rate_refused(struct router_req *d, enum ratelimit_status st, int64_t wait_ms, const char *throttled);

/* router_auth.c: read the request's credential (false: replied, d freed) ... */
bool router_auth_read(struct router_req *d, bool operator_only);
/* ... and verify it against the tenant (false: replied, d freed). */
bool router_auth_verify(struct router_req *d, const struct tenant *t);

/* router.c, for router_place.c: look the device up (again); count a committed
 * (+1) or released (-1) registration at once (layouts_count); announce a
 * change, then continue with then(d); give back an unused DPS token. */
void router_lookup(struct router_req *d);
void router_count(struct router_req *d, const char *dps_id, int delta);
/* Take the row's idScope and dpsEndpoint from the catalog's current layout
 * (kept as stored when the layout lacks the instance). */
void router_row_address(struct router_req *d);
void router_publish_change(struct router_req *d, const char *fault_point, void (*then)(struct router_req *));
void router_refund(struct router_req *d);

/* router_place.c: place (or move, d->moving) the device, then reply. */
void router_place(struct router_req *d);

/* router_proxy.c: register the assigned device at its DPS (approach 2), then reply. */
void router_proxy(struct router_req *d);

#endif
