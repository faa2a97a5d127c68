/*
 * agent_report.h - the report a stamp publishes every interval: its JSON
 * message for PUBLISH stamps:load and the hash fields of stamp:<id>:load.
 *
 * Pure data formatting; sending it is agent.c's job.
 */
#ifndef STAMPAGENT_REPORT_H
#define STAMPAGENT_REPORT_H

#include <stdint.h>

#include "agent_load.h"
#include "util.h"

#define AGENT_HEALTH_HEALTHY "healthy"
#define AGENT_HEALTH_DOWN    "down"
#define AGENT_CHANNEL        "stamps:load"

struct agent_report {
    const char *stamp_id;
    const char *region;
    const char *health;     /* AGENT_HEALTH_* */
    int64_t ts_ms;          /* wall clock, unix ms */
    int64_t interval_ms;
    uint64_t seq;
    char *load_text;        /* owned: the "load" object as compact JSON */
    char *message;          /* owned: the whole report as one compact JSON object */
};

/*
 * Render load into r->load_text and the full message into r->message (the
 * scalar fields of r must be set). Returns false if jansson could not
 * allocate; agent_report_clear() is safe either way.
 */
bool agent_report_render(struct agent_report *r, const struct agent_load *load) MUSTCHECK;
void agent_report_clear(struct agent_report *r);

/* The hash key for a stamp, "stamp:<stampId>:load"; caller frees. */
char *agent_report_key(const char *stamp_id);

#endif
