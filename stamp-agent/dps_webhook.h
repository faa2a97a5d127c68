/*
 * dps_webhook.h - the custom allocation webhook client: one POST of a JSON
 * AllocationRequest to an http:// or https:// URL with a deadline, on the
 * event loop. https verifies the server against the system trust store
 * (OpenSSL's default paths, so SSL_CERT_FILE / SSL_CERT_DIR in the agent's
 * environment add a private CA) and its host name or IP.
 */
#ifndef STAMPAGENT_DPS_WEBHOOK_H
#define STAMPAGENT_DPS_WEBHOOK_H

#include <event2/event.h>
#include <jansson.h>
#include <openssl/ssl.h>

#include "http_call.h"

/* Called exactly once per call (never from inside dps_webhook_post), unless
 * the call is cancelled first; res->status is 0 when no answer came. */
typedef http_cb dps_webhook_cb;

struct dps_webhook;        /* the client: owns the TLS context */
struct dps_webhook_call;

struct dps_webhook *dps_webhook_new(struct event_base *base);
/* Calls still in flight keep working (their TLS objects hold the context);
 * cancel them first, or let http_call_abort_all() free them at shutdown. */
void dps_webhook_free(struct dps_webhook *w);

/* Start a POST; the returned handle is valid until the callback runs or
 * dps_webhook_cancel() is called. */
struct dps_webhook_call *dps_webhook_post(struct dps_webhook *w, const char *url, const char *body,
                                          int timeout_ms, dps_webhook_cb cb, void *arg);
void dps_webhook_cancel(struct dps_webhook_call *c);

#endif
