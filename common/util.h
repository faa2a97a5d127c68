/*
 * util.h - small helpers every module uses: aborting allocators, clocks,
 * constant-time comparison, random ids and address parsing.
 */
#ifndef STAMPCP_UTIL_H
#define STAMPCP_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MUSTCHECK __attribute__((warn_unused_result))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A control plane that cannot allocate a few bytes cannot do anything useful:
 * these abort with a log line instead of returning NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Milliseconds on the monotonic clock (for timeouts) and the wall clock (for reports). */
int64_t util_mono_ms(void);
int64_t util_wall_ms(void);
/* Format a wall-clock ms timestamp as RFC 3339 UTC with milliseconds into buf (>= 32 bytes). */
void util_format_time(int64_t wall_ms, char *buf, size_t buflen);

/* Compare two secrets without leaking where they differ (nor, beyond a hash, their length). */
bool util_secret_equal(const char *a, const char *b);

/* Fill buf with n random bytes from the OS; returns false on failure. */
bool util_random_bytes(void *buf, size_t n) MUSTCHECK;
/* Write 2*n lowercase hex characters of fresh randomness plus NUL into out (2n+1 bytes). */
void util_random_hex(char *out, size_t n);

/* Retry-After in whole seconds for a wait in ms, jittered so that refused
 * clients don't return in step: base = the wait rounded up (at least 1 s,
 * at most 3600 s), plus a uniform 0 .. max(1, base/2) seconds. Cheap (a
 * per-process xorshift seeded once from the OS): fit for every refusal,
 * even under overload. Every Retry-After of both daemons comes from here. */
int64_t util_retry_after_s(int64_t wait_ms);
/* The same, as header text in out (>= 24 bytes). */
void util_retry_after_text(char *out, size_t outlen, int64_t wait_ms);

/* A request id: 16 hex characters, a per-process random prefix plus a
 * counter (unique per process, unpredictable across processes, and no
 * random-number call per request). out holds at least 17 bytes. */
void util_request_id(char *out);

/* Split "host:port" (IPv4, name, or [v6]:port). host must hold hostlen bytes. */
bool util_parse_hostport(const char *s, char *host, size_t hostlen, int *port) MUSTCHECK;

/* Strict decimal parse of a whole string into [min, max]. */
bool util_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out) MUSTCHECK;

/* Whether s is valid UTF-8 (no overlongs, no surrogates) of exactly len bytes. */
bool util_utf8_valid(const char *s, size_t len);

/* TCP_NODELAY on a listening socket (Linux passes it on to every accepted
 * connection): TLS sends an answer's head and body as separate records,
 * and without it the second waits for the peer's delayed ACK (~40 ms).
 * Returns false (errno set) if the option could not be set. */
bool util_tcp_nodelay(int fd);

#endif
