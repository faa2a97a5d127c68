/*
 * idempotency.c - Idempotency-Key: claiming a key, replaying or refusing,
 * storing the answer sealed, and purging expired keys (see idempotency.h).
 *
 * Sealing: the answer ({"location","body"}) can be longer than what
 * envelope_seal takes (ENVELOPE_MAX_PLAINTEXT), so it is encrypted here
 * with AES-256-GCM under a fresh 32-byte data key, and that key is sealed
 * with the envelope (the current KEK) under the AAD
 * "idempotency:<caller>:<sha256 hex of the key>", which the GCM step uses
 * too: a row copied to another caller or key does not open.
 */
#include "idempotency.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sas.h"
#include "util.h"

#define IDEM_DEK_LEN 32
#define IDEM_NONCE_LEN 12
#define IDEM_TAG_LEN 16

struct idem_claim {
    char caller[64];               /* "operator" or "key:<id>" */
    char key[IDEM_KEY_MAX + 1];
    char key_sha[2 * SHA256_DIGEST_LENGTH + 1];
    char fingerprint[2 * SHA256_DIGEST_LENGTH + 1];
    char claim[33];                /* this request's token on the row */
    char aad[ENVELOPE_AAD_MAX];
};

struct idempotency {
    struct cp *cp;
    struct event *purge;
    bool purging;
};

void idempotency_claim_free(struct idem_claim *c)
{
    free(c);
}

static void idem_hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* ---- sealing the stored answer ---- */

static bool idem_gcm(bool enc, const unsigned char *key, const unsigned char *nonce, const char *aad,
                     const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int outl = 0, fin = 0;
    bool ok = false;
    if (!ctx || len > (size_t)INT32_MAX)
        goto out;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, IDEM_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc ? 1 : 0) != 1 ||
        EVP_CipherUpdate(ctx, NULL, &outl, (const unsigned char *)aad, (int)strlen(aad)) != 1)
        goto out;
    if (len > 0 && EVP_CipherUpdate(ctx, out, &outl, in, (int)len) != 1)
        goto out;
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, IDEM_TAG_LEN, tag) != 1)
        goto out;
    if (EVP_CipherFinal_ex(ctx, out + outl, &fin) != 1)
        goto out;
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, IDEM_TAG_LEN, tag) != 1)
        goto out;
    ok = true;
out:
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

/* Seal text: *key_out the data key under the KEK, *ct_out base64 of nonce|ct|tag (caller frees both). */
static bool idem_seal(struct cp *cp, const char *aad, const char *text, char **key_out, char **ct_out)
{
    size_t len = strlen(text), blen = IDEM_NONCE_LEN + len + IDEM_TAG_LEN, b64len = 4 * ((blen + 2) / 3) + 1;
    unsigned char dek[IDEM_DEK_LEN], *blob = xmalloc(blen);
    bool ok = false;

    *key_out = *ct_out = NULL;
    if (!util_random_bytes(dek, sizeof dek) || !util_random_bytes(blob, IDEM_NONCE_LEN))
        goto out;
    if (!idem_gcm(true, dek, blob, aad, (const unsigned char *)text, len, blob + IDEM_NONCE_LEN,
                  blob + IDEM_NONCE_LEN + len))
        goto out;
    if (!(*key_out = envelope_seal(cp->env, dek, sizeof dek, aad)))
        goto out;
    *ct_out = xmalloc(b64len);
    sas_b64_encode(blob, blen, *ct_out, b64len);
    ok = true;
out:
    OPENSSL_cleanse(dek, sizeof dek);
    free(blob);
    return ok;
}

