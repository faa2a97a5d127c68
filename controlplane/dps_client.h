/*
 * dps_client.h - registers one device at a DPS endpoint through the Azure DPS
 * device API, as an SDK would (docs: ../shared/specs/dps-wire.md §2):
 *   PUT /{idScope}/registrations/{id}/register  -> 202 assigning + operationId
 *   GET /{idScope}/registrations/{id}/operations/{operationId}  until assigned
 * over HTTPS with the peer verified, honouring Retry-After, bounded by a deadline.
 * Used by the router's proxy mode (approach 2).
 */
#ifndef CP_DPS_CLIENT_H
#define CP_DPS_CLIENT_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>

#include "util.h"

enum dps_status {
    DPS_ASSIGNED,       /* registrationState holds the hub */
    DPS_FAILED,         /* status "failed": allocation impossible */
    DPS_DISABLED,       /* status "disabled" */
    DPS_THROTTLED,      /* 429; retry_after_s set */
    DPS_REJECTED,       /* 401/403/404: the DPS does not accept this device */
    DPS_UNREACHABLE,    /* connect, TLS or protocol failure, or the deadline passed */
};

struct dps_outcome {
    enum dps_status status;
    int http_status;
    int retry_after_s;
    char assigned_hub[256];
    char device_id[256];
    char substatus[48];
    char error[256];
    json_t *registration_state;   /* borrowed, valid during the callback; may be NULL */
};

typedef void (*dps_cb)(const struct dps_outcome *o, void *arg);

struct dps_client;

/* ca_file NULL: the system trust store. */
struct dps_client *dps_client_new(struct event_base *base, const char *ca_file, int timeout_ms,
                                  char *err, size_t errlen);
void dps_client_free(struct dps_client *c);

/*
 * Register: endpoint "host:port"; sas the device's SharedAccessSignature for
 * sr = idScope/registrations/regid; payload (may be NULL) is sent as is.
 * The call ends (DPS_UNREACHABLE) at the client's timeout_ms or at
 * deadline_ms (util_mono_ms() clock; 0: none), the first of them.
 * cb is called exactly once, never from inside dps_register().
 */
void dps_register(struct dps_client *c, int64_t deadline_ms, const char *endpoint, const char *id_scope,
                  const char *regid, const char *sas, json_t *payload, dps_cb cb, void *arg);

#endif
