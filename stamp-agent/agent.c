/*
 * agent.c - owns the stamp agent's run: the report timer, the report's trip
 * to Redis (MULTI/HSET/PEXPIRE/PUBLISH/EXEC), stall detection, and signals
 * with graceful shutdown (final "down" report, bounded wait, clean exit).
 *
 * Everything here runs on one event_base thread. Signal handlers are libevent
 * callbacks, not real signal handlers, so they may do anything.
 */
#include "agent.h"
#include "dps_server.h"
#include "dps_webhook.h"
#include "http_call.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "agent_report.h"
#include "log.h"

static struct timeval agent_tv(int64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    return tv;
}

/* Ask the loop to return once the current callback is done. Idempotent. */
static void agent_stop(struct agent *a)
{
    if (a->state == AGENT_STOPPED)
        return;
    a->state = AGENT_STOPPED;
    if (event_base_loopexit(a->base, NULL) != 0)
        log_error("event=loopexit_failed");
}

/* An EXEC reply is an array with one reply per queued command; any may be an error. */
static bool agent_exec_ok(const redisReply *rep, const char **why)
{
    if (rep->type == REDIS_REPLY_ERROR) {
        *why = rep->str;
        return false;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3) {
        *why = "transaction aborted";
        return false;
    }
    for (size_t i = 0; i < rep->elements; i++) {
        if (rep->element[i]->type == REDIS_REPLY_ERROR) {
            *why = rep->element[i]->str;
            return false;
        }
    }
    return true;
}

/* Reply to a report's EXEC; reply is NULL when the connection went away first. */
static void agent_report_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct agent *a = redisconn_owner(ac);
    uint64_t seq = (uint64_t)(uintptr_t)privdata;
    const char *why = NULL;
    char q[256];

    if (a->inflight && seq == a->inflight_seq)
        a->inflight = false;
    if (!reply) {
        log_debug("event=report_unacknowledged seq=%llu", (unsigned long long)seq);
        return;
    }
    if (!agent_exec_ok(reply, &why))
        log_error("event=report_rejected seq=%llu error=%s", (unsigned long long)seq,
                  log_quote(why, q, sizeof q));
    else if (!a->report_logged || log_enabled(LOG_DEBUG))
        log_info("event=report_sent seq=%llu subscribers=%lld", (unsigned long long)seq,
                 ((redisReply *)reply)->element[2]->integer);
    a->report_logged = true;
    if (a->state == AGENT_DRAINING && seq == a->final_seq) {
        log_info("event=final_report_acknowledged seq=%llu", (unsigned long long)seq);
        if (!redisconn_disconnect(a->redis))
            agent_stop(a);
    }
}

/* A queued command's answer ("QUEUED" or an error): a READONLY error means
 * the server became a replica (the transaction then fails EXECABORT). */
static void agent_queued_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct agent *a = redisconn_owner(ac);
    (void)privdata;
    if (a->redis)
        redisconn_note_reply(a->redis, reply);
}

/* Queue one report as a transaction; EXEC carries the report's callback. */
static bool agent_queue_report(struct agent *a, const struct agent_report *rep)
{
    struct redisconn *r = a->redis;
    void *tag = (void *)(uintptr_t)rep->seq;

    /* geography only when configured: the control plane then checks it too */
    return redisconn_command(r, NULL, NULL, "MULTI")
        && redisconn_command(r, agent_queued_reply, NULL,
                               "HSET %s stampId %s region %s health %s ts %lld intervalMs %lld"
                               " seq %llu runId %s load %s", a->key, rep->stamp_id, rep->region,
                               rep->health, (long long)rep->ts_ms, (long long)rep->interval_ms,
                               (unsigned long long)rep->seq, a->run_id, rep->load_text)
        && (!rep->geography || redisconn_command(r, agent_queued_reply, NULL, "HSET %s geography %s", a->key, rep->geography))
        && redisconn_command(r, NULL, NULL, "PEXPIRE %s %lld", a->key,
                               (long long)(5 * rep->interval_ms))
        && redisconn_command(r, NULL, NULL, "PUBLISH %s %s", a->channel, rep->message)
        && redisconn_command(r, agent_report_reply, tag, "EXEC");
}

