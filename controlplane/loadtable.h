/*
 * loadtable.h - the control plane's in-memory view of every stamp's last load
 * report (fed from Redis), and the health word derived from its age.
 */
#ifndef CP_LOADTABLE_H
#define CP_LOADTABLE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

enum stamp_health { STAMP_HEALTHY, STAMP_STALE, STAMP_DOWN };

#define LOADTABLE_RUN_ID_MAX 64

/* Where a report came from (see loadtable_apply_from). */
enum load_source {
    LOAD_LIVE,       /* a message on the agent's channel, as it was published */
    LOAD_SNAPSHOT,   /* the agent's hash, read after a (re)subscribe */
};

struct load_entry {
    char *stamp_id;
    int64_t seen_mono_ms;    /* local monotonic time the report was current */
    int64_t report_wall_ms;  /* the agent's own timestamp (display only: never used for order or age of live reports) */
    int64_t interval_ms;
    int64_t seq;
    char run_id[LOADTABLE_RUN_ID_MAX + 1];  /* the agent run that sent it ("" if the report had none) */
    int64_t live_mono_ms;    /* when the last live report was applied; 0: none yet */
    bool said_down;          /* the agent announced it is stopping */
    char region[64];         /* the region the report names ("" if none) */
    char geography[64];      /* the geography the report names ("" if none) */
    json_t *load;            /* owned */
};

struct loadtable;

struct loadtable *loadtable_new(int64_t stale_after_intervals, int64_t down_after_intervals);
void loadtable_free(struct loadtable *lt);

/*
 * Apply one report (the JSON message an agent publishes, or the same fields
 * read back from its Redis hash). Returns false (and changes nothing) for a
 * malformed report; true when it was applied or ignored as older.
 *
 * Order never depends on the agent's clock (a report stamped an hour ahead
 * must not hide the next ones): within one agent run (runId) a lower seq is
 * older; across runs, or without a runId, the live channel is in Redis's
 * order, so a live report always wins, and a snapshot only fills in stamps
 * with no live report since subscribed_mono_ms (when the subscription that
 * the snapshot completes began). A live report is current when it arrives
 * (now_mono_ms); a snapshot is aged by now_wall_ms - ts, at least 0.
 */
bool loadtable_apply_from(struct loadtable *lt, json_t *report, enum load_source src, int64_t subscribed_mono_ms,
                          int64_t now_wall_ms, int64_t now_mono_ms) MUSTCHECK;
/* A live report (loadtable_apply_from with LOAD_LIVE). */
bool loadtable_apply(struct loadtable *lt, json_t *report, int64_t now_wall_ms, int64_t now_mono_ms) MUSTCHECK;

/* The entry for a stamp, or NULL if it never reported. */
const struct load_entry *loadtable_get(const struct loadtable *lt, const char *stamp_id);
enum stamp_health loadtable_health(const struct loadtable *lt, const char *stamp_id, int64_t now_mono_ms);
const char *loadtable_health_word(enum stamp_health h);

#endif
