/*
 * redisbus.c - the control plane's `cmd` and `sub` Redis connections and the
 * dispatch of subscribed messages to the modules that registered them
 * (redisbus.h). Connection upkeep (connect deadline, backoff, AUTH,
 * heartbeat) is common/redisconn.c's.
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

/* Every reply on `sub`: subscribe confirmations and messages. */
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
        if ((i = bus_find(b, kind->str[0] == 'p', reply->element[1])) >= 0) {
            b->confirmed[i] = true;
            log_info("event=subscribed channel=%s", b->subs[i].channel);
            if (b->subs[i].on_subscribed)
                b->subs[i].on_subscribed(b->subs[i].arg);
        }
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
    for (int i = 0; i < b->nsubs; i++)
        if (redisAsyncCommand(ac, bus_on_sub_reply, b, b->subs[i].pattern ? "PSUBSCRIBE %s" : "SUBSCRIBE %s",
                              b->subs[i].channel) != REDIS_OK)
            log_warn("event=subscribe_failed channel=%s", b->subs[i].channel);
}

static void bus_sub_down(struct redisconn *rc, void *arg)
{
    struct redisbus *b = arg;
    (void)rc;
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
                              const struct redis_auth *auth)
{
    struct redisbus *b = xcalloc(1, sizeof *b);
    struct redisconn_opts sub = {
        .name = "sub", .target = target, .dns = dns, .connect_timeout_ms = 2000, .auth = auth,
        .on_up = bus_sub_up, .on_down = bus_sub_down, .arg = b,
    };
    struct redisconn_opts cmd = {
        .name = "cmd", .target = target, .dns = dns, .connect_timeout_ms = 2000, .auth = auth,
        .ping_interval_ms = 1000, .ping_timeout_ms = 3000,
        .on_up = bus_cmd_up, .on_down = bus_cmd_down, .arg = b,
    };
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

void redisbus_drain(struct redisbus *b)
{
    redisAsyncContext *ac = redisconn_ctx(b->sub);
    /* A read with nothing pending returns EAGAIN, which hiredis ignores. */
    if (ac && redisconn_is_up(b->sub))
        redisAsyncHandleRead(ac);
}
