/*
 * audit.c - the audit log: writing an entry before an answer goes out,
 * redacting secrets, and GET /v1/audit merged from the global catalog and
 * the geography databases (see audit.h).
 */
#define _GNU_SOURCE   /* timegm */
#include "audit.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "listpage.h"
#include "log.h"
#include "pseudonym.h"
#include "util.h"

#define AUDIT_REDACTED "[redacted]"
#define AUDIT_ROUTE_MAX 256
#define AUDIT_RESOURCE_MAX 512

/* ---- redaction ---- */

static bool audit_secret_name(const char *k)
{
    static const char *const exact[] = {"key", "token", "secret", "password", "passphrase", "sas",
                                        "signature", "connectionstring", "privatekey", "credentials", NULL};
    static const char *const suffix[] = {"key", "token", "secret", "password", "privatekey", NULL};
    size_t n = strlen(k);
    for (int i = 0; exact[i]; i++)
        if (strcasecmp(k, exact[i]) == 0)
            return true;
    for (int i = 0; suffix[i]; i++) {
        size_t m = strlen(suffix[i]);
        /* a camelCase suffix: enrollmentKey, serviceKey, apiToken, clientSecret */
        if (n > m && strcasecmp(k + n - m, suffix[i]) == 0 && isupper((unsigned char)k[n - m]))
            return true;
    }
    return false;
}

static bool audit_secret_value(const char *s)
{
    return strncmp(s, "cpk_", 4) == 0 || strncmp(s, "cpi_", 4) == 0 ||
           strncmp(s, "SharedAccessSignature", 21) == 0 || strncmp(s, ENVELOPE_PREFIX, strlen(ENVELOPE_PREFIX)) == 0 ||
           (strstr(s, "-----BEGIN") && strstr(s, "PRIVATE KEY"));
}

void audit_redact(json_t *v)
{
    const char *k;
    json_t *m;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, k, m) {
            if (!json_is_null(m) && (audit_secret_name(k) || (json_is_string(m) && audit_secret_value(json_string_value(m)))))
                json_object_set_new(v, k, json_string(AUDIT_REDACTED));
            else
                audit_redact(m);
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, m) {
            if (json_is_string(m) && audit_secret_value(json_string_value(m)))
                json_array_set_new(v, i, json_string(AUDIT_REDACTED));
            else
                audit_redact(m);
        }
    }
}

/* ---- which requests ---- */

static bool audit_is_mutation(enum evhttp_cmd_type m)
{
    return m == EVHTTP_REQ_POST || m == EVHTTP_REQ_PUT || m == EVHTTP_REQ_PATCH || m == EVHTTP_REQ_DELETE;
}

bool audit_wanted(const struct cp_req *r, int status)
{
    if (r->who.kind == PRINCIPAL_NONE)
        return false;   /* device routes, probes, unauthenticated callers */
    if (r->who.kind == PRINCIPAL_OPERATOR)
        return true;    /* break-glass: every use */
    return audit_is_mutation(r->method) && status >= 200 && status < 300 && !r->idem_replayed;
}

/* ---- writing an entry ---- */

/* Path segments that are part of a route, not ids. Index 1 (the
 * collection) is always literal. The route table (routes.c) will give the
 * pattern itself; until then this is its stand-in. */
static bool audit_literal_seg(const char *s)
{
    static const char *const words[] = {"devices", "registrations", "enrollment-key", "rotate", "installer-tokens",
                                        "kek", "enrollment-sync", "deprovision", "retire", "reprovision",
                                        "locate", "provision", "operations", "suspend", "resume", "certificates", "verify", "api-keys",
                                        "jobs", NULL};
    for (int i = 0; words[i]; i++)
        if (strcmp(s, words[i]) == 0)
            return true;
    return false;
}

/* "/v1/tenants/{tenant}/devices/{device}/deprovision" */
static void audit_route(const struct cp_req *r, char *out, size_t outlen)
{
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < r->nsegs && o < outlen; i++) {
        const char *s = r->segs[i], *prev = i > 0 ? r->segs[i - 1] : "";
        if (i <= 1 || audit_literal_seg(s))
            o += (size_t)snprintf(out + o, outlen - o, "/%s", s);
        else if (strcmp(prev, "tenants") == 0)
            o += (size_t)snprintf(out + o, outlen - o, "/{tenant}");
        else if (strcmp(prev, "devices") == 0 || strcmp(prev, "registrations") == 0)
            o += (size_t)snprintf(out + o, outlen - o, "/{device}");
        else
            o += (size_t)snprintf(out + o, outlen - o, "/{id}");
    }
    if (!out[0])
        snprintf(out, outlen, "/");
}

