/*
 * routes.h - the control plane's route table: every route the HTTP server
 * answers, as data (method, path pattern, the scope it needs, who may use
 * it, its handler). The gate (gate.h) authenticates and authorises a
 * request against its entry before the handler runs; the isolation matrix
 * test enumerates this very table (stampcp-controlplane --print-routes), so
 * a route cannot exist without an authorisation rule and a test.
 *
 * Pure data and matching: no I/O. Entries are static; nothing is freed.
 */
#ifndef CP_ROUTES_H
#define CP_ROUTES_H

#include <event2/http.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct cp_req;

/* Who may call a route. */
enum route_access {
    ROUTE_PUBLIC,      /* no credential (probes) */
    ROUTE_DEVICE,      /* authenticates itself (device SAS, installer token, operator token), or an
                        * API key with the route's scope: the gate checks keys, the handler the rest */
    ROUTE_TENANT,      /* platform credentials and tenant keys (filtered to their tenant) */
    ROUTE_PLATFORM,    /* platform credentials only: a tenant key is 403 insufficient_scope (404 first
                        * when the path names another tenant) */
};

struct route {
    enum evhttp_cmd_type method;
    const char *pattern;        /* "/v1/tenants/{tenant}/devices/{device}": {name} matches one segment */
    uint32_t scope;             /* SCOPE_* bits (principal.h) the caller must all hold; 0 for PUBLIC */
    enum route_access access;
    int tenant_seg;             /* index of the path segment naming the tenant, or -1 */
    void (*handler)(struct cp_req *r);
};

extern const struct route routes_table[];
extern const int routes_count;

/* The entry for this method and path (segments already split and decoded),
 * or NULL. On NULL, *path_known tells whether some other method matches
 * the path (405 then), and allow gets those methods ("GET, POST"). */
const struct route *routes_match(enum evhttp_cmd_type method, char *const *segs, int nsegs,
                                 bool *path_known, char *allow, size_t allowlen);

/* Whether the path could only be a device route (the gate leaves its credential to the handler). */
bool routes_is_device_path(char *const *segs, int nsegs);

const char *routes_method_name(enum evhttp_cmd_type m);

/* The table as JSON, one object per route: for tools and the matrix test. */
void routes_print_json(FILE *out);

#endif
