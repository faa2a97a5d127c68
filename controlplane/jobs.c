/*
 * jobs.c - the job runner (claim with a lease, run slices, record progress
 * and errors, retry with back-off, resume after a crash) and GET /v1/jobs/{id}.
 *
 * Runner states: IDLE (timer armed) -> CLAIMING (claim query) -> RUNNING (a
 * slice of the job's current step) -> SAVING (progress and lease renewal) ->
 * RUNNING or IDLE. One job at a time per instance; several instances share
 * the work through the leases.
 */
#include "jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp.h"
#include "http_req.h"
#include "log.h"
#include "offboard.h"
#include "principal.h"
#include "util.h"

#define JOBS_STR2(x) #x
#define JOBS_STR(x) JOBS_STR2(x)

enum jobs_state { JS_IDLE, JS_CLAIMING, JS_RUNNING, JS_SAVING };

struct jobs {
    struct cp *cp;
    int poll_ms;
    char owner[40];               /* this instance's lease name */
    struct event *timer;
    enum jobs_state state;
    struct job_run *run;          /* the claimed job, or NULL */
    /* the slice outcome being saved */
    enum job_outcome outcome;
    char err[300];
};

const char jobs_public_sql[] =
    "json_build_object('id',j.id,'kind',j.kind,'tenant',j.tenant_id,"
    "'state',j.state,'progress',json_build_object('done',j.done,'total',j.total),"
    "'steps',j.steps,'errors',j.errors,'createdAt',cp_ts(j.created_at),'updatedAt',cp_ts(j.updated_at),"
    "'finishedAt',CASE WHEN j.finished_at IS NULL THEN NULL ELSE cp_ts(j.finished_at) END)";

static void jobs_claim(struct jobs *js);

static void jobs_arm(struct jobs *js, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(js->timer, &tv);
}

static void jobs_run_free(struct job_run *run)
{
    if (!run)
        return;
    if (run->free_state)
        run->free_state(run->state);
    free(run);
}

static void jobs_drop_run(struct jobs *js, int next_ms)
{
    jobs_run_free(js->run);
    js->run = NULL;
    js->state = JS_IDLE;
    jobs_arm(js, next_ms);
}

void jobs_new_id(char *out, size_t outlen)
{
    char hex[17];
    util_random_hex(hex, 8);
    snprintf(out, outlen, "job-%s", hex);
}

json_t *jobs_steps_doc(const char *kind)
{
    json_t *a = json_array();
    if (strcmp(kind, "tenant-offboard") == 0)
        for (int i = 0; i < OFFBOARD_NSTEPS; i++)
            json_array_append_new(a, json_pack("{s:s, s:s}", "name", offboard_steps[i], "state", "pending"));
    return a;
}

static void jobs_run_slice(struct jobs *js)
{
    js->state = JS_RUNNING;
    if (strcmp(js->run->kind, "tenant-offboard") == 0) {
        offboard_slice(js->run);
    } else {
        job_slice_done(js->run, JOB_RETRY, "unknown job kind");
    }
}

/* The slice's outcome and the renewed lease were written. */
static void jobs_on_saved(const struct pgq_result *q, void *arg)
{
    struct jobs *js = arg;
    struct job_run *run = js->run;
    const char *state;

    if (q->status != PGQ_OK || PQntuples(q->res) != 1) {
        /* Lease lost (another instance took the job after our lease ran
         * out) or the catalog is away: stop; whoever holds the lease goes on. */
        log_warn("event=job_lease_lost job=%s status=%d", run->id, (int)q->status);
        jobs_drop_run(js, js->poll_ms);
        return;
    }
    state = PQgetvalue(q->res, 0, 0);
    run->step = atoi(PQgetvalue(q->res, 0, 1));
    run->attempts = atoi(PQgetvalue(q->res, 0, 2));
    if (js->cp->shutting_down) {
        /* draining: start nothing new; the lease runs out and any instance goes on */
        log_info("event=job_paused job=%s reason=shutting_down", run->id);
        jobs_drop_run(js, js->poll_ms);
    } else if (strcmp(state, "running") != 0) {
        log_info("event=job_finished job=%s kind=%s tenant=%s state=%s", run->id, run->kind, run->tenant, state);
        jobs_drop_run(js, 50);   /* look for the next job at once */
    } else if (js->outcome == JOB_RETRY) {
        jobs_drop_run(js, js->poll_ms);   /* next_run_at holds the back-off; any instance may take it then */
    } else if (js->outcome == JOB_WAIT) {
        js->state = JS_RUNNING;
        jobs_arm(js, 1000);
    } else {
        jobs_run_slice(js);
    }
}

