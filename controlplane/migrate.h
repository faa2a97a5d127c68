/*
 * migrate.h - the schema migrations compiled into the control plane, one table
 * per database kind (the global catalog, and each geography's database).
 * The SQL lives in schema/global/ and schema/geo/; the build embeds it.
 */
#ifndef CP_MIGRATE_H
#define CP_MIGRATE_H

struct migration {
    int version;        /* from the file name: 001_catalog.sql is version 1 */
    const char *name;   /* the file name without .sql */
    const char *sql;
};

extern const struct migration migrations_global[];
extern const int migrations_global_count;
extern const struct migration migrations_geo[];
extern const int migrations_geo_count;

#endif
