/*
 * listpage.h - the one way admin lists page: `limit` (1-500, default 100)
 * and an opaque `cursor` (base64url of "<kind>:<last key>") in, and
 * {"items":[...],"next":<cursor>|null} out. Keyset paging: the next page
 * starts after the last key of this one.
 */
#ifndef CP_LISTPAGE_H
#define CP_LISTPAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "http_req.h"

#define LISTPAGE_DEFAULT 100
#define LISTPAGE_MAX 500

struct list_page {
    int limit;
    char after[160];          /* the key to start after ("" on the first page) */
    char fetch[24];           /* limit + 1, as text: one more row tells if there is a next page */
};

/* Parse limit and cursor (kind e.g. "c1"; valid checks the decoded key). On a
 * bad value replies 400 invalid_query and returns false. */
bool list_page_parse(struct cp_req *r, const char *kind, bool (*valid)(const char *), struct list_page *p) MUSTCHECK;
/* after as a statement parameter: NULL on the first page. */
const char *list_page_after(const struct list_page *p);

char *list_cursor_encode(const char *kind, const char *last_key);
bool list_cursor_decode(const char *kind, const char *cursor, bool (*valid)(const char *), char *out,
                        size_t outlen) MUSTCHECK;

/* {"items": items (stolen), "next": cursor of last_key or null}. */
json_t *list_page_body(json_t *items, const char *kind, const char *last_key_or_null);

#endif
