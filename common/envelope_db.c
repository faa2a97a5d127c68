/*
 * envelope_db.c - the secret sets (tables and columns holding sealed
 * secrets) and the re-wrap pass over them, asynchronous (pgpool) and
 * blocking (libpq, for the tool). See envelope_db.h.
 */
#include "envelope_db.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define EDB_BATCH     100
#define EDB_MAX_KEYS  3
#define EDB_MAX_VALS  2
#define EDB_MAX_SETS  8

struct envelope_set {
    const char *name;
    const char *table;
    int nkeys, nvals;
    bool scoped;                  /* select takes the DPS-id scope as $(3 + nkeys) */
    /* $1 = "enc:v1:<current>:", $2 = limit, $3.. = cursor keys [, scope]:
     * keys then values of rows with a value not under the current KEK */
    const char *select_sql;
    /* $1..$nkeys keys, then the old values, then the new ones */
    const char *update_sql;
    const char *count_sql;
    void (*aad)(const char *const *keys, char *out, size_t outlen);
};

#define EDB_KEK_OF(v) "CASE WHEN " v " LIKE 'enc:v1:%' THEN split_part(" v ", ':', 3) ELSE 'clear' END"

static void edb_aad_tenant(const char *const *keys, char *out, size_t outlen)
{
    envelope_aad_enrollment_key(out, outlen, keys[0]);
}

static void edb_aad_service(const char *const *keys, char *out, size_t outlen)
{
    envelope_aad_service_key(out, outlen, keys[0]);
}

static void edb_aad_stamp(const char *const *keys, char *out, size_t outlen)
{
    envelope_aad_stamp_key(out, outlen, keys[0], keys[1], keys[2]);
}

const struct envelope_set envelope_set_enrollment_keys = {
    "enrollmentKeys", "tenants", 1, 2, false,
    "SELECT id, enrollment_key, enrollment_key_previous FROM tenants WHERE id > $3"
    " AND ((enrollment_key IS NOT NULL AND NOT starts_with(enrollment_key, $1))"
    "  OR (enrollment_key_previous IS NOT NULL AND NOT starts_with(enrollment_key_previous, $1)))"
    " ORDER BY id LIMIT $2::int",
    "UPDATE tenants SET enrollment_key = $4, enrollment_key_previous = $5 WHERE id = $1"
    " AND enrollment_key IS NOT DISTINCT FROM $2 AND enrollment_key_previous IS NOT DISTINCT FROM $3",
    "SELECT " EDB_KEK_OF("v") ", count(*) FROM (SELECT enrollment_key AS v FROM tenants UNION ALL"
    " SELECT enrollment_key_previous FROM tenants) s WHERE v IS NOT NULL GROUP BY 1 ORDER BY 1",
    edb_aad_tenant,
};

const struct envelope_set envelope_set_service_keys = {
    "dpsServiceKeys", "dps_instances", 1, 1, false,
    "SELECT id, service_key FROM dps_instances WHERE id > $3 AND service_key IS NOT NULL"
    " AND NOT starts_with(service_key, $1) ORDER BY id LIMIT $2::int",
    "UPDATE dps_instances SET service_key = $3 WHERE id = $1 AND service_key = $2",
    "SELECT " EDB_KEK_OF("service_key") ", count(*) FROM dps_instances WHERE service_key IS NOT NULL"
    " GROUP BY 1 ORDER BY 1",
    edb_aad_service,
};

#define EDB_PK "(doc #>> '{attestation,symmetricKey,primaryKey}')"
#define EDB_SK "(doc #>> '{attestation,symmetricKey,secondaryKey}')"
/* doc with primaryKey set to $6 (kept when $6 is NULL) */
#define EDB_SET_PK "(CASE WHEN $6::text IS NULL THEN doc" \
    " ELSE jsonb_set(doc, '{attestation,symmetricKey,primaryKey}', to_jsonb($6::text)) END)"

