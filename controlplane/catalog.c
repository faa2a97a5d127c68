/*
 * catalog.c - resource descriptors for the geode layout, body validation and
 * statement building.
 */
#include "catalog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define TS(col) "cp_ts(t." col ")"
#define COMMON_JSON "'version',t.version,'createdAt'," TS("created_at") ",'updatedAt'," TS("updated_at")

static const char *const common_read_only[] = {"version", "createdAt", "updatedAt", NULL};
static const char *const stamp_read_only[] = {"version", "createdAt", "updatedAt", "geography",
                                              "health", "lastReportAt", "load", NULL};
static const char *const stamp_status_words[] = {"active", "draining", NULL};
static const char *const stamp_tenancy_words[] = {"pooled", "dedicated", NULL};

#define ID_FIELD {"id", "id", CF_STRING, CF_REQUIRED | CF_CREATE_ONLY | CF_ID, 1, 63, NULL, NULL}
#define NAME_FIELD {"displayName", "display_name", CF_STRING, CF_DEFAULT_ID, 1, 128, NULL, NULL}
#define PARENT_FIELD(j, c) {j, c, CF_STRING, CF_REQUIRED | CF_CREATE_ONLY | CF_ID | CF_REF, 1, 63, NULL, NULL}

static const struct catalog_field geography_fields[] = {ID_FIELD, NAME_FIELD};

static const struct catalog_field region_fields[] = {
    ID_FIELD,
    PARENT_FIELD("geography", "geography_id"),
    NAME_FIELD,
    {"pairedRegion", "paired_region_id", CF_STRING, CF_NULLABLE | CF_ID | CF_REF, 1, 63, NULL, NULL},
};
static const struct catalog_filter region_filters[] = {
    {"geography", "t.geography_id = $?"},
};

static const struct catalog_field stamp_fields[] = {
    ID_FIELD,
    PARENT_FIELD("region", "region_id"),
    NAME_FIELD,
    {"status", "status", CF_STRING, 0, 1, 16, stamp_status_words, NULL},
    {"tenancy", "tenancy", CF_STRING, 0, 1, 16, stamp_tenancy_words, NULL},
};
static const struct catalog_filter stamp_filters[] = {
    {"region", "t.region_id = $?"},
    {"geography", "t.region_id IN (SELECT r.id FROM regions r WHERE r.geography_id = $?)"},
};

static const struct catalog_field dps_fields[] = {
    ID_FIELD,
    PARENT_FIELD("stamp", "stamp_id"),
    {"idScope", "id_scope", CF_STRING, CF_REQUIRED, 1, 64, NULL, ""},
    {"endpoint", "endpoint", CF_STRING, CF_REQUIRED, 3, 255, NULL, ".-:[]"},
    {"maxRegistrations", "max_registrations", CF_INT, 0, 1, 1000000, NULL, NULL},
    {"registrationsPerMinute", "registrations_per_minute", CF_INT, 0, 1, 10000000, NULL, NULL},
    {"serviceHostName", "service_host_name", CF_STRING, CF_NULLABLE, 1, 300, NULL, ".-:[]"},
    {"serviceKeyName", "service_key_name", CF_STRING, CF_NULLABLE, 1, 64, NULL, "-_."},
    {"serviceKey", "service_key", CF_STRING, CF_NULLABLE, 16, 128, NULL, "+/="},
};
static const char *const dps_read_only[] = {"version", "createdAt", "updatedAt", "serviceKeyConfigured", NULL};
static const struct catalog_filter stamp_child_filters[] = {
    {"stamp", "t.stamp_id = $?"},
};

static const struct catalog_field hub_fields[] = {
    ID_FIELD,
    PARENT_FIELD("stamp", "stamp_id"),
    {"hostName", "host_name", CF_STRING, CF_REQUIRED, 1, 255, NULL, ".-"},
    {"maxDevices", "max_devices", CF_INT, 0, 1, 1000000, NULL, NULL},
    {"allocationWeight", "allocation_weight", CF_INT, 0, 1, 1000, NULL, NULL},
};

