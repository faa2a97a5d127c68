/*
 * installer_tokens.c - installer tokens: minting and hashing, the checks of a
 * new token's fields (expiry, registration-id prefix, maximum placements),
 * and the placement count in the global catalog (reserve before a first
 * placement, release when it certainly did not happen).
 */
#include "installer_tokens.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* ---- time ---- */

static bool inst_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil). */
static int64_t inst_days_from_civil(int y, int m, int d)
{
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int inst_days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

bool installer_tokens_parse_time(const char *s, int64_t *wall_ms)
{
    int y, mo, d, h, mi, sec, ms = 0, oh = 0, om = 0, sign = 0;
    const char *p;

    /* YYYY-MM-DDTHH:MM:SS */
    if (strlen(s) < 20 || !inst_digits(s, 4, &y) || s[4] != '-' || !inst_digits(s + 5, 2, &mo) || s[7] != '-' ||
        !inst_digits(s + 8, 2, &d) || s[10] != 'T' || !inst_digits(s + 11, 2, &h) || s[13] != ':' ||
        !inst_digits(s + 14, 2, &mi) || s[16] != ':' || !inst_digits(s + 17, 2, &sec))
        return false;
    p = s + 19;
    if (*p == '.') {   /* a fraction: 1-9 digits, kept to the millisecond */
        int n = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 3)
                ms = ms * 10 + (*p - '0');
        if (n == 0 || n > 9)
            return false;
        for (; n < 3; n++)
            ms *= 10;
    }
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '+' ? 1 : -1;
        if (!inst_digits(p + 1, 2, &oh) || p[3] != ':' || !inst_digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return false;
        p += 6;
    } else {
        return false;
    }
    if (*p != '\0' || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > inst_days_in_month(y, mo) || h > 23 ||
        mi > 59 || sec > 59)
        return false;
    *wall_ms = ((inst_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) -
                (int64_t)sign * (oh * 3600 + om * 60)) * 1000 + ms;
    return true;
}

/* ---- fields ---- */

bool installer_tokens_valid_prefix(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > INSTALLER_PREFIX_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == ':'))
            return false;
    }
    return true;
}

bool installer_tokens_valid_id(const char *s)
{
    size_t i;
    for (i = 0; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return i == INSTALLER_ID_LEN;
}

/* An optional member; JSON null counts as absent (a token read back from GET
 * shows null for the scope it does not have). */
static json_t *inst_optional(json_t *body, const char *key)
{
    json_t *v = json_object_get(body, key);
    return v && !json_is_null(v) ? v : NULL;
}

bool installer_tokens_validate(json_t *body, int64_t now_wall_ms, struct installer_new *out, struct jv_err *e)
{
    static const char *const keys[] = {"name", "expiresAt", "registrationIdPrefix", "maxPlacements", NULL};
    json_t *v;

    memset(out, 0, sizeof *out);
    out->expires_wall_ms = now_wall_ms + INSTALLER_DEFAULT_TTL_MS;
    if (!jv_only_keys(body, "", keys, e) || !jv_string(body, "", "name", true, 1, 128, &out->name, e))
        return false;
    if ((v = inst_optional(body, "expiresAt")) != NULL) {
        const char *s = json_string_value(v);
        if (!json_is_string(v)) {
            jv_set(e, "invalid_type", "expiresAt", "field 'expiresAt' must be a string (RFC 3339)");
            return false;
        }
        if (!installer_tokens_parse_time(s, &out->expires_wall_ms)) {
            jv_set(e, "invalid_value", "expiresAt",
                   "field 'expiresAt' must be an RFC 3339 time with an offset, e.g. 2026-12-31T23:59:59Z");
            return false;
        }
        if (out->expires_wall_ms <= now_wall_ms) {
            jv_set(e, "out_of_range", "expiresAt", "field 'expiresAt' must be in the future");
            return false;
        }
        if (out->expires_wall_ms > now_wall_ms + INSTALLER_MAX_TTL_MS + INSTALLER_SKEW_MS) {
            jv_set(e, "out_of_range", "expiresAt", "field 'expiresAt' must be at most 30 days from now");
            return false;
        }
    }
    if ((v = inst_optional(body, "registrationIdPrefix")) != NULL) {
        if (!json_is_string(v)) {
            jv_set(e, "invalid_type", "registrationIdPrefix", "field 'registrationIdPrefix' must be a string");
            return false;
        }
        out->prefix = json_string_value(v);
        if (strlen(out->prefix) != json_string_length(v) || !installer_tokens_valid_prefix(out->prefix)) {
            jv_set(e, "invalid_value", "registrationIdPrefix",
                   "field 'registrationIdPrefix' must be 1 to %d of [a-z0-9-._:]", INSTALLER_PREFIX_MAX);
            return false;
        }
    }
    if (inst_optional(body, "maxPlacements") &&
        !jv_int(body, "", "maxPlacements", true, 1, INSTALLER_MAX_PLACEMENTS, &out->max_placements, e))
        return false;
    return true;
}

/* ---- tokens ---- */

void installer_tokens_hash(const char *token, char *sha256hex)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)token, strlen(token), digest);
    for (size_t i = 0; i < sizeof digest; i++)
        snprintf(sha256hex + 2 * i, 3, "%02x", digest[i]);
    OPENSSL_cleanse(digest, sizeof digest);
}

