/*
 * redisbus.c - the control plane's `cmd` and `sub` Redis connections and the
 * dispatch of subscribed messages to the modules that registered them, and
 * the subscription's own heartbeat (redisbus.h). Connection upkeep (connect
 * deadline, backoff, AUTH, the `cmd` heartbeat) is common/redisconn.c's.
 *
 * The `sub` heartbeat: a subscribed RESP2 connection takes no PING that
 * hiredis 0.14 can route back to us (the ["pong", ""] array is taken for a
 * pattern message and the callback is never released), so we send SUBSCRIBE
 * again for the first registered channel. Redis answers it with a
 * confirmation, in order after every message queued for us before it, and
 * the ACL already allows it. The answer to a heartbeat sent at T proves that
 * everything Redis published before T has been read.
 */
#include "redisbus.h"

#include <hiredis/async.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "redisconn.h"
#include "util.h"

struct redisbus {
    struct redisconn *sub;
    struct redisconn *cmd;
    struct redisbus_sub subs[REDISBUS_MAX_SUBS];
    bool confirmed[REDISBUS_MAX_SUBS];
    int nsubs;
    void (*cmd_up)(void *arg);
    void (*cmd_down)(void *arg);
    void *cmd_arg;
    /* the sub heartbeat */
    struct event *hb_timer;
    int hb_interval_ms, hb_timeout_ms;
    int64_t subscribe_sent_ms;   /* when the (re)subscription was sent */
    bool hb_outstanding;
    int64_t hb_sent_ms;
    int64_t proven_ms;           /* see redisbus_sub_proven_ms; 0: not subscribed */
};

static bool bus_str(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING;
}

static int bus_find(const struct redisbus *b, bool pattern, const redisReply *chan)
{
    for (int i = 0; i < b->nsubs; i++)
        if (b->subs[i].pattern == pattern && strlen(b->subs[i].channel) == chan->len &&
            memcmp(b->subs[i].channel, chan->str, chan->len) == 0)
            return i;
    return -1;
}

static void bus_on_sub_reply(redisAsyncContext *ac, void *r, void *privdata);

static bool bus_all_confirmed(const struct redisbus *b)
{
    for (int i = 0; i < b->nsubs; i++)
        if (!b->confirmed[i])
            return false;
    return b->nsubs > 0;
}

/* A confirmation of a channel confirmed already: the answer to our heartbeat.
 * Everything Redis published before we sent it has been read by now. */
static void bus_on_heartbeat(struct redisbus *b)
{
    int64_t now = util_mono_ms();
    if (!b->hb_outstanding)
        return;
    b->hb_outstanding = false;
    if (now - b->hb_sent_ms > b->hb_interval_ms * 2)
        log_debug("event=redis_sub_heartbeat_slow rtt_ms=%lld", (long long)(now - b->hb_sent_ms));
    b->proven_ms = b->hb_sent_ms;
}

/* Every hb_interval_ms: send the next heartbeat, or drop a subscription
 * that has not answered the last one within hb_timeout_ms (a connection
 * that silently stopped delivering: no FIN, no RST). */
