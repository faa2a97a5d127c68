/*
 * sd_posix.h - libstampdevice: the blocking driver (sockets + OpenSSL) for
 * one device.
 *
 * sd_posix_run loads the persisted state, boots the state machine
 * (sd_machine.h) and carries out its actions until a terminal one: a SEND
 * becomes one HTTP/1.1 exchange on a fresh connection (TLS when the request
 * says so, verified as sd_tls.h describes; "Connection: close"), bounded as a
 * whole by the action's timeout; a SLEEP sleeps on CLOCK_MONOTONIC; a PERSIST
 * writes the state with sd_store_save. It blocks the calling thread for as
 * long as provisioning takes, retries and backoffs included.
 *
 * Signals: a peer that closes the connection while a request is written
 * raises SIGPIPE; the caller should ignore it (signal(SIGPIPE, SIG_IGN)), as
 * any program using sockets does. A signal handler that sets *opts->stop
 * interrupts a sleep or a request within a moment.
 */
#ifndef STAMPDEVICE_SD_POSIX_H
#define STAMPDEVICE_SD_POSIX_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "sd_machine.h"
#include "sd_store.h"

struct sd_posix_opts {
    const char *state_path;         /* the state file; NULL: none (every boot is a first boot) */
    const char *ca_file;            /* trust for every TLS peer; NULL: the system's store */
    const char *cert_file;          /* X.509 attestation: the client certificate (PEM) ... */
    const char *key_file;           /* ... and its key; both NULL for symmetric keys */
    bool verbose;                   /* one line per step on stderr */
    const char *reprovision_reason; /* send REPROVISION once, after the first READY; NULL: never */
    const volatile sig_atomic_t *stop; /* optional: non-zero stops the run (result FAILED, stopped) */
};

struct sd_posix_result {
    enum sd_action_type action;     /* READY, RETIRED or FAILED */
    struct sd_state state;          /* the machine's state at the end */
    enum sd_store_result loaded;    /* what the boot found on disk */
    bool stopped;                   /* *opts->stop ended the run */
    char error[256];                /* FAILED: why */
    uint32_t requests[SD_REQ_KIND_COUNT]; /* sent, by kind */
    uint32_t io_errors;             /* requests that got no HTTP answer */
    uint32_t throttled;             /* 429 answers */
    uint32_t persists;              /* state writes attempted */
    int64_t slept_ms;               /* total time in SLEEP actions */
    int64_t elapsed_ms;
};

/*
 * Provision one device. cfg: as for sd_machine_init (it must outlive the
 * call); key: the device's symmetric key, or NULL for X.509 (then
 * opts->cert_file and key_file). Returns out->action. Setup failures (a
 * state directory that cannot be written is not one: the device still
 * provisions; an unusable CA or certificate file is) end in FAILED with the
 * reason in out->error.
 */
enum sd_action_type sd_posix_run(const struct sd_config *cfg, const char *registration_id,
                                 const unsigned char *key, const struct sd_posix_opts *opts,
                                 struct sd_posix_result *out);

#endif
