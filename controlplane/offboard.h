/*
 * offboard.h - the steps of a tenant-offboard job (jobs.h), started by
 * DELETE /v1/tenants/{t}?cascade=true once the tenant is marked offboarding:
 *
 *   0 "enrollments"  its enrollment groups are gone from every managed DPS
 *                    instance (the reconciler removes them: it skips
 *                    offboarding tenants; the step wakes it and checks),
 *                    then every other group and individual enrollment
 *                    tagged managedBy "stampcp" with the tenant's tenantId
 *                    is deleted;
 *   1 "devices"      every assigned device of every geography database of
 *                    the tenant: its DPS registration deleted at its stamp
 *                    (service API, 404 counts as gone), then released as
 *                    deprovisioned with history reason "tenant offboarded";
 *   2 "registrations" registrations under the tenant's groups that no device
 *                    row names (a device that registered at a stamp without
 *                    the control plane), listed and deleted at every instance;
 *   3 "keys"         crypto-erase (the sealed enrollment keys cleared), API
 *                    keys revoked, installer tokens deleted, tombstone set.
 *
 * Each slice is idempotent. Ownership: the slice state hangs on
 * job_run.state and is freed through job_run.free_state.
 */
#ifndef CP_OFFBOARD_H
#define CP_OFFBOARD_H

#include "jobs.h"

#define OFFBOARD_NSTEPS 4
extern const char *const offboard_steps[OFFBOARD_NSTEPS];

/* Run one slice of run->step; reports through job_slice_done() exactly once. */
void offboard_slice(struct job_run *run);

#endif