const struct catalog_resource catalog_resources[] = {
    {"geographies", "geographies", "geography", geography_fields, 2, common_read_only, NULL, 0,
     "json_build_object('id',t.id,'displayName',t.display_name," COMMON_JSON ")", false, true, "t.id"},
    {"regions", "regions", "region", region_fields, 4, common_read_only, region_filters, 1,
     "json_build_object('id',t.id,'geography',t.geography_id,'displayName',t.display_name,"
     "'pairedRegion',t.paired_region_id," COMMON_JSON ")", false, false, "t.geography_id"},
    {"stamps", "stamps", "stamp", stamp_fields, 5, stamp_read_only, stamp_filters, 2,
     "json_build_object('id',t.id,'region',t.region_id,"
     "'geography',(SELECT r.geography_id FROM regions r WHERE r.id = t.region_id),"
     "'displayName',t.display_name,'status',t.status,'tenancy',t.tenancy," COMMON_JSON ")",
     true, false, "(SELECT r.geography_id FROM regions r WHERE r.id = t.region_id)"},
    {"dps-instances", "dps_instances", "DPS instance", dps_fields, 9, dps_read_only,
     stamp_child_filters, 1,
     "json_build_object('id',t.id,'stamp',t.stamp_id,'idScope',t.id_scope,'endpoint',t.endpoint,"
     "'maxRegistrations',t.max_registrations,'registrationsPerMinute',t.registrations_per_minute,"
     "'serviceHostName',t.service_host_name,'serviceKeyName',t.service_key_name,"
     "'serviceKeyConfigured',t.service_key IS NOT NULL," COMMON_JSON ")", false, false, "(SELECT r.geography_id FROM stamps s JOIN regions r ON r.id = s.region_id WHERE s.id = t.stamp_id)"},
    {"hubs", "hubs", "hub", hub_fields, 5, common_read_only, stamp_child_filters, 1,
     "json_build_object('id',t.id,'stamp',t.stamp_id,'hostName',t.host_name,"
     "'maxDevices',t.max_devices,'allocationWeight',t.allocation_weight," COMMON_JSON ")",
     false, false, "(SELECT r.geography_id FROM stamps s JOIN regions r ON r.id = s.region_id WHERE s.id = t.stamp_id)"},
};
const int catalog_nresources = (int)ARRAY_LEN(catalog_resources);

const struct catalog_resource *catalog_find(const char *collection)
{
    for (int i = 0; i < catalog_nresources; i++)
        if (strcmp(catalog_resources[i].collection, collection) == 0)
            return &catalog_resources[i];
    return NULL;
}

void catalog_values_free(struct catalog_values *v)
{
    for (int i = 0; i < v->n; i++)
        free(v->value[i]);
    v->n = 0;
}

static void catalog_values_add(struct catalog_values *v, int field, const char *value)
{
    v->field[v->n] = field;
    v->value[v->n] = value ? xstrdup(value) : NULL;
    v->n++;
}

static bool catalog_charset_ok(const char *s, const char *extra)
{
    for (; *s; s++) {
        char c = *s;
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && !strchr(extra, c))
            return false;
    }
    return true;
}

static bool catalog_check_string(const struct catalog_field *f, const char *s, struct jv_err *e)
{
    if ((f->flags & CF_ID) && !jv_valid_id(s)) {
        jv_set(e, "invalid_value", f->json, "'%s' must match [a-z0-9][a-z0-9-]{0,62}", f->json);
        return false;
    }
    if (f->charset && !catalog_charset_ok(s, f->charset)) {
        jv_set(e, "invalid_value", f->json, "'%s' may only contain letters, digits%s%s", f->json,
               *f->charset ? " and " : "", f->charset);
        return false;
    }
    if (f->words) {
        for (const char *const *w = f->words; *w; w++)
            if (strcmp(*w, s) == 0)
                return true;
        jv_set(e, "invalid_value", f->json, "'%s' must be one of: %s%s%s", f->json, f->words[0],
               f->words[1] ? ", " : "", f->words[1] ? f->words[1] : "");
        return false;
    }
    return true;
}