/* Render and send the next report. Not from inside a hiredis callback (may drop). */
static bool agent_send_report(struct agent *a, const char *health)
{
    struct agent_report rep = {
        .stamp_id = a->cfg->stamp_id, .region = a->cfg->region, .health = health,
        .ts_ms = util_wall_ms(), .interval_ms = a->cfg->report_interval_ms, .seq = a->seq + 1,
        .run_id = a->run_id, .geography = a->cfg->prov.geography,
    };
    bool ok = agent_report_render(&rep, &a->load);

    if (!ok)
        log_error("event=report_failed seq=%llu reason=render", (unsigned long long)rep.seq);
    else if (!(ok = agent_queue_report(a, &rep)))
        log_error("event=report_failed seq=%llu reason=queue", (unsigned long long)rep.seq);
    agent_report_clear(&rep);
    if (!ok) {
        /* A half-queued MULTI must not stay on the connection. */
        redisconn_drop(a->redis, "queue_failed");
        return false;
    }
    a->seq = rep.seq;
    if (!a->inflight)
        a->inflight_since_ms = util_mono_ms();
    a->inflight = true;
    a->inflight_seq = rep.seq;
    return true;
}

/* True when the oldest unacknowledged report is about AGENT_STALL_INTERVALS old. */
static bool agent_stalled(const struct agent *a)
{
    int64_t iv = a->cfg->report_interval_ms;
    int64_t waited = util_mono_ms() - a->inflight_since_ms;
    return waited + iv / 2 >= AGENT_STALL_INTERVALS * iv;
}

static void agent_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent *a = arg;

    if (a->state != AGENT_RUNNING)
        return;
    if (!redisconn_is_up(a->redis)) {
        a->skipped++;
        log_debug("event=report_skipped reason=redis_down skipped=%llu",
                  (unsigned long long)a->skipped);
        return;
    }
    if (a->inflight && agent_stalled(a)) {
        log_warn("event=redis_stalled seq=%llu waited_ms=%lld", (unsigned long long)a->inflight_seq,
                 (long long)(util_mono_ms() - a->inflight_since_ms));
        redisconn_drop(a->redis, "stalled");
        return;
    }
    if (a->inflight) {
        log_debug("event=report_skipped reason=previous_unacknowledged seq=%llu",
                  (unsigned long long)a->inflight_seq);
        return;
    }
    agent_send_report(a, AGENT_HEALTH_HEALTHY);   /* failures are logged and drop the link */
}

static void agent_redis_up(struct redisconn *rc, void *owner)
{
    struct agent *a = owner;
    (void)rc;

    a->inflight = false;
    a->report_logged = false;
    if (a->skipped)
        log_info("event=reports_resuming skipped=%llu", (unsigned long long)a->skipped);
    a->skipped = 0;
}

/* May run inside a hiredis callback: only bookkeeping and loopexit here. */
static void agent_redis_down(struct redisconn *rc, void *owner)
{
    struct agent *a = owner;
    (void)rc;

    a->inflight = false;
    if (a->state == AGENT_DRAINING)
        agent_stop(a);
}

static void agent_shutdown_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent *a = arg;

    log_warn("event=final_report_timeout seq=%llu wait_ms=%d",
             (unsigned long long)a->final_seq, AGENT_SHUTDOWN_WAIT_MS);
    redisconn_close(a->redis);
    agent_stop(a);
}

/* First signal: drain with a final "down" report. Second: leave at once. */
static void agent_signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct agent *a = arg;
    struct timeval tv = agent_tv(AGENT_SHUTDOWN_WAIT_MS);
    const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";

    if (a->state != AGENT_RUNNING) {
        log_warn("event=shutdown_forced signal=%s", name);
        a->exit_code = 1;
        redisconn_close(a->redis);
        a->state = AGENT_STOPPED;
        event_base_loopbreak(a->base);
        return;
    }
    log_info("event=shutdown_started signal=%s", name);
    a->state = AGENT_DRAINING;
    dps_server_stop_accepting(a->dps);
    evtimer_del(a->tick);
    if (!redisconn_is_up(a->redis)) {
        log_warn("event=final_report_skipped reason=redis_down");
        redisconn_close(a->redis);
        agent_stop(a);
        return;
    }
    if (!agent_send_report(a, AGENT_HEALTH_DOWN)) {
        redisconn_close(a->redis);
        agent_stop(a);
        return;
    }
    a->final_seq = a->seq;
    if (evtimer_add(a->shutdown_timer, &tv) != 0) {
        log_error("event=timer_failed timer=shutdown");
        redisconn_close(a->redis);
        agent_stop(a);
    }
}

/* SIGHUP: reload the provisioning listener's certificate (nothing else reloads). */
static void agent_sighup_cb(evutil_socket_t sig, short what, void *arg)
{
    struct agent *a = arg;
    (void)sig; (void)what;
    log_info("event=sighup action=reload_tls_certificates");
    if (!a->dps)
        log_info("event=tls_reload_skipped reason=no_provisioning");
    else
        (void)dps_server_reload_tls(a->dps);
}