const struct envelope_set envelope_set_stamp_keys = {
    "stampEnrollmentKeys", "dps_enrollments", 3, 2, true,
    "SELECT dps_id, kind, enrollment_id, " EDB_PK ", " EDB_SK " FROM dps_enrollments"
    " WHERE attestation = 'symmetricKey' AND (dps_id, kind, enrollment_id) > ($3, $4, $5)"
    " AND ($6::text[] IS NULL OR dps_id = ANY($6::text[]))"
    " AND (NOT starts_with(coalesce(" EDB_PK ", $1), $1) OR NOT starts_with(coalesce(" EDB_SK ", $1), $1))"
    " ORDER BY dps_id, kind, enrollment_id LIMIT $2::int",
    "UPDATE dps_enrollments SET doc = CASE WHEN $7::text IS NULL THEN " EDB_SET_PK
    " ELSE jsonb_set(" EDB_SET_PK ", '{attestation,symmetricKey,secondaryKey}', to_jsonb($7::text)) END"
    " WHERE dps_id = $1 AND kind = $2 AND enrollment_id = $3"
    " AND " EDB_PK " IS NOT DISTINCT FROM $4 AND " EDB_SK " IS NOT DISTINCT FROM $5",
    "SELECT " EDB_KEK_OF("v") ", count(*) FROM (SELECT " EDB_PK " AS v FROM dps_enrollments"
    " WHERE attestation = 'symmetricKey' UNION ALL SELECT " EDB_SK " FROM dps_enrollments"
    " WHERE attestation = 'symmetricKey') s WHERE v IS NOT NULL GROUP BY 1 ORDER BY 1",
    edb_aad_stamp,
};

const char *envelope_set_name(const struct envelope_set *s)
{
    return s->name;
}

const char *envelope_set_table(const struct envelope_set *s)
{
    return s->table;
}

const char *envelope_set_count_sql(const struct envelope_set *s)
{
    return s->count_sql;
}

/* ---- one row ---- */

enum edb_row { EDB_ROW_NOTHING, EDB_ROW_UPDATE, EDB_ROW_FAILED };

/* The new values of a row (nv[i] NULL: value stays; caller frees them). */
static enum edb_row edb_row_plan(struct envelope *env, const struct envelope_set *s, const char *const *keys,
                                 const char *const *vals, char **nv, int *sealed, int *rewrapped,
                                 struct envelope_pass_result *res)
{
    char aad[ENVELOPE_AAD_MAX];
    bool any = false;
    s->aad(keys, aad, sizeof aad);
    for (int i = 0; i < s->nvals; i++) {
        enum envelope_status st;
        nv[i] = NULL;
        if (!vals[i])
            continue;
        st = envelope_rewrap(env, vals[i], aad, &nv[i]);
        if (st != ENVELOPE_OK) {
            if (!res->error[0])
                snprintf(res->error, sizeof res->error, "%s of %s %s: %s", s->name, s->table, keys[0],
                         envelope_status_word(st));
            log_warn("event=secret_rewrap_failed set=%s key=%s status=%s", s->name, keys[0],
                     envelope_status_word(st));
            for (int k = 0; k <= i; k++) {
                free(nv[k]);
                nv[k] = NULL;
            }
            return EDB_ROW_FAILED;
        }
        if (nv[i]) {
            any = true;
            if (envelope_is_sealed(vals[i]))
                (*rewrapped)++;
            else
                (*sealed)++;
        }
    }
    return any ? EDB_ROW_UPDATE : EDB_ROW_NOTHING;
}

/* Update parameters: keys, old values, new values (an unchanged value is its old one). */
static int edb_update_params(const struct envelope_set *s, const char *const *keys, const char *const *vals,
                             char *const *nv, const char **p)
{
    int n = 0;
    for (int i = 0; i < s->nkeys; i++)
        p[n++] = keys[i];
    for (int i = 0; i < s->nvals; i++)
        p[n++] = vals[i];
    for (int i = 0; i < s->nvals; i++)
        p[n++] = nv[i] ? nv[i] : vals[i];
    return n;
}

