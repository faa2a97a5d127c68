/*
 * api_certificates.h - a tenant's X.509 CA certificates (docs/api.md
 * "X.509 CA certificates"): upload, list, get, proof of possession
 * (verify), enable/disable, delete.
 */
#ifndef CP_API_CERTIFICATES_H
#define CP_API_CERTIFICATES_H

#include "http_req.h"

/* Most CA certificates one tenant may hold (verified or not). */
#define API_CERTIFICATES_MAX 10

/* /v1/tenants/{tenant}/certificates[/{id}[/verify|enable|disable]]: segs
 * are the path after "certificates" (nsegs 0..2). Replies exactly once. */
void api_certificates_handle(struct cp_req *r, const char *tenant, char **segs, int nsegs);

/* The body checks, without a database (handlers and fuzzers): body is
 * borrowed; false with e set means 400 with e's code and field. */
enum api_certificates_body {
    API_CERTIFICATES_CREATE,     /* {"name"?, "certificate"} */
    API_CERTIFICATES_VERIFY,     /* {"certificate"} */
    API_CERTIFICATES_PATCH,      /* {"name"?, "enabled"?} */
};
bool api_certificates_validate(enum api_certificates_body kind, json_t *body, struct jv_err *e) MUSTCHECK;

#endif