static int64_t audit_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct audit_write {
    struct cp_req *r;
    void (*done)(struct cp_req *r);
    char id[34];
    char where[80];
};

static void audit_on_written(const struct pgq_result *q, void *arg)
{
    struct audit_write *w = arg;
    if (q->status != PGQ_OK)
        log_write(LOG_ERROR, w->r->id,
                  "event=audit_write_failed entry=%s db=%s sqlstate=%s error=\"%.200s\" note=\"the change "
                  "committed and is answered; its audit entry is missing\"",
                  w->id, w->where, q->sqlstate ? q->sqlstate : "-", q->message ? q->message : "");
    w->done(w->r);
    free(w);
}

void audit_record(struct cp_req *r, int status, const char *body, size_t len, void (*done)(struct cp_req *r))
{
    static const char sql[] =
        "INSERT INTO audit_log (id, at_us, request_id, actor_kind, actor_key_id, actor_name, tenant_id, method,"
        " route, resource, status, replayed, before, after)"
        " VALUES ($1, $2::bigint, $3, $4, $5, $6, $7, $8, $9, $10, $11::int, $12::boolean, $13::jsonb, $14::jsonb)";
    struct audit_write *w = xcalloc(1, sizeof *w);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->ev);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    char route[AUDIT_ROUTE_MAX], resource[AUDIT_RESOURCE_MAX], at[24], st[12], tenant[64] = "";
    char *before = NULL, *after = NULL;
    const char *values[14];
    struct pgpool *db = r->cp->global;
    json_t *a = NULL;

    w->r = r;
    w->done = done;
    w->id[0] = 'a';
    util_random_hex(w->id + 1, 16);
    snprintf(at, sizeof at, "%lld", (long long)audit_now_us());
    snprintf(st, sizeof st, "%d", status);
    if (r->route_pattern)
        snprintf(route, sizeof route, "%s", r->route_pattern);
    else
        audit_route(r, route, sizeof route);
    snprintf(resource, sizeof resource, "%s", path ? path : "/");
    if (r->audit_tenant[0])
        snprintf(tenant, sizeof tenant, "%s", r->audit_tenant);
    else if (r->nsegs >= 3 && strcmp(r->segs[1], "tenants") == 0)
        snprintf(tenant, sizeof tenant, "%s", r->segs[2]);

    /* after: a mutation's answer (reads are not copied into the log) */
    if (audit_is_mutation(r->method) && status >= 200 && status < 300 && len > 0 &&
        (a = json_loadb(body, len, 0, NULL)) != NULL) {
        audit_redact(a);
        if (!tenant[0] && r->nsegs == 2 && strcmp(r->segs[1], "tenants") == 0 && json_is_string(json_object_get(a, "id")))
            snprintf(tenant, sizeof tenant, "%s", json_string_value(json_object_get(a, "id")));   /* onboarding */
        after = json_dumps(a, JSON_COMPACT);
        json_decref(a);
    }
    if (r->audit_before) {
        audit_redact(r->audit_before);
        before = json_dumps(r->audit_before, JSON_COMPACT);
    }

    if (r->audit_geo >= 0 && r->audit_geo < r->cp->cfg.n_geos) {
        db = r->cp->geo[r->audit_geo];
        snprintf(w->where, sizeof w->where, "geo:%s", r->cp->cfg.geos[r->audit_geo].id);
    } else {
        snprintf(w->where, sizeof w->where, "global");
        if (r->nsegs >= 5 && strcmp(r->segs[1], "tenants") == 0 &&
            (strcmp(r->segs[3], "devices") == 0 || strcmp(r->segs[3], "registrations") == 0)) {
            /* a device whose geography is not known: never its id in the global catalog */
            char safe[AUDIT_RESOURCE_MAX];
            snprintf(resource, sizeof resource, "%s",
                     pseudonym_redact_path(&r->cp->pseudo, path ? path : "/", safe, sizeof safe));
        }
    }

    values[0] = w->id;
    values[1] = at;
    values[2] = r->id;
    values[3] = r->who.kind == PRINCIPAL_OPERATOR ? "operator" : "key";
    values[4] = r->who.kind == PRINCIPAL_OPERATOR || !r->who.key_id[0] ? NULL : r->who.key_id;
    values[5] = principal_label(&r->who);
    values[6] = tenant[0] ? tenant : NULL;
    values[7] = cpreq_method_name(r->method);
    values[8] = route;
    values[9] = resource;
    values[10] = st;
    values[11] = r->idem_replayed ? "true" : "false";
    values[12] = before;
    values[13] = after;
    pgpool_query(db, sql, 14, values, audit_on_written, w);
    free(before);
    free(after);
}

