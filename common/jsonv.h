/*
 * jsonv.h - strict validation of JSON objects (config files and request bodies).
 *
 * Every check names the offending field in the error, so a 400 answer or a
 * config error message can say exactly what was wrong.
 */
#ifndef STAMPCP_JSONV_H
#define STAMPCP_JSONV_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct jv_err {
    char code[32];      /* machine-readable: missing_field, unknown_field, invalid_type, invalid_value */
    char field[128];    /* dotted path of the field, "" for the whole document */
    char message[256];  /* human-readable, names the field */
};

void jv_set(struct jv_err *e, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Parse a buffer that must hold one JSON object (valid UTF-8, no duplicate keys). */
json_t *jv_parse_object(const char *buf, size_t len, struct jv_err *e) MUSTCHECK;
/* Read and parse a file holding one JSON object; errors carry line and column. */
json_t *jv_load_file(const char *path, struct jv_err *e) MUSTCHECK;

/* Fails with unknown_field on the first key not in the NULL-terminated list. */
bool jv_only_keys(json_t *obj, const char *prefix, const char *const *allowed, struct jv_err *e) MUSTCHECK;

/*
 * Field getters. A missing optional field leaves *out untouched and succeeds.
 * prefix is the path of obj itself ("" at top level) and is used for messages.
 */
bool jv_string(json_t *obj, const char *prefix, const char *key, bool required,
               size_t minlen, size_t maxlen, const char **out, struct jv_err *e) MUSTCHECK;
bool jv_int(json_t *obj, const char *prefix, const char *key, bool required,
            int64_t min, int64_t max, int64_t *out, struct jv_err *e) MUSTCHECK;
bool jv_bool(json_t *obj, const char *prefix, const char *key, bool required,
             bool *out, struct jv_err *e) MUSTCHECK;
/* An object or array member; *out is a borrowed reference. */
bool jv_object(json_t *obj, const char *prefix, const char *key, bool required,
               json_t **out, struct jv_err *e) MUSTCHECK;
bool jv_array(json_t *obj, const char *prefix, const char *key, bool required,
              size_t maxlen, json_t **out, struct jv_err *e) MUSTCHECK;

/* Whether s matches the id syntax used for every catalog id: [a-z0-9][a-z0-9-]{0,62}. */
bool jv_valid_id(const char *s);

/* Join prefix and key into out ("a.b" or "b"). */
void jv_path(char *out, size_t outlen, const char *prefix, const char *key);

#endif
