/*
 * util.c - allocation, clocks, secret comparison, randomness and small parsers.
 */
#include "util.h"
#include "log.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static void util_oom(size_t n)
{
    log_error("event=out_of_memory bytes=%zu", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) util_oom(n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) util_oom(n * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) util_oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    int n;
    char *p;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) util_oom(0);
    p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

int64_t util_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void util_format_time(int64_t wall_ms, char *buf, size_t buflen)
{
    time_t secs = (time_t)(wall_ms / 1000);
    struct tm tm;
    size_t n;

    gmtime_r(&secs, &tm);
    n = strftime(buf, buflen, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, buflen - n, ".%03dZ", (int)(wall_ms % 1000));
}

bool util_secret_equal(const char *a, const char *b)
{
    /* Hash both sides first so the comparison takes the same time whatever the lengths. */
    unsigned char ha[SHA256_DIGEST_LENGTH], hb[SHA256_DIGEST_LENGTH];
    if (!a || !b)
        return false;
    SHA256((const unsigned char *)a, strlen(a), ha);
    SHA256((const unsigned char *)b, strlen(b), hb);
    return CRYPTO_memcmp(ha, hb, sizeof ha) == 0;
}

bool util_random_bytes(void *buf, size_t n)
{
    return RAND_bytes(buf, (int)n) == 1;
}

/* Not for secrets: a spread of retry times only. Seeded once from the OS
 * (a fixed odd seed if that fails: the spread still holds within the process). */
static uint64_t util_jitter_next(void)
{
    static uint64_t x;
    if (x == 0 && (!util_random_bytes(&x, sizeof x) || x == 0))
        x = 0x9e3779b97f4a7c15ULL;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

int64_t util_retry_after_s(int64_t wait_ms)
{
    int64_t base = wait_ms <= 1000 ? 1 : (wait_ms + 999) / 1000, spread;
    if (base > 3600)
        base = 3600;
    spread = base / 2 > 1 ? base / 2 : 1;
    return base + (int64_t)(util_jitter_next() % (uint64_t)(spread + 1));
}

void util_retry_after_text(char *out, size_t outlen, int64_t wait_ms)
{
    snprintf(out, outlen, "%lld", (long long)util_retry_after_s(wait_ms));
}

void util_random_hex(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[64];
    if (n > sizeof raw) n = sizeof raw;
    if (!util_random_bytes(raw, n)) {
        log_error("event=rand_failed");
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * n] = '\0';
}

bool util_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    long long v;
    if (!s || !*s || (*s != '-' && (*s < '0' || *s > '9')))
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool util_parse_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon;
    size_t hl;
    int64_t p;

    if (!s || !*s)
        return false;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return false;
        hl = (size_t)(rb - s - 1);
        s++;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return false;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostlen)
        return false;
    if (!util_parse_int64(colon + 1, 0, 65535, &p))
        return false;
    memcpy(host, s, hl);
    host[hl] = '\0';
    *port = (int)p;
    return true;
}

bool util_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t need;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { need = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { need = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { need = 3; cp = c & 0x07; }
        else return false;
        if (i + need >= len)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}

void util_request_id(char *out)
{
    static uint32_t prefix, counter;
    static bool seeded;
    if (!seeded) {
        if (!util_random_bytes(&prefix, sizeof prefix) || !util_random_bytes(&counter, sizeof counter)) {
            log_error("event=rand_failed");
            abort();
        }
        seeded = true;
    }
    snprintf(out, 17, "%08x%08x", prefix, ++counter);
}

bool util_tcp_nodelay(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
}
