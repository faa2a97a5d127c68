/*
 * tenant_change.c - announcing a committed tenant change (tenant_change.h).
 */
#include "tenant_change.h"

#include <stdio.h>
#include <stdlib.h>

#include "cp.h"
#include "invalidate.h"
#include "log.h"
#include "util.h"

struct tenant_change {
    struct cp *cp;
    char tenant[64];
    void (*done)(void *arg);
    void *arg;
};

static void tenant_change_delivered(bool delivered, void *arg)
{
    struct tenant_change *c = arg;
    if (!delivered)   /* the tenant cache TTL (tenantCacheTtlMs) is the backstop */
        log_warn("event=tenant_invalidation_unconfirmed tenant=%s", c->tenant);
    tenants_forget(c->cp->tenants, c->tenant);
    enroll_sync_soon(c->cp->sync);
    c->done(c->arg);
    free(c);
}

void tenant_change_announce(struct cp *cp, const char *tenant, void (*done)(void *arg), void *arg)
{
    struct tenant_change *c = xcalloc(1, sizeof *c);
    c->cp = cp;
    snprintf(c->tenant, sizeof c->tenant, "%s", tenant);
    c->done = done;
    c->arg = arg;
    invalidate_tenant(cp->inval, c->tenant, tenant_change_delivered, c);
}
