/*
 * api_devices.h - what devices (or installer apps on their behalf) ask the
 * router, and the admin operations on single devices:
 *
 *   POST /v1/tenants/{t}/registrations/{r}/locate       device SAS, installer or operator token
 *   POST /v1/tenants/{t}/registrations/{r}/provision    the same; the router also registers the device
 *                                                       at its DPS and returns the hub (approach 2)
 *   POST /v1/tenants/{t}/registrations/{r}/reprovision  device SAS, installer or operator token
 *   GET  /v1/tenants/{t}/devices/{r}                    operator
 *   POST /v1/tenants/{t}/devices/{r}/deprovision|retire|reprovision   operator
 */
#ifndef CP_API_DEVICES_H
#define CP_API_DEVICES_H

#include "http_req.h"
#include "pgbatch.h"

/* segs: the path after /v1/tenants/{t}/; Replies once. */
void api_devices_registration(struct cp_req *r, const char *tenant, char **segs, int nsegs);
void api_devices_admin(struct cp_req *r, const char *tenant, char **segs, int nsegs);

/* Registration ids as DPS accepts them, lowercase only: [a-z0-9-._:]{1,128},
 * ending in a letter, digit or '-'. */
bool api_devices_valid_regid(const char *s);

/* The optional body of a device route, without a database (dev_read_body
 * calls it; so do the fuzz harnesses): an object with at most "reason"
 * (1-128 characters; reason_allowed) or "payload" (payload_allowed). body
 * is borrowed; *reason borrows from it. False with e set means a 400. */
bool api_devices_check_body(json_t *body, bool reason_allowed, bool payload_allowed, const char **reason,
                            struct jv_err *e) MUSTCHECK;

/* The batchers of a geography's device lookups and first assignments
 * (pgbatch.h), with at most max_inflight batches of each at once, of at most
 * max_batch items. */
struct pgbatch *api_devices_lookup_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                           int max_inflight, int max_batch, int queue_timeout_ms);
struct pgbatch *api_devices_assign_batcher(struct event_base *base, struct pgpool *pool, const char *geo,
                                           int max_inflight, int max_batch, int queue_timeout_ms);

/* Handle an invalidation message from another control plane. */
void api_devices_on_invalidate(struct cp *cp, const char *payload);

#endif
