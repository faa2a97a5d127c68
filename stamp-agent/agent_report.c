/*
 * agent_report.c - renders a stamp report as JSON (message and hash fields).
 */
#include "agent_report.h"

#include <stdlib.h>

#define AGENT_JSON_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER)

bool agent_report_render(struct agent_report *r, const struct agent_load *load)
{
    json_t *lj = agent_load_json(load);
    json_t *msg;

    r->load_text = NULL;
    r->message = NULL;
    if (!lj)
        return false;
    r->load_text = json_dumps(lj, AGENT_JSON_FLAGS);
    /* "o" steals lj, also on failure. */
    msg = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:o}",
                    "stampId", r->stamp_id, "region", r->region, "health", r->health,
                    "ts", (json_int_t)r->ts_ms, "intervalMs", (json_int_t)r->interval_ms,
                    "seq", (json_int_t)r->seq, "load", lj);
    if (msg && r->run_id && json_object_set_new(msg, "runId", json_string(r->run_id)) != 0) {
        json_decref(msg);
        msg = NULL;
    }
    if (msg && r->geography && json_object_set_new(msg, "geography", json_string(r->geography)) != 0) {
        json_decref(msg);
        msg = NULL;
    }
    if (msg) {
        r->message = json_dumps(msg, AGENT_JSON_FLAGS);
        json_decref(msg);
    }
    return r->load_text && r->message;
}

void agent_report_clear(struct agent_report *r)
{
    free(r->load_text);
    free(r->message);
    r->load_text = NULL;
    r->message = NULL;
}

char *agent_report_key(const char *stamp_id)
{
    return xasprintf("stamp:%s:load", stamp_id);
}

char *agent_report_channel(const char *stamp_id)
{
    return xasprintf(AGENT_CHANNEL_PREFIX "%s", stamp_id);
}
