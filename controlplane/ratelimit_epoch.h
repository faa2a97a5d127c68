/*
 * ratelimit_epoch.h - the process's memory of the DPS buckets' epoch
 * (ratelimit.h, "After Redis loses its data"), kept in the global catalog
 * too (schema/global/014) so that it outlives the process: a router started
 * after Redis lost its data still knows there was an epoch, even if every
 * router that saw it is gone, and the lost buckets start empty, not full.
 *
 * One per process, like the Redis connection it describes. At start the
 * catalog's epoch is read (retried every second until it answers); an epoch
 * Redis names that differs from the one known is written back.
 *
 * Ownership: the module owns its timer and strings; ratelimit_epoch_stop()
 * frees them (before the pool is freed).
 */
#ifndef CP_RATELIMIT_EPOCH_H
#define CP_RATELIMIT_EPOCH_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

#include "pgpool.h"

#define RATELIMIT_EPOCH_MAX 39

/* Start reading the catalog's epoch on global (borrowed: outlives us). */
void ratelimit_epoch_start(struct event_base *base, struct pgpool *global);
void ratelimit_epoch_stop(void);
/* The epoch known: Redis's last answer, else the catalog's; "" when neither
 * has one; a placeholder matching no epoch while the catalog is unread. */
const char *ratelimit_epoch_known(void);
/* Whether the catalog's epoch has been read (readiness: until then a Redis
 * that lost its data together with every router would not be noticed). */
bool ratelimit_epoch_loaded(void);
/* Redis named epoch e (len bytes): remember it, and write it to the catalog
 * if it differs from the one known. Returns the previous one if it changed
 * and was not empty (for a log line), else NULL. */
const char *ratelimit_epoch_note(const char *e, size_t len);

#endif