static void bus_on_hb_timer(evutil_socket_t fd, short what, void *arg)
{
    struct redisbus *b = arg;
    struct timeval tv = {b->hb_interval_ms / 1000, (b->hb_interval_ms % 1000) * 1000};
    int64_t now = util_mono_ms();
    (void)fd; (void)what;
    if (event_add(b->hb_timer, &tv) != 0)
        log_error("event=timer_failed timer=redis_sub_heartbeat");
    if (!redisconn_is_up(b->sub))
        return;
    if (!bus_all_confirmed(b)) {
        /* the subscription itself unanswered: the same bound as a heartbeat */
        if (b->subscribe_sent_ms && now - b->subscribe_sent_ms >= b->hb_timeout_ms) {
            log_warn("event=redis_unresponsive conn=sub waited_ms=%lld note=\"subscription not confirmed\"",
                     (long long)(now - b->subscribe_sent_ms));
            redisconn_drop(b->sub, "unresponsive");
        }
        return;
    }
    if (b->hb_outstanding) {
        if (now - b->hb_sent_ms >= b->hb_timeout_ms) {
            log_warn("event=redis_unresponsive conn=sub waited_ms=%lld note=\"subscription heartbeat\"",
                     (long long)(now - b->hb_sent_ms));
            b->hb_outstanding = false;
            redisconn_drop(b->sub, "unresponsive");
        }
        return;
    }
    /* The callback must be the channel's own: hiredis keeps one per channel. */
    if (b->subs[0].pattern ? redisconn_command(b->sub, bus_on_sub_reply, b, "PSUBSCRIBE %s", b->subs[0].channel)
                           : redisconn_command(b->sub, bus_on_sub_reply, b, "SUBSCRIBE %s", b->subs[0].channel)) {
        b->hb_outstanding = true;
        b->hb_sent_ms = now;
    }
}

/* Every reply on `sub`: subscribe confirmations (the first ones, then the
 * heartbeat's) and messages. */
static void bus_on_sub_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisbus *b = privdata;
    redisReply *reply = r;
    const redisReply *kind;
    int i;
    (void)ac;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 || !bus_str(reply->element[0]) ||
        !bus_str(reply->element[1]))
        return;
    kind = reply->element[0];
    if (strcmp(kind->str, "subscribe") == 0 || strcmp(kind->str, "psubscribe") == 0) {
        if ((i = bus_find(b, kind->str[0] == 'p', reply->element[1])) < 0)
            return;
        if (b->confirmed[i]) {
            bus_on_heartbeat(b);
            return;
        }
        b->confirmed[i] = true;
        if (bus_all_confirmed(b))
            b->proven_ms = b->subscribe_sent_ms;   /* before on_subscribed: it may trust at once */
        log_info("event=subscribed channel=%s", b->subs[i].channel);
        if (b->subs[i].on_subscribed)
            b->subs[i].on_subscribed(b->subs[i].arg);
    } else if (strcmp(kind->str, "message") == 0 && bus_str(reply->element[2])) {
        if ((i = bus_find(b, false, reply->element[1])) >= 0)
            b->subs[i].on_message(reply->element[1]->str, reply->element[1]->len, reply->element[2]->str,
                                  reply->element[2]->len, b->subs[i].arg);
    } else if (strcmp(kind->str, "pmessage") == 0 && reply->elements == 4 && bus_str(reply->element[2]) &&
               bus_str(reply->element[3])) {
        if ((i = bus_find(b, true, reply->element[1])) >= 0)
            b->subs[i].on_message(reply->element[2]->str, reply->element[2]->len, reply->element[3]->str,
                                  reply->element[3]->len, b->subs[i].arg);
    }
}

static void bus_sub_up(struct redisconn *rc, void *arg)
{
    struct redisbus *b = arg;
    redisAsyncContext *ac = redisconn_ctx(rc);
    b->subscribe_sent_ms = util_mono_ms();
    b->hb_outstanding = false;
    for (int i = 0; i < b->nsubs; i++)
        if (redisAsyncCommand(ac, bus_on_sub_reply, b, b->subs[i].pattern ? "PSUBSCRIBE %s" : "SUBSCRIBE %s",
                              b->subs[i].channel) != REDIS_OK)
            log_warn("event=subscribe_failed channel=%s", b->subs[i].channel);
}

static void bus_sub_down(struct redisconn *rc, void *arg)
{
    struct redisbus *b = arg;
    (void)rc;
    b->proven_ms = 0;
    b->hb_outstanding = false;
    for (int i = 0; i < b->nsubs; i++) {
        bool was = b->confirmed[i];
        b->confirmed[i] = false;
        if (was && b->subs[i].on_unsubscribed)
            b->subs[i].on_unsubscribed(b->subs[i].arg);
    }
}