bool agent_init(struct agent *a, const struct agent_config *cfg)
{
    memset(a, 0, sizeof *a);
    a->cfg = cfg;
    a->state = AGENT_RUNNING;
    a->key = agent_report_key(cfg->stamp_id);
    a->channel = agent_report_channel(cfg->stamp_id);
    util_random_hex(a->run_id, AGENT_RUN_ID_LEN / 2);
    agent_load_init(&a->load, cfg->dps_ids, cfg->n_dps, cfg->hub_ids, cfg->n_hubs);
    /* hiredis writes with write(2): a dead peer must not kill us. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        log_error("event=init_failed what=sigpipe");
        return false;
    }
    a->base = event_base_new();
    if (!a->base) {
        log_error("event=init_failed what=event_base");
        return false;
    }
    if (!(a->dns = dns_new(a->base, cfg->dns_resolv_conf))) {
        log_error("event=init_failed what=dns");
        return false;
    }
    http_call_set_dns(dns_evdns(a->dns));
    dps_webhook_set_dns(a->dns);
    a->tick = event_new(a->base, -1, EV_PERSIST, agent_tick_cb, a);
    a->sigterm = evsignal_new(a->base, SIGTERM, agent_signal_cb, a);
    a->sigint = evsignal_new(a->base, SIGINT, agent_signal_cb, a);
    a->sighup = evsignal_new(a->base, SIGHUP, agent_sighup_cb, a);
    a->shutdown_timer = evtimer_new(a->base, agent_shutdown_timeout_cb, a);
    if (!a->tick || !a->sigterm || !a->sigint || !a->sighup || !a->shutdown_timer
        || evsignal_add(a->sigterm, NULL) != 0 || evsignal_add(a->sigint, NULL) != 0
        || evsignal_add(a->sighup, NULL) != 0) {
        log_error("event=init_failed what=events");
        return false;
    }
    if (cfg->prov.enabled && !(a->dps = dps_server_new(a->base, cfg, &a->load, a->dns))) {
        log_error("event=init_failed what=provisioning");
        return false;
    }
    return true;
}

int agent_run(struct agent *a)
{
    struct timeval tv = agent_tv(a->cfg->report_interval_ms);

    log_info("event=started stamp=%s region=%s redis=%s redis_user=%s interval_ms=%lld dps=%zu hubs=%zu",
             a->cfg->stamp_id, a->cfg->region, a->cfg->redis.text,
             redis_auth_enabled(&a->cfg->redis_auth) ? redis_auth_user(&a->cfg->redis_auth) : "(none)",
             (long long)a->cfg->report_interval_ms, a->cfg->n_dps, a->cfg->n_hubs);
    if (evtimer_add(a->tick, &tv) != 0) {
        log_error("event=timer_failed timer=report");
        return 1;
    }
    {
        struct redisconn_opts o = {
            .name = "report", .target = &a->cfg->redis, .dns = a->dns, .connect_timeout_ms = AGENT_REDIS_CONNECT_TIMEOUT_MS,
            .auth = &a->cfg->redis_auth, .on_up = agent_redis_up, .on_down = agent_redis_down, .arg = a,
        };
        a->redis = redisconn_new(a->base, &o);
    }
    if (event_base_dispatch(a->base) < 0) {
        log_error("event=loop_failed");
        return 1;
    }
    if (a->dps && a->dps->fatal_exit)
        a->exit_code = a->dps->fatal_exit;   /* e.g. the wrong geography's database at start */
    log_info("event=stopped exit_code=%d reports=%llu", a->exit_code,
             (unsigned long long)a->seq);
    return a->exit_code;
}

static void agent_event_free(struct event **ev)
{
    if (*ev)
        event_free(*ev);
    *ev = NULL;
}

void agent_free(struct agent *a)
{
    dps_server_free(a->dps);
    a->dps = NULL;
    http_call_abort_all();   /* webhook calls still in flight at shutdown */
    redisconn_free(a->redis);
    a->redis = NULL;
    agent_event_free(&a->tick);
    agent_event_free(&a->sigterm);
    agent_event_free(&a->sigint);
    agent_event_free(&a->sighup);
    agent_event_free(&a->shutdown_timer);
    if (a->base) {
        /* connections freed above finish freeing in deferred callbacks */
        for (int i = 0; i < 4; i++)
            event_base_loop(a->base, EVLOOP_NONBLOCK);
        /* The resolver last: lookups cancelled by the connections freed above
         * report to its evdns base from those deferred callbacks. */
        dns_free(a->dns);
        a->dns = NULL;
        for (int i = 0; i < 2; i++)
            event_base_loop(a->base, EVLOOP_NONBLOCK);
        event_base_free(a->base);
    }
    a->base = NULL;
    agent_load_free(&a->load);
    free(a->key);
    a->key = NULL;
    free(a->channel);
    a->channel = NULL;
}
