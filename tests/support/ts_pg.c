/*
 * ts_pg.c - blocking libpq helpers: per-test databases and queries that check
 * where the control plane really put its rows.
 */
#include "ts_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

struct created_db {
    char *admin;
    char *name;
};

const char *ts_pg_conninfo_db(const char *base, const char *dbname)
{
    PQconninfoOption *opts, *o;
    char *err = NULL;
    size_t cap = 64 + strlen(base) + strlen(dbname);
    char *out;
    size_t n = 0;

    opts = PQconninfoParse(base, &err);
    if (!opts)
        ts_fail("bad conninfo \"%s\": %s", base, err ? err : "?");
    for (o = opts; o->keyword; o++)
        if (o->val)
            cap += strlen(o->keyword) + strlen(o->val) * 2 + 8;
    out = calloc(1, cap);
    if (!out)
        abort();
    for (o = opts; o->keyword; o++) {
        if (!o->val || strcmp(o->keyword, "dbname") == 0)
            continue;
        n += (size_t)snprintf(out + n, cap - n, "%s%s=%s", n ? " " : "", o->keyword, o->val);
    }
    snprintf(out + n, cap - n, "%sdbname=%s", n ? " " : "", dbname);
    PQconninfoFree(opts);
    return ts_keep(out);
}

PGconn *ts_pg_connect(const char *conninfo)
{
    const char *keys[] = { "dbname", "connect_timeout", NULL };
    const char *vals[] = { conninfo, "5", NULL };
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        PQfinish(c);
        ts_fail("cannot connect to \"%s\": %s", conninfo, msg);
    }
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    return c;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        ts_fail("SQL failed: %s: %s", sql, msg);
    }
    PQclear(r);
}

static void drop_at_exit(void *arg)
{
    struct created_db *d = arg;
    const char *keys[] = { "dbname", "connect_timeout", NULL };
    const char *vals[] = { d->admin, "5", NULL };
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) == CONNECTION_OK) {
        char sql[256];
        PQsetNoticeProcessor(c, quiet_notice, NULL);
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", d->name);
        PQclear(PQexec(c, sql));
    }
    /* A private server that is already stopped takes its databases with it. */
    PQfinish(c);
    free(d->admin);
    free(d->name);
    free(d);
}

const char *ts_pg_create_db(const char *admin_conninfo, const char *name)
{
    char sql[256];
    PGconn *c = ts_pg_connect(admin_conninfo);
    struct created_db *d = malloc(sizeof *d);

    if (!d)
        abort();
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
    exec_ok(c, sql);
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", name);
    exec_ok(c, sql);
    PQfinish(c);
    d->admin = strdup(admin_conninfo);
    d->name = strdup(name);
    ts_on_cleanup(drop_at_exit, d);
    return ts_pg_conninfo_db(admin_conninfo, name);
}

void ts_pg_drop_db(const char *admin_conninfo, const char *name)
{
    char sql[256];
    PGconn *c = ts_pg_connect(admin_conninfo);
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
    exec_ok(c, sql);
    PQfinish(c);
}

PGresult *ts_pg_query(const char *conninfo, const char *sql)
{
    PGconn *c = ts_pg_connect(conninfo);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        ts_fail("SQL failed on \"%s\": %s: %s", conninfo, sql, msg);
    }
    PQfinish(c);
    return r;
}

const char *ts_pg_scalar(const char *conninfo, const char *sql)
{
    PGresult *r = ts_pg_query(conninfo, sql);
    char *out = NULL;
    if (PQntuples(r) > 0 && PQnfields(r) > 0 && !PQgetisnull(r, 0, 0))
        out = ts_str("%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return out;
}

long ts_pg_count(const char *conninfo, const char *sql)
{
    const char *v = ts_pg_scalar(conninfo, sql);
    return v ? strtol(v, NULL, 10) : -1;
}

bool ts_pg_table_exists(const char *conninfo, const char *table)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN "
             "('pg_catalog','information_schema') AND tablename = '%s'", table);
    return ts_pg_count(conninfo, sql) > 0;
}