void job_slice_done(struct job_run *run, enum job_outcome o, const char *err)
{
    /*
     * One statement: progress, the step's advance or its error, the lease
     * renewed; only while we still hold the lease. $1 id, $2 owner, $3
     * outcome, $4 done, $5 total, $6 error, $7 number of steps, $8 max attempts.
     */
    static const char sql[] =
        "WITH cur AS (SELECT * FROM jobs WHERE id = $1 AND lease_owner = $2 AND state = 'running' FOR UPDATE),"
        " nx AS (SELECT c.id,"
        "   CASE WHEN $3 = 'done' THEN c.step + 1 ELSE c.step END AS step,"
        "   CASE WHEN $3 = 'retry' THEN c.attempts + 1 WHEN $3 = 'done' THEN 0 ELSE c.attempts END AS attempts"
        "   FROM cur c),"
        " upd AS (UPDATE jobs j SET step = nx.step, attempts = nx.attempts,"
        "   done = $4::bigint, total = $5::bigint,"
        "   state = CASE WHEN nx.step >= $7::int THEN 'succeeded'"
        "                WHEN nx.attempts >= $8::int THEN 'failed' ELSE 'running' END,"
        "   steps = (SELECT jsonb_agg(CASE WHEN (e.i - 1) < nx.step THEN jsonb_set(e.s, '{state}', '\"done\"')"
        "              WHEN (e.i - 1) = nx.step AND nx.attempts >= $8::int THEN jsonb_set(e.s, '{state}', '\"failed\"')"
        "              WHEN (e.i - 1) = nx.step THEN jsonb_set(e.s, '{state}', '\"running\"')"
        "              ELSE e.s END ORDER BY e.i) FROM jsonb_array_elements(j.steps) WITH ORDINALITY e(s, i)),"
        "   errors = CASE WHEN $6::text IS NULL THEN j.errors ELSE"
        "     (SELECT coalesce(jsonb_agg(x ORDER BY n), '[]') FROM (SELECT x, n FROM jsonb_array_elements("
        "        j.errors || jsonb_build_array(jsonb_build_object('step', j.steps->j.step->>'name',"
        "        'at', cp_ts(now()), 'attempt', nx.attempts, 'message', $6::text))) WITH ORDINALITY a(x, n)"
        "        ORDER BY n DESC LIMIT 50) z) END,"
        "   next_run_at = CASE WHEN $3 = 'retry' THEN now() + least(30, 1 + nx.attempts) * interval '1 second'"
        "                 ELSE now() END,"
        "   lease_until = CASE WHEN $3 = 'retry' THEN NULL ELSE now() + interval '" JOBS_STR(JOBS_LEASE_S) " seconds' END,"
        "   lease_owner = CASE WHEN $3 = 'retry' THEN NULL ELSE j.lease_owner END,"
        "   finished_at = CASE WHEN nx.step >= $7::int OR nx.attempts >= $8::int THEN now() END,"
        "   updated_at = now()"
        "   FROM nx WHERE j.id = nx.id RETURNING j.state, j.step, j.attempts)"
        " SELECT state, step, attempts FROM upd";
    struct jobs *js = run->jobs;
    char done[24], total[24], nsteps[8], maxa[8];
    const char *values[8];
    const char *word = o == JOB_DONE ? "done" : o == JOB_RETRY ? "retry" : "more";

    js->state = JS_SAVING;
    js->outcome = o;
    snprintf(js->err, sizeof js->err, "%s", err ? err : "");
    if (o == JOB_RETRY)
        log_warn("event=job_step_failed job=%s step=%d attempt=%d error=\"%.200s\"", run->id, run->step,
                 run->attempts + 1, js->err);
    if (run->total < run->done)
        run->total = run->done;
    snprintf(done, sizeof done, "%lld", run->done);
    snprintf(total, sizeof total, "%lld", run->total);
    snprintf(nsteps, sizeof nsteps, "%d", strcmp(run->kind, "tenant-offboard") == 0 ? OFFBOARD_NSTEPS : 0);
    snprintf(maxa, sizeof maxa, "%d", JOBS_MAX_ATTEMPTS);
    values[0] = run->id;
    values[1] = js->owner;
    values[2] = word;
    values[3] = done;
    values[4] = total;
    values[5] = o == JOB_RETRY ? js->err : NULL;
    values[6] = nsteps;
    values[7] = maxa;
    pgpool_query(js->cp->global, sql, 8, values, jobs_on_saved, js);
}

static void jobs_on_claimed(const struct pgq_result *q, void *arg)
{
    struct jobs *js = arg;
    struct job_run *run;

    if (q->status != PGQ_OK || PQntuples(q->res) == 0) {
        if (q->status == PGQ_SQL_ERROR)
            log_error("event=job_claim_failed sqlstate=%s error=\"%.200s\"", q->sqlstate,
                      q->message ? q->message : "");
        js->state = JS_IDLE;
        jobs_arm(js, js->poll_ms);
        return;
    }
    run = xcalloc(1, sizeof *run);
    run->jobs = js;
    run->cp = js->cp;
    snprintf(run->id, sizeof run->id, "%s", PQgetvalue(q->res, 0, 0));
    snprintf(run->kind, sizeof run->kind, "%s", PQgetvalue(q->res, 0, 1));
    snprintf(run->tenant, sizeof run->tenant, "%s", PQgetvalue(q->res, 0, 2));
    run->step = atoi(PQgetvalue(q->res, 0, 3));
    run->done = strtoll(PQgetvalue(q->res, 0, 4), NULL, 10);
    run->total = strtoll(PQgetvalue(q->res, 0, 5), NULL, 10);
    run->attempts = atoi(PQgetvalue(q->res, 0, 6));
    js->run = run;
    log_info("event=job_claimed job=%s kind=%s tenant=%s step=%d owner=%s", run->id, run->kind, run->tenant,
             run->step, js->owner);
    jobs_run_slice(js);
}

