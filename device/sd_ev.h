/*
 * sd_ev.h - libstampdevice: the event-driven driver. Many devices (an array
 * of struct sd_machine the caller owns) run in one libevent loop.
 *
 * What it does for the machines:
 *   - timers: one binary heap of (deadline, device index) drives a single
 *     libevent timer, so a million sleeping devices cost 16 bytes each in the
 *     heap and no struct event;
 *   - HTTP: one pool of keep-alive connections per endpoint ("host:port" +
 *     TLS or not), at most max_conns open at a time per endpoint; requests
 *     beyond that wait in a FIFO and a request is built (sd_machine_request,
 *     SAS token included) only when a connection is ready for it;
 *   - per-request timeout (the SEND action's timeout_ms) -> IO_ERROR;
 *   - a connection the server closed while idle is dropped quietly; a request
 *     that fails on a reused connection before any byte of the answer arrived
 *     is sent once more on a fresh connection (the server may have closed it
 *     just as we wrote), and only a second failure reaches the device;
 *   - PERSIST: through the persist hook (a fleet simulator keeps states in
 *     memory; a gateway would call sd_store_save), then PERSISTED.
 *
 * Memory: the driver keeps 8 bytes per device (struct sd_ev_dev), plus 16
 * bytes per sleeping device (heap entry) and 8 per device waiting for a
 * connection (FIFO entry); connections cost their bufferevent, parser and
 * body buffer, per connection, not per device.
 *
 * Threading: none; everything runs in the caller's event_base thread. The
 * hooks are called from inside the loop and may call sd_ev_deliver /
 * sd_ev_boot for any device (re-entrancy is handled), but not sd_ev_free.
 */
#ifndef STAMPDEVICE_SD_EV_H
#define STAMPDEVICE_SD_EV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "sd_machine.h"

struct sd_ev;

/*
 * Observers and persistence. Every hook is optional (NULL). dev is the index
 * into the machine array. Each is called at most once per occurrence, from
 * the loop; pointers passed in are valid only during the call.
 */
struct sd_ev_hooks {
    void *ctx;
    /* A request of this kind was written to a connection (counted once per
     * attempt that reached the wire, the transparent retry included). */
    void (*on_send)(void *ctx, uint32_t dev, enum sd_req_kind kind);
    /* A complete answer, just before the machine sees it. retry_after: seconds, -1 if none. */
    void (*on_response)(void *ctx, uint32_t dev, enum sd_req_kind kind, int status, int retry_after,
                        const char *body, size_t len);
    /* The request failed for good (connect, TLS, reset, timeout); the machine gets IO_ERROR. */
    void (*on_io_error)(void *ctx, uint32_t dev, enum sd_req_kind kind, const char *why);
    /* The machine stopped: SD_ACT_READY, SD_ACT_RETIRED or SD_ACT_FAILED. */
    void (*on_terminal)(void *ctx, uint32_t dev, enum sd_action_type action);
    /* Write the state durably; return whether it was written (NULL: always true). */
    bool (*persist)(void *ctx, uint32_t dev, const struct sd_state *st);
    /*
     * The machine asked to send a request of this kind; called before it is
     * queued (NULL: always send). Return false to keep it off the wire: the
     * driver then leaves the device idle - nothing queued, no timer, no
     * IO_ERROR - and the device is the caller's: it may answer the request
     * itself (sd_machine_step, carrying out what follows) as long as it
     * leaves the machine terminal, or re-create it later (sd_machine_init,
     * then sd_ev_boot); left alone, the machine waits for an answer that
     * never comes. fleetsim's "--seed-mode cp" answers each device's DPS
     * registration this way, in-process.
     */
    bool (*before_send)(void *ctx, uint32_t dev, enum sd_req_kind kind);
};

struct sd_ev_options {
    uint32_t max_conns;        /* per endpoint (default 64) */
    uint32_t idle_timeout_ms;  /* close a keep-alive connection idle this long (default 20000) */
    SSL_CTX *tls;              /* client context for TLS endpoints (verifies the server);
                                  caller-owned, must outlive the driver; NULL: TLS requests fail */
};

struct sd_ev_stats {
    uint64_t requests;         /* written to a connection (retries included) */
    uint64_t responses;        /* complete answers */
    uint64_t io_errors;        /* failures the machines saw (timeouts included) */
    uint64_t timeouts;
    uint64_t retries;          /* transparent resends after a reused connection failed */
    uint64_t conns_opened;
    uint64_t conn_failures;    /* connect or TLS failures */
    uint64_t reused;           /* requests sent on an already used connection */
    uint64_t stale;            /* answers dropped because the device had moved on */
    uint32_t conns;            /* open now (connecting included), all endpoints */
    uint32_t peak_conns;
    uint32_t queued;           /* devices waiting for a connection now */
};

/*
 * machines[0..n) must outlive the driver; they are initialised by the caller
 * (sd_machine_init) and driven only through the driver from then on. Returns
 * NULL on allocation failure.
 */
struct sd_ev *sd_ev_new(struct event_base *base, struct sd_machine *machines, uint32_t n,
                        const struct sd_ev_options *opt, const struct sd_ev_hooks *hooks);

/* Closes every connection and frees the driver (not the machines). */
void sd_ev_free(struct sd_ev *ev);

/* Power on device dev with what was persisted (NULL: nothing). */
void sd_ev_boot(struct sd_ev *ev, uint32_t dev, const struct sd_state *st);

/*
 * An external event for one device: SD_EV_NET_DOWN, SD_EV_NET_UP,
 * SD_EV_REPROVISION or SD_EV_HUB_REJECTED (reason optional). A pending
 * request or sleep of the device is abandoned (its answer is ignored).
 */
void sd_ev_deliver(struct sd_ev *ev, uint32_t dev, enum sd_event_type type, const char *reason);

void sd_ev_get_stats(const struct sd_ev *ev, struct sd_ev_stats *out);

/* Bytes the driver keeps per device at least (for reports). */
size_t sd_ev_bytes_per_device(void);

/* The driver's monotonic clock in milliseconds (what the machines see). */
int64_t sd_ev_now_ms(void);

#endif
