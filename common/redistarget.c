/*
 * redistarget.c - owns the parsing of the "redis" / "redisSentinel" config
 * keys into a struct redis_target (redistarget.h).
 */
#include "redistarget.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const redis_target_sentinel_keys[] = {"masterName", "sentinels", "auth", NULL};

static bool redis_target_addr(const char *s, const char *field, struct redis_addr *out, struct jv_err *e)
{
    char host[REDIS_TARGET_HOST_MAX];
    int port;
    if (!util_parse_hostport(s, host, sizeof host, &port) || port == 0 || !host[0]) {
        jv_set(e, "invalid_value", field, "field '%s' must be host:port with a port from 1 to 65535, got '%.64s'",
               field, s);
        return false;
    }
    out->host = xstrdup(host);
    out->port = port;
    return true;
}

/* Sentinel master names are Redis words: no spaces (they travel in +switch-master messages). */
static bool redis_target_name_ok(const char *s)
{
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    return true;
}

static bool redis_target_parse_sentinel(json_t *obj, struct redis_target *out, struct jv_err *e)
{
    const char *name = NULL;
    json_t *list = NULL, *v;
    size_t i;
    char field[64];
    if (!jv_only_keys(obj, "redisSentinel", redis_target_sentinel_keys, e) ||
        !jv_string(obj, "redisSentinel", "masterName", true, 1, 128, &name, e) ||
        !jv_array(obj, "redisSentinel", "sentinels", true, REDIS_TARGET_MAX_SENTINELS, &list, e))
        return false;
    if (!redis_target_name_ok(name)) {
        jv_set(e, "invalid_value", "redisSentinel.masterName",
               "field 'redisSentinel.masterName' must not contain spaces or control characters");
        return false;
    }
    if (json_array_size(list) == 0) {
        jv_set(e, "invalid_value", "redisSentinel.sentinels", "field 'redisSentinel.sentinels' needs at least one host:port");
        return false;
    }
    json_array_foreach(list, i, v) {
        snprintf(field, sizeof field, "redisSentinel.sentinels[%zu]", i);
        if (!json_is_string(v)) {
            jv_set(e, "invalid_type", field, "field '%s' must be a string host:port", field);
            return false;
        }
        if (!redis_target_addr(json_string_value(v), field, &out->sentinels[i], e))
            return false;
        out->n_sentinels = (int)i + 1;
    }
    if (!redis_auth_parse(obj, "redisSentinel", "auth", &out->sentinel_auth, e))
        return false;
    out->master_name = xstrdup(name);
    out->text = xasprintf("sentinel:%s", name);
    return true;
}

bool redis_target_parse(json_t *root, struct redis_target *out, struct jv_err *e)
{
    const char *direct = NULL;
    json_t *sentinel = NULL;
    memset(out, 0, sizeof *out);
    if (!jv_string(root, "", "redis", false, 3, REDIS_TARGET_HOST_MAX + 6, &direct, e) ||
        !jv_object(root, "", "redisSentinel", false, &sentinel, e))
        return false;
    if (!direct == !sentinel) {
        jv_set(e, direct ? "invalid_value" : "missing_field", "redis",
               "exactly one of 'redis' (host:port) and 'redisSentinel' is required");
        return false;
    }
    if (sentinel)
        return redis_target_parse_sentinel(sentinel, out, e);
    if (!redis_target_addr(direct, "redis", &out->direct, e))
        return false;
    out->text = xstrdup(direct);
    return true;
}

static void redis_target_addr_copy(struct redis_addr *dst, const struct redis_addr *src)
{
    dst->host = src->host ? xstrdup(src->host) : NULL;
    dst->port = src->port;
}

void redis_target_copy(struct redis_target *dst, const struct redis_target *src)
{
    memset(dst, 0, sizeof *dst);
    redis_target_addr_copy(&dst->direct, &src->direct);
    dst->master_name = src->master_name ? xstrdup(src->master_name) : NULL;
    for (int i = 0; i < src->n_sentinels; i++)
        redis_target_addr_copy(&dst->sentinels[i], &src->sentinels[i]);
    dst->n_sentinels = src->n_sentinels;
    redis_auth_copy(&dst->sentinel_auth, &src->sentinel_auth);
    dst->text = src->text ? xstrdup(src->text) : NULL;
}

void redis_target_free(struct redis_target *t)
{
    if (!t)
        return;
    free(t->direct.host);
    free(t->master_name);
    for (int i = 0; i < t->n_sentinels; i++)
        free(t->sentinels[i].host);
    free(t->text);
    redis_auth_free(&t->sentinel_auth);
    memset(t, 0, sizeof *t);
}