/* Validate one present field and append its text value. */
static bool catalog_take_field(const struct catalog_field *f, int idx, json_t *body,
                               struct catalog_values *out, struct jv_err *e)
{
    json_t *v = json_object_get(body, f->json);
    char num[32];
    if (json_is_null(v) && (f->flags & CF_NULLABLE)) {
        catalog_values_add(out, idx, NULL);
        return true;
    }
    if (f->type == CF_INT) {
        int64_t n = 0;
        if (!jv_int(body, "", f->json, true, f->min, f->max, &n, e))
            return false;
        snprintf(num, sizeof num, "%lld", (long long)n);
        catalog_values_add(out, idx, num);
        return true;
    } else {
        const char *s = NULL;
        if (!jv_string(body, "", f->json, true, (size_t)f->min, (size_t)f->max, &s, e) ||
            !catalog_check_string(f, s, e))
            return false;
        catalog_values_add(out, idx, s);
        return true;
    }
}

static int catalog_field_index(const struct catalog_resource *res, const char *json_name)
{
    for (int i = 0; i < res->nfields; i++)
        if (strcmp(res->fields[i].json, json_name) == 0)
            return i;
    return -1;
}

static bool catalog_is_read_only(const struct catalog_resource *res, const char *key)
{
    for (const char *const *r = res->read_only; *r; r++)
        if (strcmp(*r, key) == 0)
            return true;
    return false;
}

bool catalog_validate(const struct catalog_resource *res, json_t *body, bool create,
                      struct catalog_values *out, struct jv_err *e)
{
    const char *key;
    json_t *val;

    memset(out, 0, sizeof *out);
    /* Unknown and read-only keys first: they are the likeliest mistakes. */
    json_object_foreach(body, key, val) {
        int idx = catalog_field_index(res, key);
        if (catalog_is_read_only(res, key) ||
            (!create && idx >= 0 && (res->fields[idx].flags & CF_CREATE_ONLY))) {
            jv_set(e, "read_only_field", key, "field '%.64s' cannot be %s", key,
                   create ? "set; the server computes it" : "changed after creation");
            return false;
        }
        if (idx < 0) {
            jv_set(e, "unknown_field", key, "unknown field '%.64s' for a %s", key, res->noun);
            return false;
        }
    }
    for (int i = 0; i < res->nfields; i++) {
        const struct catalog_field *f = &res->fields[i];
        if (!json_object_get(body, f->json)) {
            if (create && (f->flags & CF_REQUIRED)) {
                jv_set(e, "missing_field", f->json, "field '%s' is required", f->json);
                goto fail;
            }
            if (create && (f->flags & CF_DEFAULT_ID) && out->n > 0)
                catalog_values_add(out, i, out->value[0]);
            continue;
        }
        if (!catalog_take_field(f, i, body, out, e))
            goto fail;
    }
    return true;
fail:
    catalog_values_free(out);
    return false;
}

const char *catalog_value(const struct catalog_resource *res, const struct catalog_values *v,
                          const char *json_name, bool *present)
{
    for (int i = 0; i < v->n; i++)
        if (strcmp(res->fields[v->field[i]].json, json_name) == 0) {
            if (present) *present = true;
            return v->value[i];
        }
    if (present) *present = false;
    return NULL;
}

/* A growing string for statement building. */
struct sqlbuf { char *s; size_t len, cap; };

static void sb_add(struct sqlbuf *b, const char *text)
{
    size_t n = strlen(text);
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, text, n + 1);
    b->len += n;
}

static void sb_param(struct sqlbuf *b, int n)
{
    char p[16];
    snprintf(p, sizeof p, "$%d", n);
    sb_add(b, p);
}

