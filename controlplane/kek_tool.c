/*
 * kek_tool.c - stampcp-kek: the operator's tool for the KEK file and the
 * secrets it seals (common/envelope.h, docs/security.md "Secrets at rest").
 *
 *   stampcp-kek new    --file F [--id ID]        a new KEK file (mode 0600) with one key
 *   stampcp-kek add    --file F [--id ID] [--keep-current]
 *                                                 add a fresh key and make it current
 *   stampcp-kek retire --file F --id ID           drop a key that is no longer current
 *   stampcp-kek list   --file F                   the ids, the current one first (no keys)
 *   stampcp-kek rewrap --file F (--db CONNINFO ... | --config controlplane.json)
 *                                                 re-wrap every DEK of every database
 *                                                 under the current KEK (and seal clear keys)
 *   stampcp-kek status --file F (--db ... | --config ...)
 *                                                 how many secrets each KEK wraps, per database
 *
 * rewrap is safe while the daemons serve: it changes no plaintext, and a row
 * changed meanwhile is left to its writer (which seals with the current KEK).
 * Every file write goes to a temporary file (0600) renamed over the old one.
 * Exit codes: 0 done, 1 failure (a database, or values that do not open), 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cp_config.h"
#include "envelope.h"
#include "envelope_db.h"
#include "log.h"
#include "util.h"

#define KT_MAX_DBS 40

static const struct envelope_set *const kt_sets[] = {
    &envelope_set_enrollment_keys,
    &envelope_set_service_keys,
    &envelope_set_stamp_keys,
};

static void kt_usage(FILE *f)
{
    fprintf(f, "usage: stampcp-kek new|add|retire|list|rewrap|status --file KEKFILE [options]\n"
               "  new    [--id ID]                     create KEKFILE (mode 0600) with one fresh key\n"
               "  add    [--id ID] [--keep-current]    add a fresh key; it becomes current unless --keep-current\n"
               "  retire --id ID                       remove a key that is not current\n"
               "  list                                 print the KEK ids (current first), never the keys\n"
               "  rewrap --db CONNINFO... | --config CP.json\n"
               "                                       re-wrap every stored secret under the current KEK\n"
               "  status --db CONNINFO... | --config CP.json\n"
               "                                       count stored secrets per KEK id, per database\n");
}

static void kt_default_id(char *out, size_t outlen)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, outlen, "kek-%Y%m%d-%H%M%S", &tm);
}

/* Write text to path atomically with mode 0600. */
static bool kt_write(const char *path, const char *text, bool exclusive)
{
    char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t len = strlen(text), off = 0;
    bool ok = false;
    if (fd < 0) {
        fprintf(stderr, "stampcp-kek: %s: %s\n", tmp, strerror(errno));
        free(tmp);
        return false;
    }
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "stampcp-kek: writing %s: %s\n", tmp, strerror(errno));
            goto out;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0 || fchmod(fd, 0600) != 0) {
        fprintf(stderr, "stampcp-kek: %s: %s\n", tmp, strerror(errno));
        goto out;
    }
    if (exclusive) {
        if (link(tmp, path) != 0) {
            fprintf(stderr, "stampcp-kek: %s: %s (new never overwrites a KEK file)\n", path, strerror(errno));
            goto out;
        }
        unlink(tmp);
    } else if (rename(tmp, path) != 0) {
        fprintf(stderr, "stampcp-kek: %s: %s\n", path, strerror(errno));
        goto out;
    }
    ok = true;
out:
    close(fd);
    if (!ok)
        unlink(tmp);
    free(tmp);
    return ok;
}

/* The file's JSON (after envelope_load accepted it: mode and format checked). */
static json_t *kt_read(const char *path)
{
    char err[400];
    struct envelope *env = envelope_load(path, err, sizeof err);
    json_error_t je;
    json_t *j;
    if (!env) {
        fprintf(stderr, "stampcp-kek: %s\n", err);
        return NULL;
    }
    envelope_free(env);
    if (!(j = json_load_file(path, JSON_REJECT_DUPLICATES, &je)))
        fprintf(stderr, "stampcp-kek: %s: %s\n", path, je.text);
    return j;
}

