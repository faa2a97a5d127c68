/*
 * layout.c - catalog snapshot loading and periodic refresh.
 */
#include "layout.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "strmap.h"
#include "util.h"

static const char layout_sql[] =
    "SELECT json_build_object('stamps', coalesce((SELECT json_agg(json_build_object("
    "  'id', s.id, 'region', s.region_id, 'geography', r.geography_id, 'status', s.status,"
    "  'tenancy', s.tenancy,"
    "  'hubs', (SELECT count(*) FROM hubs h WHERE h.stamp_id = s.id),"
    "  'hubCapacity', (SELECT coalesce(sum(h.max_devices), 0) FROM hubs h WHERE h.stamp_id = s.id),"
    "  'dps', (SELECT coalesce(json_agg(json_build_object('id', d.id, 'idScope', d.id_scope,"
    "          'endpoint', d.endpoint, 'max', d.max_registrations,"
    "          'perMinute', d.registrations_per_minute) ORDER BY d.id), '[]')"
    "          FROM dps_instances d WHERE d.stamp_id = s.id)) ORDER BY s.id)"
    "  FROM stamps s JOIN regions r ON r.id = s.region_id), '[]'))";

static const char layout_usage_sql[] = "SELECT dps_id, registrations FROM dps_usage";

void layout_ref(struct layout *l)
{
    l->refs++;
}

void layout_unref(struct layout *l)
{
    if (!l || --l->refs > 0)
        return;
    for (int i = 0; i < l->nstamps; i++) {
        free(l->stamps[i].id);
        free(l->stamps[i].region);
        free(l->stamps[i].geo);
    }
    for (int i = 0; i < l->ndps; i++) {
        free(l->dps[i].id);
        free(l->dps[i].id_scope);
        free(l->dps[i].endpoint);
    }
    free(l->stamps);
    free(l->dps);
    free(l);
}

const struct layout_stamp *layout_find_stamp(const struct layout *l, const char *id)
{
    for (int i = 0; i < l->nstamps; i++)
        if (strcmp(l->stamps[i].id, id) == 0)
            return &l->stamps[i];
    return NULL;
}

static int layout_dps_index(const struct layout *l, const char *id)
{
    for (int i = 0; i < l->ndps; i++)
        if (strcmp(l->dps[i].id, id) == 0)
            return i;
    return -1;
}

const struct layout_dps *layout_find_dps(const struct layout *l, const char *id)
{
    int i = layout_dps_index(l, id);
    return i < 0 ? NULL : &l->dps[i];
}

/* The building snapshot (not yet published) is the only one written to. */
static struct layout_dps *layout_dps_mut(struct layout *l, const char *id)
{
    int i = layout_dps_index(l, id);
    return i < 0 ? NULL : &l->dps[i];
}

static const char *layout_str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

struct layout *layout_from_json(json_t *root)
{
    json_t *stamps = json_object_get(root, "stamps"), *s, *d;
    size_t i, j, ndps = 0;
    struct layout *l;

    if (!json_is_array(stamps))
        return NULL;
    json_array_foreach(stamps, i, s)
        ndps += json_array_size(json_object_get(s, "dps"));
    l = xcalloc(1, sizeof *l);
    l->refs = 1;
    l->stamps = xcalloc(json_array_size(stamps) + 1, sizeof *l->stamps);
    l->dps = xcalloc(ndps + 1, sizeof *l->dps);
    json_array_foreach(stamps, i, s) {
        struct layout_stamp *st = &l->stamps[l->nstamps++];
        st->id = xstrdup(layout_str(s, "id"));
        st->region = xstrdup(layout_str(s, "region"));
        st->geo = xstrdup(layout_str(s, "geography"));
        st->draining = strcmp(layout_str(s, "status"), "draining") == 0;
        st->dedicated = strcmp(layout_str(s, "tenancy"), "dedicated") == 0;
        st->nhubs = (int)json_integer_value(json_object_get(s, "hubs"));
        st->hub_capacity = json_integer_value(json_object_get(s, "hubCapacity"));
        st->first_dps = l->ndps;
        json_array_foreach(json_object_get(s, "dps"), j, d) {
            struct layout_dps *dp = &l->dps[l->ndps++];
            dp->id = xstrdup(layout_str(d, "id"));
            dp->id_scope = xstrdup(layout_str(d, "idScope"));
            dp->endpoint = xstrdup(layout_str(d, "endpoint"));
            dp->max_registrations = json_integer_value(json_object_get(d, "max"));
            dp->per_minute = json_integer_value(json_object_get(d, "perMinute"));
            st->ndps++;
        }
    }
    /* Pointers into the arrays only once they stop moving. */
    for (int k = 0; k < l->nstamps; k++)
        for (int m = 0; m < l->stamps[k].ndps; m++)
            l->dps[l->stamps[k].first_dps + m].stamp = &l->stamps[k];
    return l;
}