static void bus_cmd_up(struct redisconn *rc, void *arg)
{
    struct redisbus *b = arg;
    (void)rc;
    if (b->cmd_up)
        b->cmd_up(b->cmd_arg);
}

static void bus_cmd_down(struct redisconn *rc, void *arg)
{
    struct redisbus *b = arg;
    (void)rc;
    if (b->cmd_down)
        b->cmd_down(b->cmd_arg);
    /* The subscriber can't ping; if the server stopped answering the command
     * connection, the subscription is no better off. */
    redisconn_drop(b->sub, "cmd_down");
}

struct redisbus *redisbus_new(struct event_base *base, struct dns *dns, const struct redis_target *target,
                              const struct redis_auth *auth, int sub_heartbeat_ms)
{
    struct redisbus *b = xcalloc(1, sizeof *b);
    struct timeval tv;
    struct redisconn_opts sub = {
        .name = "sub", .target = target, .dns = dns, .connect_timeout_ms = 2000, .auth = auth,
        .on_up = bus_sub_up, .on_down = bus_sub_down, .arg = b,
    };
    struct redisconn_opts cmd = {
        .name = "cmd", .target = target, .dns = dns, .connect_timeout_ms = 2000, .auth = auth,
        .ping_interval_ms = 1000, .ping_timeout_ms = 3000,
        .on_up = bus_cmd_up, .on_down = bus_cmd_down, .arg = b,
    };
    b->hb_interval_ms = sub_heartbeat_ms > 0 ? sub_heartbeat_ms : 250;
    b->hb_timeout_ms = 3000;   /* as `cmd`'s: only then is the connection given up */
    tv = (struct timeval){b->hb_interval_ms / 1000, (b->hb_interval_ms % 1000) * 1000};
    b->hb_timer = evtimer_new(base, bus_on_hb_timer, b);
    if (!b->hb_timer || event_add(b->hb_timer, &tv) != 0) {
        log_error("event=event_new_failed");
        abort();
    }
    b->sub = redisconn_new(base, &sub);
    b->cmd = redisconn_new(base, &cmd);
    return b;
}

void redisbus_free(struct redisbus *b)
{
    if (!b)
        return;
    redisconn_free(b->sub);
    redisconn_free(b->cmd);
    event_free(b->hb_timer);
    free(b);
}

void redisbus_subscribe(struct redisbus *b, const struct redisbus_sub *s)
{
    if (b->nsubs == REDISBUS_MAX_SUBS) {
        log_error("event=too_many_subscriptions channel=%s", s->channel);
        abort();   /* a programming error: the bus is sized for the modules that exist */
    }
    b->subs[b->nsubs++] = *s;
}

void redisbus_on_cmd(struct redisbus *b, void (*up)(void *arg), void (*down)(void *arg), void *arg)
{
    b->cmd_up = up;
    b->cmd_down = down;
    b->cmd_arg = arg;
}

struct redisAsyncContext *redisbus_cmd(struct redisbus *b)
{
    return redisconn_is_up(b->cmd) ? redisconn_ctx(b->cmd) : NULL;
}

bool redisbus_is_ready(const struct redisbus *b)
{
    for (int i = 0; i < b->nsubs; i++)
        if (!b->confirmed[i])
            return false;
    return redisconn_is_up(b->sub) && redisconn_is_up(b->cmd);
}

int64_t redisbus_sub_proven_ms(const struct redisbus *b)
{
    return bus_all_confirmed(b) && redisconn_is_up(b->sub) ? b->proven_ms : 0;
}

void redisbus_drain(struct redisbus *b)
{
    redisAsyncContext *ac = redisconn_ctx(b->sub);
    /* A read with nothing pending returns EAGAIN, which hiredis ignores. */
    if (ac && redisconn_is_up(b->sub))
        redisAsyncHandleRead(ac);
}
