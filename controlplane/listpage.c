/*
 * listpage.c - list paging parameters and cursors.
 */
#include "listpage.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

char *list_cursor_encode(const char *kind, const char *last_key)
{
    unsigned char raw[200];
    char *out = xmalloc(4 * sizeof raw / 3 + 8);
    int n = snprintf((char *)raw, sizeof raw, "%s:%s", kind, last_key);
    int len = EVP_EncodeBlock((unsigned char *)out, raw, n < (int)sizeof raw ? n : (int)sizeof raw - 1);
    /* base64url without padding: safe in a query string as is. */
    for (int i = 0; i < len; i++) {
        if (out[i] == '+') out[i] = '-';
        else if (out[i] == '/') out[i] = '_';
    }
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    return out;
}

bool list_cursor_decode(const char *kind, const char *cursor, bool (*valid)(const char *), char *out, size_t outlen)
{
    char b64[300];
    unsigned char raw[300];
    size_t n = strlen(cursor), klen = strlen(kind);
    int len, pad;
    if (n == 0 || n > 260)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = cursor[i];
        if (c == '-') c = '+';
        else if (c == '_') c = '/';
        else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            return false;
        b64[i] = c;
    }
    pad = (int)((4 - n % 4) % 4);
    if (pad == 3)
        return false;
    for (int i = 0; i < pad; i++)
        b64[n++] = '=';
    b64[n] = '\0';
    len = EVP_DecodeBlock(raw, (unsigned char *)b64, (int)n);
    if (len < 0)
        return false;
    len -= pad;
    if ((size_t)len < klen + 2 || memcmp(raw, kind, klen) != 0 || raw[klen] != ':' ||
        (size_t)len - klen - 1 >= outlen)
        return false;
    memcpy(out, raw + klen + 1, (size_t)len - klen - 1);
    out[len - klen - 1] = '\0';
    return strlen(out) == (size_t)len - klen - 1 && valid(out);
}

bool list_page_parse(struct cp_req *r, const char *kind, bool (*valid)(const char *), struct list_page *p)
{
    const char *s;
    int64_t limit = LISTPAGE_DEFAULT;
    memset(p, 0, sizeof *p);
    if ((s = cpreq_query(r, "limit")) && !util_parse_int64(s, 1, LISTPAGE_MAX, &limit)) {
        cpreq_reply_error(r, 400, "invalid_query", "limit", "limit must be an integer from 1 to %d", LISTPAGE_MAX);
        return false;
    }
    if ((s = cpreq_query(r, "cursor")) && !list_cursor_decode(kind, s, valid, p->after, sizeof p->after)) {
        cpreq_reply_error(r, 400, "invalid_query", "cursor", "cursor is not one this server issued");
        return false;
    }
    p->limit = (int)limit;
    snprintf(p->fetch, sizeof p->fetch, "%d", p->limit + 1);
    return true;
}

const char *list_page_after(const struct list_page *p)
{
    return p->after[0] ? p->after : NULL;
}

json_t *list_page_body(json_t *items, const char *kind, const char *last_key_or_null)
{
    json_t *body = json_pack("{s:o}", "items", items);
    if (last_key_or_null) {
        char *c = list_cursor_encode(kind, last_key_or_null);
        json_object_set_new(body, "next", json_string(c));
        free(c);
    } else {
        json_object_set_new(body, "next", json_null());
    }
    return body;
}
