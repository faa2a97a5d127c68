/*
 * sd_machine.h - libstampdevice: the device-side provisioning state machine.
 *
 * The machine is pure: no I/O, no clock and no randomness of its own. A
 * driver feeds it events (boot, the answer to the last request, a transport
 * error, a timer that fired, network up/down, a reprovision command) and
 * carries out the one action it returns (send a request, sleep until a
 * deadline, persist the state, or stop in a terminal state). Two drivers run
 * it: sd_posix (blocking sockets + OpenSSL, one device) and sd_ev (libevent,
 * many devices in one process: the fleet simulator). Tests drive it with a
 * fake clock.
 *
 * What it does (../shared/specs/limits.md, "Retry rules"):
 *
 *   boot with an assignment and a hub  -> status lookup first (the control
 *       plane's free locate, or the DPS status lookup when no control plane
 *       is configured); the same place -> READY with the cached hub, no
 *       provisioning and no write; another place -> register there.
 *   boot without an assignment -> sleep a random delay in [0, stagger_ms),
 *       then provision: approach 1 (locate at the control plane, then
 *       register at the stamp's DPS: PUT register, GET operation polls) or
 *       approach 2 (the control plane's /provision proxies the DPS).
 *   a new assignment -> PERSIST (the driver writes it atomically, see
 *       sd_store.h) -> READY.
 *
 * Retry rules, in the order they apply to an answer:
 *   - 2xx: success; the failure count and the backoff reset.
 *   - 429: wait exactly Retry-After seconds when the answer has one;
 *     otherwise max(1 s, backoff). Not counted as a failure (the service
 *     told us when to come back), so it never opens the breaker.
 *   - 5xx: wait max(5 s, Retry-After or backoff). A failure.
 *   - 401/403/404: full re-registration: the cached assignment and hub are
 *     dropped (in memory; the file is rewritten only when the new one is
 *     known) and the device starts over at locate, after a backoff. A failure.
 *   - 410 from the control plane: end of life. The state is persisted with
 *     the retired flag and the machine stops in RETIRED; a later boot with
 *     that state goes straight to RETIRED without touching the network.
 *   - 400 and other 4xx: FAILED (the request itself is wrong: a bad
 *     registration id, a misconfiguration); retrying cannot help.
 *     409 from /provision (assignment_changed) is retried after a backoff.
 *   - transport errors and timeouts: backoff. A failure.
 * Every Retry-After is first capped at retry_after_max_ms (default 10 min).
 * backoff = uniform random in [0, min(backoff_cap_ms, backoff_base_ms *
 * 2^attempt)] ("full jitter"), attempt counting failures since the last
 * success. Circuit breaker: after breaker_threshold consecutive failures it
 * opens: no request for breaker_cooldown_ms; then one half-open probe; a
 * success closes it, a failure opens it again. While the network is known to
 * be down (NET_DOWN) no request is sent; NET_UP resumes the pending step
 * after a random delay in [0, resume_jitter_ms) so that a fleet whose network
 * comes back at once does not stampede.
 *
 * DPS polls: after "202 assigning" the next poll waits max(poll_min_ms,
 * Retry-After); at most max_polls polls per operation, then the device
 * registers again (after a backoff).
 *
 * Event/action rules for drivers:
 *   - BOOT once, right after sd_machine_init (a reboot is init + BOOT).
 *   - An event that changes nothing (an early TIMER, NET_UP while online, a
 *     late answer) returns the action still in force: SLEEP with the same
 *     deadline, READY/RETIRED/FAILED again, or WAIT while a SEND or PERSIST
 *     is outstanding. WAIT never cancels an outstanding SEND or PERSIST: its
 *     RESPONSE/IO_ERROR or PERSISTED is still expected.
 *   - Except NET_DOWN during a SEND: the machine goes offline (WAIT), the
 *     driver may drop the request, and a late answer to it is ignored; NET_UP
 *     sends the step again.
 *   - REPROVISION at READY is sent at once; while a step waits (backoff,
 *     poll) and the device has an assignment, the waiting step becomes the
 *     reprovision; otherwise it is carried out on reaching READY.
 *   - PERSISTED with ok == false still goes to READY (the device is
 *     provisioned in memory; the next boot provisions again).
 *   - 401/403/404 at the DPS also restart at locate; 410 from the DPS is a
 *     plain 4xx (FAILED).
 */
#ifndef STAMPDEVICE_SD_MACHINE_H
#define STAMPDEVICE_SD_MACHINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sd_state.h"

#define SD_KEY_LEN 32

enum sd_approach {
    SD_APPROACH_LOCATE = 1, /* control plane locate, then the stamp's DPS */
    SD_APPROACH_PROXY = 2,  /* the control plane's /provision registers for us */
};

enum sd_auth {
    SD_AUTH_SYMKEY = 0, /* SAS tokens from the (derived) device key */
    SD_AUTH_X509 = 1,   /* the driver presents the client certificate to the DPS;
                           the control plane then needs bearer_token */
};