static bool kt_save(const char *path, json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    char err[400];
    struct envelope *check;
    bool ok;
    if (!text)
        return false;
    /* never write a file the daemons would refuse */
    check = envelope_from_text(text, err, sizeof err);
    if (!check) {
        fprintf(stderr, "stampcp-kek: internal error: %s\n", err);
        free(text);
        return false;
    }
    envelope_free(check);
    ok = kt_write(path, text, false);
    memset(text, 0, strlen(text));
    free(text);
    return ok;
}

static int kt_new(const char *path, const char *id)
{
    char *text = envelope_new_file_text(id);
    bool ok;
    if (!text) {
        fprintf(stderr, "stampcp-kek: '%s' is not a valid KEK id (1-%d of [A-Za-z0-9._-])\n", id,
                ENVELOPE_KEK_ID_MAX);
        return 2;
    }
    ok = kt_write(path, text, true);
    memset(text, 0, strlen(text));
    free(text);
    if (ok)
        printf("created %s with KEK %s (current)\n", path, id);
    return ok ? 0 : 1;
}

static int kt_add(const char *path, const char *id, bool keep_current)
{
    json_t *j = kt_read(path), *fresh, *keys;
    char *text;
    int rc = 1;
    if (!j)
        return 1;
    keys = json_object_get(j, "keys");
    if (json_object_get(keys, id)) {
        fprintf(stderr, "stampcp-kek: %s already holds a KEK '%s'\n", path, id);
        json_decref(j);
        return 2;
    }
    if (!(text = envelope_new_file_text(id))) {
        fprintf(stderr, "stampcp-kek: '%s' is not a valid KEK id\n", id);
        json_decref(j);
        return 2;
    }
    fresh = json_loads(text, 0, NULL);
    memset(text, 0, strlen(text));
    free(text);
    json_object_set(keys, id, json_object_get(json_object_get(fresh, "keys"), id));
    json_decref(fresh);
    if (!keep_current)
        json_object_set_new(j, "current", json_string(id));
    if (kt_save(path, j)) {
        printf("added KEK %s to %s%s\n", id, path, keep_current ? "" : " (current)");
        rc = 0;
    }
    json_decref(j);
    return rc;
}

static int kt_retire(const char *path, const char *id)
{
    json_t *j = kt_read(path);
    int rc = 1;
    if (!j)
        return 1;
    if (!json_object_get(json_object_get(j, "keys"), id)) {
        fprintf(stderr, "stampcp-kek: %s holds no KEK '%s'\n", path, id);
        rc = 2;
    } else if (strcmp(json_string_value(json_object_get(j, "current")), id) == 0) {
        fprintf(stderr, "stampcp-kek: '%s' is the current KEK: add another one first\n", id);
        rc = 2;
    } else {
        json_object_del(json_object_get(j, "keys"), id);
        if (kt_save(path, j)) {
            printf("removed KEK %s from %s\n", id, path);
            rc = 0;
        }
    }
    json_decref(j);
    return rc;
}

static int kt_list(const char *path)
{
    char err[400];
    struct envelope *env = envelope_load(path, err, sizeof err);
    if (!env) {
        fprintf(stderr, "stampcp-kek: %s\n", err);
        return 1;
    }
    printf("%s current\n", envelope_current_id(env));
    for (int i = 0; i < envelope_kek_count(env); i++)
        if (strcmp(envelope_kek_id(env, i), envelope_current_id(env)) != 0)
            printf("%s\n", envelope_kek_id(env, i));
    envelope_free(env);
    return 0;
}

