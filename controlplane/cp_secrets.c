/*
 * cp_secrets.c - KEK keyring loading, the start-up sealing pass over the
 * global catalog, the KEK file watch and the /v1/admin/kek routes (see
 * cp_secrets.h).
 */
#include "cp_secrets.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope_db.h"
#include "log.h"
#include "util.h"

#define SECRETS_WATCH_MS 2000
#define SECRETS_RETRY_MS 5000

static const struct envelope_set *const secrets_sets[] = {
    &envelope_set_enrollment_keys,
    &envelope_set_service_keys,
};
#define SECRETS_NSETS ((int)ARRAY_LEN(secrets_sets))

struct cp_secrets {
    struct cp *cp;
    struct event *watch;
    struct event *retry;
    struct envelope_pass *pass;   /* the start-up pass in flight, or NULL */
    char last_error[300];
};

struct envelope *cp_secrets_load(const struct cp_config *cfg, char *err, size_t errlen)
{
    if (!cfg->kek_file) {
        snprintf(err, errlen, "kekFile is required: the KEK file that seals enrollment and service keys at rest "
                              "(make one with stampcp-kek new --file PATH)");
        return NULL;
    }
    return envelope_load(cfg->kek_file, err, errlen);
}

/* ---- start-up pass and file watch ---- */

static void secrets_arm(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ev, &tv);
}

static void secrets_on_start_pass(const struct envelope_pass_result *res, void *arg)
{
    struct cp_secrets *s = arg;
    s->pass = NULL;
    if (res->db_failed) {
        log_warn("event=secrets_pass_failed error=\"%s\" retry_ms=%d", res->error, SECRETS_RETRY_MS);
        secrets_arm(s->retry, SECRETS_RETRY_MS);
        return;
    }
    if (res->failed)
        log_error("event=secrets_pass_incomplete failed=%d error=\"%s\"", res->failed, res->error);
    log_info("event=secrets_pass kek=%s sealed=%d rewrapped=%d failed=%d raced=%d",
             envelope_current_id(s->cp->env), res->sealed, res->rewrapped, res->failed, res->raced);
}

/* At start, only values still in clear matter; values under an older KEK
 * wait for the rotate call (re-wrapping is cheap, but every control plane
 * doing it at once on every restart is not useful). The pass does both. */
static void secrets_start_pass(struct cp_secrets *s)
{
    s->pass = envelope_pass_start(s->cp->global, s->cp->env, secrets_sets, SECRETS_NSETS, NULL, 0,
                                  secrets_on_start_pass, s);
}

static void secrets_on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    secrets_start_pass(arg);
}

static void secrets_on_watch(evutil_socket_t fd, short what, void *arg)
{
    struct cp_secrets *s = arg;
    char err[300];
    bool changed = false;
    (void)fd; (void)what;
    if (!envelope_reload_if_changed(s->cp->env, &changed, err, sizeof err)) {
        if (strcmp(err, s->last_error) != 0)
            log_error("event=kek_file_reload_failed error=\"%s\" note=\"keeping the keys loaded before\"", err);
        snprintf(s->last_error, sizeof s->last_error, "%s", err);
    } else {
        s->last_error[0] = '\0';
        if (changed)
            log_info("event=kek_file_reloaded current=%s keys=%d", envelope_current_id(s->cp->env),
                     envelope_kek_count(s->cp->env));
    }
    secrets_arm(s->watch, SECRETS_WATCH_MS);
}

struct cp_secrets *cp_secrets_new(struct cp *cp)
{
    struct cp_secrets *s = xcalloc(1, sizeof *s);
    s->cp = cp;
    s->watch = event_new(cp->base, -1, 0, secrets_on_watch, s);
    s->retry = event_new(cp->base, -1, 0, secrets_on_retry, s);
    if (!s->watch || !s->retry) {
        log_error("event=event_new_failed");
        abort();
    }
    secrets_arm(s->watch, SECRETS_WATCH_MS);
    secrets_start_pass(s);
    return s;
}

void cp_secrets_free(struct cp_secrets *s)
{
    if (!s)
        return;
    envelope_pass_cancel(s->pass);   /* main.c frees the global pool next */
    event_free(s->watch);
    event_free(s->retry);
    free(s);
}

/* ---- admin routes ---- */

struct secrets_op {
    struct cp_req *r;
    json_t *body;            /* the answer being built */
    json_t *counts;          /* set name -> {kek id or "clear": n} */
    int pending;
    bool failed;
};

static void secrets_op_done(struct secrets_op *op)
{
    if (op->failed) {
        cpreq_reply_db_unavailable(op->r, NULL);
        json_decref(op->body);
    } else {
        struct envelope *env = op->r->cp->env;
        const char *set;
        json_t *per, *remaining = json_object();
        long long total_remaining = 0;
        json_object_set(op->body, "secrets", op->counts);
        /* what is not yet under the current KEK */
        json_object_foreach(op->counts, set, per) {
            const char *kek;
            json_t *n;
            long long left = 0;
            json_object_foreach(per, kek, n)
                if (strcmp(kek, envelope_current_id(env)) != 0)
                    left += json_integer_value(n);
            json_object_set_new(remaining, set, json_integer(left));
            total_remaining += left;
        }
        json_object_set_new(op->body, "notUnderCurrentKek", remaining);
        json_object_set_new(op->body, "complete", json_boolean(total_remaining == 0));
        cpreq_add_header(op->r, "Cache-Control", "no-store");
        cpreq_reply_json(op->r, 200, op->body);
    }
    json_decref(op->counts);
    free(op);
}

