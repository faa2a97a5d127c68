/*
 * routes.c - the route table (routes.h) and its matcher. Each handler here
 * is a thin adapter from the matched path to a module's handler; the
 * authorisation of every route is the (scope, access, tenant_seg) of its
 * entry, applied by gate.c before the handler runs.
 */
#include "routes.h"

#include <string.h>

#include "api_catalog.h"
#include "api_drift.h"
#include "api_certificates.h"
#include "router.h"
#include "api_installer_tokens.h"
#include "api_inventory.h"
#include "api_keys.h"
#include "api_probes.h"
#include "api_tenants.h"
#include "audit.h"
#include "catalog.h"
#include "cp_secrets.h"
#include "http_req.h"
#include "jobs.h"
#include "layout.h"
#include "principal.h"

/* ---- adapters ---- */

static void rt_healthz(struct cp_req *r) { api_probes_healthz(r); }
static void rt_readyz(struct cp_req *r) { api_probes_readyz(r); }
static void rt_device(struct cp_req *r) { router_registration(r, r->segs[2], r->segs + 3, r->nsegs - 3); }
static void rt_tenants(struct cp_req *r) { api_tenants_handle(r, r->segs + 2, r->nsegs - 2); }
static void rt_inventory_devices(struct cp_req *r) { api_inventory_devices(r, r->segs[2]); }
static void rt_device_admin(struct cp_req *r) { router_device_admin(r, r->segs[2], r->segs + 3, r->nsegs - 3); }
static void rt_inventory(struct cp_req *r) { api_inventory_counts(r); }
static void rt_kek(struct cp_req *r) { cp_secrets_handle(r, r->segs + 2, r->nsegs - 2); }
static void rt_certificates(struct cp_req *r) { api_certificates_handle(r, r->segs[2], r->segs + 4, r->nsegs - 4); }
static void rt_installer_tokens(struct cp_req *r)
{
    api_installer_tokens_handle(r, r->segs[2], r->segs + 4, r->nsegs - 4);
}
static void rt_jobs(struct cp_req *r) { api_jobs_handle(r, r->segs + 2, r->nsegs - 2); }
static void rt_audit(struct cp_req *r) { audit_handle(r); }
static void rt_api_keys(struct cp_req *r) { api_keys_handle(r, r->segs + 2, r->nsegs - 2); }

static void rt_catalog(struct cp_req *r)
{
    api_catalog_handle(r, catalog_find(r->segs[1]), r->nsegs == 3 ? r->segs[2] : NULL);
}

/* GET /v1/dps-instances/{id}/enrollment-sync: the reconciler's last word on it. */
static void rt_sync_status(struct cp_req *r)
{
    json_t *st = enroll_sync_status(r->cp->sync, r->segs[2]);
    if (!st) {
        cpreq_reply_error(r, 404, "not_found", NULL,
                          "no enrollment sync state for '%.64s' (unknown, no service credentials, or no pass yet)",
                          r->segs[2]);
        return;
    }
    cpreq_reply_json(r, 200, st);
}

/* GET /v1/dps-instances/{id}/registration-drift: the last drift pass's report. */
static void rt_drift(struct cp_req *r) { api_drift_report(r, r->segs[2]); }
/* GET /v1/dps-instances/{id}/stamp-ops: what waits in the stamp-operation outbox for it. */
static void rt_stamp_ops(struct cp_req *r)
{
    json_t *b = stamp_ops_backlog(r->cp->stamp_ops, r->segs[2]);
    struct layout *l = layouts_current(r->cp->layouts);
    /* An instance removed from the catalog may still have ops waiting: its
     * backlog is shown; an id neither knows is not found. */
    if (b && l && !layout_find_dps(l, r->segs[2]) && json_integer_value(json_object_get(b, "undelivered")) == 0) {
        json_decref(b);
        cpreq_reply_error(r, 404, "not_found", NULL, "no DPS instance '%.64s'", r->segs[2]);
        return;
    }
    if (!b) {
        cpreq_reply_error(r, 404, "not_found", NULL,
                          "no stamp-operation state (stampOps.enabled is false, or the outbox was not read yet)");
        return;
    }
    json_object_set_new(b, "dpsInstance", json_string(r->segs[2]));
    cpreq_reply_json(r, 200, b);
}

