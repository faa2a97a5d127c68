/*
 * ratelimit.c - the token bucket script and its async call.
 */
#include "ratelimit.h"

#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "ratelimit_epoch.h"
#include "redisconn.h"
#include "util.h"

/* KEYS: the n DPS buckets in order, then (only for a tenant with limits) the
 * tenant's bucket, its "placing" and its "placed" sets. ARGV: n, tenant capacity (0: none), tenant refill
 * per ms, maxDevices (-1: none), committed devices, reservation member, T0,
 * the longest window, reservation ms, then capacity_i, refill-per-ms_i pairs.
 * The last KEY is the epoch hash and the last two ARGV are the epoch this
 * router saw last ("" if none) and a fresh id should the epoch be missing
 * (ratelimit.h, "After Redis loses its data").
 * Returns {index admitted (1-based), 0, epoch}, {0, ms until a DPS token, epoch},
 * {-1, ms until a tenant token, epoch}, {-2, ms to wait, epoch} (quota
 * pending) or {-3, 0, epoch} (stale reservation). */
static const char ratelimit_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "local n = tonumber(ARGV[1]) "
    "local tcap = tonumber(ARGV[2]) local trate = tonumber(ARGV[3]) "
    "local maxdev = tonumber(ARGV[4]) local count = tonumber(ARGV[5]) local me = ARGV[6] "
    "local tk = KEYS[n + 1] local pk = KEYS[n + 2] local dk = KEYS[n + 3] "
    "local ek = KEYS[#KEYS] local known = ARGV[#ARGV - 1] "
    "local e = redis.call('HMGET', ek, 'id', 'since', 'cold') "
    "local eid = e[1] local since = tonumber(e[2]) local cold = e[3] == '1' "
    "if not eid or not since then "
    "  eid = ARGV[#ARGV] since = now cold = known ~= '' "
    "  redis.call('HSET', ek, 'id', eid, 'since', tostring(since), 'cold', cold and '1' or '0') "
    "elseif known ~= '' and known ~= eid and not cold then "
    "  cold = true redis.call('HSET', ek, 'cold', '1') "
    "end "
    "local function fresh(cap, rate) "
    "  if cold then return math.min(cap, math.max(0, now - since) * rate) end "
    "  return cap "
    "end "
    "if maxdev >= 0 then "
    "  local t0 = tonumber(ARGV[7]) "
    "  redis.call('ZREMRANGEBYSCORE', pk, '-inf', now) "
    "  redis.call('ZREMRANGEBYSCORE', dk, '-inf', now - 60000) "
    "  if not redis.call('ZSCORE', pk, me) or now - t0 > tonumber(ARGV[8]) then "
    "    redis.call('ZREM', pk, me) "
    "    return {-3, 0, eid} "
    "  end "
    "  local p = redis.call('ZCARD', pk) - 1 + redis.call('ZCOUNT', dk, t0, '+inf') "
    "  if count + p >= maxdev then "
    "    redis.call('ZREM', pk, me) "
    "    return {-2, 1000, eid} "
    "  end "
    "end "
    "local tt = 0 local tts = now "
    "if tcap > 0 then "
    "  local b = redis.call('HMGET', tk, 'tokens', 'ts') "
    "  tt = tonumber(b[1]) tts = tonumber(b[2]) "
    "  if tt == nil or tts == nil then tt = fresh(tcap, trate) tts = now end "
    "  if now > tts then tt = math.min(tcap, tt + (now - tts) * trate) tts = now end "
    "  if tt < 1 then "
    "    redis.call('HSET', tk, 'tokens', tostring(tt), 'ts', tostring(tts)) "
    "    redis.call('PEXPIRE', tk, math.ceil(tcap / trate) + 60000) "
    "    if maxdev >= 0 then redis.call('ZREM', pk, me) end "
    "    return {-1, math.ceil((1 - tt) / trate), eid} "
    "  end "
    "end "
    "local minwait = -1 "
    "for i = 1, n do "
    "  local cap = tonumber(ARGV[8 + 2*i]) local rate = tonumber(ARGV[9 + 2*i]) "
    "  local b = redis.call('HMGET', KEYS[i], 'tokens', 'ts') "
    "  local tokens = tonumber(b[1]) local ts = tonumber(b[2]) "
    "  if tokens == nil or ts == nil then tokens = fresh(cap, rate) ts = now end "
    "  if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) ts = now end "
    "  local ttl = math.ceil(cap / rate) + 60000 "
    "  if tokens >= 1 then "
    "    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens - 1), 'ts', tostring(ts)) "
    "    redis.call('PEXPIRE', KEYS[i], ttl) "
    "    if tcap > 0 then "
    "      redis.call('HSET', tk, 'tokens', tostring(tt - 1), 'ts', tostring(tts)) "
    "      redis.call('PEXPIRE', tk, math.ceil(tcap / trate) + 60000) "
    "    end "
    "    if maxdev >= 0 then "
    "      redis.call('ZADD', pk, now + tonumber(ARGV[9]), me) "
    "      redis.call('PEXPIRE', pk, tonumber(ARGV[9]) + 60000) "
    "    end "
    "    return {i, 0, eid} "
    "  end "
    "  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'ts', tostring(ts)) "
    "  redis.call('PEXPIRE', KEYS[i], ttl) "
    "  local w = math.ceil((1 - tokens) / rate) "
    "  if minwait < 0 or w < minwait then minwait = w end "
    "end "
    "if maxdev >= 0 then redis.call('ZREM', pk, me) end "
    "return {0, minwait, eid}";