/* The stored answer's text (caller frees), or NULL when it does not open. */
static char *idem_open(struct cp *cp, const char *aad, const char *key_stored, const char *ct_b64)
{
    size_t cap = strlen(ct_b64), dlen = 0;
    unsigned char dek[IDEM_DEK_LEN + 1], *blob = xmalloc(cap + 1);
    char *text = NULL;
    int n = sas_b64_decode(ct_b64, blob, cap + 1);
    enum envelope_status st = envelope_open(cp->env, key_stored, aad, dek, sizeof dek, &dlen);

    if (st != ENVELOPE_OK || dlen != IDEM_DEK_LEN || n < IDEM_NONCE_LEN + IDEM_TAG_LEN) {
        log_warn("event=idempotency_answer_unopenable envelope=%s", envelope_status_word(st));
        goto out;
    }
    text = xmalloc((size_t)n - IDEM_NONCE_LEN - IDEM_TAG_LEN + 1);
    if (!idem_gcm(false, dek, blob, aad, blob + IDEM_NONCE_LEN, (size_t)n - IDEM_NONCE_LEN - IDEM_TAG_LEN,
                  (unsigned char *)text, blob + n - IDEM_TAG_LEN)) {
        log_warn("event=idempotency_answer_unopenable envelope=ok gcm=failed");
        free(text);
        text = NULL;
        goto out;
    }
    text[n - IDEM_NONCE_LEN - IDEM_TAG_LEN] = '\0';
out:
    OPENSSL_cleanse(dek, sizeof dek);
    free(blob);
    return text;
}

/* ---- claiming ---- */

struct idem_begin {
    struct cp_req *r;
    struct idem_claim *c;
    void (*next)(struct cp_req *r);
};

static bool idem_valid_key(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return false;
    return true;
}

static void idem_in_progress(struct cp_req *r)
{
    cpreq_add_header(r, "Retry-After", "1");
    cpreq_reply_error(r, 409, "idempotency_in_progress", "Idempotency-Key",
                      "a request with this Idempotency-Key is still being processed; retry later");
}

static void idem_replay(struct idem_begin *b, int status, const char *text)
{
    struct cp_req *r = b->r;
    json_t *a = json_loads(text, 0, NULL);
    const char *loc = json_string_value(json_object_get(a, "location"));
    const char *body = json_string_value(json_object_get(a, "body"));

    if (!a || !body) {
        log_write(LOG_ERROR, r->id, "event=idempotency_answer_malformed");
        cpreq_reply_error(r, 500, "internal", NULL, "internal error (request %s)", r->id);
        json_decref(a);
        return;
    }
    r->idem_replayed = true;
    cpreq_add_header(r, "Idempotent-Replayed", "true");
    cpreq_add_header(r, "Cache-Control", "no-store");   /* it may hold a secret shown once */
    if (loc && *loc)
        cpreq_add_header(r, "Location", loc);
    log_write(LOG_INFO, r->id, "event=idempotent_replay status=%d", status);
    if (!*body) {
        cpreq_reply_empty(r, status);
    } else {
        size_t n = strlen(body);
        if (body[n - 1] == '\n')
            n--;   /* cpreq_reply_text adds it back */
        cpreq_reply_text(r, status, body, n);
    }
    json_decref(a);
}

