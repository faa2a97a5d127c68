/*
 * fs.h - fleetsim: the declarations the simulator's modules share.
 *
 *   fs_admin.c   the stack's env file, a small blocking HTTP client for the
 *                admin API, the layout (stamps, DPS instances, hubs), tenant
 *                creation and the enrollment-sync wait
 *   fs_fleet.c   the simulated devices: machines, what each remembers on
 *                "disk" (compact, in memory), the driver hooks that count and
 *                check every answer, and one phase of a run
 *   fs_report.c  the table and the JSON object
 *   fs_main.c    the command line and the scenarios
 */
#ifndef FLEETSIM_FS_H
#define FLEETSIM_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/ssl.h>

#include "sd_ev.h"
#include "sd_machine.h"

#define FS_MAX_STAMPS 64
#define FS_MAX_HUBS 256
#define FS_MAX_GEOS 16

/* ------------------------------------------------------------------ admin (fs_admin.c) */

struct fs_stamp {
    char id[64];
    char region[48];
    char geography[32];
    char status[16];
    char tenancy[16];
    bool has_dps;
};

struct fs_hub {
    char host[128];
    int stamp;              /* index into stamps */
};

struct fs_dps {
    char id[64];
    char id_scope[32];
    char endpoint[SD_HOST_MAX];
    int stamp;              /* index into stamps */
};

struct fs_admin {
    char cp_host[SD_HOST_MAX];   /* "127.0.0.1:port" */
    bool cp_tls;
    char token[160];
    char ca_file[512];
    struct fs_stamp stamps[FS_MAX_STAMPS];
    int nstamps;
    struct fs_hub hubs[FS_MAX_HUBS];
    int nhubs;
    struct fs_dps dps[FS_MAX_STAMPS];
    int ndps;
};

/* Read CONTROLPLANE_URL, OPERATOR_TOKEN, STACK_CA_FILE from a KEY=value file. */
bool fs_admin_load_env(struct fs_admin *a, const char *path, char *err, size_t errlen);

/*
 * One admin call (a fresh connection each). body: JSON text or NULL. On a
 * transport failure returns false; otherwise *status and *out (the parsed
 * JSON answer or NULL; the caller json_decref()s it).
 */
bool fs_admin_call(const struct fs_admin *a, const char *method, const char *path, const char *body,
                   int *status, json_t **out, char *err, size_t errlen);

/* Stamps (with their first DPS instance) and hubs (sorted by stamp, then host name) into a. */
bool fs_admin_load_layout(struct fs_admin *a, char *err, size_t errlen);

int fs_admin_stamp_by_id(const struct fs_admin *a, const char *id);
int fs_admin_dps_by_scope(const struct fs_admin *a, const char *id_scope); /* index into dps */
int fs_admin_hub_stamp(const struct fs_admin *a, const char *host);

/*
 * A hub of stamp (index into stamps) for the device named key: the same
 * answer every time for the same layout (FNV-1a of key over the stamp's hubs
 * in host-name order). NULL when the stamp has no hub.
 */
const char *fs_admin_pick_hub(const struct fs_admin *a, int stamp, const char *key);

/*
 * Create tenant id (resident in geos) and return its enrollment key (base64)
 * in key. 409 already_exists is an error unless a key was given already.
 */
bool fs_admin_create_tenant(const struct fs_admin *a, const char *id, char geos[][32], int ngeos, char *key,
                            size_t keylen, char *err, size_t errlen);

/* Wait until every DPS instance of an eligible stamp finished two enrollment passes after now, in sync. */
bool fs_admin_wait_sync(const struct fs_admin *a, char geos[][32], int ngeos, int timeout_s, char *err,
                        size_t errlen);

/* PATCH /v1/stamps/{id} {"status": status}. */
bool fs_admin_set_stamp_status(const struct fs_admin *a, const char *stamp, const char *status, char *err,
                               size_t errlen);

/* ------------------------------------------------------------------ fleet (fs_fleet.c) */

/* What the checks compare answers with, per phase. */
enum fs_mode {
    FS_MODE_FIRST_BOOT,   /* new devices: any correct placement is fine */
    FS_MODE_WARM,         /* provisioned devices: the answer must equal what they persisted,
                             and any LOCATE/PROVISION/REPROVISION/DPS_REGISTER is a reprovision */
    FS_MODE_REHOME,       /* region loss: affected devices move out of the failed region;
                             the others must not provision again */
};