/* KEYS: "placing"; ARGV: member, reservation ms. Returns Redis's time (ms). */
static const char ratelimit_reserve_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 60000) "
    "return now";

/* KEYS: "placing", "placed"; ARGV: member, 1 = committed / 0 = not. */
static const char ratelimit_settle_lua[] =
    "redis.call('ZREM', KEYS[1], ARGV[1]) "
    "if ARGV[2] == '1' then "
    "  local t = redis.call('TIME') "
    "  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "  redis.call('ZADD', KEYS[2], now, ARGV[1]) "
    "  redis.call('PEXPIRE', KEYS[2], 120000) "
    "end "
    "return 1";

/* The epoch key: inside the dps:*:bucket pattern that the control plane's
 * Redis ACL already grants ('@' is never in a DPS id). */
#define RATELIMIT_EPOCH_KEY "dps:@epoch:bucket"

/* The bucket epoch this process knows (ratelimit_epoch.c: the last one Redis
 * named, else the global catalog's) is the memory that Redis had bucket
 * state, which a Redis that lost its data cannot give back (ratelimit.h). */

/* KEYS: the DPS bucket that gave the token, then (optional) the tenant's
 * bucket; ARGV: capacity, capacity of the tenant's bucket. Gives the token
 * back to each bucket that still exists (never above its capacity; a bucket
 * gone since is not re-created: a missing bucket starts by the script's rule). */
static const char ratelimit_refund_lua[] =
    "for i = 1, #KEYS do "
    "  local cap = tonumber(ARGV[i]) "
    "  local b = redis.call('HMGET', KEYS[i], 'tokens', 'ts') "
    "  local tokens = tonumber(b[1]) "
    "  if tokens ~= nil and b[2] then "
    "    redis.call('HSET', KEYS[i], 'tokens', tostring(math.min(cap, tokens + 1))) "
    "  end "
    "end "
    "return 1";

struct rl_call {
    ratelimit_cb cb;
    void *arg;
};

/* Remember the epoch an answer names (the script's third element). */
static void ratelimit_note_epoch(const redisReply *reply)
{
    const redisReply *e = reply->elements >= 3 ? reply->element[2] : NULL;
    const char *previous;
    if (e && (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) &&
        (previous = ratelimit_epoch_note(e->str, e->len)) != NULL)
        log_warn("event=ratelimit_epoch_changed previous=%s now=%.*s note=\"Redis lost the bucket state: "
                 "missing buckets start empty and refill\"", previous, (int)e->len, e->str);
}

static void ratelimit_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rl_call *c = privdata;
    redisReply *reply = r;
    static int64_t errors;
    /* READONLY: the server became a replica; its connection goes back to the Sentinels. */
    redisconn_note_reply(redisconn_of(ac), reply);
    /* e.g. NOPERM when the control plane's Redis user lacks a rule: say so (rarely). */
    if (reply && reply->type == REDIS_REPLY_ERROR && errors++ % 1000 == 0)
        log_error("event=ratelimit_refused error=\"%.200s\" count=%lld", reply->str ? reply->str : "",
                  (long long)errors);
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[1]->type != REDIS_REPLY_INTEGER) {
        c->cb(RL_UNAVAILABLE, -1, 0, c->arg);
        free(c);
        return;
    }
    ratelimit_note_epoch(reply);
    if (reply->element[0]->integer > 0) {
        c->cb(RL_ADMITTED, (int)reply->element[0]->integer - 1, 0, c->arg);
    } else if (reply->element[0]->integer == -1) {
        c->cb(RL_TENANT_THROTTLED, -1, reply->element[1]->integer, c->arg);
    } else if (reply->element[0]->integer == -2) {
        c->cb(RL_QUOTA_PENDING, -1, reply->element[1]->integer, c->arg);
    } else if (reply->element[0]->integer == -3) {
        c->cb(RL_QUOTA_STALE, -1, 0, c->arg);
    } else {
        c->cb(RL_THROTTLED, -1, reply->element[1]->integer, c->arg);
    }
    free(c);
}

