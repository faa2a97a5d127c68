/*
 * dps_secrets.c - sealing and opening the stamp's enrollment keys, the
 * KEK file watch and the agent's re-wrap pass (see dps_secrets.h).
 */
#include "dps_secrets.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dps_server.h"
#include "envelope_db.h"
#include "log.h"

#define DSEC_WATCH_MS 2000
#define DSEC_RETRY_MS 5000

struct dps_secrets {
    struct dps_server *srv;
    struct event *watch;
    struct event *retry;
    struct envelope_pass *pass;   /* in flight, or NULL */
    bool again;               /* the current KEK changed during it: run another */
    char pass_kek[ENVELOPE_KEK_ID_MAX + 1];   /* the current KEK when the last pass started */
    char last_error[300];
};

static const struct envelope_set *const dsec_sets[] = {&envelope_set_stamp_keys};

struct envelope *dps_secrets_load(const struct agent_config *cfg, char *err, size_t errlen)
{
    if (!cfg->kek_file) {
        snprintf(err, errlen, "kekFile is required with a provisioning section: the KEK file that seals the "
                              "enrollment keys at rest (make one with stampcp-kek new --file PATH)");
        return NULL;
    }
    return envelope_load(cfg->kek_file, err, errlen);
}

/* ---- documents ---- */

static json_t *dsec_keys_of(json_t *att_or_doc)
{
    json_t *att = json_object_get(att_or_doc, "attestation");
    if (!att)
        att = att_or_doc;
    return json_object_get(att, "symmetricKey");
}

static bool dsec_apply(struct envelope *env, const char *dps_id, const char *kind, const char *enrollment_id,
                       json_t *att_or_doc, bool seal)
{
    static const char *const slots[] = {"primaryKey", "secondaryKey"};
    json_t *sk = dsec_keys_of(att_or_doc);
    char aad[ENVELOPE_AAD_MAX];
    if (!json_is_object(sk))
        return true;
    envelope_aad_stamp_key(aad, sizeof aad, dps_id, kind, enrollment_id);
    for (size_t i = 0; i < ARRAY_LEN(slots); i++) {
        const char *v = json_string_value(json_object_get(sk, slots[i]));
        if (!v)
            continue;
        if (seal) {
            char *sealed;
            /* documents come from dsv_normalize (base64 keys): a sealed value here
             * is a bug or a copied ciphertext, never stored as if it were ours */
            if (envelope_is_sealed(v) || !(sealed = envelope_seal_text(env, v, aad)))
                return false;
            json_object_set_new(sk, slots[i], json_string(sealed));
            free(sealed);
        } else {
            char text[ENVELOPE_MAX_PLAINTEXT + 1];
            enum envelope_status st = envelope_open_text(env, v, aad, text, sizeof text);
            if (st != ENVELOPE_OK) {
                log_error("event=enrollment_key_unreadable dps=%s kind=%s enrollment=%s slot=%s status=%s", dps_id,
                          kind, enrollment_id, slots[i], envelope_status_word(st));
                return false;
            }
            json_object_set_new(sk, slots[i], json_string(text));
            OPENSSL_cleanse(text, sizeof text);
        }
    }
    return true;
}

bool dps_secrets_seal(struct envelope *env, const char *dps_id, const char *kind, const char *enrollment_id,
                      json_t *att_or_doc)
{
    return dsec_apply(env, dps_id, kind, enrollment_id, att_or_doc, true);
}

bool dps_secrets_open(struct envelope *env, const char *dps_id, const char *kind, const char *enrollment_id,
                      json_t *att_or_doc)
{
    return dsec_apply(env, dps_id, kind, enrollment_id, att_or_doc, false);
}

/* ---- the pass ---- */

static void dsec_arm(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ev, &tv);
}

static void dsec_start_pass(struct dps_secrets *ds);

static void dsec_on_pass(const struct envelope_pass_result *res, void *arg)
{
    struct dps_secrets *ds = arg;
    ds->pass = NULL;
    if (res->db_failed) {
        log_warn("event=secrets_pass_failed error=\"%s\" retry_ms=%d", res->error, DSEC_RETRY_MS);
        dsec_arm(ds->retry, DSEC_RETRY_MS);
        return;
    }
    log_write(res->failed ? LOG_ERROR : LOG_INFO, NULL,
              "event=secrets_pass kek=%s sealed=%d rewrapped=%d failed=%d raced=%d%s%s%s",
              envelope_current_id(ds->srv->env), res->sealed, res->rewrapped, res->failed, res->raced,
              res->failed ? " error=\"" : "", res->failed ? res->error : "", res->failed ? "\"" : "");
    if (ds->again) {
        ds->again = false;
        dsec_start_pass(ds);
    }
}

static void dsec_start_pass(struct dps_secrets *ds)
{
    const struct agent_provisioning_config *pc = &ds->srv->cfg->prov;
    const char *scope[AGENT_MAX_DPS];
    int n = 0;
    if (ds->pass) {
        ds->again = true;
        return;
    }
    snprintf(ds->pass_kek, sizeof ds->pass_kek, "%s", envelope_current_id(ds->srv->env));
    for (size_t i = 0; i < pc->n_dps && n < AGENT_MAX_DPS; i++)
        scope[n++] = pc->dps[i].id;
    ds->pass = envelope_pass_start(ds->srv->pool, ds->srv->env, dsec_sets, 1, scope, n, dsec_on_pass, ds);
}

static void dsec_on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    dsec_start_pass(arg);
}

static void dsec_on_watch(evutil_socket_t fd, short what, void *arg)
{
    struct dps_secrets *ds = arg;
    struct envelope *env = ds->srv->env;
    char err[300];
    bool changed = false;
    (void)fd; (void)what;
    if (!envelope_reload_if_changed(env, &changed, err, sizeof err)) {
        if (strcmp(err, ds->last_error) != 0)
            log_error("event=kek_file_reload_failed error=\"%s\" note=\"keeping the keys loaded before\"", err);
        snprintf(ds->last_error, sizeof ds->last_error, "%s", err);
    } else {
        ds->last_error[0] = '\0';
        if (changed)
            log_info("event=kek_file_reloaded current=%s keys=%d", envelope_current_id(env), envelope_kek_count(env));
    }
    /* A new current KEK (picked up here, or lazily by a read): re-wrap our rows. */
    if (strcmp(ds->pass_kek, envelope_current_id(env)) != 0)
        dsec_start_pass(ds);
    dsec_arm(ds->watch, DSEC_WATCH_MS);
}

struct dps_secrets *dps_secrets_new(struct dps_server *s)
{
    struct dps_secrets *ds = xcalloc(1, sizeof *ds);
    ds->srv = s;
    ds->watch = event_new(s->base, -1, 0, dsec_on_watch, ds);
    ds->retry = event_new(s->base, -1, 0, dsec_on_retry, ds);
    if (!ds->watch || !ds->retry) {
        log_error("event=event_new_failed");
        abort();
    }
    dsec_arm(ds->watch, DSEC_WATCH_MS);
    dsec_start_pass(ds);
    return ds;
}

void dps_secrets_free(struct dps_secrets *ds)
{
    if (!ds)
        return;
    envelope_pass_cancel(ds->pass);   /* the pool is freed next */
    event_free(ds->watch);
    event_free(ds->retry);
    free(ds);
}
