/*
 * fuzz_api_bodies.c - libFuzzer harness: request bodies of every control
 * plane route family, through the same checks the handlers run before they
 * touch a database: jv_parse_object (what cpreq_json_body does), then
 *   catalog: catalog_validate for each resource, create and update (and the
 *            SQL builders over the validated values);
 *   tenants: api_tenants_validate for create, patch, installer token, rotate;
 *   devices: router_check_body with reason / payload / nothing allowed.
 *
 * Input: one selector byte (which route), then the body.
 */
#include <string.h>

#include "router.h"
#include "api_tenants.h"
#include "catalog.h"
#include "fuzz_util.h"
#include "jsonv.h"

static void check_err(const struct jv_err *e)
{
    if (!memchr(e->code, 0, sizeof e->code) || !memchr(e->field, 0, sizeof e->field) ||
        !memchr(e->message, 0, sizeof e->message) || e->code[0] == '\0')
        abort();
}

static void catalog(const struct catalog_resource *res, json_t *body, bool create)
{
    struct catalog_values v;
    struct jv_err e;
    bool present;
    char *sql;

    memset(&e, 0, sizeof e);
    if (!catalog_validate(res, body, create, &v, &e)) {
        check_err(&e);
        return;
    }
    if (v.n < 0 || v.n > 16)
        abort();
    for (int i = 0; i < v.n; i++)
        if (v.field[i] < 0 || v.field[i] >= res->nfields)
            abort();
    (void)catalog_value(res, &v, res->fields[0].json, &present);
    sql = create ? catalog_sql_insert(res, &v) : v.n > 0 ? catalog_sql_update(res, &v) : NULL;
    free(sql);
    catalog_values_free(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int ncat = 2 * catalog_nresources;
    struct jv_err e;
    const char *reason = NULL;
    json_t *body;
    int route;

    if (size < 1)
        return 0;
    route = data[0] % (ncat + 5 + 3);
    memset(&e, 0, sizeof e);
    body = jv_parse_object((const char *)data + 1, size - 1, &e);
    if (!body) {
        check_err(&e);
        return 0;
    }
    if (route < ncat) {
        catalog(&catalog_resources[route / 2], body, route % 2 == 0);
    } else if (route < ncat + 5) {
        if (!api_tenants_validate((enum api_tenants_body)(route - ncat), body, &e))
            check_err(&e);
    } else {
        int k = route - ncat - 5;
        if (!router_check_body(body, k == 0, k == 1, &reason, &e))
            check_err(&e);
        else if (reason && (strlen(reason) < 1 || strlen(reason) > 128))
            abort();
    }
    json_decref(body);
    return 0;
}