/* Claim the oldest runnable job whose lease is free or expired. */
static void jobs_claim(struct jobs *js)
{
    static const char sql[] =
        "UPDATE jobs j SET state = 'running', lease_owner = $1,"
        " lease_until = now() + interval '" JOBS_STR(JOBS_LEASE_S) " seconds', updated_at = now(),"
        " steps = (SELECT jsonb_agg(CASE WHEN (e.i - 1) = j.step THEN jsonb_set(e.s, '{state}', '\"running\"')"
        "          ELSE e.s END ORDER BY e.i) FROM jsonb_array_elements(j.steps) WITH ORDINALITY e(s, i))"
        " WHERE j.id = (SELECT id FROM jobs WHERE state IN ('queued', 'running') AND next_run_at <= now()"
        "   AND (lease_until IS NULL OR lease_until < now()) ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " RETURNING j.id, j.kind, j.tenant_id, j.step, j.done, j.total, j.attempts";
    const char *values[1] = {js->owner};
    js->state = JS_CLAIMING;
    pgpool_query(js->cp->global, sql, 1, values, jobs_on_claimed, js);
}

static void jobs_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct jobs *js = arg;
    (void)fd; (void)what;
    if (js->cp->shutting_down)
        return;
    if (js->state == JS_IDLE)
        jobs_claim(js);
    else if (js->state == JS_RUNNING && js->run)   /* a JOB_WAIT pause ended */
        jobs_run_slice(js);
}

struct jobs *jobs_new(struct cp *cp, int poll_ms)
{
    struct jobs *js = xcalloc(1, sizeof *js);
    char hex[17];
    js->cp = cp;
    js->poll_ms = poll_ms;
    util_random_hex(hex, 8);
    snprintf(js->owner, sizeof js->owner, "cp-%s", hex);
    js->timer = event_new(cp->base, -1, 0, jobs_on_timer, js);
    if (!js->timer) {
        log_error("event=event_new_failed");
        abort();
    }
    jobs_arm(js, 300);
    return js;
}

void jobs_free(struct jobs *js)
{
    if (!js)
        return;
    /* The loop is stopped: no callback of the run's queries or calls runs after this. */
    event_free(js->timer);
    jobs_run_free(js->run);
    free(js);
}

void jobs_kick(struct jobs *js)
{
    if (js && js->state == JS_IDLE)
        jobs_arm(js, 10);
}

/* ---- GET /v1/jobs/{id} ---- */

struct jobs_get {
    struct cp_req *r;
    char id[64];
};

static void jobs_on_row(const struct pgq_result *q, void *arg)
{
    struct jobs_get *g = arg;
    if (q->status == PGQ_UNAVAILABLE) {
        cpreq_reply_db_unavailable(g->r, q);
    } else if (q->status != PGQ_OK) {
        log_write(LOG_ERROR, g->r->id, "event=sql_error sqlstate=%s error=\"%.300s\"", q->sqlstate,
                  q->message ? q->message : "");
        cpreq_reply_error(g->r, 500, "internal", NULL, "internal error (request %s)", g->r->id);
    } else if (PQntuples(q->res) == 0 || !principal_sees_tenant(&g->r->who, PQgetvalue(q->res, 0, 1))) {
        cpreq_reply_error(g->r, 404, "not_found", NULL, "no job '%s'", g->id);
    } else {
        cpreq_reply_text(g->r, 200, PQgetvalue(q->res, 0, 0), (size_t)PQgetlength(q->res, 0, 0));
    }
    free(g);
}

void api_jobs_handle(struct cp_req *r, char **segs, int nsegs)
{
    struct jobs_get *g;
    const char *values[1];
    char *q;

    /* the route table (routes.c) admits GET /v1/jobs/{id} only */
    (void)nsegs;
    if (!cpreq_check_query(r, NULL))
        return;
    if (!jv_valid_id(segs[0])) {
        cpreq_reply_error(r, 404, "not_found", NULL, "no job with that id");
        return;
    }
    g = xcalloc(1, sizeof *g);
    g->r = r;
    snprintf(g->id, sizeof g->id, "%s", segs[0]);
    values[0] = g->id;
    q = xasprintf("SELECT %s, j.tenant_id FROM jobs j WHERE j.id = $1", jobs_public_sql);
    pgpool_query(r->cp->global, q, 1, values, jobs_on_row, g);
    free(q);
}
