/*
 * sd_machine.c - libstampdevice: the provisioning state machine (sd_machine.h).
 *
 * Owns the device's provisioning decisions: which request comes next, how
 * long to wait after each answer (the retry rules), the circuit breaker,
 * the offline pause, and the validation of every answer before it touches
 * the state. Pure: no I/O, no clock, no globals, no allocation of its own
 * (jansson allocates while a response body is parsed, and frees it before
 * the step returns). Randomness comes from a per-machine splitmix64 seeded
 * with cfg->seed and a hash of the registration id, so a run is
 * reproducible.
 *
 * Every phase change goes through sd_set_phase, which checks it against the
 * table of legal transitions (sd_legal).
 */
#include "sd_machine.h"

#include <assert.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "sd_crypto.h"

/* Defaults (sd_config_defaults; a zero in the config means these too). */
#define SD_DEF_RESUME_JITTER_MS 1000u
#define SD_DEF_BACKOFF_BASE_MS 1000u
#define SD_DEF_BACKOFF_CAP_MS 300000u
#define SD_DEF_SERVER_ERROR_FLOOR_MS 5000u
#define SD_DEF_THROTTLE_FLOOR_MS 1000u
#define SD_DEF_RETRY_AFTER_MAX_MS 600000u
#define SD_DEF_POLL_MIN_MS 2000u
#define SD_DEF_MAX_POLLS 30u
#define SD_DEF_BREAKER_THRESHOLD 5u
#define SD_DEF_BREAKER_COOLDOWN_MS 60000u
#define SD_DEF_REQUEST_TIMEOUT_MS 30000u
#define SD_DEF_SAS_TTL_S 3600u

#define SD_API_VERSION "2019-03-31"
#define SD_MAX_BODY (64 * 1024) /* a provisioning answer is a few hundred bytes */
#define SD_REASON_MAX 96        /* = sizeof m->error, where the reason waits */

/* m->flags */
enum {
    SD_F_NET_DOWN = 1u << 0,    /* NET_DOWN seen, no NET_UP since */
    SD_F_REPROVISION = 1u << 1, /* a reprovision command waits for READY */
};

#define CFG(m, field, def) ((m)->cfg->field ? (m)->cfg->field : (def))

/* ---- names ---- */

const char *sd_req_kind_name(enum sd_req_kind k)
{
    switch (k) {
    case SD_REQ_LOOKUP: return "lookup";
    case SD_REQ_LOCATE: return "locate";
    case SD_REQ_PROVISION: return "provision";
    case SD_REQ_REPROVISION: return "reprovision";
    case SD_REQ_DPS_REGISTER: return "dps_register";
    case SD_REQ_DPS_POLL: return "dps_poll";
    case SD_REQ_DPS_LOOKUP: return "dps_lookup";
    case SD_REQ_KIND_COUNT: break;
    }
    return "?";
}

const char *sd_phase_name(enum sd_phase p)
{
    static const char *const names[] = {"init",    "stagger", "request", "backoff", "poll_wait",
                                        "persist", "offline", "ready",   "retired", "failed"};
    return (unsigned)p < sizeof names / sizeof names[0] ? names[p] : "?";
}

/* ---- configuration ---- */

static void sd_default_u32(uint32_t *v, uint32_t def)
{
    if (*v == 0)
        *v = def;
}

void sd_config_defaults(struct sd_config *c)
{
    sd_default_u32(&c->resume_jitter_ms, SD_DEF_RESUME_JITTER_MS);
    sd_default_u32(&c->backoff_base_ms, SD_DEF_BACKOFF_BASE_MS);
    sd_default_u32(&c->backoff_cap_ms, SD_DEF_BACKOFF_CAP_MS);
    sd_default_u32(&c->server_error_floor_ms, SD_DEF_SERVER_ERROR_FLOOR_MS);
    sd_default_u32(&c->throttle_floor_ms, SD_DEF_THROTTLE_FLOOR_MS);
    sd_default_u32(&c->retry_after_max_ms, SD_DEF_RETRY_AFTER_MAX_MS);
    sd_default_u32(&c->poll_min_ms, SD_DEF_POLL_MIN_MS);
    sd_default_u32(&c->max_polls, SD_DEF_MAX_POLLS);
    sd_default_u32(&c->breaker_threshold, SD_DEF_BREAKER_THRESHOLD);
    sd_default_u32(&c->breaker_cooldown_ms, SD_DEF_BREAKER_COOLDOWN_MS);
    sd_default_u32(&c->request_timeout_ms, SD_DEF_REQUEST_TIMEOUT_MS);
    sd_default_u32(&c->sas_ttl_s, SD_DEF_SAS_TTL_S);
}

/* Characters that can go into a URL path or a Host header unescaped. */
static bool sd_path_safe(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '.' || c == '_' || c == ':' || c == '~'))
            return false;
    }
    return true;
}

/* "host:port", "[v6]:port" or a bare host name: no spaces, slashes or controls. */
static bool sd_host_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max)
        return false;
    for (; *s; s++)
        if (*s <= ' ' || *s > '~' || *s == '/' || *s == '?' || *s == '#' || *s == '@')
            return false;
    return true;
}

