/*
 * catalog.h - the geode layout resources (geographies, regions, stamps, DPS
 * instances, hubs) described as data: their fields, rules and SQL. One
 * generic engine validates bodies and builds statements from these tables,
 * so the five resources can't drift apart in behaviour.
 *
 * Pure code: no I/O, unit-tested directly.
 */
#ifndef CP_CATALOG_H
#define CP_CATALOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "jsonv.h"

enum catalog_type { CF_STRING, CF_INT };

#define CF_REQUIRED    0x01  /* must be sent on create */
#define CF_CREATE_ONLY 0x02  /* set on create, never changed after (the id, the parent) */
#define CF_NULLABLE    0x04  /* null is a value (clears the field) */
#define CF_ID          0x08  /* id syntax [a-z0-9][a-z0-9-]{0,62} */
#define CF_REF         0x10  /* names another resource: a missing one is 422 invalid_reference */
#define CF_DEFAULT_ID  0x20  /* defaults to the resource id on create */

struct catalog_field {
    const char *json;          /* camelCase name in the API */
    const char *column;        /* column in the table */
    enum catalog_type type;
    unsigned flags;
    int64_t min, max;          /* integer range, or string length range */
    const char *const *words;  /* allowed words (NULL-terminated), or NULL */
    const char *charset;       /* for strings: allowed characters besides [A-Za-z0-9], or NULL for any */
};

struct catalog_filter {
    const char *param;         /* query parameter, e.g. "geography" */
    const char *sql;           /* condition on alias t; "$?" stands for the parameter */
};

struct catalog_resource {
    const char *collection;    /* URL segment: "dps-instances" */
    const char *table;
    const char *noun;          /* for messages: "DPS instance" */
    const struct catalog_field *fields;   /* fields[0] is always the id */
    int nfields;
    const char *const *read_only;         /* server-computed fields, NULL-terminated */
    const struct catalog_filter *filters;
    int nfilters;
    const char *json_sql;      /* expression building the resource's JSON from alias t */
    bool live_health;          /* stamps: merge health and load from the load table */
    bool needs_geo_config;     /* geographies: the id must have a database configured */
    const char *geo_sql;       /* the item's geography from alias t (tenant keys read only their residency's) */
};

extern const struct catalog_resource catalog_resources[];
extern const int catalog_nresources;

const struct catalog_resource *catalog_find(const char *collection);

/* The validated fields of a create or update body, in field order. */
struct catalog_values {
    int n;
    int field[16];             /* index into resource->fields */
    char *value[16];           /* text form, NULL for SQL NULL; owned */
};
void catalog_values_free(struct catalog_values *v);

/*
 * Validate a body. create: required fields, defaults, create-only fields
 * allowed; update: create-only and read-only fields refused. On failure
 * returns false with e filled (e->code is the API error code).
 */
bool catalog_validate(const struct catalog_resource *res, json_t *body, bool create,
                      struct catalog_values *out, struct jv_err *e) MUSTCHECK;

/* The value of a field by JSON name in validated values, or NULL. */
const char *catalog_value(const struct catalog_resource *res, const struct catalog_values *v,
                          const char *json_name, bool *present);

/* Statement builders; every value is a $n parameter. Results are malloc'ed. */
char *catalog_sql_insert(const struct catalog_resource *res, const struct catalog_values *v);
/* $1 = id; columns: the row after, the row before */
char *catalog_sql_update(const struct catalog_resource *res, const struct catalog_values *v);
char *catalog_sql_get(const struct catalog_resource *res);       /* $1 = id */
char *catalog_sql_delete(const struct catalog_resource *res);    /* $1 = id; columns: id, the row before */
/* Rows of (json, id). $1 = cursor id or NULL, $2 = limit; filters follow from $3 in order. */
/* residency: also keep only items whose geography is in the text[] parameter after the filters. */
char *catalog_sql_list(const struct catalog_resource *res, const int *filter_idx, int nfilters, bool residency);

/* The API name of the field a constraint or column in an error refers to, or NULL. */
const char *catalog_field_for_constraint(const struct catalog_resource *res, const char *constraint,
                                         const char *column);


#endif
