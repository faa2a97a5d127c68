/*
 * jobs.h - long-running work as resources: the job runner and
 * GET /v1/jobs/{id}.
 *
 * A job is a row of the global catalog's jobs table (schema/global/011_jobs.sql).
 * Every control plane instance runs a runner that claims one runnable job at
 * a time with a lease (lease_owner = this instance, lease_until = now + lease)
 * and drives its kind's steps one slice at a time, renewing the lease after
 * each slice. A job whose instance died is claimed again by any instance once
 * its lease expires; every step is idempotent, so it resumes where its last
 * recorded step was. A slice that fails is retried after a back-off; after
 * JOBS_MAX_ATTEMPTS failures of one step the job ends failed with its errors.
 *
 * Ownership: the runner owns the run in progress (struct job_run) and frees
 * it when the slice's callbacks have all come back; jobs_free() frees it as
 * well (the loop is stopped then and pgpool/http_call drop their callbacks).
 */
#ifndef CP_JOBS_H
#define CP_JOBS_H

#include <jansson.h>
#include <stdbool.h>

#include <stddef.h>

struct cp;
struct cp_req;
struct jobs;

#define JOBS_MAX_ATTEMPTS 30   /* failed tries of one step before the job fails */
#define JOBS_LEASE_S 10         /* seconds a claim lasts without renewal */

/* What one slice of a step did; see job_slice_done(). */
enum job_outcome {
    JOB_MORE,      /* progress made, the step is not finished: run another slice */
    JOB_WAIT,      /* nothing to do yet (waiting on another actor): another slice in a second */
    JOB_DONE,      /* the step is finished: move on to the next one */
    JOB_RETRY,     /* the slice failed (error set): retry after a back-off, bounded */
};

/* One claimed job, as a step sees it. */
struct job_run {
    struct jobs *jobs;
    struct cp *cp;
    char id[64];
    char kind[32];
    char tenant[64];
    int step;
    long long done, total;
    int attempts;
    void *state;                 /* the kind's slice state (freed by its free_state) */
    void (*free_state)(void *);
};

struct jobs *jobs_new(struct cp *cp, int poll_ms);
void jobs_free(struct jobs *js);
/* Look for runnable work soon (after a job was queued). */
void jobs_kick(struct jobs *js);

/* A step's slice reports back, exactly once per slice. err (copied) for JOB_RETRY. */
void job_slice_done(struct job_run *run, enum job_outcome o, const char *err);

/* The steps' names of a job kind, as a JSON array for jobs.steps (new reference). */
json_t *jobs_steps_doc(const char *kind);

/* A new job id "job-<16 hex>" (out: at least 24 bytes). */
void jobs_new_id(char *out, size_t outlen);

/* SQL expression: the public JSON of job row j (for RETURNING / SELECT). */
extern const char jobs_public_sql[];

/* GET /v1/jobs/{id}. Replies exactly once; a job of a tenant the caller
 * cannot see is 404 not_found, as a missing one. */
void api_jobs_handle(struct cp_req *r, char **segs, int nsegs);

#endif