/* ---- GET /v1/audit ---- */

#define AUDIT_MAX_DBS (CP_MAX_GEOGRAPHIES + 1)

struct audit_row {
    long long at_us;
    char id[34];
    json_t *entry;
};

struct audit_list {
    struct cp_req *r;
    int limit;
    char fetch[24];
    const char *values[8];
    char tenant[64], resource[AUDIT_RESOURCE_MAX], since[24], until[24], c_at[24], c_id[40];
    bool cursor;
    int pending;
    bool failed;
    char missing[64];          /* a geography of the tenant with no database here */
    struct audit_row *rows;
    int nrows, caprows;
};

static const char audit_list_sql[] =
    "SELECT json_build_object('id', id, 'time', cp_ts('epoch'::timestamptz + at_us * interval '1 microsecond'),"
    " 'requestId', request_id,"
    " 'who', json_build_object('kind', actor_kind, 'keyId', actor_key_id, 'name', actor_name),"
    " 'tenant', tenant_id, 'method', method, 'route', route, 'resource', resource, 'status', status,"
    " 'replayed', replayed, 'before', before, 'after', after), at_us, id"
    " FROM audit_log"
    " WHERE ($1::text IS NULL OR tenant_id = $1)"
    "   AND ($2::text IS NULL OR resource = $2 OR left(resource, length($2) + 1) = $2 || '/')"
    "   AND ($3::bigint IS NULL OR at_us >= $3::bigint)"
    "   AND ($4::bigint IS NULL OR at_us < $4::bigint)"
    "   AND ($5::bigint IS NULL OR (at_us, id) < ($5::bigint, $6::text))"
    " ORDER BY at_us DESC, id DESC LIMIT $7::int";

static void audit_list_free(struct audit_list *l)
{
    for (int i = 0; i < l->nrows; i++)
        json_decref(l->rows[i].entry);
    free(l->rows);
    free(l);
}

static int audit_row_cmp(const void *a, const void *b)
{
    const struct audit_row *x = a, *y = b;
    if (x->at_us != y->at_us)
        return x->at_us > y->at_us ? -1 : 1;
    return -strcmp(x->id, y->id);
}

static void audit_list_reply(struct audit_list *l)
{
    struct cp_req *r = l->r;
    json_t *items;
    char last[80];
    int n;

    if (l->missing[0]) {
        cpreq_reply_error(r, 503, "database_unavailable", NULL,
                          "geography '%s' may hold entries of this tenant and has no database here", l->missing);
        audit_list_free(l);
        return;
    }
    if (l->failed) {
        cpreq_reply_db_unavailable(r, NULL);
        audit_list_free(l);
        return;
    }
    if (l->nrows > 1)
        qsort(l->rows, (size_t)l->nrows, sizeof *l->rows, audit_row_cmp);
    n = l->nrows < l->limit ? l->nrows : l->limit;
    items = json_array();
    for (int i = 0; i < n; i++) {
        audit_redact(l->rows[i].entry);   /* written redacted; checked again on the way out */
        json_array_append(items, l->rows[i].entry);
    }
    if (l->nrows > l->limit)
        snprintf(last, sizeof last, "%lld.%s", l->rows[n - 1].at_us, l->rows[n - 1].id);
    cpreq_reply_json(r, 200, list_page_body(items, "a1", l->nrows > l->limit ? last : NULL));
    audit_list_free(l);
}

struct audit_part {
    struct audit_list *l;
    const char *geo;   /* NULL: the global catalog */
};

