/*
 * fs_main.c - fleetsim: the command line and the scenarios.
 *
 *   fleetsim --scenario NAME --devices N [--stack .stack/env] [--tenant ID] [--json]
 *            [--enrollment-key B64] [--geography G]... [--window-ms MS] [--max-conns N]
 *            [--approach 1|2] [--seed N] [--timeout-s S] [--seed-mode real|proxy|cp]
 *            [--region R] [--request-timeout-ms MS] [--verbose]
 *
 * Scenarios (docs/device.md, "fleetsim"):
 *   black-friday   N new devices first-boot, each after a random delay within --window-ms
 *   blackout       N provisioned devices power back at the same instant
 *   update-reboot  N provisioned devices reboot within --window-ms
 *   region-loss    the stamps of one region go draining; their devices are told the hub
 *                  rejected them and re-home
 * The last three provision their devices first (the seeding phase, reported
 * separately and not measured), then re-create every machine from what it
 * persisted. --seed-mode real: as devices do (approach 1: locate, then DPS
 * register and polls); proxy: the control plane's /provision registers each
 * device at its DPS (one request per device); cp: the control plane's
 * placement only (locate, which records the device in PostgreSQL), and the
 * persisted state gets a hub of the assigned stamp picked by fleetsim from
 * the layout instead of a DPS registration (fast: a million devices in
 * minutes; the warm scenarios' status lookups never touch the hub anyway).
 *
 * Exit status: 0 when every device of the measured phase ended ready and no
 * answer was wrong, 3 when the run completed otherwise, 1 on a setup error,
 * 2 on a usage error.
 */
#include "fs.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct fs_args {
    const char *scenario;
    uint32_t devices;
    const char *stack;
    const char *tenant;
    const char *key;
    char geos[FS_MAX_GEOS][32];
    int ngeos;
    bool json;
    bool verbose;
    long window_ms;        /* -1: the scenario's default */
    uint32_t max_conns;
    int approach;
    uint64_t seed;
    int timeout_s;
    const char *seed_mode;
    const char *region;
    uint32_t request_timeout_ms;
};

static void usage(void)
{
    fprintf(stderr,
            "usage: fleetsim --scenario black-friday|blackout|update-reboot|region-loss --devices N\n"
            "                [--stack .stack/env] [--tenant ID] [--enrollment-key B64] [--json]\n"
            "                [--geography G]... [--window-ms MS] [--max-conns N] [--approach 1|2]\n"
            "                [--seed N] [--timeout-s S] [--seed-mode real|proxy|cp] [--region R]\n"
            "                [--request-timeout-ms MS] [--verbose]\n");
    exit(2);
}

static long num_arg(const char *name, const char *v, long min, long max)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || end == v || n < min || n > max) {
        fprintf(stderr, "fleetsim: %s must be an integer in [%ld, %ld]\n", name, min, max);
        exit(2);
    }
    return n;
}

