/*
 * ratelimit.c - the token bucket script and its async call.
 */
#include "ratelimit.h"

#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

/* KEYS: buckets in order; ARGV: capacity_i, refill-per-ms_i pairs.
 * Returns {index admitted (1-based) or 0, ms until a token when 0}. */
static const char ratelimit_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "local minwait = -1 "
    "for i = 1, #KEYS do "
    "  local cap = tonumber(ARGV[2*i-1]) local rate = tonumber(ARGV[2*i]) "
    "  local b = redis.call('HMGET', KEYS[i], 'tokens', 'ts') "
    "  local tokens = tonumber(b[1]) local ts = tonumber(b[2]) "
    "  if tokens == nil or ts == nil then tokens = cap ts = now end "
    "  if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) ts = now end "
    "  local ttl = math.ceil(cap / rate) + 60000 "
    "  if tokens >= 1 then "
    "    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens - 1), 'ts', tostring(ts)) "
    "    redis.call('PEXPIRE', KEYS[i], ttl) "
    "    return {i, 0} "
    "  end "
    "  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'ts', tostring(ts)) "
    "  redis.call('PEXPIRE', KEYS[i], ttl) "
    "  local w = math.ceil((1 - tokens) / rate) "
    "  if minwait < 0 or w < minwait then minwait = w end "
    "end "
    "return {0, minwait}";

struct rl_call {
    ratelimit_cb cb;
    void *arg;
};

static void ratelimit_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rl_call *c = privdata;
    redisReply *reply = r;
    static int64_t errors;
    (void)ac;
    /* e.g. NOPERM when the control plane's Redis user lacks a rule: say so (rarely). */
    if (reply && reply->type == REDIS_REPLY_ERROR && errors++ % 1000 == 0)
        log_error("event=ratelimit_refused error=\"%.200s\" count=%lld", reply->str ? reply->str : "",
                  (long long)errors);
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[1]->type != REDIS_REPLY_INTEGER) {
        c->cb(RL_UNAVAILABLE, -1, 0, c->arg);
    } else if (reply->element[0]->integer > 0) {
        c->cb(RL_ADMITTED, (int)reply->element[0]->integer - 1, 0, c->arg);
    } else {
        c->cb(RL_THROTTLED, -1, reply->element[1]->integer, c->arg);
    }
    free(c);
}

void ratelimit_take(struct redisfeed *feed, const struct layout_dps *const *cands, int ncand,
                    ratelimit_cb cb, void *arg)
{
    redisAsyncContext *ac = redisfeed_cmd(feed);
    const char *argv[3 + 3 * RATELIMIT_MAX];
    size_t argl[3 + 3 * RATELIMIT_MAX];
    char keys[RATELIMIT_MAX][96], caps[RATELIMIT_MAX][24], rates[RATELIMIT_MAX][40], nkeys[8];
    struct rl_call *c;
    int argc = 0;

    if (ncand > RATELIMIT_MAX) ncand = RATELIMIT_MAX;
    if (!ac || ncand <= 0) {
        cb(RL_UNAVAILABLE, -1, 0, arg);
        return;
    }
    snprintf(nkeys, sizeof nkeys, "%d", ncand);
    argv[argc++] = "EVAL";
    argv[argc++] = ratelimit_lua;
    argv[argc++] = nkeys;
    for (int i = 0; i < ncand; i++) {
        snprintf(keys[i], sizeof keys[i], "dps:%.64s:bucket", cands[i]->id);
        argv[argc++] = keys[i];
    }
    for (int i = 0; i < ncand; i++) {
        snprintf(caps[i], sizeof caps[i], "%lld", (long long)cands[i]->per_minute);
        snprintf(rates[i], sizeof rates[i], "%.12g", (double)cands[i]->per_minute / 60000.0);
        argv[argc++] = caps[i];
        argv[argc++] = rates[i];
    }
    for (int i = 0; i < argc; i++)
        argl[i] = strlen(argv[i]);
    c = xcalloc(1, sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redisAsyncCommandArgv(ac, ratelimit_on_reply, c, argc, argv, argl) != REDIS_OK) {
        free(c);
        cb(RL_UNAVAILABLE, -1, 0, arg);
    }
}

int64_t ratelimit_retry_after_s(int64_t wait_ms)
{
    unsigned char r[2];
    int64_t jitter_max = wait_ms / 2 > 1000 ? wait_ms / 2 : 1000, jitter = 0;
    if (util_random_bytes(r, sizeof r))
        jitter = ((int64_t)r[0] << 8 | r[1]) * jitter_max / 65536;
    return (wait_ms + jitter + 999) / 1000;
}
