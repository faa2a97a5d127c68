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

/* ---- roles (least-privilege tests) ---- */

struct created_role {
    char *admin;
    char *role;
    char *grant_db;
};

static void drop_role_at_exit(void *arg)
{
    struct created_role *r = arg;
    const char *keys[] = { "dbname", "connect_timeout", NULL };
    const char *vals[] = { NULL, "5", NULL };
    PGconn *c;
    char *id;

    if (r->grant_db) {
        /* Its privileges in that database keep a role from being dropped. */
        vals[0] = r->grant_db;
        c = PQconnectdbParams(keys, vals, 1);
        if (PQstatus(c) == CONNECTION_OK && (id = PQescapeIdentifier(c, r->role, strlen(r->role))) != NULL) {
            char *sql = ts_str("DROP OWNED BY %s", id);
            PQsetNoticeProcessor(c, quiet_notice, NULL);
            PQclear(PQexec(c, sql));
            PQfreemem(id);
        }
        PQfinish(c);
    }
    vals[0] = r->admin;
    c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) == CONNECTION_OK && (id = PQescapeIdentifier(c, r->role, strlen(r->role))) != NULL) {
        char *sql = ts_str("DROP ROLE IF EXISTS %s", id);
        PQsetNoticeProcessor(c, quiet_notice, NULL);
        PQclear(PQexec(c, sql));
        PQfreemem(id);
    }
    PQfinish(c);
    free(r->admin);
    free(r->role);
    free(r->grant_db);
    free(r);
}

void ts_pg_create_role(const char *admin_conninfo, const char *role, const char *password, const char *grant_db)
{
    PGconn *c = ts_pg_connect(admin_conninfo);
    struct created_role *r = calloc(1, sizeof *r);
    char *id = PQescapeIdentifier(c, role, strlen(role));
    char *pw = PQescapeLiteral(c, password, strlen(password));

    if (!r || !id || !pw)
        ts_fail("cannot quote role %s: %s", role, PQerrorMessage(c));
    exec_ok(c, ts_str("DROP ROLE IF EXISTS %s", id));
    exec_ok(c, ts_str("CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s", id, pw));
    PQfreemem(id);
    PQfreemem(pw);
    PQfinish(c);
    r->admin = strdup(admin_conninfo);
    r->role = strdup(role);
    r->grant_db = grant_db ? strdup(grant_db) : NULL;
    if (!r->admin || !r->role || (grant_db && !r->grant_db))
        abort();
    ts_on_cleanup(drop_role_at_exit, r);
}

/* A conninfo value in single quotes, \ and ' escaped. */
static const char *conninfo_quote(const char *v)
{
    size_t n = strlen(v);
    char *out = calloc(1, n * 2 + 3), *o = out;
    if (!out)
        abort();
    *o++ = '\'';
    for (const char *p = v; *p; p++) {
        if (*p == '\\' || *p == '\'')
            *o++ = '\\';
        *o++ = *p;
    }
    *o = '\'';
    return ts_keep(out);
}

const char *ts_pg_conninfo_user(const char *base, const char *user, const char *password)
{
    PQconninfoOption *opts, *o;
    char *err = NULL;
    const char *out = "";

    opts = PQconninfoParse(base, &err);
    if (!opts)
        ts_fail("bad conninfo \"%s\": %s", base, err ? err : "?");
    for (o = opts; o->keyword; o++) {
        if (!o->val || strcmp(o->keyword, "user") == 0 || strcmp(o->keyword, "password") == 0)
            continue;
        out = ts_str("%s%s%s=%s", out, *out ? " " : "", o->keyword, conninfo_quote(o->val));
    }
    PQconninfoFree(opts);
    out = ts_str("%s user=%s", out, conninfo_quote(user));
    if (password)
        out = ts_str("%s password=%s", out, conninfo_quote(password));
    return out;
}

const char *ts_pg_try(const char *conninfo, const char *sql, long *ntuples)
{
    PGconn *c = ts_pg_connect(conninfo);
    PGresult *r = PQexec(c, sql);
    const char *state = NULL;

    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        if (ntuples)
            *ntuples = PQntuples(r);
    } else if (PQresultStatus(r) == PGRES_COMMAND_OK) {
        if (ntuples)
            *ntuples = *PQcmdTuples(r) ? strtol(PQcmdTuples(r), NULL, 10) : 0;
    } else {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        state = ts_str("%s", st ? st : "XX000");
    }
    PQclear(r);
    PQfinish(c);
    return state;
}
