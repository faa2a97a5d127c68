/*
 * sd_http.c - libstampdevice: the HTTP/1.1 client codec (sd_http.h).
 *
 * Owns the request formatter and the incremental response parser. No I/O and
 * no allocation except the parser itself and its body buffer (grown lazily,
 * capped at SD_HTTP_MAX_BODY). Every malformed or oversized input ends in
 * SD_HTTP_ERROR with a message; nothing the peer sends can make the parser
 * read or write outside its buffers.
 */
#include "sd_http.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SD_HTTP_LINE_MAX 8192  /* one status/header/chunk-size line */
#define SD_HTTP_CHUNK_LINE_MAX 256

enum sd_hp_state {
    HP_STATUS,      /* the status line */
    HP_HEADERS,     /* header lines until the empty one */
    HP_BODY_LEN,    /* Content-Length bytes */
    HP_BODY_CLOSE,  /* everything until EOF */
    HP_CHUNK_SIZE,  /* "hex[;ext]" line */
    HP_CHUNK_DATA,
    HP_CHUNK_CRLF,  /* the CRLF after chunk data */
    HP_TRAILERS,    /* trailer lines until the empty one */
    HP_DONE,
    HP_ERROR,
};

struct sd_http_parser {
    enum sd_hp_state state;
    int status;
    int minor;              /* HTTP/1.minor */
    int retry_after;
    bool conn_close;        /* "Connection: close" seen */
    bool conn_keep_alive;   /* "Connection: keep-alive" seen */
    bool chunked;
    bool have_length;
    bool close_delimited;
    size_t content_length;
    size_t remaining;       /* of the Content-Length body or the current chunk */
    size_t head_bytes;      /* status + headers (+ trailers), against SD_HTTP_MAX_HEADER */
    size_t line_len;
    char line[SD_HTTP_LINE_MAX];
    char *body;
    size_t body_len, body_cap;
    const char *error;
};

/* ------------------------------------------------------------------ request */

int sd_http_format_request(const struct sd_request *rq, bool keep_alive, char *buf, size_t buflen)
{
    size_t blen = strlen(rq->body);
    bool has_body = blen > 0;
    bool needs_length = has_body || strcmp(rq->method, "GET") != 0;
    char auth[sizeof rq->authorization + 32] = "";
    char clen[96] = "";
    int n;

    if (rq->authorization[0] != '\0')
        snprintf(auth, sizeof auth, "Authorization: %s\r\n", rq->authorization);
    if (needs_length)
        snprintf(clen, sizeof clen, "%sContent-Length: %zu\r\n",
                 has_body ? "Content-Type: application/json\r\n" : "", blen);
    n = snprintf(buf, buflen,
                 "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: stampdevice/1\r\n"
                 "Accept: application/json\r\n%s%sConnection: %s\r\n\r\n%s",
                 rq->method, rq->path, rq->host, auth, clen, keep_alive ? "keep-alive" : "close", rq->body);
    if (n < 0 || (size_t)n >= buflen)
        return -1;
    return n;
}

/* ------------------------------------------------------------------ parser */

struct sd_http_parser *sd_http_parser_new(void)
{
    struct sd_http_parser *p = calloc(1, sizeof *p);
    if (p)
        sd_http_parser_reset(p);
    return p;
}

void sd_http_parser_free(struct sd_http_parser *p)
{
    if (!p)
        return;
    free(p->body);
    free(p);
}

void sd_http_parser_reset(struct sd_http_parser *p)
{
    char *body = p->body;
    size_t cap = p->body_cap;
    memset(p, 0, offsetof(struct sd_http_parser, line));
    p->line_len = 0;
    p->body = body;      /* keep the buffer for the next response */
    p->body_cap = cap;
    p->body_len = 0;
    p->retry_after = -1;
    p->state = HP_STATUS;
    p->error = NULL;
}

static enum sd_http_state fail(struct sd_http_parser *p, const char *why)
{
    p->state = HP_ERROR;
    p->error = why;
    return SD_HTTP_ERROR;
}

