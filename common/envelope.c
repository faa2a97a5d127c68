/*
 * envelope.c - the KEK file, AES-256-GCM sealing and opening of secrets at
 * rest, and DEK re-wrapping (see envelope.h for the stored form).
 */
#include "envelope.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sas.h"

#define ENV_KEY_LEN   32
#define ENV_NONCE_LEN 12
#define ENV_TAG_LEN   16
#define ENV_WRAP_LEN  (ENV_NONCE_LEN + ENV_KEY_LEN + ENV_TAG_LEN)
#define ENV_OVERHEAD  (ENV_WRAP_LEN + ENV_NONCE_LEN + ENV_TAG_LEN)
#define ENV_FILE_MAX  65536

struct envelope_kek {
    char id[ENVELOPE_KEK_ID_MAX + 1];
    unsigned char key[ENV_KEY_LEN];
};

struct envelope {
    char *path;                 /* NULL: built from text, never reloaded */
    struct envelope_kek keks[ENVELOPE_MAX_KEKS];
    int n;
    int current;
    /* the file as last read, for envelope_reload_if_changed */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    int64_t last_lazy_reload_ms;
};

const char *envelope_status_word(enum envelope_status st)
{
    switch (st) {
    case ENVELOPE_OK: return "ok";
    case ENVELOPE_NOT_SEALED: return "not_sealed";
    case ENVELOPE_MALFORMED: return "malformed";
    case ENVELOPE_UNKNOWN_KEK: return "unknown_kek";
    case ENVELOPE_AUTH_FAILED: return "auth_failed";
    case ENVELOPE_TOO_LARGE: return "too_large";
    case ENVELOPE_ERROR: break;
    }
    return "error";
}

bool envelope_valid_kek_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > ENVELOPE_KEK_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* ---- the KEK file ---- */

/* Parse the file's JSON into keks/n/current; false with err (no key material in it). */
static bool env_parse(const char *text, size_t len, const char *what, struct envelope_kek *keks, int *n,
                      int *current, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je), *keys, *v;
    const char *cur, *k;
    bool ok = false;

    *n = 0;
    *current = -1;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: not a JSON object (line %d: %s)", what, root ? 0 : je.line,
                 root ? "" : je.text);
        goto out;
    }
    json_object_foreach(root, k, v)
        if (strcmp(k, "current") != 0 && strcmp(k, "keys") != 0) {
            snprintf(err, errlen, "%s: unknown member '%.40s' (only current and keys)", what, k);
            goto out;
        }
    cur = json_string_value(json_object_get(root, "current"));
    keys = json_object_get(root, "keys");
    if (!cur) {
        snprintf(err, errlen, "%s: 'current' must name the KEK id that wraps new keys", what);
        goto out;
    }
    if (!json_is_object(keys) || json_object_size(keys) == 0 || json_object_size(keys) > ENVELOPE_MAX_KEKS) {
        snprintf(err, errlen, "%s: 'keys' must map 1 to %d KEK ids to base64 keys", what, ENVELOPE_MAX_KEKS);
        goto out;
    }
    json_object_foreach(keys, k, v) {
        unsigned char raw[64];
        int klen;
        if (!envelope_valid_kek_id(k)) {
            snprintf(err, errlen, "%s: KEK id '%.40s' must be 1-%d of [A-Za-z0-9._-]", what, k,
                     ENVELOPE_KEK_ID_MAX);
            goto out;
        }
        if (!json_is_string(v) || (klen = sas_b64_decode(json_string_value(v), raw, sizeof raw)) != ENV_KEY_LEN) {
            OPENSSL_cleanse(raw, sizeof raw);
            snprintf(err, errlen, "%s: key '%s' must be base64 of exactly %d bytes", what, k, ENV_KEY_LEN);
            goto out;
        }
        snprintf(keks[*n].id, sizeof keks[*n].id, "%s", k);
        memcpy(keks[*n].key, raw, ENV_KEY_LEN);
        OPENSSL_cleanse(raw, sizeof raw);
        if (strcmp(k, cur) == 0)
            *current = *n;
        (*n)++;
    }
    if (*current < 0) {
        snprintf(err, errlen, "%s: current KEK '%.40s' is not in 'keys'", what, cur);
        goto out;
    }
    ok = true;