static void parse_args(int argc, char **argv, struct fs_args *a)
{
    memset(a, 0, sizeof *a);
    a->window_ms = -1;
    a->max_conns = 64;
    a->approach = 1;
    a->seed = 1;
    a->timeout_s = 600;
    a->seed_mode = "real";
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool flag = strcmp(o, "--json") == 0 || strcmp(o, "--verbose") == 0;
        if (!flag && !v)
            usage();
        if (strcmp(o, "--json") == 0)
            a->json = true;
        else if (strcmp(o, "--verbose") == 0)
            a->verbose = true;
        else if (strcmp(o, "--scenario") == 0)
            a->scenario = v;
        else if (strcmp(o, "--devices") == 0)
            a->devices = (uint32_t)num_arg(o, v, 1, 10000000);
        else if (strcmp(o, "--stack") == 0)
            a->stack = v;
        else if (strcmp(o, "--tenant") == 0)
            a->tenant = v;
        else if (strcmp(o, "--enrollment-key") == 0)
            a->key = v;
        else if (strcmp(o, "--geography") == 0 && a->ngeos < FS_MAX_GEOS && strlen(v) < 32)
            snprintf(a->geos[a->ngeos++], 32, "%s", v);
        else if (strcmp(o, "--window-ms") == 0)
            a->window_ms = num_arg(o, v, 0, 86400000);
        else if (strcmp(o, "--max-conns") == 0)
            a->max_conns = (uint32_t)num_arg(o, v, 1, 100000);
        else if (strcmp(o, "--approach") == 0)
            a->approach = (int)num_arg(o, v, 1, 2);
        else if (strcmp(o, "--seed") == 0)
            a->seed = (uint64_t)num_arg(o, v, 0, 0x7fffffff);
        else if (strcmp(o, "--timeout-s") == 0)
            a->timeout_s = (int)num_arg(o, v, 1, 86400);
        else if (strcmp(o, "--seed-mode") == 0)
            a->seed_mode = v;
        else if (strcmp(o, "--region") == 0)
            a->region = v;
        else if (strcmp(o, "--request-timeout-ms") == 0)
            a->request_timeout_ms = (uint32_t)num_arg(o, v, 100, 600000);
        else
            usage();
        if (!flag)
            i++;
    }
    if (!a->scenario || !a->devices)
        usage();
    if (strcmp(a->scenario, "black-friday") != 0 && strcmp(a->scenario, "blackout") != 0 &&
        strcmp(a->scenario, "update-reboot") != 0 && strcmp(a->scenario, "region-loss") != 0) {
        fprintf(stderr, "fleetsim: unknown scenario %s\n", a->scenario);
        usage();
    }
    if (strcmp(a->seed_mode, "real") != 0 && strcmp(a->seed_mode, "proxy") != 0 && strcmp(a->seed_mode, "cp") != 0) {
        fprintf(stderr, "fleetsim: --seed-mode is real, proxy or cp\n");
        usage();
    }
    if (a->window_ms < 0)
        a->window_ms = strcmp(a->scenario, "black-friday") == 0 || strcmp(a->scenario, "update-reboot") == 0
                           ? 30000 : 0;
}

/* A million devices may need many connections; the soft limit is often 1024. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            fprintf(stderr, "fleetsim: cannot raise RLIMIT_NOFILE: %s\n", strerror(errno));
    }
}

static int b64_decode(const char *in, unsigned char *out, size_t outlen)
{
    size_t n = strlen(in);
    if (n == 0 || n % 4 != 0 || n / 4 * 3 > outlen)
        return -1;
    int len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (len < 0)
        return -1;
    if (in[n - 1] == '=')
        len--;
    if (in[n - 2] == '=')
        len--;
    return len;
}

static SSL_CTX *tls_ctx(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static bool geo_listed(const struct fs_args *a, const char *g)
{
    for (int i = 0; i < a->ngeos; i++)
        if (strcmp(a->geos[i], g) == 0)
            return true;
    return false;
}

/* Regions with DPS stamps in geography g. */
static int regions_with_dps(const struct fs_admin *ad, const char *g)
{
    char seen[FS_MAX_STAMPS][48];
    int n = 0;
    for (int i = 0; i < ad->nstamps; i++) {
        const struct fs_stamp *s = &ad->stamps[i];
        if (!s->has_dps || strcmp(s->geography, g) != 0)
            continue;
        bool dup = false;
        for (int k = 0; k < n; k++)
            dup = dup || strcmp(seen[k], s->region) == 0;
        if (!dup)
            snprintf(seen[n++], sizeof seen[0], "%s", s->region);
    }
    return n;
}

