/*
 * enroll_sync.h - keeps every tenant's enrollment group present in each DPS
 * instance its devices may be placed on (residency and tenancy decide), with
 * the tenant's enrollment key, through each instance's DPS service API - the
 * same API real Azure DPS offers, so real instances could be driven unchanged.
 *
 * A reconciliation pass runs every interval and soon after a tenant or DPS
 * instance changes: it lists the instance's groups (paged query), creates or
 * updates what is missing or differs (If-Match on the etag), deletes groups it
 * manages that are no longer wanted, and records the drift it found and what
 * it could not fix. Groups it manages carry initialTwin.tags.managedBy =
 * "stampcp"; groups created by anyone else are left alone. Besides each
 * tenant's symmetric-key group (id = tenant id), it keeps one X.509 group
 * per verified, enabled CA of the tenant (api_certificates.c), with id
 * "<tenant>.x509.<CA id>".
 */
#ifndef CP_ENROLL_SYNC_H
#define CP_ENROLL_SYNC_H

#include <jansson.h>
#include <stdbool.h>

struct cp;
struct enroll_sync;

struct enroll_sync *enroll_sync_new(struct cp *cp, int interval_ms);
void enroll_sync_free(struct enroll_sync *es);
/* Run a pass soon (coalesced). */
void enroll_sync_soon(struct enroll_sync *es);
/* The last pass's state for one instance (new reference), or NULL if it has
 * no service credentials or no pass ran yet. */
json_t *enroll_sync_status(struct enroll_sync *es, const char *dps_id);

/*
 * Why the tenant's group cannot exist in this instance, as the last pass
 * that listed it found (borrowed string, valid until the next pass ends):
 * "over quota" (dps.maxEnrollmentGroups, DPS: 100, are held by tenants created
 * earlier or by groups others manage) or "refused (HTTP n)" (the service API
 * refused the create with a permanent 4xx). NULL when the group is there, may
 * yet be created, or the instance is not managed or not reached yet:
 * placement must then keep the instance eligible.
 */
const char *enroll_sync_refused(struct enroll_sync *es, const char *dps_id, const char *tenant_id);

/* The group document for a tenant (new reference): symmetric key, hashed
 * allocation; primaryKey the enrollment key, secondaryKey the previous key
 * (after a rotation, still accepted) or, never rotated, the same key;
 * provisioningStatus "enabled", or "disabled" for a suspended tenant. */
json_t *enroll_sync_group_doc(const char *tenant_id, const char *enrollment_key, const char *previous_key,
                              bool enabled);

/* The X.509 group document for one of a tenant's verified, enabled CAs (new
 * reference): id "<tenant>.x509.<CA id>", the CA as primary signing
 * certificate, hashed allocation, initialTwin.tags managedBy = "stampcp",
 * tenantId and x509CaId (the reconciler deletes such a group, when no
 * longer wanted, only when its id is made from those two tags). */
/* A tenant's X.509 group id is "<tenant>" ENROLL_SYNC_X509_INFIX "<CA id>". */
#define ENROLL_SYNC_X509_INFIX ".x509."
#define ENROLL_SYNC_GROUP_MAX 136
json_t *enroll_sync_x509_group_doc(const char *tenant_id, const char *ca_id, const char *ca_pem, bool enabled);

#endif
