/*
 * agent.h - the stamp agent daemon: event loop, signals, the report timer and
 * graceful shutdown. One struct agent per process, passed explicitly.
 */
#ifndef STAMPAGENT_AGENT_H
#define STAMPAGENT_AGENT_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

#include "agent_config.h"
#include "agent_load.h"
#include "agent_report.h"
#include "dns.h"
#include "redisconn.h"

struct dps_server;

/* How long shutdown waits for the final "down" report to be acknowledged. */
#define AGENT_SHUTDOWN_WAIT_MS 1000
/* Deadline for TCP connect, AUTH and the handshake with Redis. */
#define AGENT_REDIS_CONNECT_TIMEOUT_MS 2000
/* A report unanswered for this many intervals means Redis stopped answering. */
#define AGENT_STALL_INTERVALS  3

enum agent_state {
    AGENT_RUNNING,   /* reporting every interval */
    AGENT_DRAINING,  /* signal received: final report in flight, deadline armed */
    AGENT_STOPPED,   /* loop exit requested */
};

struct agent {
    const struct agent_config *cfg;   /* borrowed; outlives the agent */
    struct event_base *base;
    struct dns *dns;                  /* the resolver for Redis and webhooks (dns.h) */
    struct redisconn *redis;          /* the report connection (common/redisconn.h); NULL until agent_run */
    struct agent_load load;
    char *key;                        /* stamp:<id>:load */
    char *channel;                    /* stamps:load:<id> */
    char run_id[AGENT_RUN_ID_LEN + 1];/* random per process: orders reports across restarts */
    enum agent_state state;
    struct event *tick;               /* persistent, every reportIntervalMs */
    struct event *sigterm;
    struct event *sigint;
    struct event *sighup;             /* reloads the DPS listener's certificate */
    struct event *shutdown_timer;
    uint64_t seq;                     /* last seq sent; starts at 0 */
    bool inflight;                    /* a report awaits its EXEC reply */
    uint64_t inflight_seq;            /* newest report sent and unacknowledged */
    int64_t inflight_since_ms;        /* monotonic send time of the oldest unacked report */
    uint64_t final_seq;               /* seq of the "down" report, 0 if none */
    bool report_logged;               /* info line for the first report per connection */
    uint64_t skipped;                 /* ticks skipped while Redis was down */
    int exit_code;
    struct dps_server *dps;           /* the stamp's provisioning service, if configured */
};

/* Build the loop, timers and signal events. Returns false (logged) on failure. */
bool agent_init(struct agent *a, const struct agent_config *cfg) MUSTCHECK;
/* Run until shut down; returns the process exit code. */
int agent_run(struct agent *a);
/* Free everything agent_init() made; safe after a failed agent_init(). */
void agent_free(struct agent *a);

#endif
