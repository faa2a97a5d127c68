/*
 * fuzz_sd_http.c - libFuzzer harness: the device library's HTTP/1.1 response
 * parser (device/sd_http.c), which reads whatever the control plane, the
 * DPS or anything in between sends back.
 *
 * Input: one byte choosing how the stream is cut into reads (1-255 bytes,
 * or 0: all at once), then the response bytes; the peer closes after the
 * last byte. Up to 8 pipelined responses are parsed, the parser being reset
 * between them. Besides the sanitizers, the harness checks that the results
 * do not depend on how the bytes were split: the same stream fed in one
 * piece must give the same responses.
 */
#include <string.h>

#include "fuzz_util.h"
#include "sd_http.h"

#define MAX_RESP 8

struct outcome {
    enum sd_http_state st;
    int status, retry_after;
    bool keep_alive;
    size_t body_len;
    unsigned long body_sum;
    size_t consumed;   /* bytes of the stream up to the end of this response */
};

static int run(struct sd_http_parser *p, const uint8_t *data, size_t len, size_t chunk, struct outcome *out)
{
    size_t off = 0;
    int n = 0;

    sd_http_parser_reset(p);
    while (n < MAX_RESP) {
        enum sd_http_state st = SD_HTTP_PARTIAL;
        size_t used = 0;
        while (off < len || st == SD_HTTP_PARTIAL) {
            size_t take = chunk && len - off > chunk ? chunk : len - off;
            bool eof = off + take == len;
            used = 0;
            st = sd_http_parser_feed(p, (const char *)data + off, take, eof, &used);
            if (used > take)
                abort();
            off += used;
            if (st != SD_HTTP_PARTIAL)
                break;
            if (used != take)   /* a partial response consumes everything it is given */
                abort();
            if (eof)
                abort();        /* at EOF the answer is DONE or ERROR, never PARTIAL */
        }
        out[n].st = st;
        out[n].status = sd_http_status(p);
        out[n].retry_after = sd_http_retry_after(p);
        out[n].keep_alive = sd_http_keep_alive(p);
        out[n].consumed = off;
        out[n].body_sum = 0;
        {
            size_t bl = 0;
            const char *b = sd_http_body(p, &bl);
            if (bl > SD_HTTP_MAX_BODY || (bl && !b))
                abort();
            for (size_t i = 0; i < bl; i++)
                out[n].body_sum = out[n].body_sum * 31 + (unsigned char)b[i];
            out[n].body_len = bl;
        }
        (void)strlen(sd_http_error(p));
        n++;
        if (st != SD_HTTP_DONE || off >= len)
            break;
        sd_http_parser_reset(p);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct outcome a[MAX_RESP], b[MAX_RESP];
    struct sd_http_parser *p;
    int na, nb;

    if (size < 1)
        return 0;
    p = sd_http_parser_new();
    if (!p)
        abort();
    na = run(p, data + 1, size - 1, data[0], a);
    nb = data[0] ? run(p, data + 1, size - 1, 0, b) : na;
    if (data[0]) {
        if (na != nb)
            abort();
        for (int i = 0; i < na; i++)
            if (a[i].st != b[i].st || a[i].status != b[i].status || a[i].retry_after != b[i].retry_after ||
                a[i].keep_alive != b[i].keep_alive || a[i].body_len != b[i].body_len ||
                a[i].body_sum != b[i].body_sum || (a[i].st == SD_HTTP_DONE && a[i].consumed != b[i].consumed))
                abort();
    }
    sd_http_parser_free(p);
    return 0;
}