out:
    if (!ok) {
        OPENSSL_cleanse(keks, sizeof(struct envelope_kek) * ENVELOPE_MAX_KEKS);
        *n = 0;
    }
    json_decref(root);
    return ok;
}

/* Read and check the file; fills keks and the file identity in *st. */
static bool env_read_file(const char *path, struct envelope_kek *keks, int *n, int *current, struct stat *st,
                          char *err, size_t errlen)
{
    char *buf = NULL;
    ssize_t got;
    size_t len = 0;
    bool ok = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        snprintf(err, errlen, "KEK file %s: %s", path, strerror(errno));
        return false;
    }
    if (fstat(fd, st) != 0) {
        snprintf(err, errlen, "KEK file %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st->st_mode)) {
        snprintf(err, errlen, "KEK file %s is not a regular file", path);
        goto out;
    }
    if (st->st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, errlen, "KEK file %s has mode %04o: group and others must have no access (chmod 600)",
                 path, (unsigned)(st->st_mode & 07777));
        goto out;
    }
    if (st->st_size <= 0 || st->st_size > ENV_FILE_MAX) {
        snprintf(err, errlen, "KEK file %s is empty or larger than %d bytes", path, ENV_FILE_MAX);
        goto out;
    }
    buf = xmalloc((size_t)st->st_size + 1);
    while (len < (size_t)st->st_size && (got = read(fd, buf + len, (size_t)st->st_size - len)) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "KEK file %s: %s", path, strerror(errno));
            goto out;
        }
        len += (size_t)got;
    }
    {
        char what[300];
        snprintf(what, sizeof what, "KEK file %s", path);
        ok = env_parse(buf, len, what, keks, n, current, err, errlen);
    }
out:
    if (buf) {
        OPENSSL_cleanse(buf, (size_t)st->st_size + 1);
        free(buf);
    }
    close(fd);
    return ok;
}

static void env_take(struct envelope *env, const struct envelope_kek *keks, int n, int current, bool *changed)
{
    bool same = n == env->n && current >= 0 && env->current >= 0 &&
                strcmp(keks[current].id, env->keks[env->current].id) == 0;
    for (int i = 0; same && i < n; i++)
        same = strcmp(keks[i].id, env->keks[i].id) == 0 &&
               CRYPTO_memcmp(keks[i].key, env->keks[i].key, ENV_KEY_LEN) == 0;
    OPENSSL_cleanse(env->keks, sizeof env->keks);
    memcpy(env->keks, keks, sizeof(struct envelope_kek) * (size_t)n);
    env->n = n;
    env->current = current;
    if (changed)
        *changed = !same;
}

struct envelope *envelope_load(const char *path, char *err, size_t errlen)
{
    struct envelope *env = xcalloc(1, sizeof *env);
    env->path = xstrdup(path);
    env->current = -1;
    if (!envelope_reload(env, NULL, err, errlen)) {
        envelope_free(env);
        return NULL;
    }
    return env;
}

struct envelope *envelope_from_text(const char *json_text, char *err, size_t errlen)
{
    struct envelope_kek keks[ENVELOPE_MAX_KEKS];
    struct envelope *env;
    int n, current;
    if (!env_parse(json_text, strlen(json_text), "KEK text", keks, &n, &current, err, errlen))
        return NULL;
    env = xcalloc(1, sizeof *env);
    env->current = -1;
    env_take(env, keks, n, current, NULL);
    OPENSSL_cleanse(keks, sizeof keks);
    return env;
}