char *catalog_sql_insert(const struct catalog_resource *res, const struct catalog_values *v)
{
    struct sqlbuf b = {0};
    sb_add(&b, "INSERT INTO ");
    sb_add(&b, res->table);
    sb_add(&b, " AS t (");
    for (int i = 0; i < v->n; i++) {
        if (i) sb_add(&b, ", ");
        sb_add(&b, res->fields[v->field[i]].column);
    }
    sb_add(&b, ") VALUES (");
    for (int i = 0; i < v->n; i++) {
        if (i) sb_add(&b, ", ");
        sb_param(&b, i + 1);
    }
    sb_add(&b, ") RETURNING ");
    sb_add(&b, res->json_sql);
    return b.s;
}

char *catalog_sql_update(const struct catalog_resource *res, const struct catalog_values *v)
{
    struct sqlbuf b = {0};
    sb_add(&b, "UPDATE ");
    sb_add(&b, res->table);
    sb_add(&b, " AS t SET ");
    for (int i = 0; i < v->n; i++) {
        sb_add(&b, res->fields[v->field[i]].column);
        sb_add(&b, " = ");
        sb_param(&b, i + 2);
        sb_add(&b, ", ");
    }
    /* o: the row as it was (column 1), for the audit entry (audit.h) */
    sb_add(&b, "version = t.version + 1, updated_at = now() FROM (SELECT t.id, ");
    sb_add(&b, res->json_sql);
    sb_add(&b, " AS before FROM ");
    sb_add(&b, res->table);
    sb_add(&b, " t WHERE t.id = $1 FOR UPDATE) o WHERE t.id = o.id RETURNING ");
    sb_add(&b, res->json_sql);
    sb_add(&b, ", o.before");
    return b.s;
}

char *catalog_sql_get(const struct catalog_resource *res)
{
    return xasprintf("SELECT %s FROM %s t WHERE t.id = $1", res->json_sql, res->table);
}

char *catalog_sql_delete(const struct catalog_resource *res)
{
    /* column 1: the row as it was, for the audit entry (audit.h) */
    return xasprintf("DELETE FROM %s t WHERE t.id = $1 RETURNING t.id, %s", res->table, res->json_sql);
}

char *catalog_sql_list(const struct catalog_resource *res, const int *filter_idx, int nfilters, bool residency)
{
    struct sqlbuf b = {0};
    sb_add(&b, "SELECT ");
    sb_add(&b, res->json_sql);
    sb_add(&b, ", t.id FROM ");
    sb_add(&b, res->table);
    sb_add(&b, " t WHERE ($1::text IS NULL OR t.id > $1)");
    for (int i = 0; i < nfilters; i++) {
        const char *cond = res->filters[filter_idx[i]].sql;
        const char *mark = strstr(cond, "$?");
        char *head = xstrndup(cond, (size_t)(mark - cond));
        sb_add(&b, " AND ");
        sb_add(&b, head);
        sb_param(&b, 3 + i);
        sb_add(&b, mark + 2);
        free(head);
    }
    if (residency) {
        sb_add(&b, " AND ");
        sb_add(&b, res->geo_sql);
        sb_add(&b, " = ANY(");
        sb_param(&b, 3 + nfilters);
        sb_add(&b, "::text[])");
    }
    sb_add(&b, " ORDER BY t.id LIMIT $2");
    return b.s;
}

const char *catalog_field_for_constraint(const struct catalog_resource *res, const char *constraint,
                                         const char *column)
{
    char col[128];
    size_t tl = strlen(res->table), n;
    if (column && *column) {
        snprintf(col, sizeof col, "%s", column);
    } else {
        if (!constraint || strncmp(constraint, res->table, tl) != 0 || constraint[tl] != '_')
            return NULL;
        snprintf(col, sizeof col, "%s", constraint + tl + 1);
        if (strcmp(col, "pkey") == 0)
            return "id";
        n = strlen(col);
        if (n > 5 && strcmp(col + n - 5, "_fkey") == 0)
            col[n - 5] = '\0';
        else if (n > 4 && strcmp(col + n - 4, "_key") == 0)
            col[n - 4] = '\0';
    }
    for (int i = 0; i < res->nfields; i++)
        if (strcmp(res->fields[i].column, col) == 0)
            return res->fields[i].json;
    return NULL;
}
