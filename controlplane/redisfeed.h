/*
 * redisfeed.h - the stamp load feed: subscribes to the stamp load channel
 * (on the control plane's Redis connections, redisbus.h), reads a snapshot of every stamp's load hash whenever it
 * (re)subscribes, and feeds both into the load table.
 *
 * Key and message formats (docs/architecture.md): hash stamp:{id}:load with
 * fields stampId, region, health, ts, intervalMs, seq, runId, load; channel
 * stamps:load:{id} carrying the same fields as one JSON object. Each agent's
 * Redis user may write only its own key and channel (docs/security.md), and
 * a report whose stampId is not the one its key or channel names is refused
 * here, so an agent cannot speak for another stamp.
 */
#ifndef CP_REDISFEED_H
#define CP_REDISFEED_H

#include <event2/event.h>
#include <stdbool.h>

#include "loadtable.h"

/* Stamp agents publish on stamps:load:{stampId}; we PSUBSCRIBE the pattern. */
#define REDISFEED_CHANNEL_PREFIX "stamps:load:"
#define REDISFEED_CHANNEL_PATTERN "stamps:load:*"
#define REDISFEED_KEY_PATTERN "stamp:*:load"
struct redisbus;
struct redisfeed;

/* Registers its subscription and command hooks on bus (before the loop runs).
 * The feed must be freed after the bus. */
struct redisfeed *redisfeed_new(struct redisbus *bus, struct loadtable *lt);
void redisfeed_free(struct redisfeed *f);

#endif