void envelope_free(struct envelope *env)
{
    if (!env)
        return;
    OPENSSL_cleanse(env->keks, sizeof env->keks);
    free(env->path);
    free(env);
}

bool envelope_reload(struct envelope *env, bool *changed, char *err, size_t errlen)
{
    struct envelope_kek keks[ENVELOPE_MAX_KEKS];
    struct stat st;
    int n, current;
    if (changed)
        *changed = false;
    if (!env->path) {
        snprintf(err, errlen, "this keyring has no file");
        return false;
    }
    if (!env_read_file(env->path, keks, &n, &current, &st, err, errlen))
        return false;
    env_take(env, keks, n, current, changed);
    OPENSSL_cleanse(keks, sizeof keks);
    env->dev = st.st_dev;
    env->ino = st.st_ino;
    env->size = st.st_size;
    env->mtime = st.st_mtim;
    return true;
}

bool envelope_reload_if_changed(struct envelope *env, bool *changed, char *err, size_t errlen)
{
    struct stat st;
    if (changed)
        *changed = false;
    if (!env->path)
        return true;
    if (stat(env->path, &st) != 0) {
        snprintf(err, errlen, "KEK file %s: %s", env->path, strerror(errno));
        return false;
    }
    if (st.st_dev == env->dev && st.st_ino == env->ino && st.st_size == env->size &&
        st.st_mtim.tv_sec == env->mtime.tv_sec && st.st_mtim.tv_nsec == env->mtime.tv_nsec)
        return true;
    return envelope_reload(env, changed, err, errlen);
}

const char *envelope_current_id(const struct envelope *env)
{
    return env->keks[env->current].id;
}

int envelope_kek_count(const struct envelope *env)
{
    return env->n;
}

const char *envelope_kek_id(const struct envelope *env, int i)
{
    return i >= 0 && i < env->n ? env->keks[i].id : NULL;
}

static const struct envelope_kek *env_find(const struct envelope *env, const char *id)
{
    for (int i = 0; i < env->n; i++)
        if (strcmp(env->keks[i].id, id) == 0)
            return &env->keks[i];
    return NULL;
}

bool envelope_has_kek(const struct envelope *env, const char *id)
{
    return env_find(env, id) != NULL;
}

/* ---- AES-256-GCM ---- */

/* The cipher, fetched once: an implicit fetch per call costs more than the
 * encryption of a key. Never freed (one per process). */
static const EVP_CIPHER *env_cipher(void)
{
    static EVP_CIPHER *c;
    if (!c)
        c = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    return c;
}

static bool env_gcm(bool enc, const unsigned char *key, const unsigned char *nonce, const char *aad1,
                    const char *aad2, const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *cipher = env_cipher();
    int outl = 0, fin = 0;
    bool ok = false;
    if (!ctx || !cipher) {
        EVP_CIPHER_CTX_free(ctx);
        return false;
    }
    if (EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, enc ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, ENV_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc ? 1 : 0) != 1 ||
        EVP_CipherUpdate(ctx, NULL, &outl, (const unsigned char *)aad1, (int)strlen(aad1)) != 1 ||
        EVP_CipherUpdate(ctx, NULL, &outl, (const unsigned char *)aad2, (int)strlen(aad2)) != 1)
        goto out;
    if (len > 0 && EVP_CipherUpdate(ctx, out, &outl, in, (int)len) != 1)
        goto out;
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ENV_TAG_LEN, tag) != 1)
        goto out;
    if (EVP_CipherFinal_ex(ctx, out + outl, &fin) != 1)
        goto out;
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ENV_TAG_LEN, tag) != 1)
        goto out;
    ok = true;
out:
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

/* AAD prefix of the DEK wrap: binds the KEK id and the secret's AAD. */
static void env_wrap_aad(char *out, size_t outlen, const char *kek_id)
{
    snprintf(out, outlen, "stampcp-kek-v1:%s:", kek_id);
}

#define ENV_DATA_AAD "stampcp-dek-v1:"

