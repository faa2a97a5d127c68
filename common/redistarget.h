/*
 * redistarget.h - where a daemon's Redis is: the "redis" and
 * "redisSentinel" keys of both daemons' config files (exactly one of them).
 *
 *   "redis": "host:port"                         one server, by name or address
 *   "redisSentinel": {"masterName": "stampcp",   the master that these Sentinels
 *                     "sentinels": ["host:port", ...],   name (tried in turn)
 *                     "auth": {"passwordFile": ...}}     optional: the Sentinels'
 *                                                        own password (their
 *                                                        requirepass; the shape of
 *                                                        redisauth.h), sent as AUTH
 *                                                        on every Sentinel connection
 *
 * Ownership: a struct redis_target owns its strings; redis_target_free()
 * releases them (safe on a zeroed struct).
 */
#ifndef STAMPCP_REDISTARGET_H
#define STAMPCP_REDISTARGET_H

#include <stdbool.h>

#include "jsonv.h"
#include "redisauth.h"
#include "util.h"

#define REDIS_TARGET_MAX_SENTINELS 8
#define REDIS_TARGET_HOST_MAX 256

struct redis_addr {
    char *host;   /* a name (resolved with dns.c at every connect) or a numeric address */
    int port;
};

struct redis_target {
    struct redis_addr direct;                  /* "redis"; host NULL in Sentinel mode */
    char *master_name;                         /* "redisSentinel.masterName"; NULL: direct */
    struct redis_addr sentinels[REDIS_TARGET_MAX_SENTINELS];
    int n_sentinels;
    struct redis_auth sentinel_auth;           /* "redisSentinel.auth"; empty: no AUTH to Sentinels */
    char *text;                                /* for log lines: "host:port" or "sentinel:NAME" */
};

/* Parse root["redis"] / root["redisSentinel"]; exactly one is required.
 * On failure e names the field; *out is safe to free (redis_target_free also
 * wipes the Sentinel password). */
bool redis_target_parse(json_t *root, struct redis_target *out, struct jv_err *e) MUSTCHECK;
void redis_target_copy(struct redis_target *dst, const struct redis_target *src);
void redis_target_free(struct redis_target *t);

static inline bool redis_target_sentinel(const struct redis_target *t)
{
    return t->master_name != NULL;
}

#endif