static void idem_on_existing(const struct pgq_result *q, void *arg)
{
    struct idem_begin *b = arg;
    struct cp_req *r = b->r;
    char *text;

    if (q->status != PGQ_OK) {
        cpreq_reply_db_unavailable(r, q);
    } else if (PQntuples(q->res) == 0) {
        idem_in_progress(r);   /* released or expired between our two statements: retrying claims it */
    } else if (strcmp(PQgetvalue(q->res, 0, 0), b->c->fingerprint) != 0) {
        cpreq_reply_error(r, 422, "idempotency_mismatch", "Idempotency-Key",
                          "this Idempotency-Key was used for a different request (method, path or body); "
                          "use a new key for a new request");
    } else if (strcmp(PQgetvalue(q->res, 0, 1), "done") != 0) {
        idem_in_progress(r);
    } else if (PQgetisnull(q->res, 0, 3) || PQgetisnull(q->res, 0, 4) ||
               !(text = idem_open(r->cp, b->c->aad, PQgetvalue(q->res, 0, 3), PQgetvalue(q->res, 0, 4)))) {
        log_write(LOG_ERROR, r->id, "event=idempotency_answer_unopenable note=\"the stored answer does not open "
                                    "(its KEK was dropped?)\"");
        cpreq_reply_error(r, 500, "internal", NULL, "the stored answer for this Idempotency-Key cannot be read (request %s)",
                          r->id);
    } else {
        idem_replay(b, atoi(PQgetvalue(q->res, 0, 2)), text);
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    free(b->c);
    free(b);
}

static void idem_on_claim(const struct pgq_result *q, void *arg)
{
    static const char sql[] =
        "SELECT fingerprint, state, status, answer_key, answer FROM idempotency_keys"
        " WHERE caller = $1 AND idem_key = $2";
    struct idem_begin *b = arg;
    struct cp_req *r = b->r;
    const char *values[2] = {b->c->caller, b->c->key};

    if (q->status != PGQ_OK) {
        cpreq_reply_db_unavailable(r, q);
        free(b->c);
        free(b);
        return;
    }
    if (PQntuples(q->res) == 1) {   /* claimed: run the request */
        r->idem = b->c;
        b->next(r);
        free(b);
        return;
    }
    pgpool_query(r->cp->global, sql, 2, values, idem_on_existing, b);
}

void idempotency_begin(struct cp_req *r, void (*next)(struct cp_req *r))
{
    static const char sql[] =
        "INSERT INTO idempotency_keys AS k (caller, idem_key, fingerprint, claim, expires_at)"
        " VALUES ($1, $2, $3, $4, now() + make_interval(hours => $5::int))"
        " ON CONFLICT (caller, idem_key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, claim = EXCLUDED.claim,"
        "   state = 'pending', status = NULL, answer_key = NULL, answer = NULL, created_at = now(),"
        "   expires_at = EXCLUDED.expires_at"
        " WHERE k.expires_at < now()"
        "    OR (k.state = 'pending' AND k.created_at < now() - make_interval(secs => $6::int))"
        " RETURNING 1";
    const char *key = cpreq_header(r, "Idempotency-Key");
    const char *uri = evhttp_request_get_uri(r->ev);
    const char *method = cpreq_method_name(r->method);
    unsigned char d[SHA256_DIGEST_LENGTH];
    char ttl[8], stale[12];
    const char *values[6];
    struct idem_begin *b;
    struct idem_claim *c;

    if (r->method != EVHTTP_REQ_POST || r->who.kind == PRINCIPAL_NONE || !key) {
        next(r);
        return;
    }
    if (!idem_valid_key(key)) {
        cpreq_reply_error(r, 400, "invalid_value", "Idempotency-Key",
                          "Idempotency-Key must be 1 to %d visible ASCII characters", IDEM_KEY_MAX);
        return;
    }
    c = xcalloc(1, sizeof *c);
    if (r->who.kind == PRINCIPAL_OPERATOR)
        snprintf(c->caller, sizeof c->caller, "operator");
    else
        snprintf(c->caller, sizeof c->caller, "key:%s", r->who.key_id);
    snprintf(c->key, sizeof c->key, "%s", key);
    SHA256((const unsigned char *)key, strlen(key), d);
    idem_hex(d, sizeof d, c->key_sha);
    snprintf(c->aad, sizeof c->aad, "idempotency:%s:%s", c->caller, c->key_sha);
    /* the request: method, path and query, body (NUL-separated so fields cannot run into each other) */
    {
        size_t ml = strlen(method) + 1, ul = (uri ? strlen(uri) : 0) + 1;
        unsigned char *buf = xmalloc(ml + ul + r->body_len + 1);
        memcpy(buf, method, ml);
        memcpy(buf + ml, uri ? uri : "", ul);
        if (r->body_len)
            memcpy(buf + ml + ul, r->body, r->body_len);
        SHA256(buf, ml + ul + r->body_len, d);
        free(buf);
    }
    idem_hex(d, sizeof d, c->fingerprint);
    util_random_hex(c->claim, 16);

    b = xcalloc(1, sizeof *b);
    b->r = r;
    b->c = c;
    b->next = next;
    snprintf(ttl, sizeof ttl, "%d", IDEM_TTL_HOURS);
    snprintf(stale, sizeof stale, "%d", IDEM_PENDING_STALE_S);
    values[0] = c->caller;
    values[1] = c->key;
    values[2] = c->fingerprint;
    values[3] = c->claim;
    values[4] = ttl;
    values[5] = stale;
    pgpool_query(r->cp->global, sql, 6, values, idem_on_claim, b);
}

/* ---- completing ---- */

bool idempotency_wanted(const struct cp_req *r, int status)
{
    (void)status;
    return r->idem != NULL;
}

struct idem_done {
    struct cp_req *r;
    void (*done)(struct cp_req *r);
    bool stored;
};

static void idem_on_completed(const struct pgq_result *q, void *arg)
{
    struct idem_done *x = arg;
    if (q->status != PGQ_OK)
        log_write(LOG_ERROR, x->r->id, "event=idempotency_write_failed action=%s error=\"%.200s\"",
                  x->stored ? "store" : "release", q->message ? q->message : "");
    else if (PQcmdTuples((PGresult *)q->res)[0] == '0')
        log_write(LOG_WARN, x->r->id, "event=idempotency_claim_lost note=\"another request took the key over\"");
    x->done(x->r);
    free(x);
}

void idempotency_complete(struct cp_req *r, int status, const char *body, size_t len,
                          void (*done)(struct cp_req *r))
{
    static const char store_sql[] =
        "UPDATE idempotency_keys SET state = 'done', status = $4::int, answer_key = $5, answer = $6"
        " WHERE caller = $1 AND idem_key = $2 AND claim = $3";
    static const char release_sql[] =
        "DELETE FROM idempotency_keys WHERE caller = $1 AND idem_key = $2 AND claim = $3";
    struct idem_claim *c = r->idem;
    struct idem_done *x = xcalloc(1, sizeof *x);
    const char *values[6] = {c->caller, c->key, c->claim, NULL, NULL, NULL};
    const char *loc = evhttp_find_header(evhttp_request_get_output_headers(r->ev), "Location");
    char st[12], *key_sealed = NULL, *ct = NULL, *text = NULL;
    json_t *a;

    x->r = r;
    x->done = done;
    if (status >= 200 && status < 300) {
        a = json_pack("{s:s, s:s%}", "location", loc ? loc : "", "body", len ? body : "", len);
        text = a ? json_dumps(a, JSON_COMPACT) : NULL;
        json_decref(a);
        if (text && idem_seal(r->cp, c->aad, text, &key_sealed, &ct)) {
            x->stored = true;
            snprintf(st, sizeof st, "%d", status);
            values[3] = st;
            values[4] = key_sealed;
            values[5] = ct;
        } else {
            log_write(LOG_ERROR, r->id, "event=idempotency_seal_failed note=\"the key is released; the answer "
                                        "is not stored\"");
        }
        if (text) {
            OPENSSL_cleanse(text, strlen(text));
            free(text);
        }
    }
    if (x->stored)
        pgpool_query(r->cp->global, store_sql, 6, values, idem_on_completed, x);
    else
        pgpool_query(r->cp->global, release_sql, 3, values, idem_on_completed, x);
    free(key_sealed);
    free(ct);
}

/* ---- purge ---- */

static void idem_arm(struct idempotency *d, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(d->purge, &tv);
}

static void idem_on_purged(const struct pgq_result *q, void *arg)
{
    struct idempotency *d = arg;
    d->purging = false;
    if (q->status != PGQ_OK)
        log_warn("event=idempotency_purge_failed error=\"%.200s\"", q->message ? q->message : "");
    else if (PQcmdTuples((PGresult *)q->res)[0] != '0')
        log_info("event=idempotency_purged rows=%s", PQcmdTuples((PGresult *)q->res));
}

static void idem_on_purge_timer(evutil_socket_t fd, short what, void *arg)
{
    static const char sql[] = "DELETE FROM idempotency_keys WHERE expires_at < now()";
    struct idempotency *d = arg;
    (void)fd; (void)what;
    if (!d->purging && !d->cp->shutting_down) {
        d->purging = true;
        pgpool_query(d->cp->global, sql, 0, NULL, idem_on_purged, d);
    }
    idem_arm(d, IDEM_PURGE_MS);
}

struct idempotency *idempotency_new(struct cp *cp)
{
    struct idempotency *d = xcalloc(1, sizeof *d);
    d->cp = cp;
    if (!(d->purge = event_new(cp->base, -1, 0, idem_on_purge_timer, d))) {
        log_error("event=event_new_failed");
        abort();
    }
    idem_arm(d, 30 * 1000);   /* first pass soon after start, then every IDEM_PURGE_MS */
    return d;
}

void idempotency_free(struct idempotency *d)
{
    if (!d)
        return;
    event_free(d->purge);
    free(d);
}