/* Default residency: the first geography with DPS stamps (two regions of them for region-loss). */
static bool pick_geography(struct fs_args *a, const struct fs_admin *ad)
{
    int need = strcmp(a->scenario, "region-loss") == 0 ? 2 : 1;
    if (a->ngeos > 0)
        return true;
    for (int i = 0; i < ad->nstamps; i++) {
        const char *g = ad->stamps[i].geography;
        if (!geo_listed(a, g) && regions_with_dps(ad, g) >= need) {
            snprintf(a->geos[a->ngeos++], 32, "%s", g);
            return true;
        }
    }
    fprintf(stderr, "fleetsim: no geography has DPS stamps in %d region(s)\n", need);
    return false;
}

struct fs_run {
    struct fs_args *a;
    struct fs_admin ad;
    char tenant[64];
    char prefix[80];
    char key_b64[128];
    unsigned char key[64];
    int keylen;
    SSL_CTX *tls;
    struct event_base *base;
    struct fs_fleet *fleet;
    struct sd_config cfg;
    struct fs_result seeding, run;
    bool seeded;
    bool failed_stamp[FS_MAX_STAMPS];
    char failed_region[48];
    uint32_t affected;
};

static bool setup_stack(struct fs_run *R)
{
    struct fs_args *a = R->a;
    char err[512];
    if (!fs_admin_load_env(&R->ad, a->stack, err, sizeof err) || !fs_admin_load_layout(&R->ad, err, sizeof err)) {
        fprintf(stderr, "fleetsim: %s\n", err);
        return false;
    }
    if (!pick_geography(a, &R->ad))
        return false;
    if (a->tenant)
        snprintf(R->tenant, sizeof R->tenant, "%s", a->tenant);
    else
        snprintf(R->tenant, sizeof R->tenant, "fs-%08lx", (unsigned long)(((uint64_t)time(NULL) << 16) ^
                                                                          (uint64_t)getpid()) & 0xffffffffUL);
    snprintf(R->prefix, sizeof R->prefix, "%s-", R->tenant);
    if (a->key)
        snprintf(R->key_b64, sizeof R->key_b64, "%s", a->key);
    if (!fs_admin_create_tenant(&R->ad, R->tenant, a->geos, a->ngeos, R->key_b64, sizeof R->key_b64, err,
                                sizeof err)) {
        fprintf(stderr, "fleetsim: %s\n", err);
        return false;
    }
    R->keylen = b64_decode(R->key_b64, R->key, sizeof R->key);
    if (R->keylen <= 0) {
        fprintf(stderr, "fleetsim: the enrollment key is not base64\n");
        return false;
    }
    if (a->verbose)
        fprintf(stderr, "fleetsim: tenant %s; waiting for its enrollment group in every eligible DPS\n",
                R->tenant);
    if (!fs_admin_wait_sync(&R->ad, a->geos, a->ngeos, 60, err, sizeof err)) {
        fprintf(stderr, "fleetsim: %s\n", err);
        return false;
    }
    R->tls = tls_ctx(R->ad.ca_file);
    if (!R->tls) {
        fprintf(stderr, "fleetsim: cannot load the CA %s\n", R->ad.ca_file);
        return false;
    }
    return true;
}

static bool setup_fleet(struct fs_run *R)
{
    struct fs_args *a = R->a;
    sd_config_defaults(&R->cfg);
    R->cfg.cp_host = R->ad.cp_host;
    R->cfg.cp_tls = R->ad.cp_tls;
    R->cfg.tenant_id = R->tenant;
    R->cfg.approach = a->approach == 2 ? SD_APPROACH_PROXY : SD_APPROACH_LOCATE;
    R->cfg.auth = SD_AUTH_SYMKEY;
    R->cfg.seed = a->seed;
    if (a->request_timeout_ms)
        R->cfg.request_timeout_ms = a->request_timeout_ms;
    const char *bad = sd_config_check(&R->cfg);
    if (bad) {
        fprintf(stderr, "fleetsim: configuration: %s\n", bad);
        return false;
    }
    struct fs_fleet_opts fo;
    memset(&fo, 0, sizeof fo);
    fo.devices = a->devices;
    fo.prefix = R->prefix;
    fo.group_key = R->key;
    fo.group_key_len = (size_t)R->keylen;
    fo.cfg = R->cfg;
    fo.tls = R->tls;
    fo.max_conns = a->max_conns;
    fo.admin = &R->ad;
    memcpy(fo.geos, a->geos, sizeof fo.geos);
    fo.ngeos = a->ngeos;
    fo.verbose = a->verbose;
    R->base = event_base_new();
    R->fleet = R->base ? fs_fleet_new(R->base, &fo) : NULL;
    if (!R->fleet) {
        fprintf(stderr, "fleetsim: cannot allocate %u devices\n", a->devices);
        return false;
    }
    return true;
}

