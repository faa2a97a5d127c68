/*
 * ts_stamp.h - support for the stamp provisioning service tests
 * (tests/integration/test_stamp_*.c): a stamp-agent with a `provisioning`
 * section on a fresh database and a private Redis, a throwaway PKI made with
 * the openssl CLI, HTTPS requests through curl, and the official Azure IoT
 * Node SDK clients of tests/sdk (installed once per build directory).
 *
 * Everything returned is library-owned (freed by ts_finish) unless stated.
 */
#ifndef STAMPCP_TS_STAMP_H
#define STAMPCP_TS_STAMP_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "ts.h"

#define TS_STAMP_MAX 4

struct ts_stamp_inst {
    const char *id;              /* NULL ends the list */
    const char *scope;           /* idScope */
    long per_minute;             /* registrationsPerMinute; 0: omitted */
    const char *throttle;        /* "reject" / "gentle"; NULL: omitted */
    long max_registrations;      /* 0: omitted */
    long polls_per_10s;          /* 0: omitted */
};

struct ts_stamp_hub {
    const char *id;              /* NULL ends the list */
    const char *host;            /* hostName */
    int weight;                  /* allocationWeight; 0: omitted */
    long max_devices;            /* maxDevices; 0: omitted */
};

struct ts_stamp_opts {
    const char *name;            /* stampId; NULL: "stamp" */
    struct ts_stamp_inst inst[TS_STAMP_MAX];
    struct ts_stamp_hub hubs[TS_STAMP_MAX];
    int webhook_timeout_ms;      /* 0: omitted */
    long auth_failures_per_10s;  /* authFailuresPer10s; 0: omitted */
    /* Least privilege (docs/security.md "Database roles"): */
    const char *db;              /* superuser conninfo of an existing database to use; NULL: a fresh one */
    const char *geography;       /* provisioning.geography; a fresh database gets a geo_identity naming it */
    bool own_role;               /* migrate as the superuser (stamp-agent --migrate), then run the agent as
                                  * its own role "stampcp_agent_<pid>_<name>" granted its instances only;
                                  * STAMPCP_TEST_STAMP_OWN_ROLE=1 in the environment does it for every stamp */
    bool no_start;               /* write everything but don't start the agent (proc stays NULL) */
    bool webhook_strict;         /* leave provisioning.webhookAllowPrivate out (default: true, loopback webhooks) */
    const char *prov_extra_json; /* extra members of "provisioning", e.g. "\"http\":{\"maxConnections\":4}" */
};

struct ts_stamp {
    struct ts_proc *proc;        /* the running agent (NULL after a kill until restarted) */
    int port;
    const char *hostport;        /* "127.0.0.1:PORT" (also the serviceHostName) */
    const char *policy;          /* service policy name */
    const char *policy_key;      /* its base64 key */
    const char *db;              /* conninfo of the stamp's database */
    const char *config_path;
    struct ts_redis *redis;
    const char *role;            /* own_role: the agent's role, else NULL */
    const char *role_db;         /* own_role: conninfo of the stamp's database as that role, else NULL */
};

/* The test PKI: a CA and a server certificate for IP 127.0.0.1 (made on first
 * use in ts_tmp()); NODE_EXTRA_CA_CERTS is set to the CA for the node
 * processes started later. */
const char *ts_pki_ca(void);
/* The server certificate and key ts_pki_ca() made (for agents a test configures itself). */
void ts_pki_server(const char **crt, const char **key);

/* ---- DPS instances served by a real agent (ts_dps.c) ---- */

struct ts_rt;
/*
 * The handle of an agent a test will start with ts_rt_dps_agent_start: a
 * free port, hostport "127.0.0.1:PORT", service policy policy_name with a
 * fresh 32-byte key, its stamp tables in db. Nothing is started.
 */
void ts_dps_agent_prepare(struct ts_stamp *a, const char *policy_name, const char *db);
/*
 * ts_rt_register_layout, except that each DPS instance dps_ids[i] (i < n) is
 * registered as served by agents[i]: endpoint agents[i].hostport,
 * serviceKeyName / serviceKey its policy and key. Stamps are posted with
 * their tenancy (NULL: pooled).
 */
void ts_rt_register_layout_served(struct ts_rt *rt, struct ts_rt_layout *l, const char *const *dps_ids,
                                  const struct ts_stamp *agents, int n);
/*
 * Start the agent of rt's stamp stamp_id serving the DPS device and service
 * API of DPS instance dps_id (TLS with ts_pki_server(), listening on
 * a->hostport, service policy policy_name with key a->policy_key, every hub
 * of the stamp, its stamp tables in the database db, 200 ms reports on rt's
 * Redis, the test KEK file), and wait (20 s) until its provisioning endpoint
 * listens. Sets the layout stamp's agent, a->proc and a->config_path; fails
 * the test otherwise.
 */
void ts_rt_dps_agent_start(struct ts_rt *rt, const char *stamp_id, const char *dps_id, const char *db,
                           const char *policy_name, struct ts_stamp *a);
