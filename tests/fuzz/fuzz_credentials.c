/*
 * fuzz_credentials.c - libFuzzer harness: what the gate reads from an admin
 * request before any handler runs (controlplane/gate.c): the bearer token
 * as an API key (apikeys_parse), the path against the route table
 * (routes_match, with every method), scope words, and the time strings an
 * API key body (expiresAt) and an audit query (since/until) carry.
 *
 * Input: the bytes are used whole for each parser.
 */
#include <event2/http.h>

#include "api_keys.h"
#include "apikeys.h"
#include "audit.h"
#include "fuzz_util.h"
#include "httputil.h"
#include "principal.h"
#include "routes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const enum evhttp_cmd_type methods[] = {EVHTTP_REQ_GET, EVHTTP_REQ_POST, EVHTTP_REQ_PATCH,
                                                   EVHTTP_REQ_DELETE, EVHTTP_REQ_PUT, EVHTTP_REQ_HEAD};
    char *s = fuzz_str(data, size);
    char id[APIKEY_ID_LEN + 1], secret[APIKEY_SECRET_LEN + 1], allow[64], *segs[6];
    int n = 0;
    long long us;

    if (apikeys_parse(s, id, secret) && (strlen(id) != APIKEY_ID_LEN || strlen(secret) != APIKEY_SECRET_LEN))
        abort();
    if (principal_scope_from_word(s) && strcmp(principal_scope_word(principal_scope_from_word(s)), s) != 0)
        abort();
    (void)api_keys_valid_timestamp(s);
    (void)audit_parse_time(s, &us);
    if (httputil_split_path(s, segs, 6, &n)) {
        for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++) {
            bool known;
            const struct route *rt = routes_match(methods[m], segs, n, &known, allow, sizeof allow);
            /* a match names a tenant segment inside the path */
            if (rt && (rt->tenant_seg >= n || rt->method != methods[m]))
                abort();
            if (!rt && known && allow[0] == '\0')
                abort();
        }
        (void)routes_is_device_path(segs, n);
    }
    for (int i = 0; i < n; i++)
        free(segs[i]);
    free(s);
    return 0;
}
