/*
 * router_proxy.c - proxy provisioning (approach 2): once a device has its
 * assignment, the router registers it at that stamp's DPS with a SAS token
 * derived from the tenant's enrollment key, records the hub the DPS chose
 * (only if the assignment is still the one registered) and answers with it.
 * A registration the placement did not already pay for takes a token from
 * that DPS's bucket first; the token is given back if the request's deadline
 * passes before the DPS is called, and kept once it is called (the DPS may
 * have seen the registration). The call's own deadline is the request's.
 */
#include "router_req.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "util.h"

static void proxy_on_recorded(const struct pgq_result *q, void *arg)
{
    struct router_req *d = arg;
    if (q->status == PGQ_UNAVAILABLE) {
        router_unavailable(d, q);
        return;
    }
    if (q->status != PGQ_OK) {
        router_error(d, 500, "internal", NULL, "the hub assignment could not be recorded");
        return;
    }
    if (strcmp(PQcmdTuples((PGresult *)q->res), "1") != 0) {
        /* moved or released while the DPS worked: the device must ask again */
        router_retry_after(d, 1000);
        router_error(d, 409, "assignment_changed", NULL, "the device's assignment changed meanwhile; retry");
        return;
    }
    router_reply_assignment(d, false, NULL);
}

static void proxy_on_dps(const struct dps_outcome *o, void *arg)
{
    struct router_req *d = arg;

    d->dps = *o;
    d->dps.registration_state = NULL;
    json_decref(d->dps_state);
    d->dps_state = o->registration_state ? json_incref(o->registration_state) : NULL;
    switch (o->status) {
    case DPS_ASSIGNED:
        break;
    case DPS_THROTTLED:
        router_retry_after(d, (int64_t)o->retry_after_s * 1000);
        router_error(d, 429, "throttled", NULL, "the stamp's DPS is throttling registrations; retry later");
        return;
    case DPS_DISABLED:
        router_error(d, 403, "device_disabled", NULL, o->error);
        return;
    case DPS_FAILED:
        router_error(d, 502, "dps_assignment_failed", NULL, o->error);
        return;
    case DPS_REJECTED:
        log_write(LOG_WARN, d->id, "event=dps_rejected tenant=%s dps=%s http=%d", d->tenant_id, d->row.dps,
                  o->http_status);
        router_error(d, 502, "dps_rejected", NULL, "the stamp's DPS does not accept this device (its enrollment is missing)");
        return;
    case DPS_UNREACHABLE:
        if (!router_in_time(d))   /* the call ended at the request's deadline: that is the answer */
            return;
        log_write(LOG_WARN, d->id, "event=dps_unreachable dps=%s error=\"%.200s\"", d->row.dps, o->error);
        router_retry_after(d, 5000);
        router_error(d, 503, "dps_unavailable", NULL, "the stamp's DPS did not answer; retry later");
        return;
    }
    router_set_state(d, DS_RECORD);
    device_store_record_hub(d->cp, d->row.geo, d->tenant_id, d->regid, d->row.etag, o->assigned_hub, o->device_id,
                            proxy_on_recorded, d);
}

static void proxy_register(struct router_req *d)
{
    unsigned char dk[SAS_KEY_LEN];
    char sr[300], sas[700];
    if (!router_in_time(d))   /* a token taken for it goes back (router_free) */
        return;
    d->token_held = false;    /* from here the DPS may see it: the token is spent */
    router_row_address(d);
    snprintf(sr, sizeof sr, "%s/registrations/%s", d->row.scope, d->regid);
    sas_derive_key(d->t->key, (size_t)d->t->keylen, d->regid, dk);
    sas_build(sr, dk, sizeof dk, util_wall_ms() / 1000 + 3600, "registration", sas, sizeof sas);
    OPENSSL_cleanse(dk, sizeof dk);
    router_set_state(d, DS_DPS);
    dps_register(d->cp->dps, d->deadline_ms, d->row.endpoint, d->row.scope, d->regid, sas, d->payload, proxy_on_dps, d);
}

static void proxy_on_rate(enum ratelimit_status st, int admitted, int64_t wait_ms, void *arg)
{
    struct router_req *d = arg;
    (void)admitted;
    if (st == RL_ADMITTED && (d->chosen = layout_find_dps(d->l, d->row.dps)) != NULL)
        d->token_held = true;   /* given back unless the DPS is called (proxy_register) */
    if (!router_rate_refused(d, st, wait_ms, "the device's DPS instance is at its registration rate; retry later"))
        proxy_register(d);
}

/* The device has an assignment: register it at that DPS. A registration the
 * placement didn't already pay for takes a token from that DPS's bucket. */
void router_proxy(struct router_req *d)
{
    struct layout *l = layouts_current(d->cp->layouts);
    const struct layout_dps *dp = l ? layout_find_dps(l, d->row.dps) : NULL;
    if (!router_in_time(d))
        return;
    if (!d->cp->dps) {
        router_error(d, 503, "dps_unavailable", NULL, "proxy provisioning is not configured (dps.caFile)");
        return;
    }
    if (d->placed_now) {
        proxy_register(d);
        return;
    }
    if (!dp) {
        router_retry_after(d, 1000);
        router_error(d, 503, "no_eligible_stamp", NULL, "the device's DPS instance is not in the layout; reprovision");
        return;
    }
    if (d->l != l) {
        if (d->l) layout_unref(d->l);
        layout_ref(l);
        d->l = l;
    }
    router_set_state(d, DS_RATE);
    {
        struct ratelimit_tenant rt = {.id = d->tenant_id, .per_minute = d->t->max_per_minute, .max_devices = -1};
        ratelimit_take(d->cp->redis, &dp, 1, &rt, proxy_on_rate, d);
    }
}