/*
 * What is the same for every device of a fleet (one per process is fine;
 * the machine keeps a pointer, so it must outlive the machines). Zero means
 * "default" for every number; call sd_config_defaults() first anyway.
 */
struct sd_config {
    const char *cp_host;          /* control plane "host:port", or NULL: DPS only
                                     (then dps_host_override and id_scope_override
                                     are required) */
    bool cp_tls;                  /* https to the control plane */
    const char *tenant_id;        /* required with cp_host */
    const char *bearer_token;     /* "cpi_..." installer token for the control plane
                                     (approach 4), or NULL: SAS from the device key */
    const char *dps_host_override; /* "host:port" used instead of the answer's dpsEndpoint */
    const char *id_scope_override; /* used instead of the answer's idScope */
    enum sd_approach approach;
    enum sd_auth auth;

    uint32_t stagger_ms;          /* first provisioning: random delay in [0, stagger_ms) (default 0) */
    uint32_t boot_jitter_ms;      /* warm boot: random delay before the lookup (default 0) */
    uint32_t resume_jitter_ms;    /* after NET_UP (default 1000) */
    uint32_t backoff_base_ms;     /* default 1000 */
    uint32_t backoff_cap_ms;      /* default 300000 */
    uint32_t server_error_floor_ms; /* default 5000 */
    uint32_t throttle_floor_ms;   /* 429 without Retry-After: at least this (default 1000) */
    uint32_t retry_after_max_ms;  /* a server's Retry-After is capped at this (default 600000:
                                     10 min), so a wrong or hostile header can't park a device */
    uint32_t poll_min_ms;         /* default 2000 (DPS: 5 polls per 10 s) */
    uint32_t max_polls;           /* per operation, default 30 */
    uint32_t breaker_threshold;   /* consecutive failures that open it, default 5 */
    uint32_t breaker_cooldown_ms; /* default 60000 */
    uint32_t request_timeout_ms;  /* what SEND actions ask for, default 30000 */
    uint32_t sas_ttl_s;           /* SAS token lifetime, default 3600 */
    uint64_t seed;                /* mixed with the registration id for the PRNG */
};

/* Fill in every default (keeps pointers and approach/auth untouched). */
void sd_config_defaults(struct sd_config *c);

/* NULL if c is usable, else a static message naming what is wrong. */
const char *sd_config_check(const struct sd_config *c);

enum sd_event_type {
    SD_EV_BOOT,         /* power on; ev.state: what sd_store_load gave (NULL: nothing) */
    SD_EV_RESPONSE,     /* the answer to the pending SEND */
    SD_EV_IO_ERROR,     /* the pending SEND failed: connect, TLS, reset, timeout */
    SD_EV_TIMER,        /* the SLEEP deadline passed (early calls sleep again) */
    SD_EV_PERSISTED,    /* the PERSIST finished; ev.ok says whether it was written */
    SD_EV_NET_DOWN,     /* the device knows it is offline */
    SD_EV_NET_UP,
    SD_EV_REPROVISION,  /* a command (cloud, operator, app); ev.reason optional */
    SD_EV_HUB_REJECTED, /* the hub does not know the device (moved/deleted): provision again */
};

struct sd_event {
    enum sd_event_type type;
    int64_t now_ms;     /* the driver's monotonic clock, milliseconds */
    int64_t wall_s;     /* Unix time, seconds (SAS expiry) */
    /* SD_EV_RESPONSE */
    int status;         /* HTTP status */
    int retry_after_s;  /* the Retry-After header in seconds, -1 when absent/invalid */
    const char *body;   /* not NUL-terminated necessarily; may be NULL when body_len is 0 */
    size_t body_len;
    /* SD_EV_PERSISTED */
    bool ok;
    /* SD_EV_BOOT */
    const struct sd_state *state;
    /* SD_EV_REPROVISION / SD_EV_HUB_REJECTED */
    const char *reason;
};

enum sd_action_type {
    SD_ACT_SEND,     /* send sd_machine_request(); answer with RESPONSE or IO_ERROR */
    SD_ACT_SLEEP,    /* deliver TIMER at until_ms (or an earlier external event) */
    SD_ACT_PERSIST,  /* write sd_machine_state() atomically, then PERSISTED */
    SD_ACT_WAIT,     /* nothing to do until an external event (network down) */
    SD_ACT_READY,    /* provisioned: sd_machine_state() has the hub and device id */
    SD_ACT_RETIRED,  /* end of life (410): stop; the state says retired */
    SD_ACT_FAILED,   /* permanent failure; sd_machine_error() says why */
};

