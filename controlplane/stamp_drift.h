/*
 * stamp_drift.h - the registration drift pass: compares each DPS instance's
 * registrations (the stamp's GET /registrationSummary and one page of GET
 * /registrationIds, docs/stamp-dps.md) with the control plane's assignments
 * (devices rows of the instance's geography), records a report, and repairs
 * orphans - registrations owned by "tenant:T" whose device is neither
 * assigned at that instance nor retired - once they have been orphans for
 * the grace period, by enqueueing a 'deprovision' (reason 'orphan') in the
 * stamp-operation outbox (cp_stamp_op_enqueue, delivered by stamp_ops.c).
 *
 * What a pass keeps lives in the geography database (schema/geo/011): the
 * cursor of the rolling sample, the orphans seen, the last report, and a
 * lease so that one router at a time runs an instance's pass (claimed and
 * released in short transactions; nothing is held across the HTTP calls).
 * Every router runs the timer; the lease and the minimum gap between passes
 * make one pass per instance per interval, whichever router runs it.
 *
 * Ownership: stamp_drift_new returns an object the caller frees with
 * stamp_drift_free (with the loop stopped: in-flight calls are abandoned,
 * their leases expire in the database).
 */
#ifndef CP_STAMP_DRIFT_H
#define CP_STAMP_DRIFT_H

#include <stdbool.h>
#include <stdint.h>

struct cp;
struct stamp_drift;

/* NULL when stampDrift.enabled is false or the DPS TLS context can't be made (logged). */
struct stamp_drift *stamp_drift_new(struct cp *cp);
void stamp_drift_free(struct stamp_drift *sd);
/* Run a pass soon (coalesced with a running one). */
void stamp_drift_soon(struct stamp_drift *sd);

/* The lease a pass takes on an instance outlives a crashed router by this much at most. */
#define STAMP_DRIFT_LEASE_MS 60000
/* Orphans listed in a report (the count is always given). */
#define STAMP_DRIFT_REPORT_ORPHANS 100

#endif
