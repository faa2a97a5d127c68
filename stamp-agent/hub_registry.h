/*
 * hub_registry.h - the IoT Hub registry of the stamp's hubs: the device
 * identities on each of provisioning.hubs[] (table hub_devices, schema/stamp/
 * 005_hub_registry.sql), served as the subset of the Azure IoT Hub registry
 * REST API a service needs (docs/stamp-dps.md "Hub registry"):
 *
 *   GET    /devices/{deviceId}?api-version=..   200 device | 404 DeviceNotFound
 *   PUT    /devices/{deviceId}   no If-Match: create (409 DeviceAlreadyExists);
 *                                If-Match "*"|"<etag>": update (404, 412 PreconditionFailed)
 *   DELETE /devices/{deviceId}   If-Match "*"|"<etag>" (none: unconditional) -> 204 (404, 412)
 *
 * A request reaches it when its Host header (port stripped, any case) is one
 * of the hubs' hostName (dps_server.c routes it). Authentication: an IoT Hub
 * service SAS, sr = the hub host name (optionally followed by "/..."),
 * signed with one of provisioning.servicePolicies.
 *
 * It also makes an identity's authentication for an assignment
 * (dps_device.c settles a registration and upserts its identity in one
 * statement): symmetric keys are sealed with the AAD
 * "hub:<hubHost lower-cased>:<deviceId>:symmetric-key".
 *
 * Ownership: the handler replies exactly once (dps_reply_*) on every path
 * and frees what it allocates; struct hub_auth's strings are owned by it
 * and released by hub_auth_clear().
 */
#ifndef STAMPAGENT_HUB_REGISTRY_H
#define STAMPAGENT_HUB_REGISTRY_H

#include <jansson.h>
#include <stdbool.h>

#include "dps_server.h"
#include "envelope.h"

/* The index in cfg->prov.hubs of the hub whose hostName the Host header
 * value names (port stripped, case-insensitive), or -1 (NULL: -1). */
int hub_registry_hub_of(const struct agent_provisioning_config *pc, const char *host_header);

/* Serve one registry request for hub pc->hubs[hub]; replies exactly once. */
void hub_registry_handle(struct dps_req *r, int hub);

/* An identity's authentication as stored: type, sealed keys, thumbprints. */
struct hub_auth {
    const char *type;                /* "sas", "selfSigned", "certificateAuthority", "none" (static) */
    char *primary_key, *secondary_key;               /* sealed ("enc:..."), or NULL */
    char *primary_thumbprint, *secondary_thumbprint; /* hex, or NULL */
};

/*
 * The identity a DPS assignment creates for the registration regid made by
 * the enrollment doc (its keys sealed as dps_secrets.h says; kind "group" or
 * "individual", id enr_id on dps_id) on hub (host name) as device_id:
 * symmetricKey -> "sas" with the device's key (a group's derived key);
 * x509 individual -> "selfSigned" with the certificate's SHA-1 thumbprint
 * (att_info.certificateInfo.sha1Thumbprint); x509 group ->
 * "certificateAuthority". False (out cleared) if a key does not open or seal.
 */
bool hub_auth_for_assignment(struct envelope *env, const char *dps_id, const char *kind, const char *enr_id,
                             json_t *doc, json_t *att_info, const char *regid, const char *hub,
                             const char *device_id, struct hub_auth *out) MUSTCHECK;
void hub_auth_clear(struct hub_auth *a);

/* "hub:<host lower-cased>:<deviceId>:symmetric-key" into out. */
void hub_registry_aad(char *out, size_t outlen, const char *hub, const char *device_id);

#endif
