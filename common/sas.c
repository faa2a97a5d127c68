/*
 * sas.c - SharedAccessSignature parsing, verification and key derivation.
 */
#include "sas.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SAS_PREFIX "SharedAccessSignature "

const char *sas_error_code(enum sas_error e)
{
    switch (e) {
    case SAS_OK: return "ok";
    case SAS_MALFORMED: return "malformed_token";
    case SAS_EXPIRED: return "expired_token";
    case SAS_WRONG_RESOURCE: return "wrong_resource";
    case SAS_BAD_SIGNATURE: return "invalid_signature";
    }
    return "malformed_token";
}

static int sas_hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode (no '+' to space: senders encode '+' as %2B). */
static bool sas_urldecode(const char *in, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len) return false;
            hi = sas_hexval(in[i + 1]);
            lo = sas_hexval(in[i + 2]);
            if (hi < 0 || lo < 0) return false;
            c = (char)(hi * 16 + lo);
            if (c == '\0') return false;
            i += 2;
        }
        if (o + 1 >= outlen) return false;
        out[o++] = c;
    }
    out[o] = '\0';
    return true;
}

static bool sas_copy(const char *in, size_t len, char *out, size_t outlen)
{
    if (len == 0 || len >= outlen) return false;
    memcpy(out, in, len);
    out[len] = '\0';
    return true;
}

enum sas_error sas_parse(const char *header, struct sas_token *t)
{
    const char *p;
    bool have_sr = false, have_sig = false, have_se = false, have_skn = false;
    int64_t se;

    memset(t, 0, sizeof *t);
    if (!header || strncmp(header, SAS_PREFIX, strlen(SAS_PREFIX)) != 0)
        return SAS_MALFORMED;
    p = header + strlen(SAS_PREFIX);
    if (strlen(p) > 2048)
        return SAS_MALFORMED;
    while (*p) {
        const char *amp = strchr(p, '&');
        const char *end = amp ? amp : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        size_t klen, vlen;
        const char *v;
        if (!eq) return SAS_MALFORMED;
        klen = (size_t)(eq - p);
        v = eq + 1;
        vlen = (size_t)(end - v);
        if (klen == 2 && memcmp(p, "sr", 2) == 0) {
            if (have_sr || !sas_copy(v, vlen, t->sr, sizeof t->sr) ||
                !sas_urldecode(v, vlen, t->sr_decoded, sizeof t->sr_decoded))
                return SAS_MALFORMED;
            have_sr = true;
        } else if (klen == 3 && memcmp(p, "sig", 3) == 0) {
            if (have_sig || vlen == 0 || !sas_urldecode(v, vlen, t->sig, sizeof t->sig))
                return SAS_MALFORMED;
            have_sig = true;
        } else if (klen == 2 && memcmp(p, "se", 2) == 0) {
            if (have_se || !sas_copy(v, vlen, t->se, sizeof t->se))
                return SAS_MALFORMED;
            have_se = true;
        } else if (klen == 3 && memcmp(p, "skn", 3) == 0) {
            if (have_skn || !sas_urldecode(v, vlen, t->skn, sizeof t->skn))
                return SAS_MALFORMED;
            have_skn = true;
        } else {
            return SAS_MALFORMED;
        }
        p = amp ? amp + 1 : end;
    }
    if (!have_sr || !have_sig || !have_se)
        return SAS_MALFORMED;
    if (!util_parse_int64(t->se, 0, INT64_MAX / 2, &se))
        return SAS_MALFORMED;
    t->expiry = se;
    return SAS_OK;
}

enum sas_error sas_check_claims(const struct sas_token *t, const char *prefix,
                                const char *registration_id, int64_t now_s)
{
    char want[512];
    int n = snprintf(want, sizeof want, "%s/registrations/%s", prefix, registration_id);
    if (n < 0 || (size_t)n >= sizeof want || strcasecmp(want, t->sr_decoded) != 0)
        return SAS_WRONG_RESOURCE;
    if (t->expiry <= now_s)
        return SAS_EXPIRED;
    return SAS_OK;
}

static void sas_hmac(const unsigned char *key, size_t keylen, const void *msg, size_t msglen,
                     unsigned char out[SAS_KEY_LEN])
{
    unsigned int outlen = SAS_KEY_LEN;
    HMAC(EVP_sha256(), key, (int)keylen, msg, msglen, out, &outlen);
}

bool sas_verify(const struct sas_token *t, const unsigned char *key, size_t keylen)
{
    char msg[560];
    unsigned char mac[SAS_KEY_LEN], given[64];
    int n = snprintf(msg, sizeof msg, "%s\n%s", t->sr, t->se);
    int glen;
    if (n < 0 || (size_t)n >= sizeof msg)
        return false;
    sas_hmac(key, keylen, msg, (size_t)n, mac);
    glen = sas_b64_decode(t->sig, given, sizeof given);
    if (glen != SAS_KEY_LEN)
        return false;
    return CRYPTO_memcmp(mac, given, SAS_KEY_LEN) == 0;
}

void sas_derive_key(const unsigned char *group_key, size_t group_keylen, const char *registration_id,
                    unsigned char out[SAS_KEY_LEN])
{
    sas_hmac(group_key, group_keylen, registration_id, strlen(registration_id), out);
}

int sas_b64_decode(const char *in, unsigned char *out, size_t outlen)
{
    size_t n = strlen(in);
    unsigned char tmp[1024];
    int len, pad = 0;
    if (n == 0 || n % 4 != 0 || n > sizeof tmp * 3 / 4)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '/' || (c == '=' && i >= n - 2);
        if (!ok) return -1;
    }
    if (in[n - 1] == '=') pad++;
    if (in[n - 2] == '=') pad++;
    if (pad == 1 && in[n - 2] == '=') return -1;
    len = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
    if (len < 0) return -1;
    len -= pad;
    if ((size_t)len > outlen) return -1;
    memcpy(out, tmp, (size_t)len);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return len;
}

void sas_b64_encode(const unsigned char *in, size_t len, char *out, size_t outlen)
{
    /* EVP_EncodeBlock writes 4*ceil(len/3) characters plus a NUL. */
    if (len > 1024 || outlen < 4 * ((len + 2) / 3) + 1) {
        if (outlen) out[0] = '\0';
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

void sas_build(const char *sr, const unsigned char *key, size_t keylen, int64_t expiry,
               const char *skn, char *out, size_t outlen)
{
    char msg[560], b64[64], enc[128];
    unsigned char mac[SAS_KEY_LEN];
    size_t o = 0;
    int n = snprintf(msg, sizeof msg, "%s\n%lld", sr, (long long)expiry);
    sas_hmac(key, keylen, msg, (size_t)(n > 0 ? n : 0), mac);
    sas_b64_encode(mac, sizeof mac, b64, sizeof b64);
    for (const char *p = b64; *p && o + 4 < sizeof enc; p++) {
        if (*p == '+' || *p == '/' || *p == '=') {
            static const char hex[] = "0123456789ABCDEF";
            enc[o++] = '%';
            enc[o++] = hex[(unsigned char)*p >> 4];
            enc[o++] = hex[(unsigned char)*p & 15];
        } else
            enc[o++] = *p;
    }
    enc[o] = '\0';
    snprintf(out, outlen, SAS_PREFIX "sr=%s&sig=%s&skn=%s&se=%lld", sr, enc, skn, (long long)expiry);
}