/* Wrap dek under kek into w (ENV_WRAP_LEN bytes). */
static bool env_wrap(const struct envelope_kek *kek, const unsigned char *dek, const char *aad, unsigned char *w)
{
    char pre[64];
    env_wrap_aad(pre, sizeof pre, kek->id);
    if (!util_random_bytes(w, ENV_NONCE_LEN))
        return false;
    return env_gcm(true, kek->key, w, pre, aad, dek, ENV_KEY_LEN, w + ENV_NONCE_LEN,
                   w + ENV_NONCE_LEN + ENV_KEY_LEN);
}

static bool env_unwrap(const struct envelope_kek *kek, const unsigned char *w, const char *aad, unsigned char *dek)
{
    char pre[64];
    unsigned char tag[ENV_TAG_LEN];
    env_wrap_aad(pre, sizeof pre, kek->id);
    memcpy(tag, w + ENV_NONCE_LEN + ENV_KEY_LEN, ENV_TAG_LEN);
    return env_gcm(false, kek->key, w, pre, aad, w + ENV_NONCE_LEN, ENV_KEY_LEN, dek, tag);
}

/* "enc:v1:" id ":" base64(blob) */
static char *env_format(const char *kek_id, const unsigned char *blob, size_t len)
{
    size_t b64len = 4 * ((len + 2) / 3) + 1;
    size_t pre = strlen(ENVELOPE_PREFIX) + strlen(kek_id) + 1;
    char *s = xmalloc(pre + b64len);
    snprintf(s, pre + 1, "%s%s:", ENVELOPE_PREFIX, kek_id);
    sas_b64_encode(blob, len, s + pre, b64len);
    return s;
}

char *envelope_seal(const struct envelope *env, const void *plaintext, size_t len, const char *aad)
{
    const struct envelope_kek *kek = &env->keks[env->current];
    unsigned char dek[ENV_KEY_LEN];
    unsigned char blob[ENV_OVERHEAD + ENVELOPE_MAX_PLAINTEXT];
    unsigned char *d = blob + ENV_WRAP_LEN;
    char *s = NULL;

    if (len > ENVELOPE_MAX_PLAINTEXT)
        return NULL;
    if (!util_random_bytes(dek, sizeof dek) || !util_random_bytes(d, ENV_NONCE_LEN))
        goto out;
    if (!env_wrap(kek, dek, aad, blob))
        goto out;
    if (!env_gcm(true, dek, d, ENV_DATA_AAD, aad, plaintext, len, d + ENV_NONCE_LEN, d + ENV_NONCE_LEN + len))
        goto out;
    s = env_format(kek->id, blob, ENV_OVERHEAD + len);
out:
    OPENSSL_cleanse(dek, sizeof dek);
    return s;
}

char *envelope_seal_text(const struct envelope *env, const char *text, const char *aad)
{
    return envelope_seal(env, text, strlen(text), aad);
}

bool envelope_is_sealed(const char *value)
{
    return value && strncmp(value, "enc:", 4) == 0;
}

/* Split a stored value: the KEK id and the decoded blob. */
static enum envelope_status env_split(const char *stored, char *id, size_t idlen, unsigned char *blob,
                                      size_t bloblen, size_t *len)
{
    const char *p, *colon;
    int n;
    if (!envelope_is_sealed(stored))
        return ENVELOPE_NOT_SEALED;
    if (strncmp(stored, ENVELOPE_PREFIX, strlen(ENVELOPE_PREFIX)) != 0)
        return ENVELOPE_MALFORMED;
    p = stored + strlen(ENVELOPE_PREFIX);
    colon = strchr(p, ':');
    if (!colon || (size_t)(colon - p) >= idlen || colon == p)
        return ENVELOPE_MALFORMED;
    memcpy(id, p, (size_t)(colon - p));
    id[colon - p] = '\0';
    if (!envelope_valid_kek_id(id))
        return ENVELOPE_MALFORMED;
    if (!blob)
        return ENVELOPE_OK;
    if (strlen(colon + 1) > 4 * ((bloblen + 2) / 3))
        return ENVELOPE_TOO_LARGE;
    n = sas_b64_decode(colon + 1, blob, bloblen);
    if (n < ENV_OVERHEAD)
        return ENVELOPE_MALFORMED;
    *len = (size_t)n;
    return ENVELOPE_OK;
}