/* Start a served agent again (after a kill) with the config ts_rt_dps_agent_start wrote, and wait (20 s)
 * until its provisioning endpoint listens; fails the test otherwise. */
void ts_rt_dps_agent_restart(struct ts_rt *rt, const char *stamp_id, struct ts_stamp *a);
/*
 * Whether a pass of dps_id's enrollment reconciler that ran after after_ms
 * (ms since the epoch) finished in_sync with the group group_id on the
 * instance (its dps_enrollments row in db, the stamp's database).
 */
bool ts_rt_group_synced(struct ts_rt *rt, const char *dps_id, const char *db, const char *group_id, int64_t after_ms);
/*
 * The standard tenant of a served instance: POST /v1/tenants with json_body
 * through cp[0], then wait (15 s) until the reconciler has put its group on
 * dps_id (ts_rt_group_synced after the creation); fails the test otherwise.
 */
struct ts_tenant *ts_rt_tenant_synced(struct ts_rt *rt, const char *dps_id, const char *db, const char *json_body);
/* The standard served set-up: the layout's geographies, one agent a DPS instance. */
struct ts_rt_served_opts {
    int ncp;                     /* control planes; 0: 1 */
    int enrollment_sync_ms;      /* the control planes' dps.enrollmentSyncMs; 0: 300 */
    const char *dps_extra;       /* more members of their "dps" section (e.g. "\"maxEnrollmentGroups\": 2"), or NULL */
    const char *cp_extra;        /* more top-level members of their config (e.g. "\"stampOps\": {...}"), or NULL */
    const char *policy;          /* the agents' service policy; NULL: "provisioningserviceowner" */
};
/*
 * ts_rt_start for the geographies of l (layout refresh 200 ms, the "dps"
 * section trusting ts_pki_ca()), then ts_dps_agent_prepare agents[i] for
 * dps_ids[i] (its stamp's geography database) and
 * ts_rt_register_layout_served. No agent is started.
 */
struct ts_rt *ts_rt_start_served(const struct ts_rt_served_opts *o, struct ts_rt_layout *l,
                                 const char *const *dps_ids, struct ts_stamp *agents, int n);
/* ts_rt_dps_agent_start for each dps_ids[i] with agents[i] (its db and policy). */
void ts_rt_served_agents_start(struct ts_rt *rt, const char *const *dps_ids, struct ts_stamp *agents, int n);
/* Wait (10 s each) until the stamps of dps_ids are healthy, then ts_rt_wait_layout; fails the test otherwise. */
void ts_rt_served_ready(struct ts_rt *rt, const char *const *dps_ids, int n);
/* The served stack up: ts_rt_start_served, ts_rt_served_agents_start, ts_rt_served_ready. */
struct ts_rt *ts_rt_start_served_ready(const struct ts_rt_served_opts *o, struct ts_rt_layout *l,
                                       const char *const *dps_ids, struct ts_stamp *agents, int n);
/* Another server certificate (IP 127.0.0.1, DNS localhost) from the same CA, in ts_tmp()/name.{crt,key}. */
void ts_pki_make_server(const char *name, const char **crt, const char **key);
/* A self-signed server certificate for IP 127.0.0.1 (right name, no test CA
 * signed it: a server a client must refuse), in ts_tmp()/name.{crt,key}. */
void ts_pki_make_untrusted_server(const char *name, const char **crt, const char **key);
/* openssl CLI, failing the test on error. */
void ts_openssl(const char *what, char *const argv[]);
/* A CA (self-signed, CA:TRUE) named name in ts_tmp(): *crt / *key paths. */
void ts_pki_make_ca(const char *name, const char *cn, const char **crt, const char **key);
/* A device leaf (CN=cn, extendedKeyUsage clientAuth) signed by ca_crt/ca_key. */
void ts_pki_make_leaf(const char *name, const char *cn, const char *ca_crt, const char *ca_key,
                      const char **crt, const char **key);

/* Fresh database + private Redis + config, start the agent and wait for
 * GET /healthz 200 over TLS (20 s). */
struct ts_stamp *ts_stamp_start(const struct ts_stamp_opts *o);
/* argv of the agent with the stamp's config (for tests that spawn it themselves). */
char **ts_stamp_argv(const struct ts_stamp *s);
/* Start the agent again with the same config and wait for /healthz. */
void ts_stamp_restart(struct ts_stamp *s);
/* Signal the agent and wait (5 s) for it to exit. */
void ts_stamp_kill(struct ts_stamp *s, int sig);
bool ts_stamp_healthy(struct ts_stamp *s);
/* "HostName=127.0.0.1:PORT;SharedAccessKeyName=..;SharedAccessKey=.." (key NULL: the real one). */
const char *ts_stamp_connstr(const struct ts_stamp *s, const char *key);
/* Service SAS "SharedAccessSignature sr=<hostport>&sig=..&skn=<policy>&se=.." with key (NULL: the real one). */
const char *ts_stamp_service_sas(const struct ts_stamp *s, const char *key);
/* Device SAS over sr "{scope}/registrations/{regid}" with a base64 key (expiry 0: now + 3600). */
const char *ts_device_sas(const char *scope, const char *regid, const char *key_b64, long long expiry);
/* base64 of HMAC-SHA256(base64-decoded group key, regid): the derived device key. */
const char *ts_derive_key(const char *group_key_b64, const char *regid);
/* n random bytes, base64. */
const char *ts_random_key(int n);

