/*
 * redisauth.h - the Redis credentials of a daemon ("redisAuth" in both
 * daemons' config files): an ACL user name and its password, given inline or
 * (better) in a file of its own, and the AUTH command sent after every
 * connect and reconnect.
 *
 * Ownership: a struct redis_auth owns its strings; redis_auth_free() wipes
 * the password before freeing it. The password is a secret: it is never
 * logged, and no error message this module writes contains it.
 */
#ifndef STAMPCP_REDISAUTH_H
#define STAMPCP_REDISAUTH_H

#include <hiredis/async.h>
#include <stdbool.h>

#include "jsonv.h"

#define REDIS_AUTH_PASSWORD_MAX 512

struct redis_auth {
    char *user;        /* ACL user; NULL: AUTH <password> (the "default" user, requirepass) */
    char *password;    /* sensitive; NULL: no AUTH at all */
};

/*
 * Parse the optional object root[key] (prefix: root's own path, "" at the top;
 * error fields and messages name prefix.key.*):
 *   {"user": "cp", "passwordFile": "/etc/stampcp/redis-cp.pass"}   or
 *   {"user": "cp", "password": "..."}
 * Exactly one of password / passwordFile; the file holds the password on its
 * first line (a trailing newline is ignored). An absent key leaves *out
 * empty (no AUTH). On failure e names the field; *out is safe to free.
 */
bool redis_auth_parse(json_t *root, const char *prefix, const char *key, struct redis_auth *out,
                      struct jv_err *e) MUSTCHECK;

/* Whether AUTH is configured. */
static inline bool redis_auth_enabled(const struct redis_auth *a)
{
    return a && a->password;
}

/* Deep copy (NULL-safe source: an empty result). */
void redis_auth_copy(struct redis_auth *dst, const struct redis_auth *src);

/* Wipe the password and free both strings; safe on a zeroed struct. */
void redis_auth_free(struct redis_auth *a);

/*
 * Queue "AUTH [user] password" on ac with cb (hiredis semantics: cb runs
 * once, with the reply or NULL). Returns hiredis's status.
 */
int redis_auth_send(redisAsyncContext *ac, const struct redis_auth *a, redisCallbackFn *cb, void *privdata);

/* The user name for log lines ("default" when none is configured). */
const char *redis_auth_user(const struct redis_auth *a);

#endif
