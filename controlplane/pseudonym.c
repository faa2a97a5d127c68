/*
 * pseudonym.c - HMAC-SHA256 pseudonyms of registration ids and the log-safe
 * form of request paths.
 */
#include "pseudonym.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

static const char pseudonym_label[] = "stampcp device pseudonym v1";

void pseudonym_init(struct pseudonym *p, const char *secret)
{
    unsigned int n = sizeof p->key;
    const char *s = secret ? secret : "";
    unsigned char id[32];
    if (!HMAC(EVP_sha256(), s, (int)strlen(s), (const unsigned char *)pseudonym_label, sizeof pseudonym_label - 1,
              p->key, &n))
        memset(p->key, 0, sizeof p->key);   /* cannot happen with SHA-256; still deterministic */
    n = sizeof id;
    if (!HMAC(EVP_sha256(), p->key, (int)sizeof p->key, (const unsigned char *)"key id", 6, id, &n))
        memset(id, 0, sizeof id);
    p->key_id[0] = 'k';
    for (int i = 0; i < 4; i++)
        snprintf(p->key_id + 1 + 2 * i, 3, "%02x", id[i]);
    p->ready = true;
}

const char *pseudonym_key_id(const struct pseudonym *p)
{
    return p->key_id;
}

void pseudonym_clear(struct pseudonym *p)
{
    OPENSSL_cleanse(p->key, sizeof p->key);
    memset(p->key_id, 0, sizeof p->key_id);
    p->ready = false;
}

const char *pseudonym_device(const struct pseudonym *p, const char *tenant, const char *regid,
                             char out[PSEUDONYM_LEN])
{
    unsigned char mac[32];
    unsigned int n = sizeof mac;
    unsigned char msg[64 + 1 + 256];
    size_t tl = strnlen(tenant, 64), rl = strnlen(regid, 256);
    memcpy(msg, tenant, tl);
    msg[tl] = '/';
    memcpy(msg + tl + 1, regid, rl);
    if (!HMAC(EVP_sha256(), p->key, (int)sizeof p->key, msg, tl + 1 + rl, mac, &n))
        memset(mac, 0, sizeof mac);
    memcpy(out, "dev_", 4);
    for (int i = 0; i < 8; i++)
        snprintf(out + 4 + 2 * i, 3, "%02x", mac[i]);
    OPENSSL_cleanse(mac, sizeof mac);
    return out;
}

bool pseudonym_valid(const char *s)
{
    if (strlen(s) != PSEUDONYM_LEN - 1 || strncmp(s, "dev_", 4) != 0)
        return false;
    for (int i = 4; i < PSEUDONYM_LEN - 1; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static int pseudonym_hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode [s, s+n) into out (cut to outlen-1). */
static void pseudonym_decode(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outlen; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = pseudonym_hex(s[i + 1])) >= 0 &&
            (lo = pseudonym_hex(s[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
}

/* Append [s, s+n) to out at *o (always NUL-terminated, cut to fit). */
static void pseudonym_put(char *out, size_t outlen, size_t *o, const char *s, size_t n)
{
    if (*o + 1 >= outlen)
        return;
    if (n > outlen - 1 - *o)
        n = outlen - 1 - *o;
    memcpy(out + *o, s, n);
    *o += n;
    out[*o] = '\0';
}

const char *pseudonym_redact_path(const struct pseudonym *p, const char *path, char *out, size_t outlen)
{
    const char *s = path ? path : "";
    const char *q = strchr(s, '?');
    size_t end = q ? (size_t)(q - s) : strlen(s), o = 0, i = 0;
    char tenant[64] = "", prev[32] = "";

    if (outlen == 0)
        return out;
    out[0] = '\0';
    while (i < end) {
        size_t j = i;
        if (s[i] == '/') {
            pseudonym_put(out, outlen, &o, "/", 1);
            i++;
            continue;
        }
        while (j < end && s[j] != '/')
            j++;
        if (strcmp(prev, "registrations") == 0 || strcmp(prev, "devices") == 0) {
            char regid[260], ps[PSEUDONYM_LEN];
            pseudonym_decode(s + i, j - i, regid, sizeof regid);
            pseudonym_device(p, tenant, regid, ps);
            pseudonym_put(out, outlen, &o, ps, strlen(ps));
            prev[0] = '\0';
        } else {
            if (strcmp(prev, "tenants") == 0)
                pseudonym_decode(s + i, j - i, tenant, sizeof tenant);
            pseudonym_decode(s + i, j - i, prev, sizeof prev);
            pseudonym_put(out, outlen, &o, s + i, j - i);
        }
        i = j;
    }
    if (q) {
        /* key=value pairs, with cursor values hidden */
        const char *a = q + 1;
        pseudonym_put(out, outlen, &o, "?", 1);
        while (*a) {
            size_t n = strcspn(a, "&");
            if (strncmp(a, "cursor=", 7) == 0)
                pseudonym_put(out, outlen, &o, "cursor=-", 8);
            else
                pseudonym_put(out, outlen, &o, a, n);
            a += n;
            if (*a == '&') {
                pseudonym_put(out, outlen, &o, "&", 1);
                a++;
            }
        }
    }
    return out;
}