static void secrets_on_count(const struct pgq_result *q, void *arg)
{
    struct secrets_op *op = arg;
    int set = op->pending - 1;   /* counts run one after the other, last set first */
    if (q->status != PGQ_OK) {
        op->failed = true;
    } else {
        json_t *per = json_object();
        for (int i = 0; i < PQntuples(q->res); i++)
            json_object_set_new(per, PQgetvalue(q->res, i, 0), json_integer(strtoll(PQgetvalue(q->res, i, 1), NULL, 10)));
        json_object_set_new(op->counts, envelope_set_name(secrets_sets[set]), per);
    }
    if (--op->pending == 0 || op->failed) {
        secrets_op_done(op);
        return;
    }
    pgpool_query(op->r->cp->global, envelope_set_count_sql(secrets_sets[op->pending - 1]), 0, NULL,
                      secrets_on_count, op);
}

/* Add the keyring's ids to op->body, then count the secrets per KEK and reply. */
static void secrets_count_and_reply(struct secrets_op *op)
{
    struct envelope *env = op->r->cp->env;
    json_t *ids = json_array();
    for (int i = 0; i < envelope_kek_count(env); i++)
        json_array_append_new(ids, json_string(envelope_kek_id(env, i)));
    json_object_set_new(op->body, "currentKekId", json_string(envelope_current_id(env)));
    json_object_set_new(op->body, "kekIds", ids);
    op->counts = json_object();
    op->pending = SECRETS_NSETS;
    pgpool_query(op->r->cp->global, envelope_set_count_sql(secrets_sets[op->pending - 1]), 0, NULL,
                      secrets_on_count, op);
}

static void secrets_on_rotated(const struct envelope_pass_result *res, void *arg)
{
    struct secrets_op *op = arg;
    if (res->db_failed) {
        log_write(LOG_WARN, op->r->id, "event=kek_rotate_failed error=\"%s\"", res->error);
        cpreq_reply_db_unavailable(op->r, NULL);
        json_decref(op->body);
        free(op);
        return;
    }
    log_write(res->failed ? LOG_ERROR : LOG_INFO, op->r->id,
              "event=kek_rotated kek=%s sealed=%d rewrapped=%d failed=%d raced=%d", envelope_current_id(op->r->cp->env),
              res->sealed, res->rewrapped, res->failed, res->raced);
    json_object_set_new(op->body, "sealed", json_integer(res->sealed));
    json_object_set_new(op->body, "rewrapped", json_integer(res->rewrapped));
    json_object_set_new(op->body, "failed", json_integer(res->failed));
    if (res->failed)
        json_object_set_new(op->body, "firstFailure", json_string(res->error));
    secrets_count_and_reply(op);
}

static void secrets_rotate(struct cp_req *r)
{
    static const char *const none[] = {NULL};
    struct secrets_op *op;
    char err[300];
    bool changed = false;

    if (r->body_len > 0) {
        json_t *body = cpreq_json_body(r, false);
        struct jv_err e;
        if (!body)
            return;
        if (!jv_only_keys(body, "", none, &e)) {
            json_decref(body);
            cpreq_reply_jv(r, &e);
            return;
        }
        json_decref(body);
    }
    /* The operator has just edited the file: don't wait for the watch. */
    if (!envelope_reload(r->cp->env, &changed, err, sizeof err)) {
        log_write(LOG_ERROR, r->id, "event=kek_file_reload_failed error=\"%s\"", err);
        cpreq_reply_error(r, 409, "kek_file_invalid", NULL, "%s (nothing was re-wrapped)", err);
        return;
    }
    op = xcalloc(1, sizeof *op);
    op->r = r;
    op->body = json_object();
    envelope_pass_start(r->cp->global, r->cp->env, secrets_sets, SECRETS_NSETS, NULL, 0, secrets_on_rotated, op);
}

void cp_secrets_handle(struct cp_req *r, char **segs, int nsegs)
{
    if (nsegs == 1 && strcmp(segs[0], "kek") == 0) {
        if (r->method != EVHTTP_REQ_GET) {
            cpreq_add_header(r, "Allow", "GET");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use GET on /v1/admin/kek");
        } else if (cpreq_check_query(r, NULL)) {
            struct secrets_op *op = xcalloc(1, sizeof *op);
            op->r = r;
            op->body = json_object();
            secrets_count_and_reply(op);
        }
        return;
    }
    if (nsegs == 2 && strcmp(segs[0], "kek") == 0 && strcmp(segs[1], "rotate") == 0) {
        if (r->method != EVHTTP_REQ_POST) {
            cpreq_add_header(r, "Allow", "POST");
            cpreq_reply_error(r, 405, "method_not_allowed", NULL, "use POST to rotate the KEK");
        } else if (cpreq_check_query(r, NULL)) {
            secrets_rotate(r);
        }
        return;
    }
    cpreq_reply_error(r, 404, "route_not_found", NULL, "no such route");
}