static void audit_on_part(const struct pgq_result *q, void *arg)
{
    struct audit_part *p = arg;
    struct audit_list *l = p->l;
    if (q->status != PGQ_OK) {
        log_write(LOG_WARN, l->r->id, "event=audit_read_failed db=%s%s error=\"%.200s\"", p->geo ? "geo:" : "global",
                  p->geo ? p->geo : "", q->message ? q->message : "");
        l->failed = true;
    } else {
        for (int i = 0; i < PQntuples(q->res); i++) {
            json_t *e = json_loads(PQgetvalue(q->res, i, 0), 0, NULL);
            struct audit_row *row;
            if (!e)
                continue;
            json_object_set_new(e, "geography", p->geo ? json_string(p->geo) : json_null());
            if (l->nrows == l->caprows) {
                l->caprows = l->caprows ? 2 * l->caprows : 64;
                l->rows = xrealloc(l->rows, (size_t)l->caprows * sizeof *l->rows);
            }
            row = &l->rows[l->nrows++];
            row->at_us = strtoll(PQgetvalue(q->res, i, 1), NULL, 10);
            snprintf(row->id, sizeof row->id, "%s", PQgetvalue(q->res, i, 2));
            row->entry = e;
        }
    }
    free(p);
    if (--l->pending == 0)
        audit_list_reply(l);
}

static void audit_query(struct audit_list *l, struct pgpool *db, const char *geo)
{
    struct audit_part *p = xcalloc(1, sizeof *p);
    p->l = l;
    p->geo = geo;
    l->pending++;
    pgpool_query(db, audit_list_sql, 7, l->values, audit_on_part, p);
}

/* Query the global catalog and the geographies (geos: JSON array of ids, or NULL for all). */
static void audit_fan_out(struct audit_list *l, json_t *geos)
{
    struct cp *cp = l->r->cp;
    json_t *g;
    size_t i;

    l->pending = 1;   /* held until every query is sent */
    audit_query(l, cp->global, NULL);
    if (!geos) {
        for (int k = 0; k < cp->cfg.n_geos; k++)
            audit_query(l, cp->geo[k], cp->cfg.geos[k].id);
    } else {
        json_array_foreach(geos, i, g) {
            const char *geo = json_string_value(g);
            int k;
            for (k = 0; geo && k < cp->cfg.n_geos; k++)
                if (strcmp(cp->cfg.geos[k].id, geo) == 0)
                    break;
            if (!geo || k == cp->cfg.n_geos)
                snprintf(l->missing, sizeof l->missing, "%s", geo ? geo : "?");
            else
                audit_query(l, cp->geo[k], cp->cfg.geos[k].id);
        }
    }
    if (--l->pending == 0)
        audit_list_reply(l);
}

static void audit_on_tenant(const struct pgq_result *q, void *arg)
{
    struct audit_list *l = arg;
    json_t *geos = NULL;
    if (q->status != PGQ_OK) {
        cpreq_reply_db_unavailable(l->r, q);
        audit_list_free(l);
        return;
    }
    /* an unknown tenant has entries in the global catalog at most (e.g. a refused onboarding by the operator) */
    if (PQntuples(q->res) == 1 && !PQgetisnull(q->res, 0, 0))
        geos = json_loads(PQgetvalue(q->res, 0, 0), 0, NULL);
    if (!geos)
        geos = json_array();
    audit_fan_out(l, geos);
    json_decref(geos);
}

/* RFC 3339 (UTC "Z" or an offset; optional fraction) to microseconds since the epoch. */
bool audit_parse_time(const char *s, long long *us)
{
    struct tm tm;
    const char *p;
    long long frac = 0, scale = 100000;
    int off = 0;
    memset(&tm, 0, sizeof tm);
    if (strlen(s) < 20 || !(p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)))
        return false;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return false;
        for (; isdigit((unsigned char)*p); p++) {
            frac += (*p - '0') * scale;
            scale /= 10;
        }
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2]) && p[3] == ':' &&
               isdigit((unsigned char)p[4]) && isdigit((unsigned char)p[5])) {
        int h = (p[1] - '0') * 10 + (p[2] - '0'), m = (p[4] - '0') * 10 + (p[5] - '0');
        if (h > 23 || m > 59)
            return false;
        off = (*p == '+' ? 1 : -1) * (h * 3600 + m * 60);
        p += 6;
    } else {
        return false;
    }
    if (*p)
        return false;
    *us = ((long long)timegm(&tm) - off) * 1000000 + frac;
    return true;
}