const char *sd_config_check(const struct sd_config *c)
{
    if (!c)
        return "no configuration";
    if (!c->cp_host) {
        if (!c->dps_host_override || !c->id_scope_override)
            return "without a control plane, dps_host_override and id_scope_override are required";
    } else {
        if (!sd_host_ok(c->cp_host, SD_HOST_MAX))
            return "cp_host is not a usable host:port";
        if (!c->tenant_id || !sd_path_safe(c->tenant_id, sizeof ((struct sd_state *)0)->tenant_id))
            return "tenant_id is missing or not a valid id";
        if (c->approach != SD_APPROACH_LOCATE && c->approach != SD_APPROACH_PROXY)
            return "approach must be SD_APPROACH_LOCATE or SD_APPROACH_PROXY";
        if (c->auth == SD_AUTH_X509 && !c->bearer_token)
            return "X.509 devices need a bearer_token for the control plane";
    }
    if (c->auth != SD_AUTH_SYMKEY && c->auth != SD_AUTH_X509)
        return "auth must be SD_AUTH_SYMKEY or SD_AUTH_X509";
    if (c->dps_host_override && !sd_host_ok(c->dps_host_override, SD_HOST_MAX))
        return "dps_host_override is not a usable host:port";
    if (c->id_scope_override && !sd_path_safe(c->id_scope_override, sizeof ((struct sd_state *)0)->id_scope))
        return "id_scope_override is not a valid id scope";
    if (c->backoff_base_ms && c->backoff_cap_ms && c->backoff_base_ms > c->backoff_cap_ms)
        return "backoff_base_ms is larger than backoff_cap_ms";
    return NULL;
}

/* ---- randomness ---- */

