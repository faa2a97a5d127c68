/*
 * test_sd_http.c - the device HTTP codec (device/sd_http.c): request bytes,
 * responses split at every byte boundary (Content-Length, chunked,
 * close-delimited), pipelined leftovers, keep-alive rules of HTTP/1.0 and 1.1,
 * Retry-After, and bad or oversized input, which must end in ERROR, never in
 * a crash.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd_http.h"

struct expect {
    int status;
    int retry_after;
    bool keep_alive;
    const char *body;
};

/* Feed resp in two pieces split at cut (eof after the last byte if eof). */
static void feed_split(const char *resp, size_t len, size_t cut, bool eof, const struct expect *e)
{
    struct sd_http_parser *p = sd_http_parser_new();
    size_t used = 0;
    assert_non_null(p);
    enum sd_http_state st = sd_http_parser_feed(p, resp, cut, false, &used);
    assert_int_equal(used, cut);
    if (st != SD_HTTP_DONE) {
        assert_int_equal(st, SD_HTTP_PARTIAL);
        st = sd_http_parser_feed(p, resp + cut, len - cut, eof, &used);
        assert_int_equal(used, len - cut);
    } else {
        assert_int_equal(cut, len);
    }
    assert_int_equal(st, SD_HTTP_DONE);
    assert_int_equal(sd_http_status(p), e->status);
    assert_int_equal(sd_http_retry_after(p), e->retry_after);
    assert_int_equal(sd_http_keep_alive(p), e->keep_alive);
    size_t blen;
    const char *b = sd_http_body(p, &blen);
    assert_int_equal(blen, strlen(e->body));
    if (blen)
        assert_memory_equal(b, e->body, blen);
    sd_http_parser_free(p);
}

static void every_split(const char *resp, bool eof, const struct expect *e)
{
    size_t len = strlen(resp);
    for (size_t cut = 0; cut <= len; cut++)
        feed_split(resp, len, cut, eof, e);
}

/* Byte by byte as well: every state sees one-byte inputs. */
static void byte_by_byte(const char *resp, bool eof, const struct expect *e)
{
    struct sd_http_parser *p = sd_http_parser_new();
    size_t len = strlen(resp), used;
    enum sd_http_state st = SD_HTTP_PARTIAL;
    for (size_t i = 0; i < len; i++) {
        assert_int_equal(st, SD_HTTP_PARTIAL);
        st = sd_http_parser_feed(p, resp + i, 1, false, &used);
        assert_int_equal(used, 1);
    }
    if (eof)
        st = sd_http_parser_feed(p, NULL, 0, true, &used);
    assert_int_equal(st, SD_HTTP_DONE);
    assert_int_equal(sd_http_status(p), e->status);
    size_t blen;
    sd_http_body(p, &blen);
    assert_int_equal(blen, strlen(e->body));
    sd_http_parser_free(p);
}

static void test_content_length(void **state)
{
    (void)state;
    const char *r = "HTTP/1.1 200 OK\r\ncontent-TYPE: application/json\r\nCONTENT-LENGTH: 13\r\n"
                    "X-Request-Id: abc\r\n\r\n{\"ok\":\"yes\"}\n";
    struct expect e = {200, -1, true, "{\"ok\":\"yes\"}\n"};
    every_split(r, false, &e);
    byte_by_byte(r, false, &e);
}

static void test_chunked(void **state)
{
    (void)state;
    const char *r = "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nretry-after: 3\r\n\r\n"
                    "5;name=value\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: 1\r\n\r\n";
    struct expect e = {202, 3, true, "hello, world!!!"};
    every_split(r, false, &e);
    byte_by_byte(r, false, &e);
}

