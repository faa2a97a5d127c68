/*
 * fs_fleet.c - fleetsim: the simulated devices and one phase of a run.
 *
 * Owns the machine array (the real libstampdevice machine per device), what
 * each device "persisted" (kept in memory in compact form: the strings a
 * fleet shares - tenant, stamp, DPS endpoint, hub - are interned, so a stored
 * state costs 16 bytes instead of an sd_state's ~760), the sd_ev driver of
 * the phase and its hooks. The hooks count every request written and every
 * answer received, and check each answer: for this device and tenant, in the
 * tenant's residency, consistent with the layout, and (warm boots) equal to
 * what the device had persisted. Seeding with --seed-mode cp keeps each
 * device's DPS registration off the wire (the driver's before_send hook) and
 * answers it in-process with a hub of the assigned stamp from the layout.
 */
#include "fs.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FS_PLACE_SEP '\x1f'
#define FS_WRONG_LOG_MAX 5

/* ------------------------------------------------------------------ interning */

/* Tolerance when checking that a 429's Retry-After was honoured. */
#define FS_RETRY_AFTER_SLACK_MS 10u

struct fs_intern {
    char **s;         /* id -> string; id 0 is unused ("none") */
    uint32_t n, cap;
    uint32_t *slots;  /* open addressing: 0 empty, else id */
    uint32_t nslots;
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static bool intern_grow_slots(struct fs_intern *t)
{
    uint32_t ns = t->nslots ? t->nslots * 2 : 64;
    uint32_t *slots = calloc(ns, sizeof *slots);
    if (!slots)
        return false;
    for (uint32_t id = 1; id < t->n; id++) {
        uint32_t i = hash_str(t->s[id]) & (ns - 1);
        while (slots[i])
            i = (i + 1) & (ns - 1);
        slots[i] = id;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = ns;
    return true;
}

/* The id of s (added if new); 0 on allocation failure or for "". */
static uint32_t intern(struct fs_intern *t, const char *s)
{
    if (!s[0])
        return 0;
    if (t->n == 0)
        t->n = 1;
    if ((t->n + 1) * 2 > t->nslots && !intern_grow_slots(t))
        return 0;
    uint32_t i = hash_str(s) & (t->nslots - 1);
    while (t->slots[i]) {
        if (strcmp(t->s[t->slots[i]], s) == 0)
            return t->slots[i];
        i = (i + 1) & (t->nslots - 1);
    }
    if (t->n >= t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 64;
        char **ns = realloc(t->s, cap * sizeof *ns);
        if (!ns)
            return 0;
        t->s = ns;
        t->cap = cap;
    }
    char *copy = strdup(s);
    if (!copy)
        return 0;
    t->s[t->n] = copy;
    t->slots[i] = t->n;
    return t->n++;
}

static const char *intern_str(const struct fs_intern *t, uint32_t id)
{
    return id && id < t->n ? t->s[id] : "";
}

static void intern_free(struct fs_intern *t)
{
    for (uint32_t i = 1; i < t->n; i++)
        free(t->s[i]);
    free(t->s);
    free(t->slots);
}

/* ------------------------------------------------------------------ the fleet */

struct fs_fleet {
    struct event_base *base;
    struct fs_fleet_opts o;
    struct sd_config cfg;       /* the machines of the current phase point here */
    struct sd_machine *m;
    struct fs_dev *d;
    struct fs_intern places, hubs, strs;
    struct sd_ev *ev;
    /* the current phase */
    const struct fs_phase *ph;
    struct fs_result *r;
    int64_t t0;
    uint32_t target, done;
    uint32_t last_done_ms;
    struct event *tick;
    uint32_t wrong_logged;
    uint32_t samples_cap;
};

size_t fs_fleet_bytes_per_device(void)
{
    return sizeof(struct sd_machine) + sizeof(struct fs_dev) + sd_ev_bytes_per_device();
}

static void regid_of(const struct fs_fleet *f, uint32_t i, char *buf, size_t len)
{
    snprintf(buf, len, "%s%" PRIu32, f->o.prefix, i);
}

static uint32_t phase_ms(const struct fs_fleet *f)
{
    int64_t d = sd_ev_now_ms() - f->t0;
    return d < 0 ? 0 : (uint32_t)d;
}

struct fs_fleet *fs_fleet_new(struct event_base *base, const struct fs_fleet_opts *o)
{
    struct fs_fleet *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->base = base;
    f->o = *o;
    f->cfg = o->cfg;
    f->m = calloc(o->devices ? o->devices : 1, sizeof *f->m);
    f->d = calloc(o->devices ? o->devices : 1, sizeof *f->d);
    if (!f->m || !f->d) {
        fs_fleet_free(f);
        return NULL;
    }
    return f;
}

void fs_fleet_free(struct fs_fleet *f)
{
    if (!f)
        return;
    free(f->m);
    free(f->d);
    intern_free(&f->places);
    intern_free(&f->hubs);
    intern_free(&f->strs);
    free(f);
}

void fs_result_clear(struct fs_result *r)
{
    free(r->sample_ready);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ persisted states */

static void place_key(const struct sd_state *st, char *buf, size_t len)
{
    snprintf(buf, len, "%s%c%s%c%s%c%s%c%s%c%s", st->tenant_id, FS_PLACE_SEP, st->geography, FS_PLACE_SEP,
             st->region, FS_PLACE_SEP, st->stamp, FS_PLACE_SEP, st->id_scope, FS_PLACE_SEP, st->dps_endpoint);
}

/* Field k (0 tenant .. 5 dps endpoint) of an interned place. */
static void place_field(const char *key, int k, char *out, size_t len)
{
    const char *p = key;
    for (int i = 0; i < k && p; i++) {
        p = strchr(p, FS_PLACE_SEP);
        if (p)
            p++;
    }
    if (!p) {
        out[0] = '\0';
        return;
    }
    size_t n = strcspn(p, "\x1f");
    if (n >= len)
        n = len - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

static bool store_state(struct fs_fleet *f, uint32_t i, const struct sd_state *st)
{
    struct fs_dev *d = &f->d[i];
    char key[512];
    place_key(st, key, sizeof key);
    uint32_t place = (st->flags & SD_STATE_ASSIGNED) ? intern(&f->places, key) : 0;
    uint32_t hub = (st->flags & SD_STATE_HUB) ? intern(&f->hubs, st->assigned_hub) : 0;
    if (place > UINT16_MAX || hub > UINT16_MAX)
        return false;
    d->place = (uint16_t)place;
    d->hub = (uint16_t)hub;
    d->pflags = (uint8_t)st->flags;
    d->etag = intern(&f->strs, st->etag);
    d->devid = strcmp(st->device_id, st->registration_id) == 0 ? 0 : intern(&f->strs, st->device_id);
    return true;
}

static void load_state(const struct fs_fleet *f, uint32_t i, struct sd_state *st)
{
    const struct fs_dev *d = &f->d[i];
    const char *key = intern_str(&f->places, d->place);
    memset(st, 0, sizeof *st);
    st->flags = d->pflags;
    regid_of(f, i, st->registration_id, sizeof st->registration_id);
    place_field(key, 0, st->tenant_id, sizeof st->tenant_id);
    place_field(key, 1, st->geography, sizeof st->geography);
    place_field(key, 2, st->region, sizeof st->region);
    place_field(key, 3, st->stamp, sizeof st->stamp);
    place_field(key, 4, st->id_scope, sizeof st->id_scope);
    place_field(key, 5, st->dps_endpoint, sizeof st->dps_endpoint);
    snprintf(st->assigned_hub, sizeof st->assigned_hub, "%s", intern_str(&f->hubs, d->hub));
    snprintf(st->etag, sizeof st->etag, "%s", intern_str(&f->strs, d->etag));
    if (d->devid)
        snprintf(st->device_id, sizeof st->device_id, "%s", intern_str(&f->strs, d->devid));
    else if (st->flags & SD_STATE_HUB)
        snprintf(st->device_id, sizeof st->device_id, "%s", st->registration_id);
}

static int persisted_stamp(const struct fs_fleet *f, uint32_t i)
{
    char stamp[64];
    if (!f->d[i].place)
        return -1;
    place_field(intern_str(&f->places, f->d[i].place), 3, stamp, sizeof stamp);
    return fs_admin_stamp_by_id(f->o.admin, stamp);
}

uint32_t fs_fleet_count_on(const struct fs_fleet *f, const bool *failed_stamp)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < f->o.devices; i++) {
        int s = persisted_stamp(f, i);
        n += s >= 0 && failed_stamp[s];
    }
    return n;
}

void fs_fleet_count_by_stamp(const struct fs_fleet *f, uint32_t *counts)
{
    for (uint32_t i = 0; i < f->o.devices; i++) {
        int s = persisted_stamp(f, i);
        counts[s >= 0 ? s : f->o.admin->nstamps]++;
    }
}

/* ------------------------------------------------------------------ answer checks */

static void wrong(struct fs_fleet *f, uint32_t i, enum sd_req_kind kind, const char *why)
{
    if (!(f->d[i].flags & FS_F_WRONG)) {
        f->d[i].flags |= FS_F_WRONG;
        f->r->wrong++;
    }
    if (f->wrong_logged++ < FS_WRONG_LOG_MAX) {
        char regid[SD_REGID_MAX];
        regid_of(f, i, regid, sizeof regid);
        fprintf(stderr, "fleetsim: wrong answer to %s %s: %s\n", regid,
                kind < SD_REQ_KIND_COUNT ? sd_req_kind_name(kind) : "persist", why);
    }
}

static bool geo_allowed(const struct fs_fleet *f, const char *g)
{
    for (int i = 0; g && i < f->o.ngeos; i++)
        if (strcmp(f->o.geos[i], g) == 0)
            return true;
    return false;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* A control plane assignment (locate, lookup, provision, reprovision). */
static void check_cp(struct fs_fleet *f, uint32_t i, enum sd_req_kind kind, json_t *j, const char *regid)
{
    const struct fs_admin *a = f->o.admin;
    const char *stamp = jstr(j, "stamp"), *geo = jstr(j, "geography");
    int s = fs_admin_stamp_by_id(a, stamp);
    int dps = fs_admin_dps_by_scope(a, jstr(j, "idScope"));

    if (strcmp(jstr(j, "registrationId"), regid) != 0)
        { wrong(f, i, kind, "answer names another registration id"); return; }
    if (strcmp(jstr(j, "tenantId"), f->cfg.tenant_id) != 0)
        { wrong(f, i, kind, "answer names another tenant"); return; }
    if (!geo_allowed(f, geo))
        { wrong(f, i, kind, "geography outside the tenant's residency"); return; }
    if (s < 0 || strcmp(a->stamps[s].geography, geo) != 0)
        { wrong(f, i, kind, "unknown stamp, or one of another geography"); return; }
    if (dps < 0 || a->dps[dps].stamp != s || strcmp(a->dps[dps].endpoint, jstr(j, "dpsEndpoint")) != 0)
        { wrong(f, i, kind, "idScope/dpsEndpoint not those of the stamp"); return; }
    if (f->ph->mode == FS_MODE_WARM) {
        struct sd_state st;
        load_state(f, i, &st);
        if (strcmp(st.stamp, stamp) != 0 || strcmp(st.id_scope, jstr(j, "idScope")) != 0 ||
            strcmp(st.dps_endpoint, jstr(j, "dpsEndpoint")) != 0 || strcmp(st.region, jstr(j, "region")) != 0)
            { wrong(f, i, kind, "answer differs from the persisted assignment"); return; }
    }
    if (f->ph->mode == FS_MODE_REHOME && (f->d[i].flags & FS_F_AFFECTED) && f->ph->failed_stamp[s] &&
        kind != SD_REQ_LOOKUP)
        { wrong(f, i, kind, "re-homed onto a failed stamp"); return; }
    const char *hub = jstr(j, "assignedHub");
    if (hub[0] && fs_admin_hub_stamp(a, hub) != s)
        { wrong(f, i, kind, "assignedHub is not a hub of the assigned stamp"); return; }
}

/* A DPS answer: an operation (register, poll) or a registration state (lookup). */
static void check_dps(struct fs_fleet *f, uint32_t i, enum sd_req_kind kind, json_t *j, const char *regid)
{
    json_t *rs = kind == SD_REQ_DPS_LOOKUP ? j : json_object_get(j, "registrationState");
    const char *status = jstr(kind == SD_REQ_DPS_LOOKUP ? j : j, "status");
    if (!json_is_object(rs) || strcmp(status, "assigned") != 0)
        return;
    if (strcmp(jstr(rs, "registrationId"), regid) != 0)
        { wrong(f, i, kind, "DPS answer names another registration id"); return; }
    int hs = fs_admin_hub_stamp(f->o.admin, jstr(rs, "assignedHub"));
    int ms = fs_admin_stamp_by_id(f->o.admin, sd_machine_state(&f->m[i])->stamp);
    if (hs < 0 || (ms >= 0 && hs != ms))
        { wrong(f, i, kind, "DPS assigned a hub outside the device's stamp"); return; }
    if (!geo_allowed(f, f->o.admin->stamps[hs].geography))
        { wrong(f, i, kind, "hub outside the tenant's residency"); return; }
}

static void check_answer(struct fs_fleet *f, uint32_t i, enum sd_req_kind kind, const char *body, size_t len)
{
    char regid[SD_REGID_MAX];
    json_t *j = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    regid_of(f, i, regid, sizeof regid);
    if (!json_is_object(j)) {
        wrong(f, i, kind, "200 without a JSON object");
    } else if (kind == SD_REQ_LOOKUP || kind == SD_REQ_LOCATE || kind == SD_REQ_PROVISION ||
               kind == SD_REQ_REPROVISION) {
        check_cp(f, i, kind, j, regid);
    } else {
        check_dps(f, i, kind, j, regid);
    }
    json_decref(j);
}

/* ------------------------------------------------------------------ hooks */

static bool provisions(enum sd_req_kind k)
{
    return k == SD_REQ_LOCATE || k == SD_REQ_PROVISION || k == SD_REQ_REPROVISION || k == SD_REQ_DPS_REGISTER;
}

/* DPS allows 5 polls per device per 10 s: a sixth within 10 s of the fifth-last is a violation. */
static void note_poll(struct fs_fleet *f, uint32_t i, uint32_t now)
{
    struct fs_dev *d = &f->d[i];
    uint32_t oldest = d->polls[d->pidx];
    if (d->npolls == 5 && now + 1 - oldest < 10000 && !(d->flags & FS_F_POLLVIOL)) {
        d->flags |= FS_F_POLLVIOL;
        f->r->poll_violations++;
    }
    d->polls[d->pidx] = now + 1;
    d->pidx = (uint8_t)((d->pidx + 1) % 5);
    if (d->npolls < 5)
        d->npolls++;
}

static void hook_send(void *ctx, uint32_t i, enum sd_req_kind kind)
{
    struct fs_fleet *f = ctx;
    struct fs_dev *d = &f->d[i];
    uint32_t now = phase_ms(f);
    f->r->requests[kind]++;
    f->r->requests_total++;
    if (!d->t_first)
        d->t_first = now + 1;
    /* The device was told when to come back; a few ms of slack cover the
     * driver's and this hook's clock readings differing. */
    if (d->not_before && now + 1 + FS_RETRY_AFTER_SLACK_MS < d->not_before)
        f->r->retry_after_violations++;
    d->not_before = 0;
    if (kind == SD_REQ_DPS_POLL)
        note_poll(f, i, now);
    bool reprov = false;
    if (f->ph->mode == FS_MODE_WARM)
        reprov = provisions(kind);
    else if (f->ph->mode == FS_MODE_REHOME)
        reprov = provisions(kind) && !(d->flags & FS_F_AFFECTED);
    else
        reprov = provisions(kind) && (d->flags & FS_F_READY);
    if (reprov && !(d->flags & FS_F_REPROV)) {
        d->flags |= FS_F_REPROV;
        f->r->reprovisions++;
    }
}

static void hook_response(void *ctx, uint32_t i, enum sd_req_kind kind, int status, int retry_after,
                          const char *body, size_t len)
{
    struct fs_fleet *f = ctx;
    f->r->responses++;
    if (status == 429) {
        f->r->throttled++;
        if (retry_after >= 0) {
            /* what the machine honours: Retry-After capped at retry_after_max_ms */
            uint64_t ms = (uint64_t)retry_after * 1000u, cap = f->cfg.retry_after_max_ms;
            f->d[i].not_before = phase_ms(f) + 1 + (uint32_t)(cap && ms > cap ? cap : ms);
        }
    }
    if (status >= 200 && status < 300)
        f->r->status_2xx++;
    else if (status >= 400 && status < 500)
        f->r->status_4xx++;
    else if (status >= 500)
        f->r->status_5xx++;
    if (status == 200)
        check_answer(f, i, kind, body, len);
}

static void hook_io_error(void *ctx, uint32_t i, enum sd_req_kind kind, const char *why)
{
    struct fs_fleet *f = ctx;
    f->r->io_errors++;
    if (f->o.verbose && f->r->io_errors <= 5) {
        char regid[SD_REGID_MAX];
        regid_of(f, i, regid, sizeof regid);
        fprintf(stderr, "fleetsim: %s %s: %s\n", regid, sd_req_kind_name(kind), why);
    }
}

static void hook_terminal(void *ctx, uint32_t i, enum sd_action_type action)
{
    struct fs_fleet *f = ctx;
    struct fs_dev *d = &f->d[i];
    if (d->flags & FS_F_DONE)
        return;
    d->flags |= FS_F_DONE;
    if (action == SD_ACT_READY) {
        d->flags |= FS_F_READY;
        d->t_ready = phase_ms(f) + 1;
        f->r->ready++;
    } else {
        d->flags |= FS_F_FAILED;
        f->r->failed++;
        if (f->r->failed <= 5) {
            char regid[SD_REGID_MAX];
            regid_of(f, i, regid, sizeof regid);
            fprintf(stderr, "fleetsim: %s %s: %s\n", regid, action == SD_ACT_RETIRED ? "retired" : "failed",
                    sd_machine_error(&f->m[i]));
        }
    }
    f->last_done_ms = phase_ms(f);
    if (++f->done >= f->target)
        event_base_loopbreak(f->base);
}

static bool hook_persist(void *ctx, uint32_t i, const struct sd_state *st)
{
    struct fs_fleet *f = ctx;
    char regid[SD_REGID_MAX];
    regid_of(f, i, regid, sizeof regid);
    if (strcmp(st->registration_id, regid) != 0 || strcmp(st->tenant_id, f->cfg.tenant_id) != 0 ||
        ((st->flags & SD_STATE_ASSIGNED) && !geo_allowed(f, st->geography)))
        wrong(f, i, SD_REQ_KIND_COUNT, "persisted state for another device/tenant or outside the residency");
    return store_state(f, i, st);
}

/*
 * Seeding through the control plane only (fs_phase.hub_from_layout): the
 * machine validated the locate answer and now asks for the DPS registration.
 * That request never leaves: fleetsim answers it itself, in-process, as a DPS
 * would ("assigned" to a hub of the assigned stamp, picked from the layout),
 * and carries out the machine's PERSIST, so the machine ends READY with the
 * state it persisted, as after a real registration (region-loss then finds
 * it READY). Every other request goes out.
 */
static bool hook_before_send(void *ctx, uint32_t i, enum sd_req_kind kind)
{
    struct fs_fleet *f = ctx;
    if (!f->ph->hub_from_layout || kind != SD_REQ_DPS_REGISTER)
        return true;
    struct sd_machine *m = &f->m[i];
    const struct sd_state *cur = sd_machine_state(m);
    int s = fs_admin_stamp_by_id(f->o.admin, cur->stamp);
    const char *hub = s >= 0 ? fs_admin_pick_hub(f->o.admin, s, cur->registration_id) : NULL;
    char body[640];
    int n = hub ? snprintf(body, sizeof body,
                           "{\"operationId\":\"fleetsim-cp-seed\",\"status\":\"assigned\",\"registrationState\":"
                           "{\"registrationId\":\"%s\",\"assignedHub\":\"%s\",\"deviceId\":\"%s\",\"status\":\"assigned\"}}",
                           cur->registration_id, hub, cur->registration_id)
                : -1;
    if (n < 0 || (size_t)n >= sizeof body) {
        wrong(f, i, SD_REQ_LOCATE, "cp seeding: the assigned stamp has no (usable) hub in the layout");
        hook_terminal(f, i, SD_ACT_FAILED);
        return false;
    }
    struct sd_event e;
    struct sd_action a;
    memset(&e, 0, sizeof e);
    e.type = SD_EV_RESPONSE;
    e.now_ms = sd_ev_now_ms();
    e.wall_s = (int64_t)time(NULL);
    e.status = 200;
    e.retry_after_s = -1;
    e.body = body;
    e.body_len = (size_t)n;
    sd_machine_step(m, &e, &a);
    if (a.type == SD_ACT_PERSIST) {
        memset(&e, 0, sizeof e);
        e.type = SD_EV_PERSISTED;
        e.now_ms = sd_ev_now_ms();
        e.wall_s = (int64_t)time(NULL);
        e.retry_after_s = -1;
        e.ok = hook_persist(f, i, sd_machine_state(m));
        sd_machine_step(m, &e, &a);
    }
    if (a.type != SD_ACT_READY) {
        wrong(f, i, SD_REQ_DPS_REGISTER, "cp seeding: the machine refused the layout's hub");
        hook_terminal(f, i, SD_ACT_FAILED);
        return false;
    }
    hook_terminal(f, i, SD_ACT_READY);
    return false;
}

/* ------------------------------------------------------------------ a phase */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct fs_fleet *f = arg;
    struct fs_result *r = f->r;
    uint32_t now = phase_ms(f);
    (void)fd;
    (void)what;
    if (r->samples_n == f->samples_cap) {
        uint32_t cap = f->samples_cap ? f->samples_cap * 2 : 64;
        uint32_t *ns = realloc(r->sample_ready, cap * sizeof *ns);
        if (ns) {
            r->sample_ready = ns;
            f->samples_cap = cap;
        }
    }
    if (r->samples_n < f->samples_cap)
        r->sample_ready[r->samples_n++] = r->ready;
    if (f->o.verbose) {
        struct sd_ev_stats s;
        sd_ev_get_stats(f->ev, &s);
        fprintf(stderr, "fleetsim: %5.1f s ready %u/%u failed %u requests %" PRIu64 " 429s %" PRIu64
                        " conns %u queued %u\n",
                now / 1000.0, r->ready, f->target, r->failed, r->requests_total, r->throttled, s.conns, s.queued);
    }
    if (now >= (uint32_t)f->ph->deadline_s * 1000u)
        event_base_loopbreak(f->base);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t k = (size_t)(p * (double)(n - 1) + 0.5);
    return v[k < n ? k : n - 1];
}

/* Time to ready of every ready participant, from its boot (or first request). */
static void ttr_percentiles(struct fs_fleet *f, struct fs_result *r)
{
    uint32_t *v = malloc((r->ready ? r->ready : 1) * sizeof *v);
    size_t n = 0;
    if (!v)
        return;
    for (uint32_t i = 0; i < f->o.devices && n < r->ready; i++) {
        const struct fs_dev *d = &f->d[i];
        if (!(d->flags & FS_F_READY) || d->t_boot == UINT32_MAX)
            continue;
        uint32_t from = r->ttr_from_first && d->t_first ? d->t_first - 1 : d->t_boot;
        v[n++] = d->t_ready - 1 >= from ? d->t_ready - 1 - from : 0;
    }
    qsort(v, n, sizeof *v, cmp_u32);
    r->ttr_p50 = pct(v, n, 0.50);
    r->ttr_p90 = pct(v, n, 0.90);
    r->ttr_p99 = pct(v, n, 0.99);
    r->ttr_max = n ? v[n - 1] : 0;
    free(v);
}

static bool phase_start(struct fs_fleet *f, const struct fs_phase *ph, struct fs_result *r)
{
    struct sd_ev_options eo = {f->o.max_conns, 0, f->o.tls};
    struct sd_ev_hooks h = {f, hook_send, hook_response, hook_io_error, hook_terminal, hook_persist,
                            hook_before_send};
    fs_result_clear(r);
    f->ph = ph;
    f->r = r;
    f->done = 0;
    f->target = 0;
    f->wrong_logged = 0;
    f->samples_cap = 0;
    f->ev = sd_ev_new(f->base, f->m, f->o.devices, &eo, &h);
    f->tick = event_new(f->base, -1, EV_PERSIST, on_tick, f);
    if (!f->ev || !f->tick)
        return false;
    struct timeval sec = {1, 0};
    event_add(f->tick, &sec);
    return true;
}

static void phase_end(struct fs_fleet *f, struct fs_result *r, uint32_t participants)
{
    r->devices = participants;
    r->unfinished = participants - f->done;
    r->seconds = (r->unfinished ? phase_ms(f) : f->last_done_ms) / 1000.0;
    sd_ev_get_stats(f->ev, &r->ev);
    ttr_percentiles(f, r);
    sd_ev_free(f->ev);
    f->ev = NULL;
    event_free(f->tick);
    f->tick = NULL;
}

/* (Re-)create device i's machine for this phase. */
static bool dev_init(struct fs_fleet *f, uint32_t i)
{
    char regid[SD_REGID_MAX];
    unsigned char key[SD_KEY_LEN];
    regid_of(f, i, regid, sizeof regid);
    sd_derive_key(f->o.group_key, f->o.group_key_len, regid, key);
    return sd_machine_init(&f->m[i], &f->cfg, regid, key);
}

static void dev_reset(struct fs_dev *d)
{
    d->t_boot = UINT32_MAX;
    d->t_first = 0;
    d->t_ready = 0;
    d->not_before = 0;
    d->npolls = 0;
    d->pidx = 0;
    d->flags = 0;
}

bool fs_fleet_run(struct fs_fleet *f, const struct fs_phase *ph, struct fs_result *r)
{
    bool rehome = ph->mode == FS_MODE_REHOME;
    uint32_t participants = 0;
    if (ph->cfg)
        f->cfg = *ph->cfg; /* the machines hold &f->cfg */
    for (uint32_t i = 0; i < f->o.devices; i++) {
        dev_reset(&f->d[i]);
        if (rehome) {
            int s = persisted_stamp(f, i);
            if (s >= 0 && ph->failed_stamp[s])
                f->d[i].flags |= FS_F_AFFECTED;
        } else if (!dev_init(f, i)) {
            fprintf(stderr, "fleetsim: device %u: %s\n", i, sd_machine_error(&f->m[i]));
            return false;
        }
    }
    if (!phase_start(f, ph, r))
        return false;
    /* first boots and update reboots wait a random delay of their own first: measure from the first request */
    r->ttr_from_first = ph->mode == FS_MODE_FIRST_BOOT || f->cfg.boot_jitter_ms > 0;
    f->t0 = sd_ev_now_ms();
    for (uint32_t i = 0; i < f->o.devices; i++)
        participants += !rehome || (f->d[i].flags & FS_F_AFFECTED);
    f->target = participants;
    /* Power on (or, region loss: the hub rejects them) at the same instant. */
    for (uint32_t i = 0; i < f->o.devices; i++) {
        struct fs_dev *d = &f->d[i];
        if (rehome && !(d->flags & FS_F_AFFECTED))
            continue;
        d->t_boot = phase_ms(f);
        if (rehome) {
            sd_ev_deliver(f->ev, i, SD_EV_HUB_REJECTED, "region lost");
        } else if (ph->boot_persisted && d->place) {
            struct sd_state st;
            load_state(f, i, &st);
            sd_ev_boot(f->ev, i, &st);
        } else {
            sd_ev_boot(f->ev, i, NULL);
        }
    }
    if (f->done < f->target)
        event_base_dispatch(f->base);
    phase_end(f, r, participants);
    return true;
}