static int edb_select_params(struct envelope *env, const struct envelope_set *s, char *prefix, size_t prefixlen,
                             const char *limit, char cursor[][160], const char *scope, const char **p)
{
    int n = 0;
    snprintf(prefix, prefixlen, "%s%s:", ENVELOPE_PREFIX, envelope_current_id(env));
    p[n++] = prefix;
    p[n++] = limit;
    for (int i = 0; i < s->nkeys; i++)
        p[n++] = cursor[i];
    if (s->scoped)
        p[n++] = scope;
    return n;
}

/* ---- asynchronous pass ---- */

struct edb_row_copy {
    char *keys[EDB_MAX_KEYS];
    char *vals[EDB_MAX_VALS];
};

struct envelope_pass {
    struct pgpool *pool;
    struct envelope *env;
    const struct envelope_set *sets[EDB_MAX_SETS];
    int nsets, cur;
    char *scope;                  /* "{...}" array literal, or NULL */
    char prefix[ENVELOPE_KEK_ID_MAX + 16];
    char cursor[EDB_MAX_KEYS][160];
    struct edb_row_copy *rows;
    int nrows, next;
    bool page_full;
    char *nv[EDB_MAX_VALS];       /* the update in flight */
    int pend_sealed, pend_rewrapped;
    struct envelope_pass_result res;
    envelope_pass_cb cb;
    void *arg;
};

static void edb_rows_free(struct envelope_pass *p)
{
    for (int r = 0; r < p->nrows; r++) {
        for (int i = 0; i < EDB_MAX_KEYS; i++)
            free(p->rows[r].keys[i]);
        for (int i = 0; i < EDB_MAX_VALS; i++)
            free(p->rows[r].vals[i]);
    }
    free(p->rows);
    p->rows = NULL;
    p->nrows = p->next = 0;
}

static void edb_finish(struct envelope_pass *p)
{
    edb_rows_free(p);
    p->cb(&p->res, p->arg);
    free(p->scope);
    free(p);
}

static void edb_select(struct envelope_pass *p);
static void edb_next_row(struct envelope_pass *p);

static bool edb_db_ok(struct envelope_pass *p, const struct pgq_result *q)
{
    if (q->status == PGQ_OK)
        return true;
    p->res.db_failed = true;
    snprintf(p->res.error, sizeof p->res.error, "%s: %s", p->sets[p->cur]->table,
             q->status == PGQ_UNAVAILABLE ? "database unavailable" : (q->sqlstate ? q->sqlstate : "sql error"));
    log_warn("event=secret_pass_db_error set=%s status=%d sqlstate=%s message=\"%.200s\"", p->sets[p->cur]->name,
             (int)q->status, q->sqlstate ? q->sqlstate : "-", q->message ? q->message : "");
    return false;
}

static void edb_on_update(const struct pgq_result *q, void *arg)
{
    struct envelope_pass *p = arg;
    bool ok = edb_db_ok(p, q);
    for (int i = 0; i < EDB_MAX_VALS; i++) {
        free(p->nv[i]);
        p->nv[i] = NULL;
    }
    if (!ok) {
        edb_finish(p);
        return;
    }
    if (strcmp(PQcmdTuples((PGresult *)q->res), "1") == 0) {
        p->res.sealed += p->pend_sealed;
        p->res.rewrapped += p->pend_rewrapped;
    } else {
        p->res.raced++;
    }
    edb_next_row(p);
}

