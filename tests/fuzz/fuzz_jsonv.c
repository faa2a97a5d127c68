/*
 * fuzz_jsonv.c - libFuzzer harness: the strict JSON validation every request
 * body and config file goes through (common/jsonv.c): jv_parse_object (UTF-8
 * check, jansson, duplicate keys), then every getter on every member, with a
 * nested prefix so error paths and messages are built and truncated.
 *
 * Input: the body bytes.
 */
#include <string.h>

#include "fuzz_util.h"
#include "jsonv.h"

static void check_err(const struct jv_err *e)
{
    /* errors are always NUL-terminated inside their buffers */
    if (memchr(e->code, 0, sizeof e->code) == NULL || memchr(e->field, 0, sizeof e->field) == NULL ||
        memchr(e->message, 0, sizeof e->message) == NULL)
        abort();
}

static void walk(json_t *obj, const char *prefix, int depth)
{
    static const char *const allowed[] = {"id", "name", "a", "b", "residency", NULL};
    const char *key;
    json_t *val;
    struct jv_err e;
    char path[128];

    memset(&e, 0, sizeof e);
    if (!jv_only_keys(obj, prefix, allowed, &e))
        check_err(&e);
    json_object_foreach(obj, key, val) {
        const char *s = NULL;
        int64_t n = 0;
        bool b = false;
        json_t *sub = NULL;
        if (!jv_string(obj, prefix, key, true, 1, 63, &s, &e))
            check_err(&e);
        else if (s && jv_valid_id(s) && strlen(s) > 63)
            abort();
        if (!jv_int(obj, prefix, key, true, -5, 1000000, &n, &e))
            check_err(&e);
        else if (n < -5 || n > 1000000)
            abort();
        if (!jv_bool(obj, prefix, key, true, &b, &e))
            check_err(&e);
        if (!jv_array(obj, prefix, key, true, 4, &sub, &e))
            check_err(&e);
        else if (json_array_size(sub) > 4)
            abort();
        if (jv_object(obj, prefix, key, true, &sub, &e) && depth < 8) {
            jv_path(path, sizeof path, prefix, key);
            walk(sub, path, depth + 1);
        }
        if (json_is_string(val))
            (void)jv_valid_id(json_string_value(val));
    }
    /* a missing required field names its full path */
    if (!jv_string(obj, prefix, "no-such-field", true, 0, 10, &key, &e))
        check_err(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jv_err e;
    json_t *root;

    memset(&e, 0, sizeof e);
    root = jv_parse_object((const char *)data, size, &e);
    if (!root) {
        check_err(&e);
        return 0;
    }
    walk(root, "", 0);
    walk(root, "a.very.long.prefix.that.is.close.to.the.limit.of.the.path.buffer.in.jsonv.c.so.that."
               "joined.paths.get.truncated.x", 0);
    json_decref(root);
    return 0;
}
