/*
 * api_drift.h - GET /v1/dps-instances/{id}/registration-drift: the last
 * registration drift report of an instance (stamp_drift.h), as stored in its
 * geography database, with the stamp operations still undelivered there.
 */
#ifndef CP_API_DRIFT_H
#define CP_API_DRIFT_H

struct cp_req;

/* Replies exactly once: 200 report, 404 unknown instance, 503 database unavailable. */
void api_drift_report(struct cp_req *r, const char *dps_id);

#endif
