/*
 * redisfeed.h - the control plane's Redis side: subscribes to the stamp load
 * channel, reads a snapshot of every stamp's load hash whenever it
 * (re)subscribes, and feeds both into the load table.
 *
 * Key and message formats (docs/architecture.md): hash stamp:{id}:load with
 * fields stampId, region, health, ts, intervalMs, seq, load; channel
 * stamps:load carrying the same fields as one JSON object.
 */
#ifndef CP_REDISFEED_H
#define CP_REDISFEED_H

#include <event2/event.h>
#include <stdbool.h>

#include "loadtable.h"

#define REDISFEED_CHANNEL "stamps:load"
#define REDISFEED_KEY_PATTERN "stamp:*:load"

struct redisfeed;

struct redisfeed *redisfeed_new(struct event_base *base, const char *host, int port, struct loadtable *lt);
void redisfeed_free(struct redisfeed *f);
/* Both connections up and the heartbeat answered recently. */
bool redisfeed_is_ready(const struct redisfeed *f);

#endif
