/*
 * ratelimit_epoch.c - the DPS buckets' epoch, remembered by the process and
 * in the global catalog (ratelimit_epoch.h says why).
 */
#include "ratelimit_epoch.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

#define RATELIMIT_EPOCH_RETRY_MS 1000

static const char epoch_select_sql[] = "SELECT epoch FROM ratelimit_epoch";
/* The same Redis names the same epoch to every router: a late write of an
 * older one can only mark a live epoch cold, which changes nothing for
 * buckets that exist (ratelimit.c's script). */
static const char epoch_upsert_sql[] =
    "INSERT INTO ratelimit_epoch (epoch) VALUES ($1)"
    " ON CONFLICT (one) DO UPDATE SET epoch = EXCLUDED.epoch, noted_at = now()"
    " WHERE ratelimit_epoch.epoch IS DISTINCT FROM EXCLUDED.epoch";

static struct {
    struct pgpool *global;
    struct event *retry;
    bool loaded, reading;
    char known[RATELIMIT_EPOCH_MAX + 1];
    char previous[RATELIMIT_EPOCH_MAX + 1];
} rle;

static void epoch_read(void);
static void epoch_write(void);

static void epoch_on_read(const struct pgq_result *q, void *arg)
{
    struct timeval tv = {RATELIMIT_EPOCH_RETRY_MS / 1000, (RATELIMIT_EPOCH_RETRY_MS % 1000) * 1000};
    (void)arg;
    rle.reading = false;
    if (q->status != PGQ_OK) {
        if (rle.retry)
            evtimer_add(rle.retry, &tv);
        return;
    }
    /* Redis's own answer, if one came meanwhile, is newer: keep it, and
     * write it now (epoch_write was held back until this read). */
    if (!rle.known[0]) {
        const char *e = PQntuples(q->res) == 1 ? PQgetvalue(q->res, 0, 0) : "";
        if (strlen(e) <= RATELIMIT_EPOCH_MAX)
            memcpy(rle.known, e, strlen(e) + 1);
    } else if (PQntuples(q->res) != 1 || strcmp(PQgetvalue(q->res, 0, 0), rle.known) != 0) {
        epoch_write();
    }
    rle.loaded = true;
    log_info("event=ratelimit_epoch_loaded epoch=%s", rle.known[0] ? rle.known : "none");
}

static void epoch_read(void)
{
    if (rle.reading || rle.loaded || !rle.global)
        return;
    rle.reading = true;
    pgpool_query(rle.global, epoch_select_sql, 0, NULL, epoch_on_read, NULL);
}

static void epoch_on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what; (void)arg;
    epoch_read();
}

void ratelimit_epoch_start(struct event_base *base, struct pgpool *global)
{
    rle.global = global;
    rle.retry = evtimer_new(base, epoch_on_retry, NULL);
    if (!rle.retry) {
        log_error("event=event_new_failed what=ratelimit_epoch");
        abort();
    }
    epoch_read();
}

void ratelimit_epoch_stop(void)
{
    if (rle.retry)
        event_free(rle.retry);
    rle.retry = NULL;
    rle.global = NULL;
}

/* Before the catalog has answered, an unknown epoch is not "none": a
 * placeholder that matches no real epoch makes the script start a missing
 * epoch cold (buckets empty, refilling) rather than full - a router racing
 * its first read must not undo the protection for every router. Marking an
 * existing epoch cold changes nothing for its buckets. */
#define RATELIMIT_EPOCH_UNREAD "unread"

const char *ratelimit_epoch_known(void)
{
    return rle.known[0] || rle.loaded ? rle.known : RATELIMIT_EPOCH_UNREAD;
}

bool ratelimit_epoch_loaded(void)
{
    return rle.loaded;
}

static void epoch_on_written(const struct pgq_result *q, void *arg)
{
    (void)arg;
    if (q->status != PGQ_OK)   /* the next router (or this one's next change) writes it */
        log_warn("event=ratelimit_epoch_write_failed");
}

static void epoch_write(void)
{
    const char *values[1] = {rle.known};
    if (rle.global)
        pgpool_query(rle.global, epoch_upsert_sql, 1, values, epoch_on_written, NULL);
}

const char *ratelimit_epoch_note(const char *e, size_t len)
{
    if (len > RATELIMIT_EPOCH_MAX || (strlen(rle.known) == len && memcmp(rle.known, e, len) == 0))
        return NULL;
    memcpy(rle.previous, rle.known, sizeof rle.previous);
    memcpy(rle.known, e, len);
    rle.known[len] = '\0';
    /* before the catalog's epoch is read, don't overwrite it (epoch_on_read writes) */
    if (rle.loaded)
        epoch_write();
    return rle.previous[0] ? rle.previous : NULL;
}
