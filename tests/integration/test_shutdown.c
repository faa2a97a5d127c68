/*
 * test_shutdown - SIGTERM stops the control plane cleanly: exit 0 within 5 s,
 * also with an idle client connection open, and the port is released.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"

static int connect_idle(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        ts_fail("cannot connect to port %d", port);
    return fd;
}

static void test_sigterm(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "eu", NULL } };
    struct ts_cp *cp = ts_controlplane_start(&o);
    int64_t t0;
    int idle, half;

    if (!ts_controlplane_wait_ready(cp, 20000))
        ts_fail("not ready: %s", ts_resp_str(ts_get(cp, "/readyz")));
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"eu\"}"), 201);
    /* an idle connection and one with half a request must not hold the shutdown up */
    idle = connect_idle(cp->port);
    half = connect_idle(cp->port);
    if (write(half, "GET /v1/geographies HTTP/1.1\r\nHost: x\r\n", 39) != 39)
        ts_fail("write failed");
    ts_sleep_ms(100);

    t0 = ts_now_ms();
    ts_proc_kill(cp->proc, SIGTERM);
    if (!ts_proc_wait(cp->proc, 5000))
        ts_fail("controlplane still running 5 s after SIGTERM");
    ts_log("exited %lld ms after SIGTERM", (long long)(ts_now_ms() - t0));
    if (ts_proc_exit_code(cp->proc) != 0)
        ts_fail("controlplane exit after SIGTERM: code %d, signal %d (expected exit 0)", ts_proc_exit_code(cp->proc),
                ts_proc_term_signal(cp->proc));
    close(idle);
    close(half);
    /* the port is free: nothing answers there any more */
    {
        struct ts_resp *r = ts_get(cp, "/healthz");
        if (r->status != 0)
            ts_fail("something still answers on the port after exit: %s", ts_resp_str(r));
    }
}

/* SIGTERM during startup-time idleness right after it became healthy works as well. */
static void test_sigterm_early(void **state)
{
    struct ts_cp_opts o = { .name = "cp-early", .geo_ids = { "eu", NULL } };
    struct ts_cp *cp = ts_controlplane_start(&o);
    ts_proc_kill(cp->proc, SIGTERM);
    if (!ts_proc_wait(cp->proc, 5000))
        ts_fail("controlplane still running 5 s after an early SIGTERM");
    assert_int_equal(ts_proc_exit_code(cp->proc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm),
        cmocka_unit_test(test_sigterm_early),
    };
    ts_init("test_shutdown");
    return ts_finish(cmocka_run_group_tests(tests, NULL, NULL));
}
