/*
 * placement.c - filters, scoring and the decision record.
 */
#include "placement.h"
#include "stampcheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t placement_hash(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = a; *p; p++) { h ^= (unsigned char)*p; h *= 1099511628211ULL; }
    h ^= '|'; h *= 1099511628211ULL;
    for (const char *p = b; *p; p++) { h ^= (unsigned char)*p; h *= 1099511628211ULL; }
    /* final avalanche so that similar ids don't cluster */
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33;
    return h;
}

const char *placement_outcome_code(enum placement_outcome o)
{
    switch (o) {
    case PLACE_OK: return "ok";
    case PLACE_NO_ELIGIBLE: return "no_eligible_stamp";
    case PLACE_NO_HEALTHY: return "no_healthy_stamp";
    case PLACE_CAPACITY_EXHAUSTED: return "capacity_exhausted";
    }
    return "no_eligible_stamp";
}

/* The residency and tenancy rules: fixed by configuration, not by load. */
static const char *placement_policy_rule(const struct tenant *t, const struct layout_stamp *st)
{
    if (!tenant_allows_geo(t, st->geo) || !tenant_allows_region(t, st->region))
        return "residency";
    if (t->dedicated ? !tenant_has_stamp(t, st->id) : st->dedicated)
        return "tenancy";
    return NULL;
}

bool placement_policy_admits(const struct tenant *t, const struct layout_stamp *st)
{
    return placement_policy_rule(t, st) == NULL;
}

bool placement_stamp_valid(const struct tenant *t, const struct layout_stamp *st,
                           const struct loadtable *loads, int64_t now_mono_ms, const char **rule)
{
    *rule = placement_policy_rule(t, st);
    if (*rule)
        return false;
    if (stampcheck_conflict(st, loadtable_get(loads, st->id), NULL, 0)) {
        *rule = "identity";   /* its report disagrees with the catalog about where it is */
        return false;
    }
    if (loadtable_health(loads, st->id, now_mono_ms) != STAMP_HEALTHY) {
        *rule = "health";
        return false;
    }
    if (st->draining) {
        *rule = "status";
        return false;
    }
    return true;
}

/* Registrations held on a DPS: the snapshot's, plus what this router
 * counted since (layouts_count). */
static int64_t placement_regs(const struct placement_input *in, const struct layout_dps *d)
{
    int64_t n = d->registrations + layouts_delta(in->local, d->id);
    return n < 0 ? 0 : n;
}

static int64_t placement_stamp_devices(const struct placement_input *in, const struct layout_stamp *st)
{
    int64_t n = st->devices;
    for (int k = 0; in->local && k < st->ndps; k++)
        n += layouts_delta(in->local, in->layout->dps[st->first_dps + k].id);
    return n < 0 ? 0 : n;
}

static double placement_headroom(const struct placement_input *in, const struct layout_dps *d, int64_t devices)
{
    const struct layout_stamp *st = d->stamp;
    double cap = 1.0 - (double)placement_regs(in, d) / (double)d->max_registrations;
    double hub = st->hub_capacity > 0 ? 1.0 - (double)devices / (double)st->hub_capacity : 0.0;
    return cap < hub ? cap : hub;
}

/* 5% bands, [0.95, 1] the top one: an empty DPS and a nearly empty one are
 * equals, so a burst doesn't swing every new device to whichever is emptier. */
static int placement_band(double headroom)
{
    int band = (int)(headroom * PLACEMENT_BANDS);
    if (band >= PLACEMENT_BANDS) band = PLACEMENT_BANDS - 1;
    if (band < 0) band = 0;
    return band;
}

static bool placement_excluded(const struct placement_input *in, const char *dps_id)
{
    for (int i = 0; i < in->nexclude; i++)
        if (strcmp(in->exclude_dps[i], dps_id) == 0)
            return true;
    return false;
}

struct placement_cand {
    const struct layout_dps *dps;
    int band;
    uint64_t tie;
};

static int placement_cmp(const void *a, const void *b)
{
    const struct placement_cand *x = a, *y = b;
    if (x->band != y->band)
        return y->band - x->band;
    if (x->tie != y->tie)
        return x->tie < y->tie ? -1 : 1;
    return strcmp(x->dps->id, y->dps->id);
}

static json_t *placement_verdict(const struct layout_stamp *st, const char *rule, const char *detail)
{
    json_t *v = json_pack("{s:s, s:s, s:s, s:b}", "stamp", st->id, "geography", st->geo, "region",
                          st->region, "admitted", rule == NULL);
    if (rule) json_object_set_new(v, "rule", json_string(rule));
    if (detail) json_object_set_new(v, "detail", json_string(detail));
    return v;
}

/* Check one stamp's DPS instances; returns how many were admitted, and when
 * none: the rule (*rule) and its detail (*why, in buf). */