bool envelope_kek_id_of(const char *stored, char *out, size_t outlen)
{
    return env_split(stored, out, outlen, NULL, 0, NULL) == ENVELOPE_OK;
}

bool envelope_is_current(const struct envelope *env, const char *value)
{
    char id[ENVELOPE_KEK_ID_MAX + 1];
    return envelope_kek_id_of(value, id, sizeof id) && strcmp(id, envelope_current_id(env)) == 0;
}

/* The KEK of id; an unknown id re-reads the file first (rate-limited). */
static const struct envelope_kek *env_find_or_reload(struct envelope *env, const char *id)
{
    const struct envelope_kek *k = env_find(env, id);
    int64_t now;
    char err[300];
    if (k || !env->path)
        return k;
    now = util_mono_ms();
    if (env->last_lazy_reload_ms && now - env->last_lazy_reload_ms < ENVELOPE_RELOAD_MIN_MS)
        return NULL;
    env->last_lazy_reload_ms = now;
    if (!envelope_reload(env, NULL, err, sizeof err))
        return NULL;
    return env_find(env, id);
}

/* Unwrap the DEK of a split value; checks the data opens with aad when pt is given. */
static enum envelope_status env_open_blob(struct envelope *env, const char *id, const unsigned char *blob,
                                          size_t len, const char *aad, unsigned char *dek, unsigned char *pt)
{
    const struct envelope_kek *kek = env_find_or_reload(env, id);
    const unsigned char *d = blob + ENV_WRAP_LEN;
    size_t n = len - ENV_OVERHEAD;
    unsigned char tag[ENV_TAG_LEN];
    if (!kek)
        return ENVELOPE_UNKNOWN_KEK;
    if (!env_unwrap(kek, blob, aad, dek))
        return ENVELOPE_AUTH_FAILED;
    memcpy(tag, d + ENV_NONCE_LEN + n, ENV_TAG_LEN);
    if (!env_gcm(false, dek, d, ENV_DATA_AAD, aad, d + ENV_NONCE_LEN, n, pt, tag))
        return ENVELOPE_AUTH_FAILED;
    return ENVELOPE_OK;
}

enum envelope_status envelope_open(struct envelope *env, const char *stored, const char *aad,
                                   unsigned char *out, size_t cap, size_t *len)
{
    char id[ENVELOPE_KEK_ID_MAX + 1];
    unsigned char blob[ENV_OVERHEAD + ENVELOPE_MAX_PLAINTEXT];
    unsigned char pt[ENVELOPE_MAX_PLAINTEXT], dek[ENV_KEY_LEN];
    size_t bloblen = 0;
    enum envelope_status st = env_split(stored, id, sizeof id, blob, sizeof blob, &bloblen);

    *len = 0;
    if (st != ENVELOPE_OK)
        return st;
    if (bloblen - ENV_OVERHEAD > cap)
        return ENVELOPE_TOO_LARGE;
    st = env_open_blob(env, id, blob, bloblen, aad, dek, pt);
    if (st == ENVELOPE_OK) {
        *len = bloblen - ENV_OVERHEAD;
        memcpy(out, pt, *len);
    }
    OPENSSL_cleanse(pt, sizeof pt);
    OPENSSL_cleanse(dek, sizeof dek);
    return st;
}

