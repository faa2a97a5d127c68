/*
 * test_pg_late_cancel - a cancel request that arrives late never cancels the
 * next statement (common/pgpool.c, conn_cancel_done).
 *
 * pgpool cancels a statement that overran db.queryTimeoutMs by a CancelRequest
 * sent from a small thread. If the statement ends (by itself, or by the
 * server's statement_timeout) before that request reaches the server, and the
 * connection took the next statement at once, the late request would cancel
 * THAT statement - someone else's. So a connection whose cancelled statement
 * has ended waits for its cancel request to be delivered (within the grace
 * period) before it takes work.
 *
 * One pool connection to the test's own PostgreSQL server; query timeout
 * 3 s, no server-side statement_timeout, cancel grace 5 s. Only the
 * postmaster is SIGSTOPped (the backend runs on): a CancelRequest, which the
 * postmaster must accept, then waits in its listen queue.
 *   A  SELECT pg_sleep(3.5): times out at 3 s (answered PGQ_UNAVAILABLE at
 *      once), ends by itself at 3.5 s.
 *   B  SELECT pg_sleep(1.5), queued when A's answer arrives.
 *   At 4.2 s the postmaster continues: the cancel request lands.
 * B must succeed (without the wait it ran from 3.5 s and was cancelled at
 * 4.2 s, 57014), and it must have started only after 4.2 s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/types.h>
#include <cmocka.h>
#include <event2/event.h>

#include "pgpool.h"
#include "ts.h"

static struct ts_pgserver *pg;

struct run {
    struct event_base *base;
    struct pgpool *pool;
    pid_t postmaster;
    int64_t t0;
    enum pgq_status a_status, b_status;
    int64_t a_at, b_at;
    const char *b_message;
    bool a_done, b_done, continued;
    int64_t continued_at;
};

static void on_b(const struct pgq_result *q, void *arg)
{
    struct run *r = arg;
    r->b_status = q->status;
    r->b_message = q->message ? ts_str("%s", q->message) : "";
    r->b_at = ts_now_ms() - r->t0;
    r->b_done = true;
    event_base_loopbreak(r->base);
}

static void on_a(const struct pgq_result *q, void *arg)
{
    struct run *r = arg;
    r->a_status = q->status;
    r->a_at = ts_now_ms() - r->t0;
    r->a_done = true;
    ts_log("A answered %d after %lld ms; queueing B", q->status, (long long)r->a_at);
    pgpool_query(r->pool, "SELECT pg_sleep(1.5)", 0, NULL, on_b, r);
}

static void on_continue(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    (void)fd; (void)what;
    if (kill(r->postmaster, SIGCONT) != 0)
        ts_fail("SIGCONT postmaster");
    r->continued = true;
    r->continued_at = ts_now_ms() - r->t0;
    ts_log("postmaster continued after %lld ms", (long long)r->continued_at);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    event_base_loopbreak(((struct run *)arg)->base);
}

static int group_setup(void **state)
{
    (void)state;
    pg = ts_pgserver_start("late_cancel");
    return 0;
}

static void wait_ready(struct run *r)
{
    for (int i = 0; i < 200 && !pgpool_is_ready(r->pool); i++) {
        struct timeval tv = {0, 50 * 1000};
        event_base_loopexit(r->base, &tv);
        event_base_dispatch(r->base);
    }
    if (!pgpool_is_ready(r->pool))
        ts_fail("the pool never connected (%s)", pgpool_state_word(r->pool));
}

static void test_late_cancel_spares_next_statement(void **state)
{
    struct run r = {0};
    struct pgpool_opts o = {
        .name = "late", .conninfo = pg->conninfo, .size = 1,
        .connect_timeout_ms = 5000, .query_timeout_ms = 3000, .queue_timeout_ms = 10000, .max_queue = 16,
        .statement_timeout_ms = -1, .lock_timeout_ms = -1, .idle_in_tx_timeout_ms = -1,
        .cancel_grace_ms = 5000, .application_name = "test_pg_late_cancel",
    };
    struct timeval cont = {4, 200 * 1000}, end = {12, 0};
    struct event *ev_cont, *ev_end;
    (void)state;

    r.base = event_base_new();
    r.pool = pgpool_new(r.base, &o);
    wait_ready(&r);
    if ((r.postmaster = ts_pgserver_postmaster(pg)) < 0)
        ts_fail("no postmaster.pid under %s", pg->dir);

    if (kill(r.postmaster, SIGSTOP) != 0)
        ts_fail("SIGSTOP postmaster");
    r.t0 = ts_now_ms();
    pgpool_query(r.pool, "SELECT pg_sleep(3.5)", 0, NULL, on_a, &r);
    ev_cont = evtimer_new(r.base, on_continue, &r);
    ev_end = evtimer_new(r.base, on_deadline, &r);
    evtimer_add(ev_cont, &cont);
    evtimer_add(ev_end, &end);
    event_base_dispatch(r.base);
    if (!r.continued)
        (void)kill(r.postmaster, SIGCONT);

    assert_true(r.a_done);
    assert_int_equal(r.a_status, PGQ_UNAVAILABLE);   /* timed out: answered at once */
    if (r.a_at < 2900 || r.a_at > 3600)
        ts_fail("A answered after %lld ms, not at its 3 s timeout", (long long)r.a_at);
    if (!r.b_done)
        ts_fail("B never answered");
    ts_log("B answered %d after %lld ms (%s)", r.b_status, (long long)r.b_at, r.b_message);
    if (r.b_status != PGQ_OK)
        ts_fail("B failed (%s): the late cancel request hit it", r.b_message);
    /* B ran only once the cancel request was delivered (at 4.2 s): 1.5 s later */
    if (r.b_at < r.continued_at + 1400)
        ts_fail("B answered at %lld ms: it ran before the cancel request was delivered (%lld ms)",
                (long long)r.b_at, (long long)r.continued_at);

    event_free(ev_cont);
    event_free(ev_end);
    pgpool_free(r.pool);
    event_base_free(r.base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_late_cancel_spares_next_statement),
    };
    ts_init("test_pg_late_cancel");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