/* Provision every device first (not measured): the warm scenarios start from here. */
static bool seed_fleet(struct fs_run *R)
{
    struct sd_config c = R->cfg;
    bool cp = strcmp(R->a->seed_mode, "cp") == 0;
    c.stagger_ms = 0;
    c.approach = strcmp(R->a->seed_mode, "proxy") == 0 ? SD_APPROACH_PROXY : SD_APPROACH_LOCATE;
    /* cp: the machines stop at the locate answer; fleetsim persists a hub from the layout */
    struct fs_phase ph = {FS_MODE_FIRST_BOOT, false, &c, R->a->timeout_s, NULL, cp};
    if (R->a->verbose)
        fprintf(stderr, "fleetsim: seeding %u devices (%s)\n", R->a->devices, R->a->seed_mode);
    if (!fs_fleet_run(R->fleet, &ph, &R->seeding))
        return false;
    R->seeded = true;
    if (R->seeding.ready != R->seeding.devices)
        fprintf(stderr, "fleetsim: seeding: only %u of %u devices provisioned\n", R->seeding.ready,
                R->seeding.devices);
    return true;
}

/* region-loss: the region of the residency holding the most devices, unless --region. */
static bool pick_failed_region(struct fs_run *R)
{
    uint32_t counts[FS_MAX_STAMPS + 1] = {0};
    const struct fs_admin *ad = &R->ad;
    fs_fleet_count_by_stamp(R->fleet, counts);
    if (R->a->region) {
        snprintf(R->failed_region, sizeof R->failed_region, "%s", R->a->region);
    } else {
        uint32_t best = 0;
        for (int i = 0; i < ad->nstamps; i++) {
            uint32_t in_region = 0;
            for (int k = 0; k < ad->nstamps; k++)
                if (strcmp(ad->stamps[k].region, ad->stamps[i].region) == 0)
                    in_region += counts[k];
            if (in_region > best) {
                best = in_region;
                snprintf(R->failed_region, sizeof R->failed_region, "%s", ad->stamps[i].region);
            }
        }
    }
    for (int i = 0; i < ad->nstamps; i++)
        R->failed_stamp[i] = strcmp(ad->stamps[i].region, R->failed_region) == 0;
    if (!R->failed_region[0]) {
        fprintf(stderr, "fleetsim: no region holds any device\n");
        return false;
    }
    return true;
}

static bool set_failed_stamps(struct fs_run *R, const char *status)
{
    char err[256];
    bool ok = true;
    for (int i = 0; i < R->ad.nstamps; i++) {
        if (R->failed_stamp[i] && !fs_admin_set_stamp_status(&R->ad, R->ad.stamps[i].id, status, err, sizeof err)) {
            fprintf(stderr, "fleetsim: %s\n", err);
            ok = false;
        }
    }
    return ok;
}