enum envelope_status envelope_open_text(struct envelope *env, const char *value, const char *aad, char *out,
                                        size_t cap)
{
    size_t len = 0;
    enum envelope_status st;
    if (cap == 0)
        return ENVELOPE_TOO_LARGE;
    out[0] = '\0';
    if (!envelope_is_sealed(value)) {
        if (strlen(value) >= cap)
            return ENVELOPE_TOO_LARGE;
        memcpy(out, value, strlen(value) + 1);
        return ENVELOPE_OK;
    }
    st = envelope_open(env, value, aad, (unsigned char *)out, cap - 1, &len);
    if (st != ENVELOPE_OK)
        return st;
    if (memchr(out, '\0', len)) {
        OPENSSL_cleanse(out, cap);
        return ENVELOPE_MALFORMED;
    }
    out[len] = '\0';
    return ENVELOPE_OK;
}

bool envelope_open_b64key(struct envelope *env, const char *value, const char *aad, unsigned char *out, size_t cap,
                          size_t *len)
{
    char text[ENVELOPE_MAX_PLAINTEXT + 1];
    int n = -1;
    *len = 0;
    if (!value)
        return false;
    if (envelope_open_text(env, value, aad, text, sizeof text) == ENVELOPE_OK)
        n = sas_b64_decode(text, out, cap);
    OPENSSL_cleanse(text, sizeof text);
    if (n <= 0)
        return false;
    *len = (size_t)n;
    return true;
}

enum envelope_status envelope_rewrap(struct envelope *env, const char *value, const char *aad, char **out)
{
    char id[ENVELOPE_KEK_ID_MAX + 1];
    unsigned char blob[ENV_OVERHEAD + ENVELOPE_MAX_PLAINTEXT];
    unsigned char pt[ENVELOPE_MAX_PLAINTEXT], dek[ENV_KEY_LEN];
    size_t bloblen = 0;
    enum envelope_status st;

    *out = NULL;
    if (!envelope_is_sealed(value)) {
        if (strlen(value) > ENVELOPE_MAX_PLAINTEXT)
            return ENVELOPE_TOO_LARGE;
        *out = envelope_seal_text(env, value, aad);
        return *out ? ENVELOPE_OK : ENVELOPE_ERROR;
    }
    st = env_split(value, id, sizeof id, blob, sizeof blob, &bloblen);
    if (st != ENVELOPE_OK)
        return st;
    if (strcmp(id, envelope_current_id(env)) == 0)
        return ENVELOPE_OK;
    st = env_open_blob(env, id, blob, bloblen, aad, dek, pt);
    if (st == ENVELOPE_OK) {
        if (env_wrap(&env->keks[env->current], dek, aad, blob))
            *out = env_format(envelope_current_id(env), blob, bloblen);
        else
            st = ENVELOPE_ERROR;
    }
    OPENSSL_cleanse(pt, sizeof pt);
    OPENSSL_cleanse(dek, sizeof dek);
    return st;
}

/* ---- AADs ---- */

void envelope_aad_enrollment_key(char *out, size_t outlen, const char *tenant_id)
{
    snprintf(out, outlen, "tenant:%s:enrollment-key", tenant_id);
}

void envelope_aad_service_key(char *out, size_t outlen, const char *dps_id)
{
    snprintf(out, outlen, "dps-instance:%s:service-key", dps_id);
}

void envelope_aad_stamp_key(char *out, size_t outlen, const char *dps_id, const char *kind, const char *enrollment_id)
{
    snprintf(out, outlen, "stamp:%s:%s:%s:symmetric-key", dps_id, kind, enrollment_id);
}

char *envelope_new_file_text(const char *id)
{
    unsigned char key[ENV_KEY_LEN];
    char b64[64];
    char *s;
    if (!envelope_valid_kek_id(id) || !util_random_bytes(key, sizeof key))
        return NULL;
    sas_b64_encode(key, sizeof key, b64, sizeof b64);
    s = xasprintf("{\"current\": \"%s\", \"keys\": {\"%s\": \"%s\"}}\n", id, id, b64);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(b64, sizeof b64);
    return s;
}