void installer_tokens_mint(char *id, char *token, char *sha256hex)
{
    char secret[65];
    util_random_hex(id, INSTALLER_ID_LEN / 2);
    util_random_hex(secret, 32);
    snprintf(token, INSTALLER_TOKEN_MAX, "cpi_%s_%s", id, secret);
    OPENSSL_cleanse(secret, sizeof secret);
    installer_tokens_hash(token, sha256hex);
}

/* ---- placement count ---- */

struct inst_call {
    installer_reserve_cb cb;
    void *arg;
    char tenant[64];
    char id[INSTALLER_ID_LEN + 1];
};

static void inst_on_reserved(const struct pgq_result *q, void *arg)
{
    struct inst_call *c = arg;
    enum installer_reserve st;

    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        if (q->status == PGQ_SQL_ERROR)
            log_error("event=installer_reserve_failed token=%s sqlstate=%s", c->id, q->sqlstate);
        st = INSTALLER_UNAVAILABLE;
    } else if (!PQgetisnull(q->res, 0, 0)) {
        st = INSTALLER_RESERVED;
    } else if (!PQgetisnull(q->res, 0, 1) && strcmp(PQgetvalue(q->res, 0, 1), "t") == 0) {
        st = INSTALLER_QUOTA_EXCEEDED;   /* live, so the count stopped it */
    } else {
        st = INSTALLER_NOT_VALID;
    }
    c->cb(st, c->arg);
    free(c);
}

void installer_tokens_reserve(struct pgpool *global, const char *tenant, const char *id,
                              installer_reserve_cb cb, void *arg)
{
    /* The UPDATE re-reads a row a concurrent reservation changed before it
     * applies its WHERE (READ COMMITTED), so the maximum holds under any
     * concurrency; the second column tells a full token from a dead one. */
    static const char sql[] =
        "WITH u AS (UPDATE installer_tokens SET placements = placements + 1"
        "   WHERE id = $2 AND tenant_id = $1 AND revoked_at IS NULL AND expires_at > now()"
        "     AND (max_placements IS NULL OR placements < max_placements) RETURNING placements)"
        " SELECT (SELECT placements FROM u),"
        "        (SELECT revoked_at IS NULL AND expires_at > now() FROM installer_tokens"
        "          WHERE id = $2 AND tenant_id = $1)";
    struct inst_call *c = xcalloc(1, sizeof *c);
    const char *values[2];
    c->cb = cb;
    c->arg = arg;
    snprintf(c->tenant, sizeof c->tenant, "%s", tenant);
    snprintf(c->id, sizeof c->id, "%s", id);
    values[0] = c->tenant;
    values[1] = c->id;
    pgpool_query(global, sql, 2, values, inst_on_reserved, c);
}

static void inst_on_released(const struct pgq_result *q, void *arg)
{
    struct inst_call *c = arg;
    if (q->status != PGQ_OK)
        log_warn("event=installer_release_failed token=%s tenant=%s sqlstate=%s note=\"the placement stays "
                 "counted\"", c->id, c->tenant, q->sqlstate ? q->sqlstate : "");
    free(c);
}

void installer_tokens_release(struct pgpool *global, const char *tenant, const char *id)
{
    static const char sql[] =
        "UPDATE installer_tokens SET placements = placements - 1 WHERE id = $2 AND tenant_id = $1 AND placements > 0";
    struct inst_call *c = xcalloc(1, sizeof *c);
    const char *values[2];
    snprintf(c->tenant, sizeof c->tenant, "%s", tenant);
    snprintf(c->id, sizeof c->id, "%s", id);
    values[0] = c->tenant;
    values[1] = c->id;
    pgpool_query(global, sql, 2, values, inst_on_released, c);
}