/* Per simulated device, besides its machine: 52 bytes. */
struct fs_dev {
    uint32_t t_boot;        /* ms since the phase started; UINT32_MAX: not booted */
    uint32_t t_first;       /* first request written */
    uint32_t t_ready;       /* READY (0: not yet; stored +1) */
    uint32_t polls[5];      /* the last five DPS polls (ms since the phase started, +1) */
    uint32_t not_before;    /* a 429's Retry-After ends here (ms since the phase started, +1; 0: none) */
    uint32_t etag;          /* persisted: interned etag */
    uint32_t devid;         /* persisted: interned device id (0: same as the registration id) */
    uint16_t place;         /* persisted: interned assignment (0: none) */
    uint16_t hub;           /* persisted: interned hub host (0: none) */
    uint8_t pflags;         /* persisted: sd_state flags */
    uint8_t flags;          /* FS_F_* */
    uint8_t npolls;         /* polls in the ring, up to 5 */
    uint8_t pidx;           /* the ring's oldest slot */
};

enum {
    FS_F_DONE = 1u << 0,      /* terminal in this phase */
    FS_F_READY = 1u << 1,
    FS_F_WRONG = 1u << 2,
    FS_F_REPROV = 1u << 3,
    FS_F_POLLVIOL = 1u << 4,
    FS_F_AFFECTED = 1u << 5,  /* region loss: on a failed stamp */
    FS_F_FAILED = 1u << 6,
};

/* The measured numbers of one phase. */
struct fs_result {
    uint32_t devices;         /* taking part in the phase */
    uint32_t ready, failed, unfinished;
    uint32_t wrong, reprovisions, poll_violations;
    uint32_t retry_after_violations; /* requests sent before a 429's Retry-After had passed */
    uint64_t requests[SD_REQ_KIND_COUNT];
    uint64_t requests_total;
    uint64_t responses, throttled, io_errors;
    uint64_t status_2xx, status_4xx, status_5xx;
    double seconds;
    uint32_t ttr_p50, ttr_p90, ttr_p99, ttr_max; /* ms */
    bool ttr_from_first;      /* measured from the first request instead of the boot */
    uint32_t samples_n;
    uint32_t *sample_ready;   /* ready devices at each whole second (owned) */
    struct sd_ev_stats ev;
};

struct fs_fleet;

struct fs_fleet_opts {
    uint32_t devices;
    const char *prefix;          /* registration ids: prefix + index */
    const unsigned char *group_key;
    size_t group_key_len;
    struct sd_config cfg;        /* the fleet's machine configuration */
    SSL_CTX *tls;
    uint32_t max_conns;
    const struct fs_admin *admin; /* the layout, for checks */
    char geos[FS_MAX_GEOS][32];   /* the tenant's residency */
    int ngeos;
    bool verbose;
};

struct fs_fleet *fs_fleet_new(struct event_base *base, const struct fs_fleet_opts *o);
void fs_fleet_free(struct fs_fleet *f);

/*
 * One phase: re-create the machines (from what they persisted, when warm),
 * boot them (or only those with FS_F_AFFECTED events, see below), run the
 * loop until every device taking part is done or deadline_s passed, and fill
 * *r. cfg_override (optional) changes the machine configuration for this phase.
 */
struct fs_phase {
    enum fs_mode mode;
    bool boot_persisted;          /* boot with the persisted state (warm) */
    const struct sd_config *cfg;  /* NULL: the fleet's */
    int deadline_s;
    /* region loss: devices on these stamps get HUB_REJECTED instead of a boot */
    const bool *failed_stamp;     /* indexed like admin->stamps, or NULL */
    /*
     * Seeding through the control plane only (--seed-mode cp): a device that
     * got its placement (locate) is not sent to the DPS; fleetsim persists the
     * assignment with a hub of the assigned stamp picked from the layout
     * (fs_admin_pick_hub) and counts the device ready.
     */
    bool hub_from_layout;
};

bool fs_fleet_run(struct fs_fleet *f, const struct fs_phase *ph, struct fs_result *r);

/* Devices whose persisted assignment is on a stamp marked in failed_stamp. */
uint32_t fs_fleet_count_on(const struct fs_fleet *f, const bool *failed_stamp);

/* Persisted assignments per stamp (index like admin->stamps; the last slot: unknown). */
void fs_fleet_count_by_stamp(const struct fs_fleet *f, uint32_t *counts);

size_t fs_fleet_bytes_per_device(void);

void fs_result_clear(struct fs_result *r);

/* ------------------------------------------------------------------ report (fs_report.c) */

struct fs_report {
    const char *scenario;
    uint32_t devices;
    const char *tenant;
    const char *approach;
    uint32_t window_ms;
    uint32_t max_conns;
    uint64_t seed;
    const char *seed_mode;        /* blackout/update-reboot/region-loss: how devices were provisioned
                                     first ("real", "proxy", "cp"; NULL: no seeding) */
    const char *seed_desc;        /* the same in words */
    const char *failed_region;    /* region-loss */
    uint32_t affected;            /* region-loss */
    const struct fs_result *seeding; /* NULL if none */
    const struct fs_result *run;
    long peak_rss_kb;
    size_t bytes_per_device;
};

void fs_report_table(const struct fs_report *rep);
void fs_report_json(const struct fs_report *rep);
long fs_peak_rss_kb(void);

#endif