/* ---- the table ---- */

#define GET EVHTTP_REQ_GET
#define POST EVHTTP_REQ_POST
#define PATCH EVHTTP_REQ_PATCH
#define DELETE EVHTTP_REQ_DELETE

/* The five layout collections: tenant keys read the part inside their residency. */
#define LAYOUT(c) \
    {GET, "/v1/" c, SCOPE_TENANTS_READ, ROUTE_TENANT, -1, rt_catalog}, \
    {POST, "/v1/" c, SCOPE_PLATFORM_ADMIN, ROUTE_PLATFORM, -1, rt_catalog}, \
    {GET, "/v1/" c "/{id}", SCOPE_TENANTS_READ, ROUTE_TENANT, -1, rt_catalog}, \
    {PATCH, "/v1/" c "/{id}", SCOPE_PLATFORM_ADMIN, ROUTE_PLATFORM, -1, rt_catalog}, \
    {DELETE, "/v1/" c "/{id}", SCOPE_PLATFORM_ADMIN, ROUTE_PLATFORM, -1, rt_catalog}

const struct route routes_table[] = {
    {GET, "/healthz", 0, ROUTE_PUBLIC, -1, rt_healthz},
    {GET, "/readyz", 0, ROUTE_PUBLIC, -1, rt_readyz},

    {POST, "/v1/tenants/{tenant}/registrations/{device}/locate", SCOPE_PROVISION_ON_BEHALF, ROUTE_DEVICE, 2, rt_device},
    {POST, "/v1/tenants/{tenant}/registrations/{device}/reprovision", SCOPE_PROVISION_ON_BEHALF, ROUTE_DEVICE, 2, rt_device},
    {POST, "/v1/tenants/{tenant}/registrations/{device}/provision", SCOPE_PROVISION_ON_BEHALF, ROUTE_DEVICE, 2, rt_device},

    {GET, "/v1/tenants", SCOPE_TENANTS_READ, ROUTE_TENANT, -1, rt_tenants},
    {POST, "/v1/tenants", SCOPE_TENANTS_WRITE, ROUTE_PLATFORM, -1, rt_tenants},
    {GET, "/v1/tenants/{tenant}", SCOPE_TENANTS_READ, ROUTE_TENANT, 2, rt_tenants},
    {PATCH, "/v1/tenants/{tenant}", SCOPE_TENANTS_WRITE, ROUTE_TENANT, 2, rt_tenants},
    {DELETE, "/v1/tenants/{tenant}", SCOPE_TENANTS_WRITE, ROUTE_PLATFORM, 2, rt_tenants},
    {POST, "/v1/tenants/{tenant}/suspend", SCOPE_TENANTS_WRITE, ROUTE_PLATFORM, 2, rt_tenants},
    {POST, "/v1/tenants/{tenant}/resume", SCOPE_TENANTS_WRITE, ROUTE_PLATFORM, 2, rt_tenants},
    /* both answer a credential that provisions devices (the enrollment key, an installer token) */
    {POST, "/v1/tenants/{tenant}/enrollment-key/rotate", SCOPE_TENANTS_WRITE | SCOPE_PROVISION_ON_BEHALF, ROUTE_TENANT, 2,
     rt_tenants},
    {GET, "/v1/tenants/{tenant}/installer-tokens", SCOPE_TENANTS_READ, ROUTE_TENANT, 2, rt_installer_tokens},
    {POST, "/v1/tenants/{tenant}/installer-tokens", SCOPE_KEYS_WRITE | SCOPE_PROVISION_ON_BEHALF, ROUTE_TENANT, 2,
     rt_installer_tokens},
    {GET, "/v1/tenants/{tenant}/installer-tokens/{id}", SCOPE_TENANTS_READ, ROUTE_TENANT, 2, rt_installer_tokens},
    {DELETE, "/v1/tenants/{tenant}/installer-tokens/{id}", SCOPE_KEYS_WRITE, ROUTE_TENANT, 2, rt_installer_tokens},

    /* a verified, enabled CA lets the tenant's devices provision: provision:on-behalf as well */
    {POST, "/v1/tenants/{tenant}/certificates", SCOPE_TENANTS_WRITE | SCOPE_PROVISION_ON_BEHALF, ROUTE_TENANT, 2,
     rt_certificates},
    {GET, "/v1/tenants/{tenant}/certificates", SCOPE_TENANTS_READ, ROUTE_TENANT, 2, rt_certificates},
    {GET, "/v1/tenants/{tenant}/certificates/{id}", SCOPE_TENANTS_READ, ROUTE_TENANT, 2, rt_certificates},
    {PATCH, "/v1/tenants/{tenant}/certificates/{id}", SCOPE_TENANTS_WRITE | SCOPE_PROVISION_ON_BEHALF, ROUTE_TENANT, 2,
     rt_certificates},
    {DELETE, "/v1/tenants/{tenant}/certificates/{id}", SCOPE_TENANTS_WRITE, ROUTE_TENANT, 2, rt_certificates},
    {POST, "/v1/tenants/{tenant}/certificates/{id}/verify", SCOPE_TENANTS_WRITE | SCOPE_PROVISION_ON_BEHALF,
     ROUTE_TENANT, 2, rt_certificates},
    {POST, "/v1/tenants/{tenant}/certificates/{id}/enable", SCOPE_TENANTS_WRITE | SCOPE_PROVISION_ON_BEHALF,
     ROUTE_TENANT, 2, rt_certificates},
    {POST, "/v1/tenants/{tenant}/certificates/{id}/disable", SCOPE_TENANTS_WRITE, ROUTE_TENANT, 2, rt_certificates},

    {GET, "/v1/tenants/{tenant}/devices", SCOPE_DEVICES_READ, ROUTE_TENANT, 2, rt_inventory_devices},
    {GET, "/v1/tenants/{tenant}/devices/{device}", SCOPE_DEVICES_READ, ROUTE_TENANT, 2, rt_device_admin},
    {POST, "/v1/tenants/{tenant}/devices/{device}/deprovision", SCOPE_DEVICES_WRITE, ROUTE_TENANT, 2, rt_device_admin},
    {POST, "/v1/tenants/{tenant}/devices/{device}/retire", SCOPE_DEVICES_WRITE, ROUTE_TENANT, 2, rt_device_admin},
    {POST, "/v1/tenants/{tenant}/devices/{device}/reprovision", SCOPE_DEVICES_WRITE, ROUTE_TENANT, 2, rt_device_admin},

    {GET, "/v1/api-keys", SCOPE_KEYS_WRITE, ROUTE_TENANT, -1, rt_api_keys},
    {POST, "/v1/api-keys", SCOPE_KEYS_WRITE, ROUTE_TENANT, -1, rt_api_keys},
    {GET, "/v1/api-keys/{id}", SCOPE_KEYS_WRITE, ROUTE_TENANT, -1, rt_api_keys},
    {DELETE, "/v1/api-keys/{id}", SCOPE_KEYS_WRITE, ROUTE_TENANT, -1, rt_api_keys},
    {POST, "/v1/api-keys/{id}/rotate", SCOPE_KEYS_WRITE, ROUTE_TENANT, -1, rt_api_keys},

    {GET, "/v1/inventory", SCOPE_DEVICES_READ, ROUTE_TENANT, -1, rt_inventory},
    {GET, "/v1/audit", SCOPE_TENANTS_READ, ROUTE_TENANT, -1, rt_audit},
    /* today's only jobs offboard a tenant, whose keys stop working when it starts: platform credentials */
    {GET, "/v1/jobs/{id}", SCOPE_TENANTS_READ, ROUTE_PLATFORM, -1, rt_jobs},
    {GET, "/v1/dps-instances/{id}/enrollment-sync", SCOPE_PLATFORM_ADMIN, ROUTE_PLATFORM, -1, rt_sync_status},
    {GET, "/v1/dps-instances/{id}/registration-drift", SCOPE_TENANTS_READ, ROUTE_PLATFORM, -1, rt_drift},
    {GET, "/v1/dps-instances/{id}/stamp-ops", SCOPE_PLATFORM_ADMIN, ROUTE_PLATFORM, -1, rt_stamp_ops},
    {GET, "/v1/admin/kek", SCOPE_PLATFORM_ADMIN, ROUTE_PLATFORM, -1, rt_kek},
    {POST, "/v1/admin/kek/rotate", SCOPE_PLATFORM_ADMIN, ROUTE_PLATFORM, -1, rt_kek},

    LAYOUT("geographies"),
    LAYOUT("regions"),
    LAYOUT("stamps"),
    LAYOUT("dps-instances"),
    LAYOUT("hubs"),
};
const int routes_count = (int)(sizeof routes_table / sizeof routes_table[0]);

