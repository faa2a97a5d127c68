/*
 * test_dns.c - common/dns.c against a small DNS responder on loopback that
 * runs on the same event loop (UDP, one question per packet): numeric hosts
 * answered without a query and never synchronously, IPv4 preferred when a
 * name has both, IPv6 when it has only that, errors, cancellation (no
 * callback, nothing leaked), freeing with requests pending, and a
 * resolv.conf that can't be read.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dns.h"

struct responder {
    int fd;
    int port;
    struct event *ev;
    int queries;
};

/* Answer A/AAAA for dual.test (both), v6.test (AAAA only); NXDOMAIN for
 * nx.test; never for slow.test. */
static void responder_read(evutil_socket_t fd, short what, void *arg)
{
    struct responder *r = arg;
    unsigned char q[512], out[600];
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    ssize_t n = recvfrom(fd, q, sizeof q, 0, (struct sockaddr *)&from, &flen);
    char name[256] = "";
    size_t pos = 12, o = 0, qend;
    int qtype, rcode = 0, an = 0;
    static const unsigned char a[4] = {192, 0, 2, 7};
    static const unsigned char aaaa[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7};
    const unsigned char *rdata = NULL;
    int rdlen = 0;
    (void)what;
    if (n < 17)
        return;
    r->queries++;
    while (pos < (size_t)n && q[pos]) {   /* labels, lower-cased (evdns randomises case) */
        size_t l = q[pos++];
        for (size_t i = 0; i < l && pos < (size_t)n; i++, pos++) {
            char c = (char)q[pos];
            name[o++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        name[o++] = '.';
    }
    if (o)
        name[o - 1] = '\0';
    qend = pos + 5;
    if (qend > (size_t)n)
        return;
    qtype = (q[pos + 1] << 8) | q[pos + 2];
    if (strcmp(name, "slow.test") == 0)
        return;
    if (strcmp(name, "nx.test") == 0) {
        rcode = 3;
    } else if (qtype == 1 && strcmp(name, "dual.test") == 0) {
        rdata = a, rdlen = 4, an = 1;
    } else if (qtype == 28 && (strcmp(name, "dual.test") == 0 || strcmp(name, "v6.test") == 0)) {
        rdata = aaaa, rdlen = 16, an = 1;
    }
    memcpy(out, q, qend);
    out[2] = 0x84 | (q[2] & 1);   /* response, authoritative, RD copied */
    out[3] = (unsigned char)rcode;
    out[6] = 0, out[7] = (unsigned char)an;
    memset(out + 8, 0, 4);
    o = qend;
    if (an) {
        const unsigned char rr[] = {0xc0, 0x0c, 0, (unsigned char)qtype, 0, 1, 0, 0, 0, 0, 0, (unsigned char)rdlen};
        memcpy(out + o, rr, sizeof rr);
        o += sizeof rr;
        memcpy(out + o, rdata, (size_t)rdlen);
        o += (size_t)rdlen;
    }
    (void)sendto(fd, out, o, 0, (struct sockaddr *)&from, flen);
}

static struct responder *responder_start(struct event_base *base)
{
    struct responder *r = calloc(1, sizeof *r);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof sin;
    assert_non_null(r);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r->fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(r->fd >= 0);
    assert_int_equal(bind(r->fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(r->fd, (struct sockaddr *)&sin, &len), 0);
    r->port = ntohs(sin.sin_port);
    evutil_make_socket_nonblocking(r->fd);
    r->ev = event_new(base, r->fd, EV_READ | EV_PERSIST, responder_read, r);
    assert_non_null(r->ev);
    assert_int_equal(event_add(r->ev, NULL), 0);
    return r;
}

static void responder_stop(struct responder *r)
{
    event_free(r->ev);
    close(r->fd);
    free(r);
}

/* A resolv.conf naming only the responder. */
static const char *resolv_conf(int port)
{
    static char path[64];
    FILE *f;
    snprintf(path, sizeof path, "/tmp/test_dns_%d.conf", (int)getpid());
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "nameserver 127.0.0.1:%d\noptions timeout:2 attempts:1\n", port);
    fclose(f);
    return path;
}

struct answer {
    bool done;
    int err;
    char addr[DNS_ADDR_MAX];
};

static bool in_resolve;   /* set around dns_resolve(): a callback then would be synchronous */

static void on_answer(int err, const char *addr, void *arg)
{
    struct answer *a = arg;
    assert_false(in_resolve);
    assert_false(a->done);
    a->done = true;
    a->err = err;
    if (err)
        assert_null(addr);
    else
        snprintf(a->addr, sizeof a->addr, "%s", addr);
}

static void on_never(int err, const char *addr, void *arg)
{
    (void)err; (void)addr; (void)arg;
    fail_msg("a cancelled request called back");
}

static struct dns_req *ask(struct dns *d, const char *host, struct answer *a)
{
    struct dns_req *r;
    in_resolve = true;
    r = dns_resolve(d, host, on_answer, a);
    in_resolve = false;
    assert_non_null(r);
    return r;
}

static void run_until(struct event_base *base, struct answer *a, int n)
{
    for (int spins = 0; spins < 2000; spins++) {
        bool all = true;
        for (int i = 0; i < n; i++)
            all = all && a[i].done;
        if (all)
            return;
        event_base_loop(base, EVLOOP_ONCE);
    }
    fail_msg("no answer");
}

static void test_numeric_async(void **state)
{
    struct event_base *base = event_base_new();
    struct dns *d = dns_new(base, resolv_conf(1));
    struct answer a[3] = {{0}};
    (void)state;
    assert_non_null(d);
    ask(d, "127.0.0.1", &a[0]);
    ask(d, "::0001", &a[1]);
    ask(d, "0:0:0:0:0:ffff:c000:0201", &a[2]);
    assert_false(a[0].done);
    run_until(base, a, 3);
    assert_int_equal(a[0].err, 0);
    assert_string_equal(a[0].addr, "127.0.0.1");
    assert_string_equal(a[1].addr, "::1");
    assert_string_equal(a[2].addr, "::ffff:192.0.2.1");
    dns_free(d);
    event_base_free(base);
}

static void test_names(void **state)
{
    struct event_base *base = event_base_new();
    struct responder *resp = responder_start(base);
    struct dns *d = dns_new(base, resolv_conf(resp->port));
    struct answer a[3] = {{0}};
    (void)state;
    assert_non_null(d);
    ask(d, "Dual.Test", &a[0]);
    ask(d, "v6.test", &a[1]);
    ask(d, "nx.test", &a[2]);
    run_until(base, a, 3);
    assert_int_equal(a[0].err, 0);
    assert_string_equal(a[0].addr, "192.0.2.7");   /* IPv4 first */
    assert_int_equal(a[1].err, 0);
    assert_string_equal(a[1].addr, "2001:db8::7");
    assert_int_not_equal(a[2].err, 0);
    assert_non_null(dns_strerror(a[2].err));
    assert_true(resp->queries >= 6);
    dns_free(d);
    for (int i = 0; i < 4; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    responder_stop(resp);
    event_base_free(base);
}

static void test_cancel_and_free_pending(void **state)
{
    struct event_base *base = event_base_new();
    struct responder *resp = responder_start(base);
    struct dns *d = dns_new(base, resolv_conf(resp->port));
    struct answer a[1] = {{0}};
    struct dns_req *slow, *num;
    (void)state;
    assert_non_null(d);
    slow = dns_resolve(d, "slow.test", on_never, NULL);
    num = dns_resolve(d, "192.0.2.9", on_never, NULL);
    ask(d, "dual.test", &a[0]);
    dns_cancel(slow);
    dns_cancel(num);
    dns_cancel(NULL);
    run_until(base, a, 1);
    assert_string_equal(a[0].addr, "192.0.2.7");
    /* freed with a query in flight: no callback, and (under ASan) nothing leaks */
    (void)dns_resolve(d, "slow.test", on_never, NULL);
    (void)dns_resolve(d, "10.0.0.1", on_never, NULL);
    dns_free(d);
    for (int i = 0; i < 4; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    responder_stop(resp);
    event_base_free(base);
}

static void test_bad_resolv_conf(void **state)
{
    struct event_base *base = event_base_new();
    (void)state;
    assert_null(dns_new(base, "/nonexistent/resolv.conf"));
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numeric_async),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_cancel_and_free_pending),
        cmocka_unit_test(test_bad_resolv_conf),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char path[64];
    snprintf(path, sizeof path, "/tmp/test_dns_%d.conf", (int)getpid());
    unlink(path);
    return rc;
}