/* ---- refresh ---- */

struct layouts {
    struct event_base *base;
    struct pgpool *global;
    struct pgpool **geo_pools;
    char **geo_ids;
    int ngeos;
    int refresh_ms;
    struct event *timer;
    struct layout *current;
    struct layout *building;    /* catalog loaded, usage being read */
    int pending_usage;
    bool running;
    bool again;                 /* a refresh was asked for while one ran */
    bool freeing;
    bool usage_failed;          /* a geography's usage could not be read in this refresh */
    layouts_address_cb on_address;   /* a DPS instance's idScope or endpoint changed */
    void *on_address_arg;
    /* This router's own changes not yet in the snapshot: DPS id -> struct
     * layout_delta. The snapshot itself is never changed once published. */
    struct strmap *deltas;
};

/*
 * acc: counted since the running refresh started; inflight: counted before
 * it started (so its usage read includes them once it completes). Kept by
 * sign, because a count made after a refresh started may or may not be in
 * its usage read (the commit may precede the read, the count follow it), and
 * the two errors are not alike: counting a registration twice refuses a
 * device a DPS still has room for, while missing one only costs an attempt
 * (the assignment SQL is exact: dps_full, next candidate). So when a refresh
 * completes, a registration counted meanwhile is dropped (it may be in the
 * read) and a release counted meanwhile is kept (it may not be).
 */
struct layout_delta {
    int64_t acc_pos, acc_neg;
    int64_t inflight_pos, inflight_neg;
};

static void layouts_start(struct layouts *ls);

static void layouts_arm(struct layouts *ls, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ls->timer, &tv);
}

static void layouts_delta_start(const char *key, void *value, void *arg)
{
    struct layout_delta *d = value;
    (void)key; (void)arg;
    d->inflight_pos += d->acc_pos;
    d->inflight_neg += d->acc_neg;
    d->acc_pos = d->acc_neg = 0;
}

static void layouts_delta_done(const char *key, void *value, void *arg)
{
    struct layout_delta *d = value;
    (void)key; (void)arg;
    d->inflight_pos = d->inflight_neg = 0;
    d->acc_pos = 0;   /* may be in the read: under- rather than over-count (above) */
}

/* A refresh starts: what was counted so far will be in its usage read. */
static void layouts_deltas_started(struct layouts *ls)
{
    strmap_foreach(ls->deltas, layouts_delta_start, NULL);
}

/* A refresh completed: the deltas counted before it started are in it now
 * (unless a geography's usage could not be read: then they stay). */
static void layouts_deltas_done(struct layouts *ls)
{
    if (!ls->usage_failed)
        strmap_foreach(ls->deltas, layouts_delta_done, NULL);
}

/* Did an instance both snapshots hold change its idScope or endpoint? Answers
 * cached from the old snapshot name the old address (layouts_on_address). */
static bool layouts_address_changed(const struct layout *old, const struct layout *l)
{
    if (!old)
        return false;
    for (int i = 0; i < l->ndps; i++) {
        const struct layout_dps *o = layout_find_dps(old, l->dps[i].id);
        if (o && (strcmp(o->id_scope, l->dps[i].id_scope) != 0 || strcmp(o->endpoint, l->dps[i].endpoint) != 0))
            return true;
    }
    return false;
}

static void layouts_finish(struct layouts *ls)
{
    struct layout *l = ls->building;
    bool moved_address;
    ls->building = NULL;
    layouts_deltas_done(ls);
    for (int i = 0; i < l->nstamps; i++) {
        struct layout_stamp *st = &l->stamps[i];
        st->devices = 0;
        for (int k = 0; k < st->ndps; k++)
            st->devices += l->dps[st->first_dps + k].registrations;
    }
    l->built_mono_ms = util_mono_ms();
    moved_address = layouts_address_changed(ls->current, l);
    layout_unref(ls->current);
    ls->current = l;
    if (moved_address && ls->on_address)
        ls->on_address(ls->on_address_arg);
    ls->running = false;
    if (ls->again) {
        ls->again = false;
        layouts_start(ls);
    } else {
        layouts_arm(ls, ls->refresh_ms);
    }
}

