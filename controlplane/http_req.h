/*
 * http_req.h - one admin/API request from arrival to its single reply:
 * parsed path and query, body checks, JSON and error replies, access log.
 *
 * Contract: every handler given a cp_req must end in exactly one call to a
 * cpreq_reply_* function on every path (possibly later, from a database
 * callback). That call sends the answer and frees the cp_req.
 *
 * Before an answer is sent, two request-layer hooks may hold it: the audit
 * entry (audit.h: admin mutations that succeeded, every use of the operator
 * token) and the stored answer of an Idempotency-Key (idempotency.h). The
 * answer goes out when both have been written (or failed, which is logged).
 */
#ifndef CP_HTTP_REQ_H
#define CP_HTTP_REQ_H

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "cp.h"
#include "jsonv.h"
#include "pgpool.h"
#include "principal.h"

#define CPREQ_MAX_SEGS 6

struct idem_claim;   /* idempotency.c */

struct cp_req {
    struct cp *cp;
    struct evhttp_request *ev;
    enum evhttp_cmd_type method;
    char id[65];                     /* request id, echoed as X-Request-Id */
    char *segs[CPREQ_MAX_SEGS];      /* percent-decoded path segments */
    int nsegs;
    struct evkeyvalq query;
    bool query_parsed;
    char *body;                      /* NUL-terminated copy, or NULL */
    size_t body_len;
    int64_t start_ms;
    const void *route;               /* the matched resource, for handlers */
    char *json_text;                 /* scratch owned by the request, freed with it */
    struct principal who;            /* the authenticated caller (principal.h); kind NONE on device routes */
    /* Audit log (audit.h). Handlers may set these; freed with the request. */
    json_t *audit_before;            /* the resource before the change (owned), or NULL */
    int audit_geo;                   /* index into cfg.geos of the device the route names; -1: none */
    char audit_tenant[64];           /* the entry's tenant when the path names none (e.g. a tenant's API key); "" */
    const char *route_pattern;       /* "/v1/tenants/{tenant}" from the route table (static); NULL: audit derives it */
    /* Idempotency-Key (idempotency.h): the claim this request holds, or NULL. */
    struct idem_claim *idem;
    bool idem_replayed;              /* answered from a stored answer */
    /* The answer held while the audit entry and the idempotent answer are
     * written (cpreq_finish): sent once both are done. */
    struct evbuffer *held_buf;
    int held_status;
    int held_pending;
    bool held;
};

/* Build the context for an incoming request; NULL means it was answered already. */
struct cp_req *cpreq_new(struct cp *cp, struct evhttp_request *ev);

/* Send a JSON value (reference stolen) with the given status. */
void cpreq_reply_json(struct cp_req *r, int status, json_t *body);
/* Send JSON text that is already serialised (e.g. built by PostgreSQL). */
void cpreq_reply_text(struct cp_req *r, int status, const char *json_text, size_t len);
/* Send 204 No Content. */
void cpreq_reply_empty(struct cp_req *r, int status);
/* An answer held until a change was announced: 204 without a body (body,
 * if any, is released), else the JSON body (reference stolen). */
void cpreq_reply_held(struct cp_req *r, int status, json_t *body);
/* Send {"error":{"code","message","target"?,"requestId"}}; target may be NULL or "". */
void cpreq_reply_error(struct cp_req *r, int status, const char *code, const char *target,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* A validation failure from jsonv: 400 with its code and field. */
void cpreq_reply_jv(struct cp_req *r, const struct jv_err *e);
/* 503 database_unavailable with Retry-After. */
void cpreq_reply_db_unavailable(struct cp_req *r, const struct pgq_result *res);

void cpreq_add_header(struct cp_req *r, const char *name, const char *value);
/* Retry-After for a wait of about wait_ms, jittered (util_retry_after_s):
 * the one way this daemon sets that header. */
void cpreq_retry_after(struct cp_req *r, int64_t wait_ms);
/* A header of the request, or NULL. */
const char *cpreq_header(struct cp_req *r, const char *name);
/* "GET", "POST", ... */
const char *cpreq_method_name(enum evhttp_cmd_type m);

/* Whether the bearer token matches the operator token. */
bool cpreq_is_operator(struct cp_req *r);

/* Body checks for POST/PATCH: size, media type, JSON object. Replies and
 * returns NULL on failure; returns a new reference on success. */
json_t *cpreq_json_body(struct cp_req *r, bool allow_merge_patch);

/* A query parameter, or NULL. Only the names in allowed may appear at all:
 * returns false (after replying 400) if another one does. */
bool cpreq_check_query(struct cp_req *r, const char *const *allowed);
const char *cpreq_query(struct cp_req *r, const char *name);

#endif