void ratelimit_take(struct redisbus *bus, const struct layout_dps *const *cands, int ncand,
                    const struct ratelimit_tenant *tenant, ratelimit_cb cb, void *arg)
{
    redisAsyncContext *ac = redisbus_cmd(bus);
    const char *argv[3 + 4 + 9 + 3 * RATELIMIT_MAX + 2];
    size_t argl[3 + 4 + 9 + 3 * RATELIMIT_MAX + 2];
    char newepoch[33];
    char keys[RATELIMIT_MAX][96], caps[RATELIMIT_MAX][24], rates[RATELIMIT_MAX][40], nkeys[16], n[16];
    char tkey[96], pkey[96], dkey[96], tcap[24], trate[40], maxdev[24], count[24], t0[24], window[24], hold[24];
    bool quota = tenant && tenant->max_devices >= 0 && tenant->reservation;
    /* A tenant without limits names no tenant key: the script touches none,
     * and a Redis ACL from before tenant limits still admits the call. */
    bool tkeys = quota || (tenant && tenant->per_minute > 0);
    struct rl_call *c;
    int argc = 0;

    if (ncand > RATELIMIT_MAX) ncand = RATELIMIT_MAX;
    if (!ac || ncand <= 0) {
        cb(RL_UNAVAILABLE, -1, 0, arg);
        return;
    }
    snprintf(nkeys, sizeof nkeys, "%d", ncand + (tkeys ? 3 : 0) + 1);
    snprintf(n, sizeof n, "%d", ncand);
    argv[argc++] = "EVAL";
    argv[argc++] = ratelimit_lua;
    argv[argc++] = nkeys;
    for (int i = 0; i < ncand; i++) {
        snprintf(keys[i], sizeof keys[i], "dps:%.64s:bucket", cands[i]->id);
        argv[argc++] = keys[i];
    }
    if (tkeys) {
        snprintf(tkey, sizeof tkey, "tenant:%.64s:bucket", tenant->id);
        snprintf(pkey, sizeof pkey, "tenant:%.64s:placing", tenant->id);
        snprintf(dkey, sizeof dkey, "tenant:%.64s:placed", tenant->id);
        argv[argc++] = tkey;
        argv[argc++] = pkey;
        argv[argc++] = dkey;
    }
    argv[argc++] = RATELIMIT_EPOCH_KEY;
    snprintf(tcap, sizeof tcap, "%lld", tenant && tenant->per_minute > 0 ? (long long)tenant->per_minute : 0LL);
    snprintf(trate, sizeof trate, "%.12g",
             tenant && tenant->per_minute > 0 ? (double)tenant->per_minute / 60000.0 : 0.0);
    snprintf(maxdev, sizeof maxdev, "%lld", quota ? (long long)tenant->max_devices : -1LL);
    snprintf(count, sizeof count, "%lld", quota ? (long long)tenant->devices : 0LL);
    snprintf(t0, sizeof t0, "%lld", quota ? (long long)tenant->reserved_at : 0LL);
    snprintf(window, sizeof window, "%d", RATELIMIT_QUOTA_MAX_WINDOW_MS);
    snprintf(hold, sizeof hold, "%d", RATELIMIT_QUOTA_RESERVE_MS);
    argv[argc++] = n;
    argv[argc++] = tcap;
    argv[argc++] = trate;
    argv[argc++] = maxdev;
    argv[argc++] = count;
    argv[argc++] = quota ? tenant->reservation : "-";
    argv[argc++] = t0;
    argv[argc++] = window;
    argv[argc++] = hold;
    for (int i = 0; i < ncand; i++) {
        snprintf(caps[i], sizeof caps[i], "%lld", (long long)cands[i]->per_minute);
        snprintf(rates[i], sizeof rates[i], "%.12g", (double)cands[i]->per_minute / 60000.0);
        argv[argc++] = caps[i];
        argv[argc++] = rates[i];
    }
    util_random_hex(newepoch, 16);
    argv[argc++] = ratelimit_epoch_known();
    argv[argc++] = newepoch;
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

struct rl_reserve {
    ratelimit_reserve_cb cb;
    void *arg;
};

static void ratelimit_on_reserved(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rl_reserve *c = privdata;
    redisReply *reply = r;
    (void)ac;
    c->cb(reply && reply->type == REDIS_REPLY_INTEGER ? (int64_t)reply->integer : -1, c->arg);
    free(c);
}

void ratelimit_quota_reserve(struct redisbus *bus, const char *tenant_id, const char *reservation,
                             ratelimit_reserve_cb cb, void *arg)
{
    redisAsyncContext *ac = redisbus_cmd(bus);
    char pkey[96], hold[24];
    const char *argv[6];
    size_t argl[6];
    struct rl_reserve *c;

    if (!ac) {
        cb(-1, arg);
        return;
    }
    snprintf(pkey, sizeof pkey, "tenant:%.64s:placing", tenant_id);
    snprintf(hold, sizeof hold, "%d", RATELIMIT_QUOTA_RESERVE_MS);
    argv[0] = "EVAL";
    argv[1] = ratelimit_reserve_lua;
    argv[2] = "1";
    argv[3] = pkey;
    argv[4] = reservation;
    argv[5] = hold;
    for (int i = 0; i < 6; i++)
        argl[i] = strlen(argv[i]);
    c = xcalloc(1, sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (redisAsyncCommandArgv(ac, ratelimit_on_reserved, c, 6, argv, argl) != REDIS_OK) {
        free(c);
        cb(-1, arg);
    }
}

void ratelimit_quota_settle(struct redisbus *bus, const char *tenant_id, const char *reservation, bool committed)
{
    redisAsyncContext *ac = redisbus_cmd(bus);
    char pkey[96], dkey[96];
    const char *argv[7];
    size_t argl[7];

    if (!ac)
        return;   /* the reservation expires by itself (RATELIMIT_QUOTA_RESERVE_MS) */
    snprintf(pkey, sizeof pkey, "tenant:%.64s:placing", tenant_id);
    snprintf(dkey, sizeof dkey, "tenant:%.64s:placed", tenant_id);
    argv[0] = "EVAL";
    argv[1] = ratelimit_settle_lua;
    argv[2] = "2";
    argv[3] = pkey;
    argv[4] = dkey;
    argv[5] = reservation;
    argv[6] = committed ? "1" : "0";
    for (int i = 0; i < 7; i++)
        argl[i] = strlen(argv[i]);
    if (redisAsyncCommandArgv(ac, NULL, NULL, 7, argv, argl) != REDIS_OK)
        log_warn("event=quota_settle_unsent tenant=%s", tenant_id);
}

void ratelimit_refund(struct redisbus *bus, const struct layout_dps *dps, const char *tenant_id, int64_t tenant_per_minute)
{
    redisAsyncContext *ac = redisbus_cmd(bus);
    char key[96], tkey[96], cap[24], tcap[24];
    const char *argv[7];
    size_t argl[7];
    int nk = tenant_id && tenant_per_minute > 0 ? 2 : 1, argc = 0;

    if (!ac) {
        log_warn("event=ratelimit_refund_unsent dps=%s note=\"Redis unavailable: the token stays spent\"", dps->id);
        return;
    }
    snprintf(key, sizeof key, "dps:%.64s:bucket", dps->id);
    snprintf(cap, sizeof cap, "%lld", (long long)dps->per_minute);
    argv[argc++] = "EVAL";
    argv[argc++] = ratelimit_refund_lua;
    argv[argc++] = nk == 2 ? "2" : "1";
    argv[argc++] = key;
    if (nk == 2) {
        snprintf(tkey, sizeof tkey, "tenant:%.64s:bucket", tenant_id);
        snprintf(tcap, sizeof tcap, "%lld", (long long)tenant_per_minute);
        argv[argc++] = tkey;
    }
    argv[argc++] = cap;
    if (nk == 2)
        argv[argc++] = tcap;
    for (int i = 0; i < argc; i++)
        argl[i] = strlen(argv[i]);
    if (redisAsyncCommandArgv(ac, NULL, NULL, argc, argv, argl) != REDIS_OK)
        log_warn("event=ratelimit_refund_unsent dps=%s", dps->id);
}
