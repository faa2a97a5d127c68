/*
 * agent_report.h - the report a stamp publishes every interval: its JSON
 * message for PUBLISH stamps:load:<id> and the hash fields of stamp:<id>:load.
 * The stamp's Redis user may write only that key and channel.
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
#define AGENT_CHANNEL_PREFIX "stamps:load:"
#define AGENT_RUN_ID_LEN     16   /* hex digits of the random id of one agent run */

struct agent_report {
    const char *stamp_id;
    const char *region;
    const char *health;     /* AGENT_HEALTH_* */
    int64_t ts_ms;          /* wall clock, unix ms */
    int64_t interval_ms;
    uint64_t seq;
    const char *run_id;     /* NULL: not rendered */
    const char *geography;  /* the stamp's geography, checked by the control plane against its catalog; NULL: not rendered */
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
/* The stamp's channel, "stamps:load:<stampId>"; caller frees. */
char *agent_report_channel(const char *stamp_id);

#endif
