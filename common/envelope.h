/*
 * envelope.h - secrets at rest: envelope encryption with AES-256-GCM.
 *
 * Every stored secret (enrollment keys, DPS service keys, the stamps'
 * enrollment keys) is sealed with its own random data key (DEK); the DEK is
 * wrapped by a key-encryption key (KEK) loaded from a file named in the
 * daemon's config. The stored form is one self-describing text value:
 *
 *   enc:v1:<kek-id>:<base64( wn[12] wdek[32] wtag[16] | dn[12] ct[n] dtag[16] )>
 *
 *   wn/wdek/wtag  the DEK under the KEK <kek-id>, AAD "stampcp-kek-v1:<kek-id>:<aad>"
 *   dn/ct/dtag    the secret under the DEK,        AAD "stampcp-dek-v1:<aad>"
 *
 * <aad> binds the ciphertext to its purpose and owner (envelope_aad_*), so a
 * value copied to another tenant's row, or another column, does not open.
 * Rotating the KEK re-wraps the DEK only (envelope_rewrap): the data
 * ciphertext stays as it is.
 *
 * KEK file (JSON, a regular file no group or other may access: mode 0600/0400):
 *   {"current": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}
 * ids are 1-32 of [A-Za-z0-9._-]. The current KEK wraps every new DEK; the
 * others still unwrap (rotation: add a key and make it current, re-wrap,
 * then drop the old one).
 *
 * Ownership: struct envelope is created by envelope_load() and released by
 * envelope_free(), which wipes the keys. Returned strings are malloc'ed and
 * the caller frees them. Never log a plaintext or a KEK; a stored form may
 * be logged but need not be.
 *
 * Single-threaded: a keyring re-reads its file (envelope_reload) when it
 * meets a KEK id it does not know (at most every ENVELOPE_RELOAD_MIN_MS), so
 * a daemon whose file got a new key picks it up on first use.
 */
#ifndef STAMPCP_ENVELOPE_H
#define STAMPCP_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define ENVELOPE_KEK_ID_MAX      32
#define ENVELOPE_MAX_KEKS        16
#define ENVELOPE_MAX_PLAINTEXT   256
#define ENVELOPE_AAD_MAX         320
#define ENVELOPE_PREFIX          "enc:v1:"
#define ENVELOPE_RELOAD_MIN_MS   200

enum envelope_status {
    ENVELOPE_OK = 0,
    ENVELOPE_NOT_SEALED,     /* the value is not in the stored form (a clear value) */
    ENVELOPE_MALFORMED,      /* "enc:" but not a v1 value this code can parse */
    ENVELOPE_UNKNOWN_KEK,    /* sealed under a KEK id the file does not hold */
    ENVELOPE_AUTH_FAILED,    /* wrong KEK material, wrong AAD, or tampered */
    ENVELOPE_TOO_LARGE,      /* the plaintext does not fit the caller's buffer */
    ENVELOPE_ERROR,          /* no randomness, or OpenSSL failed */
};

/* "ok", "not_sealed", "malformed", "unknown_kek", "auth_failed", "too_large", "error". */
const char *envelope_status_word(enum envelope_status st);

struct envelope;

/* Load the KEK file at path; NULL with err filled (names the file and the
 * problem, never key material) when it is missing, accessible to group or
 * others, not a regular file, or not valid. */
struct envelope *envelope_load(const char *path, char *err, size_t errlen) MUSTCHECK;
/* A keyring from the JSON text of a KEK file (no file, no permission check;
 * for tests and the tool). */
struct envelope *envelope_from_text(const char *json_text, char *err, size_t errlen) MUSTCHECK;
void envelope_free(struct envelope *env);

/* Re-read the file (keyrings from envelope_load only). On failure the
 * keyring keeps its keys and err says why. *changed (may be NULL) tells
 * whether the set of keys or the current one changed. */
bool envelope_reload(struct envelope *env, bool *changed, char *err, size_t errlen) MUSTCHECK;
/* Re-read only when the file's identity (inode, size, mtime) changed. */
bool envelope_reload_if_changed(struct envelope *env, bool *changed, char *err, size_t errlen) MUSTCHECK;

const char *envelope_current_id(const struct envelope *env);
int envelope_kek_count(const struct envelope *env);
/* The i-th KEK id (0 <= i < envelope_kek_count). */
const char *envelope_kek_id(const struct envelope *env, int i);
bool envelope_has_kek(const struct envelope *env, const char *id);

/* Whether value is in the stored form (starts with "enc:"). */
bool envelope_is_sealed(const char *value);
/* The KEK id of a stored value into out (> ENVELOPE_KEK_ID_MAX bytes); false if not sealed/malformed. */
bool envelope_kek_id_of(const char *stored, char *out, size_t outlen);
/* Whether value is sealed under the current KEK. */
bool envelope_is_current(const struct envelope *env, const char *value);

/* Seal len bytes (<= ENVELOPE_MAX_PLAINTEXT) under a fresh DEK wrapped by
 * the current KEK. NULL only if randomness or OpenSSL fails. */
char *envelope_seal(const struct envelope *env, const void *plaintext, size_t len, const char *aad) MUSTCHECK;
/* Seal a NUL-terminated text (a base64 key as the API received it). */
char *envelope_seal_text(const struct envelope *env, const char *text, const char *aad) MUSTCHECK;

/* Open a stored value into out (cap bytes), *len its length. */
enum envelope_status envelope_open(struct envelope *env, const char *stored, const char *aad,
                                   unsigned char *out, size_t cap, size_t *len) MUSTCHECK;
/* The text a value holds: a stored value opened, or (migration) a clear
 * value copied as is. out is NUL-terminated. */
enum envelope_status envelope_open_text(struct envelope *env, const char *value, const char *aad,
                                        char *out, size_t cap) MUSTCHECK;
/*
 * The raw bytes of a base64 key kept as value: the stored form of a base64
 * text, or (for rows written before encryption) the plain base64 text
 * itself. False when it does not open, or is not base64, or the key does not
 * fit cap. This is the one call a reader of a key needs.
 */
bool envelope_open_b64key(struct envelope *env, const char *value, const char *aad,
                          unsigned char *out, size_t cap, size_t *len) MUSTCHECK;

/*
 * Re-wrap value's DEK under the current KEK (a clear value is sealed).
 * *out: the new stored form (caller frees), or NULL when value is sealed
 * under the current KEK already. The data ciphertext is checked to open with
 * aad before anything is re-wrapped.
 */
enum envelope_status envelope_rewrap(struct envelope *env, const char *value, const char *aad,
                                     char **out) MUSTCHECK;

/* AADs: what a stored secret is and whose it is. */
/* "tenant:<tenantId>:enrollment-key": a tenant's current and previous enrollment key. */
void envelope_aad_enrollment_key(char *out, size_t outlen, const char *tenant_id);
/* "dps-instance:<dpsId>:service-key": a DPS instance's service policy key in the catalog. */
void envelope_aad_service_key(char *out, size_t outlen, const char *dps_id);
/* "stamp:<dpsId>:<kind>:<enrollmentId>:symmetric-key": the primaryKey and
 * secondaryKey of an enrollment in a stamp's dps_enrollments (kind "group"
 * or "individual", as the kind column). */
void envelope_aad_stamp_key(char *out, size_t outlen, const char *dps_id, const char *kind,
                            const char *enrollment_id);

/* A new KEK file's JSON text with one fresh key of the given id (caller frees). */
char *envelope_new_file_text(const char *id) MUSTCHECK;
/* Whether id is a valid KEK id. */
bool envelope_valid_kek_id(const char *id);

#endif