/*
 * One HTTPS request to 127.0.0.1:port with curl (trusting ts_pki_ca()),
 * optional client cert/key. headers: NULL-terminated "Name: value" lines.
 * Status 0 when curl failed (err says why). Library-owned.
 */
struct ts_resp *ts_https(int port, const char *method, const char *path, const char *const *headers,
                         const void *body, size_t body_len, const char *cert, const char *key);

/* A service API call signed with the stamp's policy (key NULL: the real one);
 * path includes the query (api-version is the caller's); body NULL: none. */
struct ts_resp *ts_stamp_service(const struct ts_stamp *s, const char *key, const char *method, const char *path,
                                 const char *json_body);
/* The hub registry (stamp-agent/hub_registry.h): an IoT Hub service SAS over sr signed
 * with the stamp's policy (key NULL: the real one); one request to the stamp's port with
 * "Host: <hub>", the Authorization value authz (NULL: none), If-Match (NULL: none) and a
 * JSON body (NULL: none); path includes the query. */
const char *ts_hub_sas(const struct ts_stamp *s, const char *sr, const char *key);
struct ts_resp *ts_hub_registry(const struct ts_stamp *s, const char *hub, const char *authz, const char *method,
                                const char *path, const char *if_match, const char *json_body);
/* One call of the azure-iothub SDK's Registry (tests/sdk/registry.js) on hub of the stamp,
 * with the stamp's service policy: {"statusCode","body"} or the SDK error (exit 1). */
json_t *ts_sdk_registry(const struct ts_stamp *s, const char *hub, const char *command, const char *json_args,
                        int *exit_code);
/* PUT the symmetric-key enrollment group group_id with these keys (base64) through the
 * service API (api-version 2021-10-01); fails the test unless the answer is 200. */
void ts_stamp_put_symkey_group(const struct ts_stamp *s, const char *group_id, const char *primary_key,
                               const char *secondary_key);
/* Device API: PUT /{scope}/registrations/{regid}/register (body NULL: {"registrationId":regid}),
 * GET .../operations/{op} with the body {} the Node SDK sends. authz: the Authorization value (NULL: none). */
struct ts_resp *ts_stamp_register(const struct ts_stamp *s, const char *scope, const char *regid, const char *authz,
                                  const char *body);
struct ts_resp *ts_stamp_operation(const struct ts_stamp *s, const char *scope, const char *regid, const char *op,
                                   const char *authz);
/* Register and poll (honouring Retry-After, up to timeout_ms) until the status is no longer
 * "assigning"; returns the last answer. */
struct ts_resp *ts_stamp_provision(const struct ts_stamp *s, const char *scope, const char *regid, const char *authz,
                                   int timeout_ms);
/* Whether r is a DPS error body {"errorCode":int (status*1000+n),"trackingId","message","timestampUtc"} for status. */
bool ts_is_dps_error(const struct ts_resp *r, int status);

/* The node_modules directory holding the tests/sdk packages (npm install on
 * first use per build directory, serialised with flock). Fails the test with
 * a clear message when node or npm is missing or the install fails. */
const char *ts_sdk_modules(void);
/*
 * Run `node tests/sdk/<script> args...` (NULL-terminated) with NODE_PATH set
 * to ts_sdk_modules() and NODE_EXTRA_CA_CERTS to ts_pki_ca(). Returns its
 * stdout parsed as JSON (library-owned; NULL if not JSON) and the exit code in
 * *exit_code (-1: timeout or signal). stderr goes to a log in ts_tmp().
 */
json_t *ts_node(const char *script, const char *const *args, int timeout_ms, int *exit_code);
/* Start a node script in the background (e.g. webhook.js); its stdout/stderr go to <tmp>/<name>.log. */
struct ts_proc *ts_node_spawn(const char *name, const char *script, const char *const *args);
/* service.js against the stamp: {"statusCode","body"} (exit 0) or the error object (exit 1). */
json_t *ts_sdk_service(const struct ts_stamp *s, const char *command, const char *json_args, int *exit_code);
/* provision-symkey.js: registrationState (exit 0) or the error object (exit 1). payload may be NULL. */
json_t *ts_sdk_symkey(const struct ts_stamp *s, const char *scope, const char *regid, const char *key,
                      bool group, const char *payload, int *exit_code);
/* provision-x509.js */
json_t *ts_sdk_x509(const struct ts_stamp *s, const char *scope, const char *regid, const char *cert,
                    const char *key, const char *payload, int *exit_code);
/* json_dumps(j, compact) into library-owned memory ("null" for NULL). */
const char *ts_jdump(const json_t *j);
/* Keep a json reference until ts_finish (returns j). */
json_t *ts_jkeep(json_t *j);

#endif