static uint64_t sd_fnv1a(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* splitmix64: one 64-bit state, full period, good enough for jitter. */
static uint64_t sd_rand(struct sd_machine *m)
{
    uint64_t z = (m->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) (0 when n is 0); the modulo bias of a 64-bit draw is negligible. */
static uint64_t sd_rand_below(struct sd_machine *m, uint64_t n)
{
    return n ? sd_rand(m) % n : 0;
}

/* Full jitter: uniform in [0, min(cap, base * 2^attempt)]. */
static int64_t sd_backoff(struct sd_machine *m)
{
    uint64_t cap = CFG(m, backoff_cap_ms, SD_DEF_BACKOFF_CAP_MS);
    uint64_t ceiling = CFG(m, backoff_base_ms, SD_DEF_BACKOFF_BASE_MS);
    for (uint32_t i = 0; i < m->attempt && ceiling < cap; i++)
        ceiling *= 2;
    if (ceiling > cap)
        ceiling = cap;
    return (int64_t)sd_rand_below(m, ceiling + 1);
}

/* ---- phases and actions ---- */

#define PH(p) (1u << (p))
/* Which phase may follow which (a phase may always be re-entered). */
static const uint16_t sd_legal[] = {
    [SD_PH_INIT] = PH(SD_PH_STAGGER) | PH(SD_PH_REQUEST) | PH(SD_PH_BACKOFF) | PH(SD_PH_OFFLINE) |
                   PH(SD_PH_RETIRED) | PH(SD_PH_FAILED),
    [SD_PH_STAGGER] = PH(SD_PH_REQUEST) | PH(SD_PH_BACKOFF) | PH(SD_PH_OFFLINE),
    [SD_PH_REQUEST] = PH(SD_PH_BACKOFF) | PH(SD_PH_POLL_WAIT) | PH(SD_PH_PERSIST) | PH(SD_PH_OFFLINE) |
                      PH(SD_PH_READY) | PH(SD_PH_FAILED),
    [SD_PH_BACKOFF] = PH(SD_PH_REQUEST) | PH(SD_PH_OFFLINE),
    [SD_PH_POLL_WAIT] = PH(SD_PH_REQUEST) | PH(SD_PH_BACKOFF) | PH(SD_PH_OFFLINE),
    [SD_PH_PERSIST] = PH(SD_PH_READY) | PH(SD_PH_RETIRED) | PH(SD_PH_REQUEST) | PH(SD_PH_BACKOFF) |
                      PH(SD_PH_OFFLINE),
    [SD_PH_OFFLINE] = PH(SD_PH_STAGGER) | PH(SD_PH_BACKOFF) | PH(SD_PH_POLL_WAIT),
    [SD_PH_READY] = PH(SD_PH_REQUEST) | PH(SD_PH_BACKOFF) | PH(SD_PH_OFFLINE),
    [SD_PH_RETIRED] = 0,
    [SD_PH_FAILED] = 0,
};

static void sd_set_phase(struct sd_machine *m, enum sd_phase p)
{
    bool legal = p == m->phase || (sd_legal[m->phase] & PH(p));
    assert(legal); /* a bug in this file, not in the caller's input */
    (void)legal;
    m->phase = (uint8_t)p;
}

static void sd_sleep(struct sd_machine *m, enum sd_phase p, int64_t until, struct sd_action *out)
{
    sd_set_phase(m, p);
    m->until_ms = until;
    out->type = SD_ACT_SLEEP;
    out->until_ms = until;
}

/* Offline: nothing is sent until NET_UP, which resumes `resume` (not before `until`). */
static void sd_go_offline(struct sd_machine *m, enum sd_phase resume, int64_t until, struct sd_action *out)
{
    m->resume_phase = (uint8_t)resume;
    m->until_ms = until;
    sd_set_phase(m, SD_PH_OFFLINE);
    out->type = SD_ACT_WAIT;
}

static void sd_fail_for_good(struct sd_machine *m, struct sd_action *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void sd_fail_for_good(struct sd_machine *m, struct sd_action *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->error, sizeof m->error, fmt, ap);
    va_end(ap);
    sd_set_phase(m, SD_PH_FAILED);
    out->type = SD_ACT_FAILED;
}

/* The action still in force, for an event that changes nothing. */
static void sd_current(const struct sd_machine *m, struct sd_action *out)
{
    switch ((enum sd_phase)m->phase) {
    case SD_PH_STAGGER:
    case SD_PH_BACKOFF:
    case SD_PH_POLL_WAIT:
        out->type = SD_ACT_SLEEP;
        out->until_ms = m->until_ms;
        return;
    case SD_PH_READY: out->type = SD_ACT_READY; return;
    case SD_PH_RETIRED: out->type = SD_ACT_RETIRED; return;
    case SD_PH_FAILED: out->type = SD_ACT_FAILED; return;
    case SD_PH_INIT:
    case SD_PH_REQUEST: /* the outstanding SEND still stands */
    case SD_PH_PERSIST: /* so does the PERSIST */
    case SD_PH_OFFLINE: break;
    }
    out->type = SD_ACT_WAIT;
}

/* Send the pending step now, unless the network is down or the breaker is open. */
static void sd_go(struct sd_machine *m, int64_t now, struct sd_action *out)
{
    if (m->flags & SD_F_NET_DOWN) {
        sd_go_offline(m, SD_PH_BACKOFF, 0, out);
        return;
    }
    if (m->breaker == SD_BREAKER_OPEN) {
        if (now < m->breaker_until_ms) {
            sd_sleep(m, SD_PH_BACKOFF, m->breaker_until_ms, out);
            return;
        }
        m->breaker = SD_BREAKER_HALF_OPEN; /* this request is the probe */
    }
    sd_set_phase(m, SD_PH_REQUEST);
    out->type = SD_ACT_SEND;
    out->kind = (enum sd_req_kind)m->pending;
    out->timeout_ms = CFG(m, request_timeout_ms, SD_DEF_REQUEST_TIMEOUT_MS);
}

/* ---- success, failure and the breaker ---- */

static void sd_succeed(struct sd_machine *m)
{
    m->attempt = 0;
    m->failures = 0;
    m->breaker = SD_BREAKER_CLOSED;
}

/* A failure: wait delay_ms (computed before the counters move), longer if the breaker opens. */
static void sd_fail(struct sd_machine *m, int64_t now, int64_t delay_ms, struct sd_action *out)
{
    int64_t until = now + delay_ms;
    if (m->attempt < UINT32_MAX)
        m->attempt++;
    if (m->failures < UINT32_MAX)
        m->failures++;
    if (m->breaker == SD_BREAKER_HALF_OPEN || m->failures >= CFG(m, breaker_threshold, SD_DEF_BREAKER_THRESHOLD)) {
        m->breaker = SD_BREAKER_OPEN;
        m->breaker_until_ms = now + CFG(m, breaker_cooldown_ms, SD_DEF_BREAKER_COOLDOWN_MS);
    }
    if (m->breaker == SD_BREAKER_OPEN && until < m->breaker_until_ms)
        until = m->breaker_until_ms;
    sd_sleep(m, SD_PH_BACKOFF, until, out);
}

static void sd_fail_backoff(struct sd_machine *m, int64_t now, struct sd_action *out)
{
    sd_fail(m, now, sd_backoff(m), out);
}

/* ---- steps ---- */

static bool sd_cp(const struct sd_machine *m)
{
    return m->cfg->cp_host != NULL;
}

/* Where a device without an assignment starts. */
static enum sd_req_kind sd_first_step(const struct sd_machine *m)
{
    if (!sd_cp(m))
        return SD_REQ_DPS_REGISTER;
    return m->cfg->approach == SD_APPROACH_PROXY ? SD_REQ_PROVISION : SD_REQ_LOCATE;
}

/* What gets the hub once the assignment is known. */
static enum sd_req_kind sd_register_step(const struct sd_machine *m)
{
    return sd_cp(m) && m->cfg->approach == SD_APPROACH_PROXY ? SD_REQ_PROVISION : SD_REQ_DPS_REGISTER;
}

static void sd_drop_hub(struct sd_machine *m)
{
    m->st.flags &= ~(uint32_t)SD_STATE_HUB;
    m->st.assigned_hub[0] = '\0';
    m->st.device_id[0] = '\0';
}

/* 401/403/404: forget where the device was; the next request starts from scratch. */
static void sd_forget_assignment(struct sd_machine *m)
{
    struct sd_state *s = &m->st;
    sd_drop_hub(m);
    s->flags &= ~(uint32_t)SD_STATE_ASSIGNED;
    s->tenant_id[0] = s->geography[0] = s->region[0] = s->stamp[0] = '\0';
    s->id_scope[0] = s->dps_endpoint[0] = s->etag[0] = '\0';
    m->op_id[0] = '\0';
    m->pending = (uint8_t)sd_first_step(m);
}

static void sd_start_reprovision(struct sd_machine *m, int64_t now, struct sd_action *out)
{
    m->flags &= ~(uint16_t)SD_F_REPROVISION;
    if (sd_cp(m)) {
        m->pending = SD_REQ_REPROVISION;
    } else {
        sd_drop_hub(m); /* DPS only: registering again is the reprovision */
        m->pending = SD_REQ_DPS_REGISTER;
    }
    sd_go(m, now, out);
}

static void sd_ready(struct sd_machine *m, int64_t now, struct sd_action *out)
{
    if (m->flags & SD_F_REPROVISION) {
        sd_start_reprovision(m, now, out);
        return;
    }
    m->error[0] = '\0'; /* no reason waits any more */
    sd_set_phase(m, SD_PH_READY);
    out->type = SD_ACT_READY;
}

static void sd_persist(struct sd_machine *m, struct sd_action *out)
{
    sd_set_phase(m, SD_PH_PERSIST);
    out->type = SD_ACT_PERSIST;
}

/* ---- answer validation ---- */

/* A printable-ASCII string member that fits dst (the store writes such values only). */
static bool sd_jstr(const json_t *o, const char *key, char *dst, size_t dstlen, bool required)
{
    const json_t *v = json_object_get(o, key);
    const char *s;
    size_t n;
    if (!v || json_is_null(v)) {
        dst[0] = '\0';
        return !required;
    }
    if (!json_is_string(v))
        return false;
    s = json_string_value(v);
    n = json_string_length(v);
    if (n >= dstlen || (required && n == 0))
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < ' ' || s[i] > '~')
            return false;
    memcpy(dst, s, n + 1);
    return true;
}

/* A member that must equal want exactly. */
static bool sd_jeq(const json_t *o, const char *key, const char *want)
{
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) && json_string_length(v) == strlen(want) && strcmp(json_string_value(v), want) == 0;
}