/* What a request is for: drivers and the fleet simulator count by it. */
enum sd_req_kind {
    SD_REQ_LOOKUP,       /* control plane locate with an assignment (status lookup) */
    SD_REQ_LOCATE,       /* control plane locate without one (placement) */
    SD_REQ_PROVISION,    /* control plane /provision (approach 2) */
    SD_REQ_REPROVISION,  /* control plane /reprovision */
    SD_REQ_DPS_REGISTER, /* PUT /{scope}/registrations/{id}/register */
    SD_REQ_DPS_POLL,     /* GET .../operations/{op} */
    SD_REQ_DPS_LOOKUP,   /* POST /{scope}/registrations/{id} (DPS-only status lookup) */
    SD_REQ_KIND_COUNT
};

const char *sd_req_kind_name(enum sd_req_kind k);  /* "lookup", "locate", ... */

enum sd_target { SD_TARGET_CP, SD_TARGET_DPS };

struct sd_action {
    enum sd_action_type type;
    int64_t until_ms;          /* SLEEP */
    enum sd_req_kind kind;     /* SEND */
    uint32_t timeout_ms;       /* SEND: give up and deliver IO_ERROR after this */
};

/*
 * The request of the pending SEND, built on demand into the caller's
 * buffers (a fleet of a million machines does not hold a million requests).
 * Valid until the next call into the machine.
 */
struct sd_request {
    enum sd_req_kind kind;
    enum sd_target target;
    bool tls;
    const char *method;        /* "POST", "PUT", "GET" */
    char host[SD_HOST_MAX];    /* "host:port" */
    char path[512];
    char authorization[768];   /* the whole header value, or "" (X.509 at the DPS) */
    char body[320];            /* JSON, or "" for none */
};

enum sd_phase {
    SD_PH_INIT,        /* before BOOT */
    SD_PH_STAGGER,     /* waiting out the first-provisioning delay */
    SD_PH_REQUEST,     /* a SEND is outstanding (which one: the action's kind) */
    SD_PH_BACKOFF,     /* waiting to retry */
    SD_PH_POLL_WAIT,   /* waiting before the next DPS poll */
    SD_PH_PERSIST,     /* a PERSIST is outstanding */
    SD_PH_OFFLINE,     /* network down */
    SD_PH_READY,
    SD_PH_RETIRED,
    SD_PH_FAILED,
};

enum sd_breaker { SD_BREAKER_CLOSED, SD_BREAKER_OPEN, SD_BREAKER_HALF_OPEN };

/*
 * One device. Plain data: a fleet allocates an array of these. Treat the
 * fields as private (read them through the accessors below); they are in
 * the header only so that the size is known.
 */
struct sd_machine {
    const struct sd_config *cfg;
    unsigned char key[SD_KEY_LEN]; /* device key (symmetric key auth) */
    struct sd_state st;            /* what is (or will be) persisted */
    char op_id[64];                /* DPS operation being polled */
    uint64_t rng;
    int64_t until_ms;              /* SLEEP deadline */
    int64_t breaker_until_ms;
    uint32_t attempt;              /* failures since the last success (backoff exponent) */
    uint32_t failures;             /* consecutive failures (breaker) */
    uint32_t polls;                /* polls of the current operation */
    uint16_t flags;                /* private */
    uint8_t phase;                 /* enum sd_phase */
    uint8_t pending;               /* enum sd_req_kind: the step to send/retry */
    uint8_t breaker;               /* enum sd_breaker */
    uint8_t resume_phase;          /* what OFFLINE resumes */
    char error[96];                /* FAILED: why; before that, the reason of a
                                      pending reprovision (sd_machine_error says
                                      "" unless FAILED) */
};

/*
 * Set up a machine for one device. registration_id: 1-128 chars of
 * [a-z0-9-._:]; key: the device's own symmetric key (derive it from a group
 * key with sd_derive_key) or NULL for X.509. Returns false with a message in
 * m->error when the arguments are unusable (the machine is then FAILED).
 */
bool sd_machine_init(struct sd_machine *m, const struct sd_config *cfg, const char *registration_id,
                     const unsigned char key[SD_KEY_LEN]);

/* Feed one event; the action to carry out is written to *out. */
void sd_machine_step(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out);

/*
 * Build the pending request (only meaningful after a SEND action, until the
 * next event). wall_s: for the SAS expiry. Returns false if nothing is
 * pending or a buffer would overflow (then the driver reports IO_ERROR).
 */
bool sd_machine_request(const struct sd_machine *m, int64_t wall_s, struct sd_request *out);

const struct sd_state *sd_machine_state(const struct sd_machine *m);
enum sd_phase sd_machine_phase(const struct sd_machine *m);
enum sd_breaker sd_machine_breaker(const struct sd_machine *m);
const char *sd_machine_error(const struct sd_machine *m);
const char *sd_phase_name(enum sd_phase p);

/* deviceKey = HMAC-SHA256(group key, registration id), as DPS group enrollments do. */
void sd_derive_key(const unsigned char *group_key, size_t group_key_len, const char *registration_id,
                   unsigned char out[SD_KEY_LEN]);

#endif