/* The key of a cursor: "<at_us>.<id>". */
static bool audit_valid_cursor_key(const char *s)
{
    const char *dot = strchr(s, '.');
    if (!dot || dot == s || dot - s > 19)
        return false;
    for (const char *p = s; p < dot; p++)
        if (!isdigit((unsigned char)*p))
            return false;
    if (strlen(dot + 1) != 33 || dot[1] != 'a')
        return false;
    for (const char *p = dot + 2; *p; p++)
        if (!isdigit((unsigned char)*p) && !(*p >= 'a' && *p <= 'f'))
            return false;
    return true;
}

void audit_handle(struct cp_req *r)
{
    static const char *const allowed[] = {"tenant", "resource", "since", "until", "limit", "cursor", NULL};
    struct list_page pg;
    struct audit_list *l;
    const char *tenant, *resource, *since, *until;
    long long since_us = 0, until_us = 0;

    /* the route table (routes.c) admits GET only */
    if (!cpreq_check_query(r, allowed) || !list_page_parse(r, "a1", audit_valid_cursor_key, &pg))
        return;
    tenant = cpreq_query(r, "tenant");
    resource = cpreq_query(r, "resource");
    since = cpreq_query(r, "since");
    until = cpreq_query(r, "until");
    if (tenant && !jv_valid_id(tenant)) {
        cpreq_reply_error(r, 400, "invalid_query", "tenant", "tenant must be a tenant id");
        return;
    }
    if (resource && (resource[0] != '/' || strlen(resource) >= AUDIT_RESOURCE_MAX - 1)) {
        cpreq_reply_error(r, 400, "invalid_query", "resource", "resource must be a path starting with / (at most %d bytes)",
                          AUDIT_RESOURCE_MAX - 2);
        return;
    }
    if (since && !audit_parse_time(since, &since_us)) {
        cpreq_reply_error(r, 400, "invalid_query", "since", "since must be an RFC 3339 time (2026-01-31T12:00:00Z)");
        return;
    }
    if (until && !audit_parse_time(until, &until_us)) {
        cpreq_reply_error(r, 400, "invalid_query", "until", "until must be an RFC 3339 time (2026-01-31T12:00:00Z)");
        return;
    }
    if (since && until && since_us >= until_us) {
        cpreq_reply_error(r, 400, "invalid_query", "until", "until must be later than since");
        return;
    }
    /* A tenant key sees its own tenant's entries only; another tenant is
     * 404 as everywhere (existence must not leak). */
    if (r->who.tenant[0]) {
        if (tenant && strcmp(tenant, r->who.tenant) != 0) {
            cpreq_reply_error(r, 404, "not_found", NULL, "no tenant '%s'", tenant);
            return;
        }
        tenant = r->who.tenant;
    }

    l = xcalloc(1, sizeof *l);
    l->r = r;
    l->limit = pg.limit;
    snprintf(l->fetch, sizeof l->fetch, "%s", pg.fetch);
    if (tenant)
        snprintf(l->tenant, sizeof l->tenant, "%s", tenant);
    if (resource) {
        size_t n;
        snprintf(l->resource, sizeof l->resource, "%s", resource);
        n = strlen(l->resource);
        while (n > 1 && l->resource[n - 1] == '/')
            l->resource[--n] = '\0';   /* "/v1/tenants/acme/" is "/v1/tenants/acme" */
    }
    if (since)
        snprintf(l->since, sizeof l->since, "%lld", since_us);
    if (until)
        snprintf(l->until, sizeof l->until, "%lld", until_us);
    if (list_page_after(&pg)) {
        const char *dot = strchr(pg.after, '.');
        snprintf(l->c_at, sizeof l->c_at, "%.*s", (int)(dot - pg.after), pg.after);
        snprintf(l->c_id, sizeof l->c_id, "%s", dot + 1);
        l->cursor = true;
    }
    l->values[0] = tenant ? l->tenant : NULL;
    l->values[1] = resource ? l->resource : NULL;
    l->values[2] = since ? l->since : NULL;
    l->values[3] = until ? l->until : NULL;
    l->values[4] = l->cursor ? l->c_at : NULL;
    l->values[5] = l->cursor ? l->c_id : NULL;
    l->values[6] = l->fetch;

    if (tenant) {
        /* only the geographies the tenant's devices may live in (a removed tenant's too) */
        static const char sql[] = "SELECT to_json(lookup_geographies) FROM tenants WHERE id = $1";
        const char *v[1] = {l->tenant};
        pgpool_query(r->cp->global, sql, 1, v, audit_on_tenant, l);
    } else {
        audit_fan_out(l, NULL);
    }
}
