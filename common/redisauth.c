/*
 * redisauth.c - owns the "redisAuth" config object of both daemons (parsing,
 * reading the password file) and the AUTH command they send on connect.
 */
#include "redisauth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const redis_auth_keys[] = {"user", "password", "passwordFile", NULL};

static void redis_auth_wipe(char *s)
{
    if (!s)
        return;
    /* volatile: the wipe must not be optimised away before free(). */
    for (volatile char *p = s; *p; p++)
        *p = '\0';
}

/* The password must be one line of printable bytes, no control characters. */
static bool redis_auth_valid_password(const char *s, size_t len)
{
    if (len == 0 || len > REDIS_AUTH_PASSWORD_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* Read the first line of path into a fresh string; errors never quote the content. */
static bool redis_auth_read_file(const char *path, const char *field, char **out, struct jv_err *e)
{
    char buf[REDIS_AUTH_PASSWORD_MAX + 4];
    FILE *f = fopen(path, "r");
    size_t n;
    bool ok;

    if (!f) {
        jv_set(e, "invalid_value", field, "field '%s': cannot read '%.200s': %s", field, path, strerror(errno));
        return false;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    ok = !ferror(f);
    fclose(f);
    if (!ok) {
        jv_set(e, "invalid_value", field, "field '%s': cannot read '%.200s'", field, path);
        return false;
    }
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    if (n > 0 && buf[n - 1] == '\r')
        buf[--n] = '\0';
    if (strlen(buf) != n || !redis_auth_valid_password(buf, n)) {
        redis_auth_wipe(buf);
        jv_set(e, "invalid_value", field,
               "field '%s': '%.200s' must hold one line of 1 to %d printable characters", field, path,
               REDIS_AUTH_PASSWORD_MAX);
        return false;
    }
    *out = xstrdup(buf);
    redis_auth_wipe(buf);
    return true;
}

bool redis_auth_parse(json_t *root, const char *prefix, const char *key, struct redis_auth *out, struct jv_err *e)
{
    json_t *obj = NULL;
    const char *user = NULL, *pass = NULL, *file = NULL;
    char path[128], name[96];

    memset(out, 0, sizeof *out);
    jv_path(name, sizeof name, prefix, key);   /* the object's own path, for every field named below */
    if (!jv_object(root, prefix, key, false, &obj, e))
        return false;
    if (!obj)
        return true;
    if (!json_is_object(obj)) {
        jv_set(e, "invalid_type", name, "field '%s' must be an object", name);
        return false;
    }
    if (!jv_only_keys(obj, name, redis_auth_keys, e) ||
        !jv_string(obj, name, "user", false, 1, 128, &user, e) ||
        !jv_string(obj, name, "password", false, 1, REDIS_AUTH_PASSWORD_MAX, &pass, e) ||
        !jv_string(obj, name, "passwordFile", false, 1, 4096, &file, e))
        return false;
    if (user) {
        for (const char *p = user; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
                jv_path(path, sizeof path, name, "user");
                jv_set(e, "invalid_value", path, "field '%s' must not contain spaces or control characters", path);
                return false;
            }
    }
    if (!pass == !file) {
        jv_path(path, sizeof path, name, "password");
        jv_set(e, pass ? "invalid_value" : "missing_field", path,
               "field '%s' needs exactly one of 'password' and 'passwordFile'", name);
        return false;
    }
    if (pass && !redis_auth_valid_password(pass, strlen(pass))) {
        jv_path(path, sizeof path, name, "password");
        jv_set(e, "invalid_value", path, "field '%s' must not contain control characters", path);
        return false;
    }
    if (file) {
        jv_path(path, sizeof path, name, "passwordFile");
        if (!redis_auth_read_file(file, path, &out->password, e))
            return false;
    } else {
        out->password = xstrdup(pass);
    }
    if (user)
        out->user = xstrdup(user);
    return true;
}

void redis_auth_copy(struct redis_auth *dst, const struct redis_auth *src)
{
    memset(dst, 0, sizeof *dst);
    if (!src)
        return;
    if (src->user)
        dst->user = xstrdup(src->user);
    if (src->password)
        dst->password = xstrdup(src->password);
}

void redis_auth_free(struct redis_auth *a)
{
    if (!a)
        return;
    redis_auth_wipe(a->password);
    free(a->password);
    free(a->user);
    a->password = NULL;
    a->user = NULL;
}

int redis_auth_send(redisAsyncContext *ac, const struct redis_auth *a, redisCallbackFn *cb, void *privdata)
{
    /* %s values are single arguments whatever they contain. */
    if (a->user)
        return redisAsyncCommand(ac, cb, privdata, "AUTH %s %s", a->user, a->password);
    return redisAsyncCommand(ac, cb, privdata, "AUTH %s", a->password);
}

const char *redis_auth_user(const struct redis_auth *a)
{
    return a && a->user ? a->user : "default";
}
