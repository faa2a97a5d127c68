/*
 * api_keys.h - the /v1/api-keys handlers: create (the key is shown once),
 * list, get, revoke, rotate. Verification of keys in use is apikeys.h.
 */
#ifndef CP_API_KEYS_H
#define CP_API_KEYS_H

#include "http_req.h"

/* segs: what follows /v1/api-keys ({} | {id} | {id, "rotate"}); the gate
 * has authenticated the caller and checked the keys:write scope. */
void api_keys_handle(struct cp_req *r, char **segs, int nsegs);

/* Whether s is an RFC 3339 timestamp with a zone (2026-12-04T10:00:00Z,
 * optional fraction, Z or +hh:mm): what PostgreSQL may then parse. */
bool api_keys_valid_timestamp(const char *s);

#endif