static json_t *sd_json(const struct sd_event *ev)
{
    json_t *j;
    if (!ev->body || ev->body_len == 0 || ev->body_len > SD_MAX_BODY)
        return NULL;
    j = json_loadb(ev->body, ev->body_len, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* The control plane's assignment: {"registrationId","tenantId","geography",...}. */
static bool sd_parse_assignment(const struct sd_machine *m, const json_t *j, struct sd_state *a)
{
    memset(a, 0, sizeof *a);
    return j && sd_jeq(j, "registrationId", m->st.registration_id) && sd_jeq(j, "tenantId", m->cfg->tenant_id) &&
           sd_jstr(j, "tenantId", a->tenant_id, sizeof a->tenant_id, true) &&
           sd_jstr(j, "geography", a->geography, sizeof a->geography, true) &&
           sd_jstr(j, "region", a->region, sizeof a->region, true) &&
           sd_jstr(j, "stamp", a->stamp, sizeof a->stamp, true) &&
           sd_jstr(j, "idScope", a->id_scope, sizeof a->id_scope, true) &&
           sd_path_safe(a->id_scope, sizeof a->id_scope) &&
           sd_jstr(j, "dpsEndpoint", a->dps_endpoint, sizeof a->dps_endpoint, true) && sd_host_ok(a->dps_endpoint, sizeof a->dps_endpoint) &&
           sd_jstr(j, "etag", a->etag, sizeof a->etag, false);
}

/* A DPS registration state (or /provision answer): the hub and device id. */
static bool sd_parse_hub(const struct sd_machine *m, const json_t *j, struct sd_state *a)
{
    return json_is_object(j) && sd_jeq(j, "registrationId", m->st.registration_id) &&
           sd_jstr(j, "assignedHub", a->assigned_hub, sizeof a->assigned_hub, true) &&
           sd_host_ok(a->assigned_hub, sizeof a->assigned_hub) && sd_jstr(j, "deviceId", a->device_id, sizeof a->device_id, true);
}

static bool sd_same_place(const struct sd_state *s, const struct sd_state *a)
{
    return (s->flags & SD_STATE_ASSIGNED) && strcmp(s->stamp, a->stamp) == 0 &&
           strcmp(s->id_scope, a->id_scope) == 0 && strcmp(s->dps_endpoint, a->dps_endpoint) == 0;
}

static void sd_set_assignment(struct sd_machine *m, const struct sd_state *a)
{
    struct sd_state *s = &m->st;
    sd_drop_hub(m);
    memcpy(s->tenant_id, a->tenant_id, sizeof s->tenant_id);
    memcpy(s->geography, a->geography, sizeof s->geography);
    memcpy(s->region, a->region, sizeof s->region);
    memcpy(s->stamp, a->stamp, sizeof s->stamp);
    memcpy(s->id_scope, a->id_scope, sizeof s->id_scope);
    memcpy(s->dps_endpoint, a->dps_endpoint, sizeof s->dps_endpoint);
    memcpy(s->etag, a->etag, sizeof s->etag);
    s->flags |= SD_STATE_ASSIGNED;
}

static void sd_set_hub(struct sd_machine *m, const struct sd_state *a)
{
    struct sd_state *s = &m->st;
    memcpy(s->assigned_hub, a->assigned_hub, sizeof s->assigned_hub);
    memcpy(s->device_id, a->device_id, sizeof s->device_id);
    s->flags |= SD_STATE_HUB;
    if (!sd_cp(m)) {
        /* DPS only: the configured DPS is the assignment. */
        snprintf(s->id_scope, sizeof s->id_scope, "%s", m->cfg->id_scope_override);
        snprintf(s->dps_endpoint, sizeof s->dps_endpoint, "%s", m->cfg->dps_host_override);
        s->flags |= SD_STATE_ASSIGNED;
    }
}

/* ---- 2xx answers, by request kind; false = the body is unusable (a failure) ---- */

/* locate / lookup / reprovision: stay, or register at the new place. */
static bool sd_take_assignment(struct sd_machine *m, const json_t *j, int64_t now, struct sd_action *out)
{
    struct sd_state a;
    const json_t *mv = json_object_get(j, "moved");
    bool moved = json_is_true(mv);
    if (!sd_parse_assignment(m, j, &a) || (mv && !json_is_boolean(mv)))
        return false;
    sd_succeed(m);
    if (m->pending == SD_REQ_REPROVISION)
        m->error[0] = '\0'; /* the reason was delivered */
    if (!moved && sd_same_place(&m->st, &a) && (m->st.flags & SD_STATE_HUB)) {
        sd_ready(m, now, out); /* the cached hub stands: no DPS, no write */
        return true;
    }
    sd_set_assignment(m, &a);
    m->pending = (uint8_t)sd_register_step(m);
    sd_go(m, now, out);
    return true;
}

/* /provision (approach 2): the assignment and the hub at once. */
static bool sd_take_provision(struct sd_machine *m, const json_t *j, struct sd_action *out)
{
    struct sd_state a;
    const char *status = json_string_value(json_object_get(j, "status"));
    if (!sd_parse_assignment(m, j, &a) || !sd_parse_hub(m, j, &a) || !status || strcasecmp(status, "assigned") != 0)
        return false;
    sd_succeed(m);
    sd_set_assignment(m, &a);
    sd_set_hub(m, &a);
    sd_persist(m, out);
    return true;
}

/* The answer's Retry-After in ms, capped at retry_after_max_ms; -1 when it has none. */
static int64_t sd_retry_after_ms(const struct sd_machine *m, const struct sd_event *ev)
{
    int64_t cap = CFG(m, retry_after_max_ms, SD_DEF_RETRY_AFTER_MAX_MS);
    int64_t ms;
    if (ev->retry_after_s < 0)
        return -1;
    ms = (int64_t)ev->retry_after_s * 1000;
    return ms > cap ? cap : ms;
}

static int64_t sd_poll_wait(const struct sd_machine *m, const struct sd_event *ev)
{
    int64_t wait = CFG(m, poll_min_ms, SD_DEF_POLL_MIN_MS);
    int64_t ra = sd_retry_after_ms(m, ev);
    return ra > wait ? ra : wait;
}

/* "assigning": poll the operation, or PUT again when there is none (as the SDKs do). */
static bool sd_take_assigning(struct sd_machine *m, const json_t *j, const struct sd_event *ev, struct sd_action *out)
{
    char op[sizeof m->op_id];
    if (!sd_jstr(j, "operationId", op, sizeof op, false) || (op[0] && !sd_path_safe(op, sizeof op)))
        return false;
    sd_succeed(m);
    if (op[0] && m->pending == SD_REQ_DPS_REGISTER) {
        memcpy(m->op_id, op, sizeof m->op_id);
        m->polls = 0;
        m->pending = SD_REQ_DPS_POLL;
    } else {
        m->polls++;
        if (!op[0])
            m->pending = SD_REQ_DPS_REGISTER;
        if (m->polls >= CFG(m, max_polls, SD_DEF_MAX_POLLS)) {
            m->pending = SD_REQ_DPS_REGISTER; /* this operation is not going anywhere */
            sd_fail_backoff(m, ev->now_ms, out);
            return true;
        }
    }
    sd_sleep(m, SD_PH_POLL_WAIT, ev->now_ms + sd_poll_wait(m, ev), out);
    return true;
}

/* The DPS's final state: a hub (PERSIST, or READY when it is the cached one), disabled, or register again. */
static bool sd_take_registration(struct sd_machine *m, const json_t *rs, const char *status, bool lookup,
                                 int64_t now, struct sd_action *out)
{
    struct sd_state a;
    if (strcasecmp(status, "disabled") == 0) {
        sd_fail_for_good(m, out, "the DPS says the registration is disabled");
        return true;
    }
    if (strcasecmp(status, "assigned") != 0) {
        m->pending = SD_REQ_DPS_REGISTER; /* failed, unassigned: a new registration may work */
        return false;
    }
    if (!sd_parse_hub(m, rs, &a))
        return false;
    sd_succeed(m);
    if (lookup && (m->st.flags & SD_STATE_HUB) && strcmp(a.assigned_hub, m->st.assigned_hub) == 0 &&
        strcmp(a.device_id, m->st.device_id) == 0) {
        sd_ready(m, now, out);
        return true;
    }
    sd_set_hub(m, &a);
    sd_persist(m, out);
    return true;
}

/* DPS register / poll answers: {"operationId","status","registrationState"}. */
static bool sd_take_operation(struct sd_machine *m, const json_t *j, const struct sd_event *ev, struct sd_action *out)
{
    const char *status = json_string_value(json_object_get(j, "status"));
    if (!status)
        return false;
    if (strcasecmp(status, "assigning") == 0)
        return sd_take_assigning(m, j, ev, out);
    return sd_take_registration(m, json_object_get(j, "registrationState"), status, false, ev->now_ms, out);
}

/* DPS-only status lookup: the registration state at top level. */
static bool sd_take_dps_lookup(struct sd_machine *m, const json_t *j, int64_t now, struct sd_action *out)
{
    const char *status = json_string_value(json_object_get(j, "status"));
    if (!status)
        return false;
    if (strcasecmp(status, "assigned") != 0 && strcasecmp(status, "disabled") != 0) {
        sd_succeed(m); /* the DPS answered: it has no assignment for us, so register */
        sd_drop_hub(m);
        m->pending = SD_REQ_DPS_REGISTER;
        sd_go(m, now, out);
        return true;
    }
    return sd_take_registration(m, j, status, true, now, out);
}

static void sd_on_2xx(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    json_t *j = sd_json(ev);
    bool ok = false;
    if (j) {
        switch ((enum sd_req_kind)m->pending) {
        case SD_REQ_LOOKUP:
        case SD_REQ_LOCATE:
        case SD_REQ_REPROVISION: ok = sd_take_assignment(m, j, ev->now_ms, out); break;
        case SD_REQ_PROVISION: ok = sd_take_provision(m, j, out); break;
        case SD_REQ_DPS_REGISTER:
        case SD_REQ_DPS_POLL: ok = sd_take_operation(m, j, ev, out); break;
        case SD_REQ_DPS_LOOKUP: ok = sd_take_dps_lookup(m, j, ev->now_ms, out); break;
        case SD_REQ_KIND_COUNT: break;
        }
        json_decref(j);
    }
    if (!ok)
        sd_fail_backoff(m, ev->now_ms, out);
}

/* ---- non-2xx answers: the retry rules ---- */

static void sd_on_throttled(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    /* exactly what the service asked for (up to retry_after_max_ms), when it said */
    int64_t delay = sd_retry_after_ms(m, ev);
    if (delay < 0) {
        int64_t min_ms = CFG(m, throttle_floor_ms, SD_DEF_THROTTLE_FLOOR_MS);
        delay = sd_backoff(m);
        if (delay < min_ms)
            delay = min_ms;
        if (m->attempt < UINT32_MAX)
            m->attempt++; /* grows the backoff, but is no failure: the breaker stays as it is */
    }
    sd_sleep(m, SD_PH_BACKOFF, ev->now_ms + delay, out);
}

static void sd_on_server_error(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    int64_t ra = sd_retry_after_ms(m, ev);
    int64_t delay = ra >= 0 ? ra : sd_backoff(m);
    int64_t min_ms = CFG(m, server_error_floor_ms, SD_DEF_SERVER_ERROR_FLOOR_MS);
    sd_fail(m, ev->now_ms, delay > min_ms ? delay : min_ms, out);
}

static bool sd_pending_cp(const struct sd_machine *m)
{
    return m->pending == SD_REQ_LOOKUP || m->pending == SD_REQ_LOCATE || m->pending == SD_REQ_PROVISION ||
           m->pending == SD_REQ_REPROVISION;
}

static void sd_on_client_error(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    int s = ev->status;
    if (s == 401 || s == 403 || s == 404) {
        int64_t delay = sd_backoff(m);
        sd_forget_assignment(m); /* full re-registration */
        sd_fail(m, ev->now_ms, delay, out);
    } else if (s == 410 && sd_pending_cp(m)) {
        m->st.flags |= SD_STATE_RETIRED; /* end of life: remember it, then stop */
        sd_persist(m, out);
    } else if (s == 409 && m->pending == SD_REQ_PROVISION) {
        sd_fail_backoff(m, ev->now_ms, out); /* assignment_changed while the DPS ran: ask again */
    } else {
        sd_fail_for_good(m, out, "HTTP %d to %s", s, sd_req_kind_name((enum sd_req_kind)m->pending));
    }
}

static void sd_on_response(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    int s = ev->status;
    if (m->phase != SD_PH_REQUEST) {
        sd_current(m, out); /* a late answer (after NET_DOWN): the step is sent again on NET_UP */
        return;
    }
    if (s >= 200 && s < 300)
        sd_on_2xx(m, ev, out);
    else if (s == 429)
        sd_on_throttled(m, ev, out);
    else if (s >= 500 && s < 600)
        sd_on_server_error(m, ev, out);
    else if (s >= 400 && s < 500)
        sd_on_client_error(m, ev, out);
    else
        sd_fail_backoff(m, ev->now_ms, out); /* 1xx/3xx: nothing we can use */
}

/* ---- the other events ---- */

/* A loaded state is used only if it is this device's and says something coherent. */
static bool sd_state_usable(const struct sd_machine *m, const struct sd_state *s)
{
#define SD_TERMINATED(f) (memchr(s->f, '\0', sizeof s->f) != NULL)
    if (!SD_TERMINATED(registration_id) || !SD_TERMINATED(tenant_id) || !SD_TERMINATED(geography) ||
        !SD_TERMINATED(region) || !SD_TERMINATED(stamp) || !SD_TERMINATED(id_scope) ||
        !SD_TERMINATED(dps_endpoint) || !SD_TERMINATED(assigned_hub) || !SD_TERMINATED(device_id) ||
        !SD_TERMINATED(etag))
        return false;
#undef SD_TERMINATED
    if (strcmp(s->registration_id, m->st.registration_id) != 0)
        return false;
    if (!(s->flags & SD_STATE_ASSIGNED))
        return true;
    if (sd_cp(m) && (strcmp(s->tenant_id, m->cfg->tenant_id) != 0 || !s->stamp[0]))
        return false;
    if (!sd_path_safe(s->id_scope, sizeof s->id_scope) || !sd_host_ok(s->dps_endpoint, sizeof s->dps_endpoint))
        return false;
    return !(s->flags & SD_STATE_HUB) || (s->assigned_hub[0] && s->device_id[0]);
}

static void sd_on_boot(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    uint32_t jitter;
    if (m->phase != SD_PH_INIT) {
        sd_current(m, out);
        return;
    }
    if (ev->state && sd_state_usable(m, ev->state))
        m->st = *ev->state;
    m->st.flags &= SD_STATE_ASSIGNED | SD_STATE_HUB | SD_STATE_RETIRED;
    if (!(m->st.flags & SD_STATE_ASSIGNED))
        m->st.flags &= ~(uint32_t)SD_STATE_HUB;
    if (m->st.flags & SD_STATE_RETIRED) {
        sd_set_phase(m, SD_PH_RETIRED); /* end of life: never touch the network again */
        out->type = SD_ACT_RETIRED;
        return;
    }
    if (m->st.flags & SD_STATE_ASSIGNED) {
        /* Status first: ask where we belong (free), provision only if that changed. */
        if (sd_cp(m))
            m->pending = SD_REQ_LOOKUP;
        else
            m->pending = (m->st.flags & SD_STATE_HUB) ? SD_REQ_DPS_LOOKUP : SD_REQ_DPS_REGISTER;
        jitter = m->cfg->boot_jitter_ms;
    } else {
        m->pending = (uint8_t)sd_first_step(m);
        jitter = m->cfg->stagger_ms;
    }
    if (jitter)
        sd_sleep(m, SD_PH_STAGGER, ev->now_ms + (int64_t)sd_rand_below(m, jitter), out);
    else
        sd_go(m, ev->now_ms, out);
}

static void sd_on_io_error(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    if (m->phase != SD_PH_REQUEST)
        sd_current(m, out);
    else
        sd_fail_backoff(m, ev->now_ms, out);
}

static void sd_on_timer(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    bool waiting = m->phase == SD_PH_STAGGER || m->phase == SD_PH_BACKOFF || m->phase == SD_PH_POLL_WAIT;
    if (!waiting || ev->now_ms < m->until_ms)
        sd_current(m, out); /* early or stray: the same deadline again */
    else
        sd_go(m, ev->now_ms, out);
}

static void sd_on_persisted(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    if (m->phase != SD_PH_PERSIST) {
        sd_current(m, out);
        return;
    }
    /* A failed write does not hold the device back: it is provisioned in memory,
     * and the next boot provisions again (ev->ok is for the driver's log). */
    if (m->st.flags & SD_STATE_RETIRED) {
        sd_set_phase(m, SD_PH_RETIRED);
        out->type = SD_ACT_RETIRED;
    } else {
        sd_ready(m, ev->now_ms, out);
    }
}

static void sd_on_net_down(struct sd_machine *m, struct sd_action *out)
{
    m->flags |= SD_F_NET_DOWN;
    switch ((enum sd_phase)m->phase) {
    case SD_PH_STAGGER:
    case SD_PH_BACKOFF:
    case SD_PH_POLL_WAIT: sd_go_offline(m, (enum sd_phase)m->phase, m->until_ms, out); return;
    case SD_PH_REQUEST: sd_go_offline(m, SD_PH_BACKOFF, 0, out); return; /* its answer will be ignored */
    default: sd_current(m, out); return;
    }
}

static void sd_on_net_up(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    int64_t until;
    m->flags &= ~(uint16_t)SD_F_NET_DOWN;
    if (m->phase != SD_PH_OFFLINE) {
        sd_current(m, out);
        return;
    }
    /* A fleet whose network returns at once must not come back at once. */
    until = ev->now_ms + (int64_t)sd_rand_below(m, CFG(m, resume_jitter_ms, SD_DEF_RESUME_JITTER_MS));
    if (m->until_ms > until)
        until = m->until_ms;
    sd_sleep(m, (enum sd_phase)m->resume_phase, until, out);
}

/* The reason travels to /reprovision; it waits in m->error (unused until FAILED). */
static void sd_keep_reason(struct sd_machine *m, const char *reason)
{
    size_t o = 0;
    for (const char *p = reason ? reason : ""; *p && o + 1 < SD_REASON_MAX; p++)
        m->error[o++] = (*p >= ' ' && *p <= '~') ? *p : '?'; /* ASCII only: never broken UTF-8 */
    m->error[o] = '\0';
}

static bool sd_waiting(const struct sd_machine *m)
{
    return m->phase == SD_PH_STAGGER || m->phase == SD_PH_BACKOFF || m->phase == SD_PH_POLL_WAIT ||
           m->phase == SD_PH_OFFLINE;
}

/*
 * REPROVISION: at READY at once. While a step waits and the device has an
 * assignment, the waiting step becomes the reprovision (it may be what gets
 * the device out of a failing stamp). Otherwise it is done on reaching READY.
 */
static void sd_on_reprovision(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    if (m->phase == SD_PH_INIT || m->phase == SD_PH_RETIRED || m->phase == SD_PH_FAILED) {
        sd_current(m, out);
        return;
    }
    sd_keep_reason(m, ev->reason);
    if (m->phase == SD_PH_READY) {
        sd_start_reprovision(m, ev->now_ms, out);
        return;
    }
    if (sd_waiting(m) && sd_cp(m) && (m->st.flags & SD_STATE_ASSIGNED))
        m->pending = SD_REQ_REPROVISION;
    else
        m->flags |= SD_F_REPROVISION;
    sd_current(m, out);
}

/* HUB_REJECTED: the hub no longer knows the device; the cached hub is wrong. */
static void sd_on_hub_rejected(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    if (m->phase != SD_PH_READY) {
        sd_current(m, out);
        return;
    }
    sd_keep_reason(m, ev->reason ? ev->reason : "the hub rejected the device");
    sd_drop_hub(m);
    sd_start_reprovision(m, ev->now_ms, out);
}

/* ---- public ---- */

static bool sd_regid_ok(const char *r)
{
    size_t n = r ? strlen(r) : 0;
    if (n == 0 || n >= SD_REGID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((r[i] >= 'a' && r[i] <= 'z') || (r[i] >= '0' && r[i] <= '9') || strchr("-._:", r[i])))
            return false;
    return r[n - 1] != '.' && r[n - 1] != '_' && r[n - 1] != ':';
}

bool sd_machine_init(struct sd_machine *m, const struct sd_config *cfg, const char *registration_id,
                     const unsigned char key[SD_KEY_LEN])
{
    const char *why = sd_config_check(cfg);
    memset(m, 0, sizeof *m);
    m->cfg = cfg;
    if (!why && !sd_regid_ok(registration_id))
        why = "registration id: 1-128 of [a-z0-9-._:], ending in a letter, digit or '-'";
    if (!why && cfg->auth == SD_AUTH_SYMKEY && !key)
        why = "symmetric key authentication needs the device key";
    if (why) {
        snprintf(m->error, sizeof m->error, "%s", why);
        m->phase = SD_PH_FAILED;
        return false;
    }
    snprintf(m->st.registration_id, sizeof m->st.registration_id, "%s", registration_id);
    if (key)
        memcpy(m->key, key, SD_KEY_LEN);
    m->rng = cfg->seed ^ sd_fnv1a(registration_id);
    m->phase = SD_PH_INIT;
    m->pending = (uint8_t)sd_first_step(m);
    return true;
}

void sd_machine_step(struct sd_machine *m, const struct sd_event *ev, struct sd_action *out)
{
    memset(out, 0, sizeof *out);
    if (m->phase == SD_PH_FAILED || m->phase == SD_PH_RETIRED) {
        sd_current(m, out); /* terminal (and a machine whose init failed has no usable cfg) */
        return;
    }
    switch (ev->type) {
    case SD_EV_BOOT: sd_on_boot(m, ev, out); return;
    case SD_EV_RESPONSE: sd_on_response(m, ev, out); return;
    case SD_EV_IO_ERROR: sd_on_io_error(m, ev, out); return;
    case SD_EV_TIMER: sd_on_timer(m, ev, out); return;
    case SD_EV_PERSISTED: sd_on_persisted(m, ev, out); return;
    case SD_EV_NET_DOWN: sd_on_net_down(m, out); return;
    case SD_EV_NET_UP: sd_on_net_up(m, ev, out); return;
    case SD_EV_REPROVISION: sd_on_reprovision(m, ev, out); return;
    case SD_EV_HUB_REJECTED: sd_on_hub_rejected(m, ev, out); return;
    }
    sd_current(m, out);
}

/* ---- the pending request ---- */

static bool sd_fmt(char *dst, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static bool sd_fmt(char *dst, size_t len, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(dst, len, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < len;
}

/* Bearer token, SAS for resource "{prefix}/registrations/{id}", or nothing (X.509 at the DPS). */
static bool sd_auth_header(const struct sd_machine *m, const char *prefix, bool cp, int64_t wall_s,
                           struct sd_request *out)
{
    char sr[256];
    int64_t expiry = wall_s + CFG(m, sas_ttl_s, SD_DEF_SAS_TTL_S);
    if (cp && m->cfg->bearer_token)
        return sd_fmt(out->authorization, sizeof out->authorization, "Bearer %s", m->cfg->bearer_token);
    if (m->cfg->auth == SD_AUTH_X509)
        return !cp; /* the certificate is the credential; the control plane needs the bearer */
    return sd_fmt(sr, sizeof sr, "%s/registrations/%s", prefix, m->st.registration_id) &&
           sd_crypto_sas(sr, m->key, SD_KEY_LEN, expiry, out->authorization, sizeof out->authorization);
}

static bool sd_request_cp(const struct sd_machine *m, int64_t wall_s, struct sd_request *out)
{
    const char *route = m->pending == SD_REQ_PROVISION     ? "provision"
                        : m->pending == SD_REQ_REPROVISION ? "reprovision"
                                                           : "locate";
    out->target = SD_TARGET_CP;
    out->tls = m->cfg->cp_tls;
    out->method = "POST";
    /* The reason is printable ASCII without quotes or backslashes escaped below. */
    if (m->pending == SD_REQ_REPROVISION && m->error[0]) {
        size_t o = (size_t)snprintf(out->body, sizeof out->body, "{\"reason\":\"");
        for (const char *p = m->error; *p && o + 4 < sizeof out->body; p++) {
            if (*p == '"' || *p == '\\')
                out->body[o++] = '\\';
            out->body[o++] = *p;
        }
        if (!sd_fmt(out->body + o, sizeof out->body - o, "\"}"))
            return false;
    }
    return sd_fmt(out->host, sizeof out->host, "%s", m->cfg->cp_host) &&
           sd_fmt(out->path, sizeof out->path, "/v1/tenants/%s/registrations/%s/%s", m->cfg->tenant_id,
                  m->st.registration_id, route) &&
           sd_auth_header(m, m->cfg->tenant_id, true, wall_s, out);
}

static bool sd_request_dps(const struct sd_machine *m, int64_t wall_s, struct sd_request *out)
{
    const char *host = m->cfg->dps_host_override ? m->cfg->dps_host_override : m->st.dps_endpoint;
    const char *scope = m->cfg->id_scope_override ? m->cfg->id_scope_override : m->st.id_scope;
    const char *id = m->st.registration_id;
    bool ok;
    out->target = SD_TARGET_DPS;
    out->tls = true; /* the DPS device API is HTTPS only */
    if (!host[0] || !scope[0])
        return false;
    if (m->pending == SD_REQ_DPS_POLL) {
        out->method = "GET";
        ok = sd_fmt(out->path, sizeof out->path, "/%s/registrations/%s/operations/%s?api-version=" SD_API_VERSION,
                    scope, id, m->op_id);
    } else {
        out->method = m->pending == SD_REQ_DPS_REGISTER ? "PUT" : "POST";
        ok = sd_fmt(out->path, sizeof out->path, "/%s/registrations/%s%s?api-version=" SD_API_VERSION, scope, id,
                    m->pending == SD_REQ_DPS_REGISTER ? "/register" : "") &&
             sd_fmt(out->body, sizeof out->body, "{\"registrationId\":\"%s\"}", id);
    }
    return ok && sd_fmt(out->host, sizeof out->host, "%s", host) && sd_auth_header(m, scope, false, wall_s, out);
}

bool sd_machine_request(const struct sd_machine *m, int64_t wall_s, struct sd_request *out)
{
    memset(out, 0, sizeof *out);
    if (m->phase != SD_PH_REQUEST)
        return false;
    out->kind = (enum sd_req_kind)m->pending;
    switch (out->kind) {
    case SD_REQ_LOOKUP:
    case SD_REQ_LOCATE:
    case SD_REQ_PROVISION:
    case SD_REQ_REPROVISION: return sd_request_cp(m, wall_s, out);
    case SD_REQ_DPS_REGISTER:
    case SD_REQ_DPS_POLL:
    case SD_REQ_DPS_LOOKUP: return sd_request_dps(m, wall_s, out);
    case SD_REQ_KIND_COUNT: break;
    }
    return false;
}

/* ---- accessors ---- */

const struct sd_state *sd_machine_state(const struct sd_machine *m)
{
    return &m->st;
}

enum sd_phase sd_machine_phase(const struct sd_machine *m)
{
    return (enum sd_phase)m->phase;
}

enum sd_breaker sd_machine_breaker(const struct sd_machine *m)
{
    return (enum sd_breaker)m->breaker;
}

const char *sd_machine_error(const struct sd_machine *m)
{
    return m->phase == SD_PH_FAILED ? m->error : "";
}
