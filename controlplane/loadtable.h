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

struct load_entry {
    char *stamp_id;
    int64_t seen_mono_ms;    /* local monotonic time the report was current */
    int64_t report_wall_ms;  /* the agent's own timestamp */
    int64_t interval_ms;
    int64_t seq;
    bool said_down;          /* the agent announced it is stopping */
    json_t *load;            /* owned */
};

struct loadtable;

struct loadtable *loadtable_new(int64_t stale_after_intervals, int64_t down_after_intervals);
void loadtable_free(struct loadtable *lt);

/*
 * Apply one report (the JSON message an agent publishes, or the same fields
 * read back from its Redis hash). Reports older than the one held are
 * ignored. Returns false (and changes nothing) for a malformed report.
 * now_wall_ms/now_mono_ms let snapshots account for the report's age.
 */
bool loadtable_apply(struct loadtable *lt, json_t *report, int64_t now_wall_ms, int64_t now_mono_ms) MUSTCHECK;

/* The entry for a stamp, or NULL if it never reported. */
const struct load_entry *loadtable_get(const struct loadtable *lt, const char *stamp_id);
enum stamp_health loadtable_health(const struct loadtable *lt, const char *stamp_id, int64_t now_mono_ms);
const char *loadtable_health_word(enum stamp_health h);

#endif
