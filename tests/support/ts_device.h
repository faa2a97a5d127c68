/*
 * ts_device.h - the set-up the device library's tests (tests/device) share:
 * the one-stamp stack a device provisions against, and reading the state
 * file the library writes (sd_store.h). Built as stampcp_testsupport_device,
 * which links libstampdevice (only the device tests need it).
 *
 * Everything returned is library-owned (freed by ts_finish) unless stated.
 */
#ifndef STAMPCP_TS_DEVICE_H
#define STAMPCP_TS_DEVICE_H

#include "sd_store.h"
#include "ts.h"
#include "ts_stamp.h"

/* The stack's stamp, its DPS instance and the service policy its agent serves. */
#define TS_SD_STAMP "eu-west-1"
#define TS_SD_DPS "eu-west-1-dps"
#define TS_SD_POLICY "provisioningserviceowner"

/*
 * Geography eu, region eu-west, stamp TS_SD_STAMP with the DPS instance
 * TS_SD_DPS served by a real agent (ts_rt_start_served: the test PKI,
 * dps.enrollmentSyncMs 500, policy TS_SD_POLICY) and hubs eu-west-1-hub-1 and
 * eu-west-1-hub-2; started, healthy, the layout seen; then the standard
 * tenant (ts_rt_tenant_acme) with its group synced to the instance. *stamp
 * gets the agent's handle (with rt's Redis, for ts_stamp_service); *tenant
 * (may be NULL) the tenant. Returns the stack (its layout is rt->layout).
 */
struct ts_rt *ts_sd_stack_start(struct ts_stamp *stamp, struct ts_tenant **tenant);
/* Whether host is one of the stack stamp's hubs. */
bool ts_sd_stack_hub(const struct ts_rt *rt, const char *host);

/* sd_store_load of ts_sd_state_path(regid); fails the test unless it gives want. */
struct sd_state ts_sd_load_state(const char *regid, enum sd_store_result want);

#endif