/* Parse a decimal number of at most max; false on anything else. */
static bool parse_decimal(const char *s, size_t len, size_t max, size_t *out)
{
    size_t v = 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        size_t d = (size_t)(s[i] - '0');
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* Does the comma-separated token list v (length len) contain tok? */
static bool has_token(const char *v, size_t len, const char *tok)
{
    size_t tl = strlen(tok), i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t start = i;
        while (i < len && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tl && strncasecmp(v + start, tok, tl) == 0)
            return true;
    }
    return false;
}

/* Is tok the last coding of the list? (Transfer-Encoding: gzip, chunked) */
static bool last_token_is(const char *v, size_t len, const char *tok)
{
    size_t end = len, tl = strlen(tok);
    while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t'))
        end--;
    size_t start = end;
    while (start > 0 && v[start - 1] != ',')
        start--;
    while (start < end && (v[start] == ' ' || v[start] == '\t'))
        start++;
    return end - start == tl && strncasecmp(v + start, tok, tl) == 0;
}

static enum sd_http_state on_status_line(struct sd_http_parser *p, const char *l, size_t n)
{
    /* "HTTP/1.x SSS[ reason]" */
    if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || (l[7] != '0' && l[7] != '1') || l[8] != ' ')
        return fail(p, "bad status line");
    if (l[9] < '1' || l[9] > '5' || l[10] < '0' || l[10] > '9' || l[11] < '0' || l[11] > '9')
        return fail(p, "bad status code");
    if (n > 12 && l[12] != ' ')
        return fail(p, "bad status line");
    p->minor = l[7] - '0';
    p->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    p->state = HP_HEADERS;
    return SD_HTTP_PARTIAL;
}

static enum sd_http_state on_content_length(struct sd_http_parser *p, const char *v, size_t vl)
{
    size_t len;
    if (!parse_decimal(v, vl, SIZE_MAX, &len))
        return fail(p, "bad Content-Length");
    if (p->have_length && len != p->content_length)
        return fail(p, "conflicting Content-Length");
    if (len > SD_HTTP_MAX_BODY)
        return fail(p, "body too large");
    p->have_length = true;
    p->content_length = len;
    return SD_HTTP_PARTIAL;
}

static void on_retry_after(struct sd_http_parser *p, const char *v, size_t vl)
{
    size_t secs;
    /* delta-seconds only; an HTTP-date (or garbage) counts as absent */
    if (parse_decimal(v, vl, INT_MAX, &secs))
        p->retry_after = (int)secs;
    else
        p->retry_after = -1;
}

static enum sd_http_state on_header_line(struct sd_http_parser *p, const char *l, size_t n)
{
    const char *colon = memchr(l, ':', n);
    if (!colon || colon == l)
        return fail(p, "bad header line");
    if (l[0] == ' ' || l[0] == '\t')
        return fail(p, "folded header line");
    size_t nl = (size_t)(colon - l);
    for (size_t i = 0; i < nl; i++)
        if (l[i] == ' ' || l[i] == '\t')
            return fail(p, "bad header name");
    const char *v = colon + 1;
    size_t vl = n - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t'))
        v++, vl--;
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;

    if (nl == 14 && strncasecmp(l, "Content-Length", nl) == 0)
        return on_content_length(p, v, vl);
    if (nl == 17 && strncasecmp(l, "Transfer-Encoding", nl) == 0) {
        if (last_token_is(v, vl, "chunked"))
            p->chunked = true;
        else
            p->close_delimited = true; /* a coding we cannot frame: read to EOF */
    } else if (nl == 10 && strncasecmp(l, "Connection", nl) == 0) {
        if (has_token(v, vl, "close"))
            p->conn_close = true;
        if (has_token(v, vl, "keep-alive"))
            p->conn_keep_alive = true;
    } else if (nl == 11 && strncasecmp(l, "Retry-After", nl) == 0) {
        on_retry_after(p, v, vl);
    }
    return SD_HTTP_PARTIAL;
}

