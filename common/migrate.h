/*
 * migrate.h - schema migrations compiled into a daemon: one table per set.
 * The control plane's sets are the global catalog (schema/global/) and each
 * geography's database (schema/geo/); the build embeds the SQL
 * (cmake/embed_sql.cmake) and pgpool applies it.
 */
#ifndef CP_MIGRATE_H
#define CP_MIGRATE_H

struct migration {
    int version;        /* from the file name: 001_catalog.sql is version 1 */
    const char *name;   /* the file name without .sql */
    const char *sql;
};

/* The control plane's sets (controlplane/migrations_gen.c). */
extern const struct migration migrations_global[];
extern const int migrations_global_count;
extern const struct migration migrations_geo[];
extern const int migrations_geo_count;

#endif
