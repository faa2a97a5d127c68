/*
 * envelope_db.h - where secrets are stored sealed (envelope.h), and the
 * re-wrap pass that brings every one of them under the current KEK.
 *
 * A "secret set" is one kind of stored secret: its table, the statement that
 * finds rows not yet sealed under the current KEK (keyset-paged), the
 * compare-and-swap UPDATE that replaces a row's values only if nobody changed
 * them meanwhile, and how its AAD is built. The same sets serve the daemons
 * (asynchronously, on their pgpool) and the stampcp-kek tool (blocking libpq).
 *
 * A pass also seals values still in clear (rows written before encryption),
 * so it is the migration as well; it is idempotent and safe to run while the
 * daemons serve (re-wrapping changes no plaintext, no etag, no version).
 *
 * Ownership: sets are static; a pass owns nothing of its caller's but
 * borrows pool and env until its callback has run.
 */
#ifndef STAMPCP_ENVELOPE_DB_H
#define STAMPCP_ENVELOPE_DB_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "envelope.h"
#include "pgpool.h"

struct envelope_set;

/* The global catalog: tenants' enrollment keys (current and previous). */
extern const struct envelope_set envelope_set_enrollment_keys;
/* The global catalog: DPS instances' service keys. */
extern const struct envelope_set envelope_set_service_keys;
/* A geography database: the stamps' enrollment keys (dps_enrollments.doc). */
extern const struct envelope_set envelope_set_stamp_keys;

const char *envelope_set_name(const struct envelope_set *s);
const char *envelope_set_table(const struct envelope_set *s);

struct envelope_pass_result {
    int sealed;          /* values that were in clear and are now sealed */
    int rewrapped;       /* values moved to the current KEK */
    int failed;          /* values that do not open (unknown KEK, wrong AAD, tampered): left as they are */
    int raced;           /* rows changed by someone else meanwhile: left to their writer */
    bool db_failed;      /* a statement failed: the pass stopped */
    char error[200];     /* db_failed / failed: the first reason */
};

/* Called exactly once (unless the pass is cancelled), from the loop, never
 * inside envelope_pass_start(); the pass is freed when it returns. */
typedef void (*envelope_pass_cb)(const struct envelope_pass_result *res, void *arg);

struct envelope_pass;

/*
 * Run a pass over sets (nsets of them, in order) on pool. scope (may be NULL:
 * every row) limits the stamp set to these DPS instance ids (a stamp agent's
 * own); it is ignored by the catalog sets. cb is always called, once.
 */
struct envelope_pass *envelope_pass_start(struct pgpool *pool, struct envelope *env,
                                          const struct envelope_set *const *sets, int nsets,
                                          const char *const *scope, int nscope, envelope_pass_cb cb,
                                          void *arg);
/* Free a pass whose callback has not run, without calling it. Only when
 * its pool is freed before the loop runs again (pgpool_free drops queued
 * statements without their callbacks): at shutdown. */
void envelope_pass_cancel(struct envelope_pass *p);

/* The same, blocking, on a connection (the tool). Sets whose table does not
 * exist in this database are skipped. */
void envelope_pass_sync(PGconn *conn, struct envelope *env, const struct envelope_set *const *sets, int nsets,
                        struct envelope_pass_result *res);

/* "SELECT kek, count": how many values of the set are under each KEK id
 * ("clear" for values not sealed). No parameters. */
const char *envelope_set_count_sql(const struct envelope_set *s);

#endif