/* ---- matching ---- */

/* Whether pattern ("/a/{x}/b") matches the segments exactly. */
static bool routes_pattern_matches(const char *pattern, char *const *segs, int nsegs)
{
    const char *p = pattern;
    int i = 0;
    while (*p == '/') {
        const char *s = ++p;
        size_t n;
        while (*p && *p != '/')
            p++;
        n = (size_t)(p - s);
        if (i >= nsegs)
            return false;
        if (!(n >= 2 && s[0] == '{' && s[n - 1] == '}') && (strlen(segs[i]) != n || memcmp(segs[i], s, n) != 0))
            return false;
        i++;
    }
    return i == nsegs;
}

const struct route *routes_match(enum evhttp_cmd_type method, char *const *segs, int nsegs,
                                 bool *path_known, char *allow, size_t allowlen)
{
    size_t o = 0;
    *path_known = false;
    if (allowlen)
        allow[0] = '\0';
    for (int i = 0; i < routes_count; i++) {
        const struct route *rt = &routes_table[i];
        if (!routes_pattern_matches(rt->pattern, segs, nsegs))
            continue;
        if (rt->method == method)
            return rt;
        if (!*path_known || !strstr(allow, routes_method_name(rt->method))) {
            int w = snprintf(allow + o, allowlen - o, "%s%s", *path_known ? ", " : "", routes_method_name(rt->method));
            if (w > 0 && (size_t)w < allowlen - o)
                o += (size_t)w;
        }
        *path_known = true;
    }
    return NULL;
}

bool routes_is_device_path(char *const *segs, int nsegs)
{
    return nsegs >= 4 && strcmp(segs[0], "v1") == 0 && strcmp(segs[1], "tenants") == 0 &&
           strcmp(segs[3], "registrations") == 0;
}

const char *routes_method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
}

void routes_print_json(FILE *out)
{
    static const char *const access[] = {"public", "device", "tenant", "platform"};
    fprintf(out, "[\n");
    for (int i = 0; i < routes_count; i++) {
        const struct route *rt = &routes_table[i];
        int n = 0;
        fprintf(out, "  {\"method\":\"%s\",\"pattern\":\"%s\",\"scopes\":[", routes_method_name(rt->method),
                rt->pattern);
        for (uint32_t b = 1; b & SCOPE_ALL; b <<= 1)
            if (rt->scope & b)
                fprintf(out, "%s\"%s\"", n++ ? "," : "", principal_scope_word(b));
        fprintf(out, "],\"access\":\"%s\",\"tenantSegment\":%d}%s\n", access[rt->access], rt->tenant_seg,
                i + 1 < routes_count ? "," : "");
    }
    fprintf(out, "]\n");
}