/* The empty line after the headers: decide how the body is framed. */
static enum sd_http_state on_headers_end(struct sd_http_parser *p)
{
    if (p->status < 200 && p->status != 101) {
        /* an interim answer (100 Continue): the real one follows */
        sd_http_parser_reset(p);
        return SD_HTTP_PARTIAL;
    }
    if (p->status == 204 || p->status == 304 || p->status == 101) {
        p->state = HP_DONE;
        return SD_HTTP_DONE;
    }
    if (p->chunked) {
        p->close_delimited = false;
        p->state = HP_CHUNK_SIZE;
    } else if (p->close_delimited || !p->have_length) {
        p->close_delimited = true;
        p->state = HP_BODY_CLOSE;
    } else if (p->content_length == 0) {
        p->state = HP_DONE;
        return SD_HTTP_DONE;
    } else {
        p->remaining = p->content_length;
        p->state = HP_BODY_LEN;
    }
    return SD_HTTP_PARTIAL;
}

static enum sd_http_state on_chunk_size(struct sd_http_parser *p, const char *l, size_t n)
{
    size_t v = 0, i = 0;
    for (; i < n; i++) {
        int d;
        char c = l[i];
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            break;
        if (v > (SD_HTTP_MAX_BODY >> 4))
            return fail(p, "chunk too large");
        v = v * 16 + (size_t)d;
    }
    if (i == 0 || (i < n && l[i] != ';' && l[i] != ' ' && l[i] != '\t'))
        return fail(p, "bad chunk size");
    if (v > SD_HTTP_MAX_BODY - p->body_len)
        return fail(p, "body too large");
    if (v == 0) {
        p->state = HP_TRAILERS;
    } else {
        p->remaining = v;
        p->state = HP_CHUNK_DATA;
    }
    return SD_HTTP_PARTIAL;
}

static enum sd_http_state on_line(struct sd_http_parser *p, const char *l, size_t n)
{
    switch (p->state) {
    case HP_STATUS:
        return on_status_line(p, l, n);
    case HP_HEADERS:
        return n == 0 ? on_headers_end(p) : on_header_line(p, l, n);
    case HP_CHUNK_SIZE:
        return on_chunk_size(p, l, n);
    case HP_CHUNK_CRLF:
        if (n != 0)
            return fail(p, "missing CRLF after chunk");
        p->state = HP_CHUNK_SIZE;
        return SD_HTTP_PARTIAL;
    case HP_TRAILERS:
        if (n == 0) {
            p->state = HP_DONE;
            return SD_HTTP_DONE;
        }
        return memchr(l, ':', n) ? SD_HTTP_PARTIAL : fail(p, "bad trailer line");
    default:
        return fail(p, "internal: line in a body state");
    }
}

static size_t line_limit(const struct sd_http_parser *p)
{
    if (p->state == HP_CHUNK_SIZE || p->state == HP_CHUNK_CRLF)
        return SD_HTTP_CHUNK_LINE_MAX;
    return SD_HTTP_LINE_MAX;
}

static bool counts_as_head(const struct sd_http_parser *p)
{
    return p->state == HP_STATUS || p->state == HP_HEADERS || p->state == HP_TRAILERS;
}

/*
 * Consume bytes of a line-oriented state up to and including LF. Lines end in
 * CRLF (a bare LF is tolerated). Returns the bytes used; *st gets the result
 * when a line completed or an error happened.
 */
