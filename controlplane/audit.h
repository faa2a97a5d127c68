/*
 * audit.h - the admin API's audit log: who changed what, and every use of
 * the operator token (a break-glass credential: its reads too).
 *
 * An entry is written for
 *   - every admin request (not the device routes .../registrations/...)
 *     with method POST, PUT, PATCH or DELETE that is answered 2xx, and
 *     not replayed from an Idempotency-Key (idempotency.h);
 *   - every request authenticated with the operator token, whatever its
 *     method and answer (a replay too, marked replayed).
 * It names the caller (r->who: key id and name, or "operator token"), the
 * tenant (r->audit_tenant if a handler set it, else the one the path names,
 * else for an onboarding the new tenant's id), the method and route
 * pattern (r->route_pattern from the route table, else derived from the
 * path), the resource (the path), the status, before (r->audit_before, set by handlers that read it)
 * and after (the answer body of a mutation), both with every secret
 * replaced by "[redacted]", the request id and the time.
 *
 * Where: an entry naming a device (r->audit_geo >= 0, set by the device
 * handlers once they know the device's geography) goes in that geography's
 * database; all others in the global catalog (a device path whose
 * geography is unknown is stored there with the device id as a pseudonym).
 *
 * The answer is held until the entry committed (http_req.c cpreq_finish).
 * When the write fails, the failure is logged at error level
 * (event=audit_write_failed) and the answer still goes out: the change it
 * reports has committed, and refusing to say so would make the caller
 * retry a change that happened.
 *
 *   GET /v1/audit?tenant=&resource=&since=&until=&limit=&cursor=
 *
 * Ownership: the functions borrow r; audit_record copies what it needs
 * before returning. json values passed in are not stolen unless stated.
 */
#ifndef CP_AUDIT_H
#define CP_AUDIT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "http_req.h"

/* Whether the answer (status) of r must be recorded before it is sent. */
bool audit_wanted(const struct cp_req *r, int status);

/*
 * Write r's entry (body: the answer text, len bytes, as it will be sent),
 * then call done(r) exactly once (also when the write fails). body is
 * copied before this returns.
 */
void audit_record(struct cp_req *r, int status, const char *body, size_t len, void (*done)(struct cp_req *r));

/* Replace every secret in v (in place, recursively) by "[redacted]":
 * members named like a secret (key, token, secret, password, enrollmentKey,
 * serviceKey, primaryKey, privateKey, ... and any name ending in Key, Token,
 * Secret or Password) and strings that look like one (a PEM private key,
 * an API key or installer token, a SAS token, a sealed value). */
void audit_redact(json_t *v);

/* An RFC 3339 time ("2026-12-04T09:00:00Z", "...T09:00:00.5+02:00") as
 * microseconds since the epoch; false when s is not one (no offset, a
 * date alone, a field out of range). */
bool audit_parse_time(const char *s, long long *us);

/* GET /v1/audit (segs after "v1": "audit"). Replies exactly once. */
void audit_handle(struct cp_req *r);

#endif