static void test_close_delimited(void **state)
{
    (void)state;
    const char *r = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n{\"error\":1}";
    struct expect e = {503, 5, false, "{\"error\":1}"};
    every_split(r, true, &e);
    byte_by_byte(r, true, &e);
}

static void test_no_body_statuses(void **state)
{
    (void)state;
    struct expect e = {204, -1, true, ""};
    every_split("HTTP/1.1 204 No Content\r\n\r\n", false, &e);
    struct expect e0 = {200, -1, true, ""};
    every_split("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, &e0);
    /* interim 100 Continue, then the answer */
    struct expect e2 = {200, -1, true, "x"};
    every_split("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", false, &e2);
}

static void test_keep_alive_rules(void **state)
{
    (void)state;
    struct expect close11 = {200, -1, false, "ab"};
    every_split("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nab", false, &close11);
    struct expect plain10 = {200, -1, false, "ab"};
    every_split("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab", false, &plain10);
    struct expect ka10 = {200, -1, true, "ab"};
    every_split("HTTP/1.0 200 OK\r\nconnection: foo, Keep-Alive\r\nContent-Length: 2\r\n\r\nab", false, &ka10);
    /* bare LF line endings are tolerated */
    struct expect lf = {200, -1, true, "ab"};
    every_split("HTTP/1.1 200 OK\nContent-Length: 2\n\nab", false, &lf);
}

static void test_retry_after(void **state)
{
    (void)state;
    struct expect date = {429, -1, true, ""};
    every_split("HTTP/1.1 429 Too Many Requests\r\nRetry-After: Fri, 31 Dec 1999 23:59:59 GMT\r\n"
                "Content-Length: 0\r\n\r\n", false, &date);
    struct expect big = {429, -1, true, ""};
    every_split("HTTP/1.1 429 x\r\nRetry-After: 99999999999999999999\r\nContent-Length: 0\r\n\r\n", false, &big);
    struct expect neg = {429, -1, true, ""};
    every_split("HTTP/1.1 429 x\r\nRetry-After: -4\r\nContent-Length: 0\r\n\r\n", false, &neg);
    struct expect ok = {429, 120, true, ""};
    every_split("HTTP/1.1 429 x\r\nRetry-After:  120 \r\nContent-Length: 0\r\n\r\n", false, &ok);
}

static void test_pipelined(void **state)
{
    (void)state;
    const char *first = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none";
    const char *second = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n";
    char both[256];
    snprintf(both, sizeof both, "%s%s", first, second);
    size_t len = strlen(both), used = 0;
    struct sd_http_parser *p = sd_http_parser_new();

    assert_int_equal(sd_http_parser_feed(p, both, len, false, &used), SD_HTTP_DONE);
    assert_int_equal(used, strlen(first));
    assert_int_equal(sd_http_status(p), 200);
    /* feeding a finished parser consumes nothing */
    size_t again = 9;
    assert_int_equal(sd_http_parser_feed(p, both + used, len - used, false, &again), SD_HTTP_DONE);
    assert_int_equal(again, 0);

    sd_http_parser_reset(p);
    size_t used2 = 0;
    assert_int_equal(sd_http_parser_feed(p, both + used, len - used, false, &used2), SD_HTTP_DONE);
    assert_int_equal(used2, strlen(second));
    assert_int_equal(sd_http_status(p), 201);
    size_t blen;
    const char *b = sd_http_body(p, &blen);
    assert_int_equal(blen, 3);
    assert_memory_equal(b, "two", 3);
    sd_http_parser_free(p);
}

static void expect_error(const char *resp, size_t len, bool eof)
{
    /* whole, and split at every boundary: ERROR either way */
    for (size_t cut = 0; cut <= len; cut++) {
        struct sd_http_parser *p = sd_http_parser_new();
        size_t used;
        enum sd_http_state st = sd_http_parser_feed(p, resp, cut, false, &used);
        if (st == SD_HTTP_PARTIAL)
            st = sd_http_parser_feed(p, resp + cut, len - cut, eof, &used);
        assert_int_equal(st, SD_HTTP_ERROR);
        assert_true(strlen(sd_http_error(p)) > 0);
        assert_false(sd_http_keep_alive(p));
        sd_http_parser_free(p);
    }
}

static void test_bad_inputs(void **state)
{
    (void)state;
    const char *bad[] = {
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTX/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1 600 Nope\r\n\r\n",
        "garbage\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nContent-Length: 9999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", /* closed mid-body */
        "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(bad[i], strlen(bad[i]), true);
    expect_error("", 0, true); /* closed before anything */
}

static void test_huge_headers(void **state)
{
    (void)state;
    /* many small header lines past SD_HTTP_MAX_HEADER */
    size_t cap = SD_HTTP_MAX_HEADER * 2;
    char *r = malloc(cap);
    size_t n = (size_t)snprintf(r, cap, "HTTP/1.1 200 OK\r\n");
    while (n + 32 < cap)
        n += (size_t)snprintf(r + n, cap - n, "X-Pad: 0123456789abcdef\r\n");
    struct sd_http_parser *p = sd_http_parser_new();
    size_t used;
    assert_int_equal(sd_http_parser_feed(p, r, n, false, &used), SD_HTTP_ERROR);
    sd_http_parser_free(p);
    /* one endless line */
    memset(r, 'a', cap);
    memcpy(r, "HTTP/1.1 200 OK\r\nX-Long: ", 25);
    p = sd_http_parser_new();
    assert_int_equal(sd_http_parser_feed(p, r, cap, false, &used), SD_HTTP_ERROR);
    sd_http_parser_free(p);
    /* a chunked body beyond SD_HTTP_MAX_BODY */
    p = sd_http_parser_new();
    const char *h = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    enum sd_http_state st = sd_http_parser_feed(p, h, strlen(h), false, &used);
    char chunk[64];
    memset(r, 'b', 0x8000);
    for (int i = 0; i < 64 && st == SD_HTTP_PARTIAL; i++) {
        snprintf(chunk, sizeof chunk, "8000\r\n");
        st = sd_http_parser_feed(p, chunk, strlen(chunk), false, &used);
        if (st == SD_HTTP_PARTIAL)
            st = sd_http_parser_feed(p, r, 0x8000, false, &used);
        if (st == SD_HTTP_PARTIAL)
            st = sd_http_parser_feed(p, "\r\n", 2, false, &used);
    }
    assert_int_equal(st, SD_HTTP_ERROR);
    sd_http_parser_free(p);
    free(r);
}

static void test_random_garbage(void **state)
{
    (void)state;
    /* random bytes after a valid prefix and alone: any result but a crash */
    unsigned seed = 12345;
    char buf[512];
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)(rand_r(&seed) % sizeof buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)(rand_r(&seed) & 0xff);
        if (round % 2)
            memcpy(buf, "HTTP/1.1 200 OK\r\n", n < 17 ? n : 17);
        struct sd_http_parser *p = sd_http_parser_new();
        size_t used, off = 0;
        enum sd_http_state st = SD_HTTP_PARTIAL;
        while (off < n && st == SD_HTTP_PARTIAL) {
            size_t piece = 1 + (size_t)(rand_r(&seed) % 7);
            if (piece > n - off)
                piece = n - off;
            st = sd_http_parser_feed(p, buf + off, piece, false, &used);
            assert_true(used <= piece);
            off += used;
        }
        if (st == SD_HTTP_PARTIAL)
            st = sd_http_parser_feed(p, NULL, 0, true, &used);
        assert_true(st == SD_HTTP_DONE || st == SD_HTTP_ERROR);
        sd_http_parser_free(p);
    }
}

static void test_format_request(void **state)
{
    (void)state;
    struct sd_request rq;
    memset(&rq, 0, sizeof rq);
    rq.method = "POST";
    snprintf(rq.host, sizeof rq.host, "127.0.0.1:8080");
    snprintf(rq.path, sizeof rq.path, "/v1/tenants/t/registrations/d/locate");
    snprintf(rq.authorization, sizeof rq.authorization, "SharedAccessSignature sr=x&sig=y&se=1");
    snprintf(rq.body, sizeof rq.body, "{\"registrationId\":\"d\"}");
    char buf[2048];
    int n = sd_http_format_request(&rq, true, buf, sizeof buf);
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(buf));
    assert_non_null(strstr(buf, "POST /v1/tenants/t/registrations/d/locate HTTP/1.1\r\n"));
    assert_non_null(strstr(buf, "\r\nHost: 127.0.0.1:8080\r\n"));
    assert_non_null(strstr(buf, "\r\nAuthorization: SharedAccessSignature sr=x&sig=y&se=1\r\n"));
    assert_non_null(strstr(buf, "\r\nContent-Type: application/json\r\nContent-Length: 22\r\n"));
    assert_non_null(strstr(buf, "\r\nConnection: keep-alive\r\n\r\n{\"registrationId\":\"d\"}"));

    /* GET without a body or credential: no Content-Length, no Authorization */
    rq.method = "GET";
    rq.body[0] = '\0';
    rq.authorization[0] = '\0';
    n = sd_http_format_request(&rq, false, buf, sizeof buf);
    assert_true(n > 0);
    assert_null(strstr(buf, "Content-Length"));
    assert_null(strstr(buf, "Authorization"));
    assert_non_null(strstr(buf, "Connection: close\r\n\r\n"));
    /* POST without a body says Content-Length: 0 */
    rq.method = "POST";
    n = sd_http_format_request(&rq, true, buf, sizeof buf);
    assert_non_null(strstr(buf, "Content-Length: 0\r\n"));
    /* too small */
    assert_int_equal(sd_http_format_request(&rq, true, buf, 20), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_close_delimited),
        cmocka_unit_test(test_no_body_statuses),
        cmocka_unit_test(test_keep_alive_rules),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_huge_headers),
        cmocka_unit_test(test_random_garbage),
        cmocka_unit_test(test_format_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