static void edb_next_row(struct envelope_pass *p)
{
    const struct envelope_set *s = p->sets[p->cur];
    while (p->next < p->nrows) {
        struct edb_row_copy *row = &p->rows[p->next++];
        const char *params[EDB_MAX_KEYS + 2 * EDB_MAX_VALS];
        enum edb_row what;
        int n;
        p->pend_sealed = p->pend_rewrapped = 0;
        what = edb_row_plan(p->env, s, (const char *const *)row->keys, (const char *const *)row->vals, p->nv,
                            &p->pend_sealed, &p->pend_rewrapped, &p->res);
        if (what == EDB_ROW_FAILED)
            p->res.failed++;
        if (what != EDB_ROW_UPDATE)
            continue;
        n = edb_update_params(s, (const char *const *)row->keys, (const char *const *)row->vals, p->nv, params);
        pgpool_query(p->pool, s->update_sql, n, params, edb_on_update, p);
        return;
    }
    /* the page is done */
    if (p->page_full && p->nrows > 0) {
        struct edb_row_copy *last = &p->rows[p->nrows - 1];
        for (int i = 0; i < s->nkeys; i++)
            snprintf(p->cursor[i], sizeof p->cursor[i], "%s", last->keys[i]);
    } else {
        p->cur++;
        memset(p->cursor, 0, sizeof p->cursor);
    }
    edb_rows_free(p);
    if (p->cur >= p->nsets) {
        edb_finish(p);
        return;
    }
    edb_select(p);
}

static void edb_on_select(const struct pgq_result *q, void *arg)
{
    struct envelope_pass *p = arg;
    const struct envelope_set *s = p->sets[p->cur];
    if (!edb_db_ok(p, q)) {
        edb_finish(p);
        return;
    }
    p->nrows = PQntuples(q->res);
    p->page_full = p->nrows >= EDB_BATCH;
    p->rows = xcalloc((size_t)p->nrows + 1, sizeof *p->rows);
    for (int r = 0; r < p->nrows; r++) {
        for (int i = 0; i < s->nkeys; i++)
            p->rows[r].keys[i] = xstrdup(PQgetvalue(q->res, r, i));
        for (int i = 0; i < s->nvals; i++)
            p->rows[r].vals[i] =
                PQgetisnull(q->res, r, s->nkeys + i) ? NULL : xstrdup(PQgetvalue(q->res, r, s->nkeys + i));
    }
    p->next = 0;
    edb_next_row(p);
}

static void edb_select(struct envelope_pass *p)
{
    const struct envelope_set *s = p->sets[p->cur];
    const char *params[3 + EDB_MAX_KEYS];
    char limit[16];
    int n;
    snprintf(limit, sizeof limit, "%d", EDB_BATCH);
    n = edb_select_params(p->env, s, p->prefix, sizeof p->prefix, limit, p->cursor, p->scope, params);
    pgpool_query(p->pool, s->select_sql, n, params, edb_on_select, p);
}

static char *edb_scope_literal(const char *const *scope, int nscope)
{
    size_t cap = 3, o = 0;
    char *s;
    if (!scope)
        return NULL;
    for (int i = 0; i < nscope; i++)
        cap += strlen(scope[i]) + 3;
    s = xmalloc(cap);
    s[o++] = '{';
    for (int i = 0; i < nscope; i++) {
        /* DPS ids are of id syntax ([a-z0-9-]): nothing to escape */
        o += (size_t)snprintf(s + o, cap - o, "%s\"%s\"", i ? "," : "", scope[i]);
    }
    snprintf(s + o, cap - o, "}");
    return s;
}

void envelope_pass_cancel(struct envelope_pass *p)
{
    if (!p)
        return;
    edb_rows_free(p);
    for (int i = 0; i < EDB_MAX_VALS; i++)
        free(p->nv[i]);
    free(p->scope);
    free(p);
}

struct envelope_pass *envelope_pass_start(struct pgpool *pool, struct envelope *env,
                                          const struct envelope_set *const *sets, int nsets,
                                          const char *const *scope, int nscope, envelope_pass_cb cb, void *arg)
{
    struct envelope_pass *p;
    const struct envelope_set *s;
    const char *params[3 + EDB_MAX_KEYS];
    char limit[16];
    int n;

    if (nsets <= 0 || nsets > EDB_MAX_SETS)
        return NULL;
    p = xcalloc(1, sizeof *p);
    p->pool = pool;
    p->env = env;
    for (int i = 0; i < nsets; i++)
        p->sets[i] = sets[i];
    p->nsets = nsets;
    p->scope = edb_scope_literal(scope, nscope);
    p->cb = cb;
    p->arg = arg;
    s = p->sets[0];
    snprintf(limit, sizeof limit, "%d", EDB_BATCH);
    n = edb_select_params(env, s, p->prefix, sizeof p->prefix, limit, p->cursor, p->scope, params);
    pgpool_query(pool, s->select_sql, n, params, edb_on_select, p);
    return p;
}

