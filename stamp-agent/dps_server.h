/*
 * dps_server.h - the stamp's provisioning service over HTTPS: one listener
 * serving the Azure DPS device API for each configured ID scope and the DPS
 * service API (enrollments), backed by the stamp's geography database.
 *
 * This module owns the listener, TLS, the request context and routing; the
 * device API lives in dps_device.c, the service API in dps_service.c.
 * Request contract (as in the control plane): every handler given a dps_req
 * ends in exactly one dps_reply_* call, which sends the answer and frees it.
 */
#ifndef STAMPAGENT_DPS_SERVER_H
#define STAMPAGENT_DPS_SERVER_H

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <stdbool.h>

#include "agent_config.h"
#include "agent_load.h"
#include "envelope.h"
#include "migrate.h"
#include "pgpool.h"
#include "tls.h"

/* A timestamptz column as the DPS APIs write times: RFC 3339 UTC, microseconds. */
#define DPS_SQL_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* 96 KB: the DPS message size limit. */
#define DPS_MAX_BODY (96 * 1024)
#define DPS_MAX_SEGS 8

extern const struct migration migrations_stamp[];
extern const int migrations_stamp_count;

struct dps_device;   /* dps_device.c */
struct dps_service;  /* dps_service.c */

struct dps_server {
    struct event_base *base;
    const struct agent_config *cfg;        /* cfg->prov is this server's config */
    struct agent_load *load;               /* counters for the load report */
    struct pgpool *pool;                   /* the stamp's geography database */
    struct tls_server *tls;                /* the listener's identity, reloaded on SIGHUP (common/tls.h) */
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct connguard *guard;               /* connection cap, read deadlines, checks before bodies */
    struct dps_device *device;
    struct dps_service *service;
    struct envelope *env;                  /* KEKs sealing the enrollment keys at rest (dps_secrets.h) */
    struct dps_secrets *secrets;           /* the re-wrap pass and the KEK file watch */
    int inflight;
    int fatal_exit;                        /* non-zero: the agent must exit with this code (loop exit requested) */
};

/* Exit code of an agent whose database is not its geography's at start. */
#define DPS_EXIT_WRONG_DATABASE 3

struct dps_req {
    struct dps_server *srv;
    struct evhttp_request *ev;
    enum evhttp_cmd_type method;
    char id[33];                           /* tracking id, echoed as x-ms-request-id */
    char *segs[DPS_MAX_SEGS];              /* percent-decoded path segments */
    int nsegs;
    struct evkeyvalq query;
    char *body;                            /* NUL-terminated copy, or NULL */
    size_t body_len;
    const struct agent_dps_config *dps;    /* device API: the instance its scope names */
    int dps_index;
    int64_t start_ms;
};

/* NULL (logged) if the listener, TLS or database pool can't be set up.
 * dns (borrowed, outlives the server) resolves the database's host names. */
struct dps_server *dps_server_new(struct event_base *base, const struct agent_config *cfg,
                                  struct agent_load *load, struct dns *dns);
void dps_server_stop_accepting(struct dps_server *s);
/* SIGHUP: re-read provisioning.tls.cert/key; new handshakes use them, open
 * connections keep theirs. False (logged; the old certificate stays) on failure. */
bool dps_server_reload_tls(struct dps_server *s);
/* The stamp database pool's options for cfg, on conninfo (borrowed: both
 * must outlive the pool). */
void dps_server_pool_opts(const struct agent_config *cfg, const char *conninfo, struct pgpool_opts *o);
/*
 * `stamp-agent --migrate`: apply the stamp migrations to conninfo (the
 * owner's, never the agent's role) and check the geography; returns the
 * process exit code: 0 done, 1 failed or timed out, DPS_EXIT_WRONG_DATABASE.
 */
int dps_migrate_run(const struct agent_config *cfg, const char *conninfo, int timeout_ms);
void dps_server_free(struct dps_server *s);

/* Replies: JSON with Content-Type application/json; charset=utf-8. */
void dps_reply_json(struct dps_req *r, int status, json_t *body);          /* steals body */
void dps_reply_empty(struct dps_req *r, int status);
/* DPS error body: {"errorCode":code,"trackingId":…,"message":…,"timestampUtc":…} */
void dps_reply_error(struct dps_req *r, int status, int error_code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void dps_add_header(struct dps_req *r, const char *name, const char *value);
const char *dps_req_header(struct dps_req *r, const char *name);
const char *dps_req_query(struct dps_req *r, const char *name);
/* The client certificate chain presented in the TLS handshake (leaf first),
 * or NULL; owned by the connection, valid during the request. */
STACK_OF(X509) *dps_req_peer_chain(struct dps_req *r);
X509 *dps_req_peer_cert(struct dps_req *r);

/* Implemented by dps_device.c / dps_service.c (each replies once). */
struct dps_device *dps_device_new(struct dps_server *s);
void dps_device_free(struct dps_device *d);
void dps_device_handle(struct dps_req *r);
/* The hub registry changed outside an assignment (hub_registry.c): re-read
 * the counts now rather than at the next 5 s refresh. */
void dps_device_counts_changed(struct dps_device *d);
struct dps_service *dps_service_new(struct dps_server *s);
void dps_service_free(struct dps_service *sv);
void dps_service_handle(struct dps_req *r);

#endif
