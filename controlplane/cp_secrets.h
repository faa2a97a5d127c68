/*
 * cp_secrets.h - the control plane's secrets at rest: the KEK keyring
 * (cp->env, loaded from cfg.kek_file), the sealing pass over the global
 * catalog at start (enrollment keys and DPS service keys still in clear get
 * sealed; idempotent), the KEK file watch (re-read when it changes), and the
 * admin routes:
 *
 *   GET  /v1/admin/kek          current KEK id, the ids loaded, how many
 *                               secrets each KEK wraps (and how many are clear)
 *   POST /v1/admin/kek/rotate   re-read the KEK file, then re-wrap every DEK
 *                               of the global catalog under the current KEK
 *
 * Ownership: cp_secrets_new() borrows cp (and cp->env, which main.c owns);
 * cp_secrets_free() stops the timers. A pass in flight when the daemon stops
 * is dropped with the pool (its callback never runs).
 */
#ifndef CP_SECRETS_H
#define CP_SECRETS_H

#include <stdbool.h>

#include "cp.h"
#include "http_req.h"

/* Load cfg->kek_file into a keyring; NULL with err filled (no KEK file
 * configured, or the file is refused). */
struct envelope *cp_secrets_load(const struct cp_config *cfg, char *err, size_t errlen) MUSTCHECK;

struct cp_secrets *cp_secrets_new(struct cp *cp);
void cp_secrets_free(struct cp_secrets *s);

/* /v1/admin/kek[/rotate]: segs after "admin" ("kek", ...). Replies exactly once. */
void cp_secrets_handle(struct cp_req *r, char **segs, int nsegs);

#endif
