/*
 * sd_state.h - libstampdevice: what a device remembers across reboots.
 *
 * Plain fixed-size data so that it can be embedded in a machine, copied and
 * persisted without allocation. sd_store.h writes and reads it.
 */
#ifndef STAMPDEVICE_SD_STATE_H
#define STAMPDEVICE_SD_STATE_H

#include <stdint.h>

#define SD_REGID_MAX 129  /* 128 chars + NUL */
#define SD_HOST_MAX 96    /* "host:port" */

enum {
    SD_STATE_ASSIGNED = 1u << 0, /* the control plane's assignment below is known */
    SD_STATE_HUB = 1u << 1,      /* the DPS registration finished: hub and device id known */
    SD_STATE_RETIRED = 1u << 2,  /* end of life (410): never provision again */
};

struct sd_state {
    uint32_t flags;
    char registration_id[SD_REGID_MAX];
    char tenant_id[64];
    char geography[32];
    char region[48];
    char stamp[64];
    char id_scope[32];
    char dps_endpoint[SD_HOST_MAX]; /* as the control plane answered it */
    char assigned_hub[128];
    char device_id[SD_REGID_MAX];
    char etag[24];
};

#endif
