/*
 * stamp_ops.h - the delivery worker of the stamp-operation outbox (table
 * stamp_ops in each geography database, schema/geo/010): the one owner of
 * carrying a device's deprovision, retire and move to its stamp.
 *
 * Every router runs one worker; it polls each geography's outbox every
 * stampOps.pollMs, claims due ops with a lease (SKIP LOCKED, so several
 * routers share the work), never an op while an earlier op of the same
 * device is still undelivered, and delivers each through the DPS instance's
 * service API and the hub registry of the stamp (docs/architecture.md,
 * "Stamp-operation outbox"):
 *   deprovision   GET the registration and its hub identity; the device read
 *                 again; DELETE the identity, then the registration, each with
 *                 the etag read (skipped when the device is again assigned at
 *                 that instance, at the claim or at the re-read)
 *   retire        PUT a disabled individual enrollment for the id; the hub
 *                 identity disabled
 *   remove_moved  like deprovision, once the device is assigned at its new
 *                 instance (or after stampOps.moveGraceSeconds)
 * A 404 is "already done". A failure puts the op back with an exponential
 * backoff (capped at stampOps.maxBackoffMs), attempts and last_error kept.
 * An instance that does not answer is held back from the claims for a while
 * (per-instance backoff), so that its ops don't fill every round.
 * Delivery writes a device_history event ('stamp_removed', 'stamp_disabled',
 * 'stamp_op_skipped').
 *
 * Ownership: the worker owns everything it allocates; stamp_ops_free (with
 * the loop stopped, before the pools are freed) drops calls and queries in
 * flight without their callbacks. Returned JSON is a new reference.
 */
#ifndef CP_STAMP_OPS_H
#define CP_STAMP_OPS_H

#include <jansson.h>

struct cp;
struct stamp_ops;

/* NULL when stampOps.enabled is false or the TLS client context can't be made (logged). */
struct stamp_ops *stamp_ops_new(struct cp *cp);
void stamp_ops_free(struct stamp_ops *so);

/* The backlog of one DPS instance as the last poll read it (every
 * stampOps.pollMs, all geographies): {"undelivered": n, "failing": n (ops
 * with a failed attempt), "oldestAgeSeconds": s, "lastError": "..."|null}.
 * {"undelivered": 0, ...} when nothing waits; NULL when the worker is off
 * (so == NULL) or no poll has completed yet. */
json_t *stamp_ops_backlog(struct stamp_ops *so, const char *dps_id);

#endif
