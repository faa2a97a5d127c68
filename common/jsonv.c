/*
 * jsonv.c - strict JSON object validation with field-naming errors.
 */
#include "jsonv.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void jv_set(struct jv_err *e, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    if (!e) return;
    snprintf(e->code, sizeof e->code, "%s", code);
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

void jv_path(char *out, size_t outlen, const char *prefix, const char *key)
{
    if (prefix && *prefix)
        snprintf(out, outlen, "%s.%s", prefix, key);
    else
        snprintf(out, outlen, "%s", key);
}

json_t *jv_parse_object(const char *buf, size_t len, struct jv_err *e)
{
    json_error_t je;
    json_t *root;

    if (len == 0) {
        jv_set(e, "invalid_json", "", "request body is empty; a JSON object is required");
        return NULL;
    }
    /* jansson checks UTF-8 too, but says so less clearly. */
    if (!util_utf8_valid(buf, len)) {
        jv_set(e, "invalid_encoding", "", "body is not valid UTF-8");
        return NULL;
    }
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        jv_set(e, "invalid_json", "", "malformed JSON at line %d column %d: %s",
               je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        jv_set(e, "invalid_json", "", "a JSON object is required");
        return NULL;
    }
    return root;
}

json_t *jv_load_file(const char *path, struct jv_err *e)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        jv_set(e, "invalid_json", "", "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        jv_set(e, "invalid_json", "", "%s: top level must be a JSON object", path);
        return NULL;
    }
    return root;
}

bool jv_only_keys(json_t *obj, const char *prefix, const char *const *allowed, struct jv_err *e)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, key) == 0) { ok = true; break; }
        if (!ok) {
            char path[128];
            jv_path(path, sizeof path, prefix, key);
            jv_set(e, "unknown_field", path, "unknown field '%s'", path);
            return false;
        }
    }
    return true;
}

/* Shared front half of the getters: present? right type? */
static json_t *jv_member(json_t *obj, const char *prefix, const char *key, bool required,
                         bool (*is_type)(const json_t *), const char *type_name,
                         bool *ok, struct jv_err *e)
{
    char path[128];
    json_t *v = json_object_get(obj, key);
    *ok = true;
    if (!v) {
        if (required) {
            jv_path(path, sizeof path, prefix, key);
            jv_set(e, "missing_field", path, "field '%s' is required", path);
            *ok = false;
        }
        return NULL;
    }
    if (!is_type(v)) {
        jv_path(path, sizeof path, prefix, key);
        jv_set(e, "invalid_type", path, "field '%s' must be %s", path, type_name);
        *ok = false;
        return NULL;
    }
    return v;
}

static bool jv_is_string(const json_t *v) { return json_is_string(v); }
static bool jv_is_integer(const json_t *v) { return json_is_integer(v); }
static bool jv_is_bool(const json_t *v) { return json_is_boolean(v); }
static bool jv_is_object(const json_t *v) { return json_is_object(v); }
static bool jv_is_array(const json_t *v) { return json_is_array(v); }

bool jv_string(json_t *obj, const char *prefix, const char *key, bool required,
               size_t minlen, size_t maxlen, const char **out, struct jv_err *e)
{
    bool ok;
    char path[128];
    json_t *v = jv_member(obj, prefix, key, required, jv_is_string, "a string", &ok, e);
    size_t len;
    if (!v) return ok;
    len = json_string_length(v);
    if (len < minlen || len > maxlen) {
        jv_path(path, sizeof path, prefix, key);
        jv_set(e, "invalid_value", path, "field '%s' must be %zu to %zu characters long",
               path, minlen, maxlen);
        return false;
    }
    if (strlen(json_string_value(v)) != len) {
        jv_path(path, sizeof path, prefix, key);
        jv_set(e, "invalid_value", path, "field '%s' must not contain NUL characters", path);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

bool jv_int(json_t *obj, const char *prefix, const char *key, bool required,
            int64_t min, int64_t max, int64_t *out, struct jv_err *e)
{
    bool ok;
    char path[128];
    json_t *v = jv_member(obj, prefix, key, required, jv_is_integer, "an integer", &ok, e);
    json_int_t n;
    if (!v) return ok;
    n = json_integer_value(v);
    if (n < min || n > max) {
        jv_path(path, sizeof path, prefix, key);
        jv_set(e, "out_of_range", path, "field '%s' must be between %lld and %lld",
               path, (long long)min, (long long)max);
        return false;
    }
    *out = n;
    return true;
}

bool jv_bool(json_t *obj, const char *prefix, const char *key, bool required,
             bool *out, struct jv_err *e)
{
    bool ok;
    json_t *v = jv_member(obj, prefix, key, required, jv_is_bool, "true or false", &ok, e);
    if (!v) return ok;
    *out = json_is_true(v);
    return true;
}

bool jv_object(json_t *obj, const char *prefix, const char *key, bool required,
               json_t **out, struct jv_err *e)
{
    bool ok;
    json_t *v = jv_member(obj, prefix, key, required, jv_is_object, "an object", &ok, e);
    if (!v) return ok;
    *out = v;
    return true;
}

bool jv_array(json_t *obj, const char *prefix, const char *key, bool required,
              size_t maxlen, json_t **out, struct jv_err *e)
{
    bool ok;
    char path[128];
    json_t *v = jv_member(obj, prefix, key, required, jv_is_array, "an array", &ok, e);
    if (!v) return ok;
    if (json_array_size(v) > maxlen) {
        jv_path(path, sizeof path, prefix, key);
        jv_set(e, "invalid_value", path, "field '%s' may hold at most %zu items", path, maxlen);
        return false;
    }
    *out = v;
    return true;
}

bool jv_valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && !(i > 0 && c == '-'))
            return false;
    }
    return true;
}