static void layouts_on_usage(const struct pgq_result *q, void *arg)
{
    struct layouts *ls = arg;
    if (q->status != PGQ_OK)
        ls->usage_failed = true;
    if (q->status == PGQ_OK) {
        for (int i = 0; i < PQntuples(q->res); i++) {
            struct layout_dps *d = layout_dps_mut(ls->building, PQgetvalue(q->res, i, 0));
            int64_t n;
            if (d && util_parse_int64(PQgetvalue(q->res, i, 1), 0, INT64_MAX, &n))
                d->registrations = n;
        }
    }
    /* On failure the counts stay as carried over from the previous snapshot. */
    if (--ls->pending_usage == 0)
        layouts_finish(ls);
}

static void layouts_on_catalog(const struct pgq_result *q, void *arg)
{
    struct layouts *ls = arg;
    json_t *root;
    struct layout *l = NULL;

    if (q->status == PGQ_OK && PQntuples(q->res) == 1) {
        root = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL);
        l = root ? layout_from_json(root) : NULL;
        json_decref(root);
    }
    if (!l) {
        ls->running = false;
        layouts_arm(ls, ls->refresh_ms);
        return;
    }
    /* Carry the last known counts over in case a geography can't answer now. */
    if (ls->current)
        for (int i = 0; i < l->ndps; i++) {
            const struct layout_dps *old = layout_find_dps(ls->current, l->dps[i].id);
            if (old) l->dps[i].registrations = old->registrations;
        }
    ls->building = l;
    ls->pending_usage = 1;
    for (int i = 0; i < ls->ngeos; i++) {
        ls->pending_usage++;
        pgpool_query(ls->geo_pools[i], layout_usage_sql, 0, NULL, layouts_on_usage, ls);
    }
    if (--ls->pending_usage == 0)
        layouts_finish(ls);
}

static void layouts_start(struct layouts *ls)
{
    if (ls->running || ls->freeing)
        return;
    ls->running = true;
    ls->usage_failed = false;
    layouts_deltas_started(ls);
    event_del(ls->timer);
    pgpool_query(ls->global, layout_sql, 0, NULL, layouts_on_catalog, ls);
}

static void layouts_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    layouts_start(arg);
}

struct layouts *layouts_new(struct event_base *base, struct pgpool *global, struct pgpool **geo_pools,
                            char **geo_ids, int ngeos, int refresh_ms)
{
    struct layouts *ls = xcalloc(1, sizeof *ls);
    ls->base = base;
    ls->global = global;
    ls->geo_pools = geo_pools;
    ls->geo_ids = geo_ids;
    ls->ngeos = ngeos;
    ls->refresh_ms = refresh_ms;
    ls->deltas = strmap_new();
    ls->timer = event_new(base, -1, 0, layouts_on_timer, ls);
    if (!ls->timer) {
        log_error("event=event_new_failed");
        abort();
    }
    layouts_arm(ls, 0);
    return ls;
}

void layouts_free(struct layouts *ls)
{
    if (!ls) return;
    ls->freeing = true;
    event_free(ls->timer);
    layout_unref(ls->current);
    layout_unref(ls->building);
    strmap_free(ls->deltas, free);
    free(ls);
}

void layouts_on_address(struct layouts *ls, layouts_address_cb cb, void *arg)
{
    ls->on_address = cb;
    ls->on_address_arg = arg;
}

struct layout *layouts_current(struct layouts *ls)
{
    return ls->current;
}

void layouts_refresh_soon(struct layouts *ls)
{
    if (ls->running)
        ls->again = true;
    else
        layouts_start(ls);
}

void layouts_count(struct layouts *ls, const char *dps_id, int delta)
{
    struct layout_delta *d = strmap_get(ls->deltas, dps_id);
    if (!d) {
        d = xcalloc(1, sizeof *d);
        strmap_put(ls->deltas, dps_id, d);
    }
    if (delta > 0)
        d->acc_pos += delta;
    else
        d->acc_neg += delta;
}

int64_t layouts_delta(const struct layouts *ls, const char *dps_id)
{
    const struct layout_delta *d = ls ? strmap_get(ls->deltas, dps_id) : NULL;
    return d ? d->acc_pos + d->acc_neg + d->inflight_pos + d->inflight_neg : 0;
}
