/*
 * fuzz_dps_bodies.c - libFuzzer harness: the stamp's DPS service API
 * (stamp-agent/dps_svc_doc.c), the pure half of dps_service.c: enrollment
 * and enrollment-group documents through dsv_normalize (attestation keys,
 * certificates, hubs, allocation, twin), plus the header values that API
 * parses: If-Match (dsv_if_match), x-ms-max-item-count (dsv_page_size) and
 * continuation tokens (dsv_token_decode).
 *
 * Input: one selector byte (kind, and whether the URL id is taken from the
 * body), a header value up to the first '\n', then the JSON body.
 */
#include <string.h>

#include "dps_svc_doc.h"
#include "fuzz_util.h"
#include "jsonv.h"

static struct agent_hub_config hubs[2] = {
    {.id = "hub-1", .host_name = "hub-1.azure-devices.net", .max_devices = 1000, .allocation_weight = 1,
     .apply_allocation_policy = true},
    {.id = "hub-2", .host_name = "hub-2.azure-devices.net", .max_devices = 1000, .allocation_weight = 2,
     .apply_allocation_policy = true},
};
static struct agent_dps_config dps[1] = {{.id = "eu-dps", .id_scope = "0ne00000A0A"}};
static struct agent_provisioning_config pc = {.enabled = true, .dps = dps, .n_dps = 1, .hubs = hubs, .n_hubs = 2};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl;
    char *header, *dumped, id[DSV_ID_MAX + 8], param[32];
    enum dsv_kind kind;
    const char *attestation = NULL, *url_id = "device-01";
    struct jv_err je;
    struct dsv_err e;
    int64_t etag = 0;
    int page;
    json_t *body, *doc;
    enum dsv_match m;

    if (size < 1)
        return 0;
    kind = (data[0] & 1) ? DSV_GROUP : DSV_INDIVIDUAL;
    nl = memchr(data + 1, '\n', size - 1);
    header = fuzz_str(data + 1, nl ? (size_t)(nl - (data + 1)) : size - 1);
    (void)dsv_if_match(header, NULL, &etag);
    if (dsv_page_size(header, &page) && (page < 1 || page > DSV_PAGE_MAX))
        abort();
    if (dsv_token_decode(header, id, sizeof id) && strlen(id) >= sizeof id)
        abort();
    (void)dsv_valid_id(kind, header);
    if (!nl) {
        free(header);
        return 0;
    }
    memset(&je, 0, sizeof je);
    body = jv_parse_object((const char *)nl + 1, size - (size_t)(nl + 1 - data), &je);
    if (body) {
        json_t *given = json_object_get(body, dsv_id_field(kind));
        if ((data[0] & 2) && json_is_string(given))
            url_id = json_string_value(given);
        memset(&e, 0, sizeof e);
        doc = dsv_normalize(body, kind, url_id, &pc, &attestation, &e);
        if (doc) {
            if (!attestation || (strcmp(attestation, "symmetricKey") != 0 && strcmp(attestation, "x509") != 0))
                abort();
            dumped = json_dumps(doc, JSON_COMPACT);
            free(dumped);
            json_decref(doc);
        } else if ((e.status != 400 && e.status != 500) || !memchr(e.msg, 0, sizeof e.msg)) {
            abort();
        }
        m = dsv_if_match(header[0] ? header : NULL, body, &etag);
        (void)dsv_match_param(m, etag, param, sizeof param);
        json_decref(body);
    }
    free(header);
    return 0;
}
