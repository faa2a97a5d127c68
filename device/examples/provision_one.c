/*
 * provision_one.c - sd-provision-one: provision one device with
 * libstampdevice's blocking driver (sd_posix.h) and print where it landed.
 *
 *   sd-provision-one --cp HOST:PORT --tenant ID --registration-id R
 *       (--group-key B64 | --device-key B64 | --cert F --key F)
 *       [--ca FILE] [--state FILE] [--approach 1|2] [--dps HOST:PORT] [--scope S]
 *       [--bearer TOKEN] [--reprovision REASON] [--stagger-ms N] [--stack FILE] [-v]
 *
 * Prints one JSON line (the state and the requests it took) and exits 0 on
 * READY, 3 on RETIRED, 1 on FAILED (also when stopped by SIGINT/SIGTERM),
 * 2 on a usage error. --stack reads CONTROLPLANE_URL and STACK_CA_FILE from
 * the local stack's env file (.stack/env); explicit options win.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd_crypto.h"
#include "sd_posix.h"

#define EXIT_USAGE 2
#define EXIT_RETIRED 3

struct example_args {
    const char *cp, *tenant, *regid, *group_key, *device_key, *cert, *key, *ca, *state, *dps, *scope, *bearer,
        *reprovision, *stack;
    int approach;
    long stagger_ms;
    bool verbose;
    char stack_cp[256], stack_ca[512]; /* what --stack read */
};

static volatile sig_atomic_t example_stop;

static void example_on_signal(int sig)
{
    (void)sig;
    example_stop = 1;
}

static void example_usage(FILE *f)
{
    fprintf(f, "usage: sd-provision-one --cp HOST:PORT --tenant ID --registration-id R\n"
               "         (--group-key B64 | --device-key B64 | --cert FILE --key FILE)\n"
               "         [--ca FILE] [--state FILE] [--approach 1|2] [--dps HOST:PORT] [--scope S]\n"
               "         [--bearer TOKEN] [--reprovision REASON] [--stagger-ms N] [--stack FILE] [-v]\n"
               "--cp also takes http://HOST:PORT or https://HOST:PORT. --stack reads CONTROLPLANE_URL\n"
               "and STACK_CA_FILE from the local stack's env file (.stack/env).\n"
               "Exit: 0 ready, 3 retired, 1 failed, 2 usage.\n");
}

/* KEY=value (optionally 'quoted' or "quoted") from a shell-style env file into out. */
static bool example_env_value(const char *line, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key), n;
    const char *v;

    if (strncmp(line, "export ", 7) == 0)
        line += 7;
    if (strncmp(line, key, klen) != 0 || line[klen] != '=')
        return false;
    v = line + klen + 1;
    n = strcspn(v, "\r\n");
    if (n >= 2 && (v[0] == '\'' || v[0] == '"') && v[n - 1] == v[0]) {
        v++;
        n -= 2;
    }
    if (n >= outlen)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

static bool example_read_stack(struct example_args *a)
{
    char line[1024];
    FILE *f = fopen(a->stack, "r");

    if (!f) {
        fprintf(stderr, "sd-provision-one: %s: %s\n", a->stack, strerror(errno));
        return false;
    }
    while (fgets(line, sizeof line, f)) {
        (void)(example_env_value(line, "CONTROLPLANE_URL", a->stack_cp, sizeof a->stack_cp) ||
               example_env_value(line, "STACK_CA_FILE", a->stack_ca, sizeof a->stack_ca));
    }
    fclose(f);
    if (!a->cp && a->stack_cp[0])
        a->cp = a->stack_cp;
    if (!a->ca && a->stack_ca[0])
        a->ca = a->stack_ca;
    return true;
}