/* rewrap / status over every database */
static int kt_databases(const char *path, const char *const *dbs, int ndbs, bool rewrap)
{
    char err[400];
    struct envelope *env = envelope_load(path, err, sizeof err);
    int rc = 0;
    if (!env) {
        fprintf(stderr, "stampcp-kek: %s\n", err);
        return 1;
    }
    for (int d = 0; d < ndbs; d++) {
        PGconn *c = PQconnectdb(dbs[d]);
        const char *name = PQdb(c);
        if (PQstatus(c) != CONNECTION_OK) {
            fprintf(stderr, "stampcp-kek: database %d: %s", d + 1, PQerrorMessage(c));
            PQfinish(c);
            rc = 1;
            continue;
        }
        if (rewrap) {
            struct envelope_pass_result res;
            envelope_pass_sync(c, env, kt_sets, (int)ARRAY_LEN(kt_sets), &res);
            printf("%s: kek=%s sealed=%d rewrapped=%d failed=%d raced=%d%s%s\n", name, envelope_current_id(env),
                   res.sealed, res.rewrapped, res.failed, res.raced, res.error[0] ? " error=" : "", res.error);
            if (res.db_failed || res.failed)
                rc = 1;
        } else {
            for (size_t s = 0; s < ARRAY_LEN(kt_sets); s++) {
                const char *tv[1] = {envelope_set_table(kt_sets[s])};
                PGresult *r = PQexecParams(c, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, tv, NULL, NULL, 0);
                bool exists = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
                PQclear(r);
                if (!exists)
                    continue;
                r = PQexec(c, envelope_set_count_sql(kt_sets[s]));
                if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                    fprintf(stderr, "stampcp-kek: %s: %s", name, PQresultErrorMessage(r));
                    rc = 1;
                } else {
                    for (int i = 0; i < PQntuples(r); i++)
                        printf("%s %s %s %s\n", name, envelope_set_name(kt_sets[s]), PQgetvalue(r, i, 0),
                               PQgetvalue(r, i, 1));
                }
                PQclear(r);
            }
        }
        PQfinish(c);
    }
    envelope_free(env);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"id", required_argument, NULL, 'i'},
        {"keep-current", no_argument, NULL, 'k'},
        {"db", required_argument, NULL, 'd'},
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL, *id = NULL, *config = NULL, *cmd;
    const char *dbs[KT_MAX_DBS];
    char idbuf[ENVELOPE_KEK_ID_MAX + 1];
    struct cp_config cfg;
    bool keep = false;
    int ndbs = 0, ch, rc;

    log_init("stampcp-kek", LOG_WARN);
    if (argc < 2 || argv[1][0] == '-') {
        kt_usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    cmd = argv[1];
    optind = 2;
    while ((ch = getopt_long(argc, argv, "f:i:kd:c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'f': file = optarg; break;
        case 'i': id = optarg; break;
        case 'k': keep = true; break;
        case 'd':
            if (ndbs == KT_MAX_DBS) {
                fprintf(stderr, "stampcp-kek: at most %d --db\n", KT_MAX_DBS);
                return 2;
            }
            dbs[ndbs++] = optarg;
            break;
        case 'c': config = optarg; break;
        case 'h': kt_usage(stdout); return 0;
        default: kt_usage(stderr); return 2;
        }
    }
    if (optind < argc || !file) {
        fprintf(stderr, "stampcp-kek: %s\n", file ? "unexpected arguments" : "--file KEKFILE is required");
        kt_usage(stderr);
        return 2;
    }
    if (!id) {
        kt_default_id(idbuf, sizeof idbuf);
        id = idbuf;
    }
    if (strcmp(cmd, "new") == 0)
        return kt_new(file, id);
    if (strcmp(cmd, "add") == 0)
        return kt_add(file, id, keep);
    if (strcmp(cmd, "retire") == 0)
        return id == idbuf ? (fprintf(stderr, "stampcp-kek: retire needs --id\n"), 2) : kt_retire(file, id);
    if (strcmp(cmd, "list") == 0)
        return kt_list(file);
    if (strcmp(cmd, "rewrap") != 0 && strcmp(cmd, "status") != 0) {
        fprintf(stderr, "stampcp-kek: unknown command '%s'\n", cmd);
        kt_usage(stderr);
        return 2;
    }
    memset(&cfg, 0, sizeof cfg);
    if (config) {
        struct jv_err e;
        if (!cp_config_load(config, &cfg, &e)) {
            fprintf(stderr, "stampcp-kek: %s: %s\n", config, e.message);
            cp_config_free(&cfg);
            return 2;
        }
        if (ndbs < KT_MAX_DBS)
            dbs[ndbs++] = cfg.global_conninfo;
        for (int i = 0; i < cfg.n_geos && ndbs < KT_MAX_DBS; i++)
            dbs[ndbs++] = cfg.geos[i].conninfo;
    }
    if (ndbs == 0) {
        fprintf(stderr, "stampcp-kek: %s needs --db CONNINFO (repeatable) or --config controlplane.json\n", cmd);
        cp_config_free(&cfg);
        return 2;
    }
    rc = kt_databases(file, dbs, ndbs, strcmp(cmd, "rewrap") == 0);
    cp_config_free(&cfg);
    return rc;
}
