/*
 * fuzz_path.c - libFuzzer harness: the request-target pipeline both daemons
 * run on every request (controlplane/http_req.c cpreq_new and
 * stamp-agent/dps_server.c dps_on_request): libevent's URI parse, then
 * httputil_split_path (common/httputil.c) on the path with each server's
 * segment limit, then evhttp_parse_query_str on the query.
 *
 * Input: the request target as it appears on the request line.
 */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>

#include "fuzz_util.h"
#include "httputil.h"
#include "util.h"

enum { CP_SEGS = 6, DPS_SEGS = 8 };   /* CPREQ_MAX_SEGS, DPS_MAX_SEGS */

static void split(const char *path, int max)
{
    char *segs[DPS_SEGS];
    int n = 0;
    bool ok = httputil_split_path(path, segs, max, &n);
    if (n < 0 || n > max)
        abort();
    for (int i = 0; i < n; i++) {
        /* each segment is non-empty, NUL-free UTF-8 */
        if (ok && (segs[i][0] == '\0' || !util_utf8_valid(segs[i], strlen(segs[i]))))
            abort();
        free(segs[i]);
    }
}

static void query(const char *q)
{
    struct evkeyvalq kv;
    TAILQ_INIT(&kv);
    (void)evhttp_parse_query_str(q, &kv);
    evhttp_clear_headers(&kv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_str(data, size);
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags(s, EVHTTP_URI_NONCONFORMANT);

    if (uri) {
        const char *path = evhttp_uri_get_path(uri), *q = evhttp_uri_get_query(uri);
        if (path) {
            split(path, CP_SEGS);
            split(path, DPS_SEGS);
        }
        if (q)
            query(q);
        evhttp_uri_free(uri);
    }
    /* the splitter on its own, whatever libevent would have let through */
    split(s, CP_SEGS);
    split(s, DPS_SEGS);
    free(s);
    return 0;
}
