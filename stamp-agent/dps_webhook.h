/*
 * dps_webhook.h - the custom allocation webhook client: one POST of a JSON
 * AllocationRequest to an https:// URL with a deadline, on the event loop.
 * https verifies the server against the system trust store (OpenSSL's
 * default paths, so SSL_CERT_FILE / SSL_CERT_DIR in the agent's environment
 * add a private CA) and its host name or IP.
 *
 * Target rules (provisioning.webhookAllowPrivate, default false): the URL
 * must be https, and its host must not be a loopback, private, link-local,
 * shared (100.64/10), multicast, reserved or unspecified address. They are
 * checked when an enrollment is written (literal addresses and "localhost")
 * and again at each call on the address the host resolves to (dns.c, on the
 * loop, IPv4 preferred); the call connects to the address it checked, so
 * DNS rebinding can't slip one in.
 * With the allowance, such targets are accepted, and may also use http://
 * (local stacks and tests); a public target always needs https.
 */
#ifndef STAMPAGENT_DPS_WEBHOOK_H
#define STAMPAGENT_DPS_WEBHOOK_H

#include <event2/event.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "http_call.h"

/* Called exactly once per call (never from inside dps_webhook_post), unless
 * the call is cancelled first; res->status is 0 when no answer came. */
typedef http_cb dps_webhook_cb;

struct dps_webhook;        /* the client: owns the TLS context */
struct dps_webhook_call;

struct dps_webhook *dps_webhook_new(struct event_base *base);
/* The stamp's allowance (provisioning.webhookAllowPrivate) for every client
 * of the process; set once at start (dps_server_new) before any call. */
void dps_webhook_set_allow_private(bool allow);
/* The process's resolver (borrowed; outlives every call); set once at start. */
struct dns;
void dps_webhook_set_dns(struct dns *d);

/* Whether url may be stored as a webhook URL: false with a sentence in why. */
bool dps_webhook_url_check(const char *url, bool allow_private, char *why, size_t whylen);
/* Whether an address is one of the refused kinds (loopback, private, ...). */
bool dps_webhook_addr_is_private(const struct sockaddr *sa);
/* Calls still in flight keep working (their TLS objects hold the context);
 * cancel them first, or let http_call_abort_all() free them at shutdown. */
void dps_webhook_free(struct dps_webhook *w);

/* Start a POST; the returned handle is valid until the callback runs or
 * dps_webhook_cancel() is called. */
struct dps_webhook_call *dps_webhook_post(struct dps_webhook *w, const char *url, const char *body,
                                          int timeout_ms, dps_webhook_cb cb, void *arg);
void dps_webhook_cancel(struct dps_webhook_call *c);

#endif
