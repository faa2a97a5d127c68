/*
 * svcapi.h - what every control-plane caller of a stamp's DPS service API (and
 * of a hub registry reached through it) shares: opening the instance's
 * service key, stored sealed in the catalog (dps_instances.service_key,
 * envelope.h), and the request headers signed with it. Callers: enroll_sync,
 * offboard, stamp_ops, stamp_drift.
 *
 * Ownership: nothing is allocated; the header array points at the caller's
 * sas buffer and at static strings, valid while those are.
 */
#ifndef CP_SVCAPI_H
#define CP_SVCAPI_H

#include <stddef.h>

struct envelope;

/* Open the sealed service key of DPS instance dps_id into key (cap bytes):
 * its length, or -1 when sealed is NULL or does not open. */
int svcapi_key_open(struct envelope *env, const char *dps_id, const char *sealed, unsigned char *key, size_t cap);

/*
 * h[]: Authorization (a SAS for sr, signed with key as policy key_name, an
 * hour long, written into sas), Accept and Content-Type JSON, User-Agent, and
 * If-Match when if_match is not NULL or "". NULL-terminated; h holds at least
 * 11 entries and the caller may append pairs after them. Returns the count.
 */
int svcapi_headers(const char **h, char *sas, size_t saslen, const char *sr, const unsigned char *key, size_t keylen,
                   const char *key_name, const char *if_match);

#endif