static size_t feed_line(struct sd_http_parser *p, const char *d, size_t len, enum sd_http_state *st)
{
    const char *lf = memchr(d, '\n', len);
    size_t take = lf ? (size_t)(lf - d) + 1 : len;
    size_t content = lf ? take - 1 : take;

    if (counts_as_head(p)) {
        p->head_bytes += take;
        if (p->head_bytes > SD_HTTP_MAX_HEADER) {
            *st = fail(p, "header too large");
            return take;
        }
    }
    if (p->line_len + content > line_limit(p)) {
        *st = fail(p, p->state == HP_CHUNK_SIZE ? "bad chunk size" : "line too long");
        return take;
    }
    memcpy(p->line + p->line_len, d, content);
    p->line_len += content;
    if (!lf)
        return take;
    size_t n = p->line_len;
    if (n > 0 && p->line[n - 1] == '\r')
        n--;
    p->line_len = 0;
    if (memchr(p->line, '\r', n) || memchr(p->line, '\0', n)) {
        *st = fail(p, "control character in a line");
        return take;
    }
    *st = on_line(p, p->line, n);
    return take;
}

static bool body_append(struct sd_http_parser *p, const char *d, size_t n)
{
    if (n > SD_HTTP_MAX_BODY - p->body_len)
        return false;
    if (p->body_len + n + 1 > p->body_cap) {
        size_t cap = p->body_cap ? p->body_cap : 1024;
        while (cap < p->body_len + n + 1)
            cap *= 2;
        char *nb = realloc(p->body, cap);
        if (!nb)
            return false;
        p->body = nb;
        p->body_cap = cap;
    }
    memcpy(p->body + p->body_len, d, n);
    p->body_len += n;
    p->body[p->body_len] = '\0';
    return true;
}

/* Body bytes of a Content-Length body, a chunk, or a close-delimited body. */
static size_t feed_body(struct sd_http_parser *p, const char *d, size_t len, enum sd_http_state *st)
{
    size_t take = len;
    if (p->state != HP_BODY_CLOSE && take > p->remaining)
        take = p->remaining;
    if (!body_append(p, d, take)) {
        *st = fail(p, "body too large");
        return take;
    }
    if (p->state == HP_BODY_CLOSE)
        return take;
    p->remaining -= take;
    if (p->remaining > 0)
        return take;
    if (p->state == HP_BODY_LEN) {
        p->state = HP_DONE;
        *st = SD_HTTP_DONE;
    } else {
        p->state = HP_CHUNK_CRLF;
    }
    return take;
}

enum sd_http_state sd_http_parser_feed(struct sd_http_parser *p, const char *data, size_t len, bool eof,
                                       size_t *used)
{
    size_t off = 0;
    enum sd_http_state st = SD_HTTP_PARTIAL;

    while (off < len && p->state != HP_DONE && p->state != HP_ERROR) {
        st = SD_HTTP_PARTIAL;
        if (p->state == HP_BODY_LEN || p->state == HP_CHUNK_DATA || p->state == HP_BODY_CLOSE)
            off += feed_body(p, data + off, len - off, &st);
        else
            off += feed_line(p, data + off, len - off, &st);
    }
    if (used)
        *used = off;
    if (p->state == HP_DONE)
        return SD_HTTP_DONE;
    if (p->state == HP_ERROR)
        return SD_HTTP_ERROR;
    if (eof) {
        if (p->state == HP_BODY_CLOSE) {
            p->state = HP_DONE;
            return SD_HTTP_DONE;
        }
        return fail(p, p->state == HP_STATUS && p->line_len == 0 && p->head_bytes == 0
                           ? "connection closed before a response"
                           : "connection closed mid-response");
    }
    return SD_HTTP_PARTIAL;
}

/* ------------------------------------------------------------------ results */

int sd_http_status(const struct sd_http_parser *p)
{
    return p->status;
}

int sd_http_retry_after(const struct sd_http_parser *p)
{
    return p->retry_after;
}

bool sd_http_keep_alive(const struct sd_http_parser *p)
{
    if (p->state != HP_DONE || p->close_delimited || p->conn_close)
        return false;
    if (p->minor == 0)
        return p->conn_keep_alive;
    return true;
}

const char *sd_http_body(const struct sd_http_parser *p, size_t *len)
{
    if (len)
        *len = p->body_len;
    return p->body_len ? p->body : NULL;
}

const char *sd_http_error(const struct sd_http_parser *p)
{
    return p->error ? p->error : "";
}
