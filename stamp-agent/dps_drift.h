/*
 * dps_drift.h - the drift extension routes of the DPS service API (not in
 * Azure DPS): what the control plane's reconciliation pass compares with its
 * assignments (docs/stamp-dps.md "Extensions").
 *
 *   GET /registrationSummary?dpsInstance=X
 *       200 {"dpsInstance":"X","owners":[{"owner","assigned","assigning","failed","disabled"}...]}
 *   GET /registrationIds?dpsInstance=X&after=<registrationId>&limit=<1..1000, default 1000>
 *       200 {"items":[{"registrationId","owner","status","assignedHub","deviceId",
 *                      "lastUpdatedDateTimeUtc"}...], "next": "<last id>" | null}
 *
 * dps_service.c authenticates the call and resolves ?dpsInstance first.
 * Ownership: the handler replies exactly once (dps_reply_*) on every path.
 */
#ifndef STAMPAGENT_DPS_DRIFT_H
#define STAMPAGENT_DPS_DRIFT_H

#include <stdbool.h>

#include "dps_server.h"

/* Whether the first path segment is one of the drift routes. */
bool dps_drift_is_route(const char *seg);

/* Serve a drift route for DPS instance dps_id (borrowed from the config). */
void dps_drift_handle(struct dps_req *r, const char *dps_id);

#endif
