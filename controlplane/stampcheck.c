/*
 * stampcheck.c - stamp identity (region, geography) in load reports against
 * the catalog, and the periodic pass that logs stamps becoming flagged or
 * clean again.
 */
#include "stampcheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp.h"
#include "log.h"
#include "strmap.h"
#include "util.h"

struct stampcheck {
    struct cp *cp;
    struct event *timer;
    struct strmap *flagged;   /* stamp id -> non-NULL marker */
};

bool stampcheck_conflict(const struct layout_stamp *st, const struct load_entry *e, char *detail, size_t len)
{
    bool region_bad, geo_bad;
    if (!st || !e)
        return false;
    region_bad = e->region[0] && strcmp(e->region, st->region) != 0;
    geo_bad = e->geography[0] && strcmp(e->geography, st->geo) != 0;
    if (!region_bad && !geo_bad)
        return false;
    if (detail && len > 0) {
        if (region_bad && geo_bad)
            snprintf(detail, len, "reported region %s and geography %s, catalog %s in %s", e->region, e->geography,
                     st->region, st->geo);
        else if (region_bad)
            snprintf(detail, len, "reported region %s, catalog %s", e->region, st->region);
        else
            snprintf(detail, len, "reported geography %s, catalog %s", e->geography, st->geo);
    }
    return true;
}

static void stampcheck_pass(struct stampcheck *sc)
{
    struct layout *l = layouts_current(sc->cp->layouts);
    if (!l)
        return;
    for (int i = 0; i < l->nstamps; i++) {
        const struct layout_stamp *st = &l->stamps[i];
        const struct load_entry *e = loadtable_get(sc->cp->lt, st->id);
        char detail[200];
        bool bad = stampcheck_conflict(st, e, detail, sizeof detail);
        bool was = strmap_get(sc->flagged, st->id) != NULL;
        if (bad && !was) {
            char q[220];
            strmap_put(sc->flagged, st->id, sc);
            log_warn("event=stamp_identity_mismatch stamp=%s reported_region=%s reported_geography=%s "
                     "catalog_region=%s catalog_geography=%s detail=%s action=excluded_from_placement",
                     st->id, e->region[0] ? e->region : "-", e->geography[0] ? e->geography : "-", st->region,
                     st->geo, log_quote(detail, q, sizeof q));
        } else if (!bad && was) {
            strmap_del(sc->flagged, st->id);
            log_info("event=stamp_identity_ok stamp=%s region=%s geography=%s", st->id, st->region, st->geo);
        }
    }
}

static void stampcheck_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    stampcheck_pass(arg);
}

struct stampcheck *stampcheck_new(struct cp *cp, int interval_ms)
{
    struct stampcheck *sc = xcalloc(1, sizeof *sc);
    struct timeval tv = {interval_ms / 1000, (interval_ms % 1000) * 1000};
    sc->cp = cp;
    sc->flagged = strmap_new();
    sc->timer = event_new(cp->base, -1, EV_PERSIST, stampcheck_on_timer, sc);
    if (!sc->timer || event_add(sc->timer, &tv) != 0) {
        log_error("event=event_new_failed");
        abort();
    }
    return sc;
}

void stampcheck_free(struct stampcheck *sc)
{
    if (!sc) return;
    if (sc->timer) event_free(sc->timer);
    strmap_free(sc->flagged, NULL);
    free(sc);
}
