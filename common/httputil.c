/*
 * httputil.c - path splitting for the HTTP servers.
 */
#include "httputil.h"

#include <event2/http.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

bool httputil_split_path(const char *raw, char **segs, int max, int *nsegs)
{
    const char *p = raw;
    if (!raw || *p != '/')
        return false;
    while (*p) {
        const char *start, *end;
        char *enc, *dec;
        size_t declen;
        while (*p == '/') p++;
        if (!*p) break;
        start = p;
        end = strchr(p, '/');
        if (!end) end = p + strlen(p);
        if (*nsegs == max)
            return false;
        enc = xstrndup(start, (size_t)(end - start));
        dec = evhttp_uridecode(enc, 0, &declen);
        free(enc);
        if (!dec)
            return false;
        if (strlen(dec) != declen || !util_utf8_valid(dec, declen)) {
            free(dec);
            return false;
        }
        segs[(*nsegs)++] = dec;
        p = end;
    }
    return true;
}