static int placement_stamp_dps(const struct placement_input *in, const struct layout_stamp *st,
                               struct placement_cand *cands, int *ncand, const char **rule, const char **why,
                               char *buf, size_t buflen)
{
    int admitted = 0, refused = 0;
    bool any_room = false;
    int64_t devices = placement_stamp_devices(in, st);
    *rule = "capacity";
    if (st->nhubs == 0 || devices >= st->hub_capacity) {
        *why = st->nhubs == 0 ? "no hubs" : "hubs full";
        return 0;
    }
    for (int k = 0; k < st->ndps; k++) {
        const struct layout_dps *d = &in->layout->dps[st->first_dps + k];
        const char *no_group = in->group_refused
                                   ? in->group_refused(in->group_refused_arg, d->id, in->tenant->id) : NULL;
        if (no_group) {
            if (refused++ == 0)
                snprintf(buf, buflen, "enrollment group %s on %s", no_group, d->id);
            continue;
        }
        if (placement_regs(in, d) >= d->max_registrations)
            continue;
        any_room = true;
        if (placement_excluded(in, d->id) || *ncand >= PLACEMENT_MAX_CANDIDATES)
            continue;
        cands[*ncand].dps = d;
        cands[*ncand].band = placement_band(placement_headroom(in, d, devices));
        cands[*ncand].tie = placement_hash(in->registration_id, d->id);
        (*ncand)++;
        admitted++;
    }
    if (admitted)
        return admitted;
    if (st->ndps == 0) {
        *why = "no DPS instance";
    } else if (any_room) {
        *rule = "excluded";
        *why = "excluded";
    } else if (refused == st->ndps) {
        *rule = "enrollment";
        *why = buf;
    } else {
        *why = "DPS instances full";
    }
    return 0;
}

static json_t *placement_policy_json(const struct tenant *t)
{
    json_t *res = json_object_get(t->json, "residency");
    json_t *geos = json_object_get(res, "geographies"), *regions = json_object_get(res, "regions");
    return json_pack("{s:O, s:O, s:s}", "geographies", geos ? geos : json_null(), "regions",
                     regions ? regions : json_null(), "tenancy", t->dedicated ? "dedicated" : "pooled");
}

void placement_run(const struct placement_input *in, struct placement_result *out)
{
    const struct tenant *t = in->tenant;
    struct placement_cand cands[PLACEMENT_MAX_CANDIDATES];
    int ncand = 0, n_policy = 0, n_live = 0, n_enrollment = 0;
    json_t *verdicts = json_array(), *order = json_array();

    memset(out, 0, sizeof *out);
    for (int i = 0; i < in->layout->nstamps; i++) {
        const struct layout_stamp *st = &in->layout->stamps[i];
        const char *rule = placement_policy_rule(t, st), *why = NULL;
        char detail[200];
        if (!rule && in->only_geo && strcmp(in->only_geo, st->geo) != 0)
            rule = "geography";
        if (rule) {
            json_array_append_new(verdicts, placement_verdict(st, rule, NULL));
            continue;
        }
        n_policy++;
        if (!placement_stamp_valid(t, st, in->loads, in->now_mono_ms, &rule)) {
            if (rule[0] == 'i')
                stampcheck_conflict(st, loadtable_get(in->loads, st->id), detail, sizeof detail);
            json_array_append_new(verdicts, placement_verdict(st, rule,
                rule[0] == 'h' ? loadtable_health_word(loadtable_health(in->loads, st->id, in->now_mono_ms))
                : rule[0] == 'i' ? detail : "draining"));
            continue;
        }
        if (in->avoid_stamp && strcmp(in->avoid_stamp, st->id) == 0) {
            json_array_append_new(verdicts, placement_verdict(st, "excluded", "current stamp"));
            continue;
        }
        n_live++;
        if (!placement_stamp_dps(in, st, cands, &ncand, &rule, &why, detail, sizeof detail)) {
            json_array_append_new(verdicts, placement_verdict(st, rule, why));
            if (strcmp(rule, "enrollment") == 0)
                n_enrollment++;
        } else
            json_array_append_new(verdicts, placement_verdict(st, NULL, NULL));
    }
    qsort(cands, (size_t)ncand, sizeof cands[0], placement_cmp);
    for (int i = 0; i < ncand; i++) {
        out->cand[out->ncand++] = cands[i].dps;
        json_array_append_new(order, json_pack("{s:s, s:s, s:i}", "dps", cands[i].dps->id, "stamp",
                                               cands[i].dps->stamp->id, "band", cands[i].band));
    }
    if (ncand > 0) out->outcome = PLACE_OK;
    else if (n_policy == 0) out->outcome = PLACE_NO_ELIGIBLE;
    else if (n_live == 0) out->outcome = PLACE_NO_HEALTHY;
    else out->outcome = PLACE_CAPACITY_EXHAUSTED;
    out->enrollment_only = out->outcome == PLACE_CAPACITY_EXHAUSTED && n_enrollment == n_live;

    out->decision = json_pack("{s:o, s:o, s:o}", "policy", placement_policy_json(t),
                              "stamps", verdicts, "candidates", order);
}

void placement_result_clear(struct placement_result *out)
{
    json_decref(out->decision);
    out->decision = NULL;
    out->ncand = 0;
}