/* ---- blocking pass (the tool) ---- */

static bool edb_sync_ok(PGresult *r, const struct envelope_set *s, struct envelope_pass_result *res)
{
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return true;
    res->db_failed = true;
    snprintf(res->error, sizeof res->error, "%s: %.150s", s->table, PQresultErrorMessage(r));
    return false;
}

void envelope_pass_sync(PGconn *conn, struct envelope *env, const struct envelope_set *const *sets, int nsets,
                        struct envelope_pass_result *res)
{
    memset(res, 0, sizeof *res);
    for (int si = 0; si < nsets && !res->db_failed; si++) {
        const struct envelope_set *s = sets[si];
        const char *tv[1] = {s->table};
        char cursor[EDB_MAX_KEYS][160] = {{0}};
        char prefix[ENVELOPE_KEK_ID_MAX + 16], limit[16];
        PGresult *r = PQexecParams(conn, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, tv, NULL, NULL, 0);
        bool exists = edb_sync_ok(r, s, res) && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (!exists)
            continue;
        snprintf(limit, sizeof limit, "%d", EDB_BATCH);
        for (;;) {
            const char *params[3 + EDB_MAX_KEYS];
            int n = edb_select_params(env, s, prefix, sizeof prefix, limit, cursor, NULL, params);
            int nrows;
            r = PQexecParams(conn, s->select_sql, n, NULL, params, NULL, NULL, 0);
            if (!edb_sync_ok(r, s, res)) {
                PQclear(r);
                break;
            }
            nrows = PQntuples(r);
            for (int row = 0; row < nrows && !res->db_failed; row++) {
                const char *keys[EDB_MAX_KEYS] = {NULL}, *vals[EDB_MAX_VALS] = {NULL};
                char *nv[EDB_MAX_VALS] = {NULL};
                const char *up[EDB_MAX_KEYS + 2 * EDB_MAX_VALS];
                int sealed = 0, rewrapped = 0, m;
                enum edb_row what;
                PGresult *u;
                for (int i = 0; i < s->nkeys; i++)
                    keys[i] = PQgetvalue(r, row, i);
                for (int i = 0; i < s->nvals; i++)
                    vals[i] = PQgetisnull(r, row, s->nkeys + i) ? NULL : PQgetvalue(r, row, s->nkeys + i);
                what = edb_row_plan(env, s, keys, vals, nv, &sealed, &rewrapped, res);
                if (what == EDB_ROW_FAILED)
                    res->failed++;
                if (what != EDB_ROW_UPDATE)
                    continue;
                m = edb_update_params(s, keys, vals, nv, up);
                u = PQexecParams(conn, s->update_sql, m, NULL, up, NULL, NULL, 0);
                if (edb_sync_ok(u, s, res)) {
                    if (strcmp(PQcmdTuples(u), "1") == 0) {
                        res->sealed += sealed;
                        res->rewrapped += rewrapped;
                    } else {
                        res->raced++;
                    }
                }
                PQclear(u);
                for (int i = 0; i < EDB_MAX_VALS; i++)
                    free(nv[i]);
            }
            if (nrows < EDB_BATCH || res->db_failed) {
                PQclear(r);
                break;
            }
            for (int i = 0; i < s->nkeys; i++)
                snprintf(cursor[i], sizeof cursor[i], "%s", PQgetvalue(r, nrows - 1, i));
            PQclear(r);
        }
    }
}