static bool run_region_loss(struct fs_run *R)
{
    if (!pick_failed_region(R))
        return false;
    R->affected = fs_fleet_count_on(R->fleet, R->failed_stamp);
    if (R->a->verbose)
        fprintf(stderr, "fleetsim: region %s fails (%u devices on its stamps); draining its stamps\n",
                R->failed_region, R->affected);
    bool ok = set_failed_stamps(R, "draining");
    if (ok) {
        sleep(2); /* the control plane's catalog refresh */
        struct fs_phase ph = {FS_MODE_REHOME, false, NULL, R->a->timeout_s, R->failed_stamp, false};
        ok = fs_fleet_run(R->fleet, &ph, &R->run);
    }
    /* leave the stack as we found it */
    if (!set_failed_stamps(R, "active"))
        ok = false;
    return ok;
}

static bool run_scenario(struct fs_run *R)
{
    const char *s = R->a->scenario;
    struct sd_config c = R->cfg;
    if (strcmp(s, "black-friday") == 0) {
        c.stagger_ms = (uint32_t)R->a->window_ms;
        struct fs_phase ph = {FS_MODE_FIRST_BOOT, false, &c, R->a->timeout_s, NULL, false};
        return fs_fleet_run(R->fleet, &ph, &R->run);
    }
    if (!seed_fleet(R))
        return false;
    if (strcmp(s, "region-loss") == 0)
        return run_region_loss(R);
    c.boot_jitter_ms = strcmp(s, "update-reboot") == 0 ? (uint32_t)R->a->window_ms : 0;
    struct fs_phase ph = {FS_MODE_WARM, true, &c, R->a->timeout_s, NULL, false};
    if (R->a->verbose)
        fprintf(stderr, "fleetsim: %s: %u devices power on\n", s, R->a->devices);
    return fs_fleet_run(R->fleet, &ph, &R->run);
}

static void report(struct fs_run *R)
{
    struct fs_report rep = {0};
    rep.scenario = R->a->scenario;
    rep.devices = R->a->devices;
    rep.tenant = R->tenant;
    rep.approach = R->a->approach == 2 ? "2 (control plane proxy)" : "1 (locate, then DPS)";
    rep.window_ms = (uint32_t)R->a->window_ms;
    rep.max_conns = R->a->max_conns;
    rep.seed = R->a->seed;
    rep.seed_mode = R->seeded ? R->a->seed_mode : NULL;
    rep.seed_desc = !R->seeded ? NULL
                    : strcmp(R->a->seed_mode, "proxy") == 0
                        ? "proxy (control plane /provision registers at the DPS)"
                    : strcmp(R->a->seed_mode, "cp") == 0
                        ? "cp (control plane placement only; hubs assigned by fleetsim from the layout, no DPS)"
                        : "real (locate, DPS register and polls)";
    rep.failed_region = R->failed_region[0] ? R->failed_region : NULL;
    rep.affected = R->affected;
    rep.seeding = R->seeded ? &R->seeding : NULL;
    rep.run = &R->run;
    rep.peak_rss_kb = fs_peak_rss_kb();
    rep.bytes_per_device = fs_fleet_bytes_per_device();
    if (R->a->json)
        fs_report_json(&rep);
    else
        fs_report_table(&rep);
}

static const char *default_stack(void)
{
    static char path[512];
    const char *dir = getenv("STACK_DIR");
    snprintf(path, sizeof path, "%s/env", dir && dir[0] ? dir : ".stack");
    return path;
}

int main(int argc, char **argv)
{
    struct fs_args a;
    struct fs_run R;
    int rc = 1;
    parse_args(argc, argv, &a);
    if (!a.stack)
        a.stack = default_stack();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    memset(&R, 0, sizeof R);
    R.a = &a;
    if (setup_stack(&R) && setup_fleet(&R) && run_scenario(&R)) {
        report(&R);
        const struct fs_result *r = &R.run;
        rc = r->ready == r->devices && r->wrong == 0 ? 0 : 3;
    }
    fs_result_clear(&R.seeding);
    fs_result_clear(&R.run);
    fs_fleet_free(R.fleet);
    if (R.base)
        event_base_free(R.base);
    if (R.tls)
        SSL_CTX_free(R.tls);
    return rc;
}
