/*
 * sd_crypto.c - libstampdevice: HMAC, base64, URL encoding, SAS tokens and
 * the group-enrollment key derivation (sd_crypto.h).
 *
 * Owns nothing but these pure functions; the hashing is OpenSSL's.
 */
#include "sd_crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

#include "sd_machine.h"

void sd_crypto_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                           unsigned char out[SD_CRYPTO_MAC_LEN])
{
    unsigned int outlen = SD_CRYPTO_MAC_LEN;
    /* HMAC() with a zero-length key must still get a non-NULL pointer. */
    static const unsigned char empty[1];
    if (!HMAC(EVP_sha256(), keylen ? key : empty, (int)keylen, msg, msglen, out, &outlen))
        memset(out, 0, SD_CRYPTO_MAC_LEN);
}

bool sd_crypto_b64_encode(const unsigned char *in, size_t len, char *out, size_t outlen)
{
    /* EVP_EncodeBlock writes 4*ceil(len/3) characters plus a NUL. */
    if (len > 3 * 1024 || outlen < 4 * ((len + 2) / 3) + 1) {
        if (outlen)
            out[0] = '\0';
        return false;
    }
    EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    return true;
}

static bool sd_crypto_b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

int sd_crypto_b64_decode(const char *in, unsigned char *out, size_t outlen)
{
    unsigned char tmp[768];
    size_t n = strlen(in), pad = 0;
    int len;
    if (n == 0 || n % 4 != 0 || n / 4 * 3 > sizeof tmp)
        return -1;
    while (pad < 2 && in[n - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < n - pad; i++)
        if (!sd_crypto_b64_char(in[i]))
            return -1;
    len = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    if (len < 0 || (size_t)len < pad || (size_t)len - pad > outlen) {
        OPENSSL_cleanse(tmp, sizeof tmp);
        return -1;
    }
    len -= (int)pad;
    memcpy(out, tmp, (size_t)len);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return len;
}

bool sd_crypto_url_encode(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        bool plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                     *p == '-' || *p == '_' || *p == '.' || *p == '~';
        if (o + (plain ? 1 : 3) >= outlen)
            return false;
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    if (o >= outlen)
        return false;
    out[o] = '\0';
    return true;
}

bool sd_crypto_sas(const char *sr, const unsigned char *key, size_t keylen, int64_t expiry, char *out,
                   size_t outlen)
{
    char msg[600], b64[64], sig[128];
    unsigned char mac[SD_CRYPTO_MAC_LEN];
    int n = snprintf(msg, sizeof msg, "%s\n%lld", sr, (long long)expiry);
    if (n < 0 || (size_t)n >= sizeof msg)
        return false;
    sd_crypto_hmac_sha256(key, keylen, msg, (size_t)n, mac);
    if (!sd_crypto_b64_encode(mac, sizeof mac, b64, sizeof b64) || !sd_crypto_url_encode(b64, sig, sizeof sig))
        return false;
    n = snprintf(out, outlen, "SharedAccessSignature sr=%s&sig=%s&skn=registration&se=%lld", sr, sig,
                 (long long)expiry);
    return n > 0 && (size_t)n < outlen;
}

void sd_derive_key(const unsigned char *group_key, size_t group_key_len, const char *registration_id,
                   unsigned char out[SD_KEY_LEN])
{
    sd_crypto_hmac_sha256(group_key, group_key_len, registration_id, strlen(registration_id), out);
}
