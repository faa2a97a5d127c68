/*
 * router.h - where does a device belong: what devices (or installer apps on
 * their behalf) ask the router, and the admin operations on single devices.
 *
 *   POST /v1/tenants/{t}/registrations/{r}/locate       device SAS, installer or operator token
 *   POST /v1/tenants/{t}/registrations/{r}/provision    the same; the router also registers the device
 *                                                       at its DPS and returns the hub (approach 2)
 *   POST /v1/tenants/{t}/registrations/{r}/reprovision  device SAS, installer or operator token
 *   GET  /v1/tenants/{t}/devices/{r}                    operator
 *   POST /v1/tenants/{t}/devices/{r}/deprovision|retire|reprovision   operator
 *
 * The rooms: router.c (the per-request state machine), router_auth.c (device
 * credentials), router_proxy.c (registration at the DPS), device_store.c
 * (the SQL and the batchers), invalidate.c (telling the other instances).
 */
#ifndef CP_ROUTER_H
#define CP_ROUTER_H

#include <jansson.h>
#include <stdbool.h>

#include "http_req.h"
#include "jsonv.h"

/* segs: the path after /v1/tenants/{t}/; Replies once. */
void router_registration(struct cp_req *r, const char *tenant, char **segs, int nsegs);
void router_device_admin(struct cp_req *r, const char *tenant, char **segs, int nsegs);

/* Registration ids as DPS accepts them, lowercase only: [a-z0-9-._:]{1,128},
 * ending in a letter, digit or '-'. */
bool router_valid_regid(const char *s);

/* The optional body of a device route, without a database (the router calls
 * it; so do the fuzz harnesses): an object with at most "reason" (1-128
 * characters; reason_allowed) or "payload" (payload_allowed). body is
 * borrowed; *reason borrows from it. False with e set means a 400. */
bool router_check_body(json_t *body, bool reason_allowed, bool payload_allowed, const char **reason,
                       struct jv_err *e) MUSTCHECK;

#endif