static bool example_number(const char *s, long min, long max, long *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Options into a; false (after a message) on a usage error. */
static bool example_parse(int argc, char **argv, struct example_args *a)
{
    enum { O_CP = 256, O_TENANT, O_REGID, O_GKEY, O_DKEY, O_CERT, O_KEY, O_CA, O_STATE, O_APPROACH, O_DPS,
           O_SCOPE, O_BEARER, O_REPROV, O_STAGGER, O_STACK };
    static const struct option opts[] = {
        { "cp", required_argument, NULL, O_CP },           { "tenant", required_argument, NULL, O_TENANT },
        { "registration-id", required_argument, NULL, O_REGID }, { "group-key", required_argument, NULL, O_GKEY },
        { "device-key", required_argument, NULL, O_DKEY }, { "cert", required_argument, NULL, O_CERT },
        { "key", required_argument, NULL, O_KEY },         { "ca", required_argument, NULL, O_CA },
        { "state", required_argument, NULL, O_STATE },     { "approach", required_argument, NULL, O_APPROACH },
        { "dps", required_argument, NULL, O_DPS },         { "scope", required_argument, NULL, O_SCOPE },
        { "bearer", required_argument, NULL, O_BEARER },   { "reprovision", required_argument, NULL, O_REPROV },
        { "stagger-ms", required_argument, NULL, O_STAGGER }, { "stack", required_argument, NULL, O_STACK },
        { "verbose", no_argument, NULL, 'v' },             { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    long n;
    int c;

    a->approach = 1;
    while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        switch (c) {
        case O_CP: a->cp = optarg; break;
        case O_TENANT: a->tenant = optarg; break;
        case O_REGID: a->regid = optarg; break;
        case O_GKEY: a->group_key = optarg; break;
        case O_DKEY: a->device_key = optarg; break;
        case O_CERT: a->cert = optarg; break;
        case O_KEY: a->key = optarg; break;
        case O_CA: a->ca = optarg; break;
        case O_STATE: a->state = optarg; break;
        case O_DPS: a->dps = optarg; break;
        case O_SCOPE: a->scope = optarg; break;
        case O_BEARER: a->bearer = optarg; break;
        case O_REPROV: a->reprovision = optarg; break;
        case O_STACK: a->stack = optarg; break;
        case 'v': a->verbose = true; break;
        case O_APPROACH:
            if (!example_number(optarg, 1, 2, &n)) {
                fprintf(stderr, "sd-provision-one: --approach is 1 or 2\n");
                return false;
            }
            a->approach = (int)n;
            break;
        case O_STAGGER:
            if (!example_number(optarg, 0, 86400000, &n)) {
                fprintf(stderr, "sd-provision-one: --stagger-ms is 0..86400000\n");
                return false;
            }
            a->stagger_ms = n;
            break;
        case 'h': example_usage(stdout); exit(0);
        default: return false;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "sd-provision-one: unexpected argument '%s'\n", argv[optind]);
        return false;
    }
    return !a->stack || example_read_stack(a);
}

/* Exactly one credential: a group key (derived), a device key, or a certificate and key. */
static bool example_key(const struct example_args *a, unsigned char key[SD_KEY_LEN], bool *x509)
{
    unsigned char raw[128];
    int n;
    int kinds = (a->group_key != NULL) + (a->device_key != NULL) + (a->cert != NULL || a->key != NULL);

    if (kinds != 1) {
        fprintf(stderr, "sd-provision-one: give exactly one of --group-key, --device-key, --cert/--key\n");
        return false;
    }
    *x509 = a->cert || a->key;
    if (*x509) {
        if (!a->cert || !a->key) {
            fprintf(stderr, "sd-provision-one: --cert and --key go together\n");
            return false;
        }
        return true;
    }
    n = sd_crypto_b64_decode(a->group_key ? a->group_key : a->device_key, raw, sizeof raw);
    if (n <= 0 || (a->device_key && n != SD_KEY_LEN)) {
        fprintf(stderr, "sd-provision-one: the key is not base64%s\n", a->device_key ? " of 32 bytes" : "");
        return false;
    }
    if (a->group_key)
        sd_derive_key(raw, (size_t)n, a->regid, key);
    else
        memcpy(key, raw, SD_KEY_LEN);
    return true;
}

/* "http://h:p", "https://h:p" or "h:p" (plain HTTP) into cfg; a trailing slash is dropped. */
static bool example_cp(const char *cp, struct sd_config *cfg, char *host, size_t hostlen)
{
    const char *h = cp;
    size_t n;
    cfg->cp_tls = false;
    if (strncmp(cp, "https://", 8) == 0) {
        cfg->cp_tls = true;
        h = cp + 8;
    } else if (strncmp(cp, "http://", 7) == 0) {
        h = cp + 7;
    }
    n = strcspn(h, "/");
    if (n == 0 || n >= hostlen || (h[n] == '/' && h[n + 1] != '\0')) {
        fprintf(stderr, "sd-provision-one: --cp '%s' is not HOST:PORT or http(s)://HOST:PORT\n", cp);
        return false;
    }
    memcpy(host, h, n);
    host[n] = '\0';
    cfg->cp_host = host;
    return true;
}

static void example_print(const struct example_args *a, const struct sd_posix_result *r)
{
    const struct sd_state *s = &r->state;
    const char *status = r->action == SD_ACT_READY ? "ready" : r->action == SD_ACT_RETIRED ? "retired" : "failed";
    json_t *req = json_object(), *o;
    char *line;

    for (int k = 0; k < SD_REQ_KIND_COUNT; k++)
        json_object_set_new(req, sd_req_kind_name((enum sd_req_kind)k), json_integer(r->requests[k]));
    o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:o, s:i, s:i, s:I, s:I}",
                  "status", status, "registrationId", s->registration_id[0] ? s->registration_id : a->regid,
                  "tenantId", s->tenant_id, "geography", s->geography, "region", s->region, "stamp", s->stamp,
                  "idScope", s->id_scope, "dpsEndpoint", s->dps_endpoint, "assignedHub", s->assigned_hub,
                  "deviceId", s->device_id, "etag", s->etag, "approach", a->approach,
                  "stateFile", sd_store_result_name(r->loaded), "requests", req, "ioErrors", (int)r->io_errors,
                  "throttled", (int)r->throttled, "sleptMs", (json_int_t)r->slept_ms,
                  "elapsedMs", (json_int_t)r->elapsed_ms);
    if (!o) {
        fprintf(stderr, "sd-provision-one: cannot build the JSON answer\n");
        return;
    }
    if (r->action == SD_ACT_FAILED)
        json_object_set_new(o, "error", json_string(r->error));
    line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (line)
        printf("%s\n", line);
    free(line);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct example_args a;
    struct sd_config cfg;
    struct sd_posix_opts po;
    struct sd_posix_result res;
    unsigned char key[SD_KEY_LEN];
    char cp_host[SD_HOST_MAX];
    bool x509 = false;
    const char *why;
    struct sigaction sa;

    memset(&a, 0, sizeof a);
    if (!example_parse(argc, argv, &a) || !a.regid || !example_key(&a, key, &x509)) {
        if (!a.regid)
            fprintf(stderr, "sd-provision-one: --registration-id is required\n");
        example_usage(stderr);
        return EXIT_USAGE;
    }
    memset(&cfg, 0, sizeof cfg);
    sd_config_defaults(&cfg);
    if (a.cp && !example_cp(a.cp, &cfg, cp_host, sizeof cp_host))
        return EXIT_USAGE;
    cfg.tenant_id = a.tenant;
    cfg.bearer_token = a.bearer;
    cfg.dps_host_override = a.dps;
    cfg.id_scope_override = a.scope;
    cfg.approach = a.approach == 2 ? SD_APPROACH_PROXY : SD_APPROACH_LOCATE;
    cfg.auth = x509 ? SD_AUTH_X509 : SD_AUTH_SYMKEY;
    cfg.stagger_ms = (uint32_t)a.stagger_ms;
    if ((why = sd_config_check(&cfg)) != NULL) {
        fprintf(stderr, "sd-provision-one: %s\n", why);
        example_usage(stderr);
        return EXIT_USAGE;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = example_on_signal; /* no SA_RESTART: a sleep or poll ends at once */
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        fprintf(stderr, "sd-provision-one: signal handlers: %s (continuing)\n", strerror(errno));

    memset(&po, 0, sizeof po);
    po.state_path = a.state;
    po.ca_file = a.ca;
    po.cert_file = a.cert;
    po.key_file = a.key;
    po.verbose = a.verbose;
    po.reprovision_reason = a.reprovision;
    po.stop = &example_stop;
    sd_posix_run(&cfg, a.regid, x509 ? NULL : key, &po, &res);
    example_print(&a, &res);
    if (res.action == SD_ACT_FAILED)
        fprintf(stderr, "sd-provision-one: %s\n", res.error);
    return res.action == SD_ACT_READY ? 0 : res.action == SD_ACT_RETIRED ? EXIT_RETIRED : 1;
}
