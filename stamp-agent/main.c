/*
 * main.c - stamp-agent entry point: command line, config, logging, run.
 *
 * Exit codes: 0 clean shutdown (or --check-config passed), 1 runtime failure
 * or forced shutdown (second signal), 2 bad command line or config, 3 the
 * provisioning database belongs to another geography (at start or --migrate).
 *
 * --migrate applies the stamp schema migrations and exits; it connects with
 * $STAMP_AGENT_MIGRATE_DATABASE (the owner's conninfo) when set, else with
 * provisioning.database (docs/security.md "Database roles").
 */
#include <event2/event.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "agent.h"
#include "agent_config.h"
#include "dps_secrets.h"
#include "dps_server.h"
#include "log.h"

#define AGENT_EXIT_USAGE 2

struct agent_args {
    const char *config;
    int log_level;        /* -1: take it from the config (default info) */
    bool check_config;
    bool migrate;
};

static void agent_usage(FILE *f)
{
    fprintf(f, "usage: stamp-agent --config FILE [--log-level debug|info|warn|error]"
               " [--check-config] [--migrate]\n");
}

/* Returns -1 to continue, or an exit code. */
static int agent_parse_args(int argc, char **argv, struct agent_args *args)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "log-level", required_argument, NULL, 'l' },
        { "check-config", no_argument, NULL, 'k' },
        { "migrate", no_argument, NULL, 'm' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    args->config = NULL;
    args->log_level = -1;
    args->check_config = false;
    args->migrate = false;
    while ((c = getopt_long(argc, argv, "c:l:kmh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            args->config = optarg;
            break;
        case 'l':
            args->log_level = log_level_parse(optarg);
            if (args->log_level < 0) {
                fprintf(stderr, "stamp-agent: --log-level must be one of debug, info, warn,"
                                " error (got '%s')\n", optarg);
                return AGENT_EXIT_USAGE;
            }
            break;
        case 'k':
            args->check_config = true;
            break;
        case 'm':
            args->migrate = true;
            break;
        case 'h':
            agent_usage(stdout);
            return 0;
        default:   /* getopt already said what was wrong */
            agent_usage(stderr);
            return AGENT_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "stamp-agent: unexpected argument '%s'\n", argv[optind]);
        agent_usage(stderr);
        return AGENT_EXIT_USAGE;
    }
    if (!args->config) {
        fprintf(stderr, "stamp-agent: --config FILE is required\n");
        agent_usage(stderr);
        return AGENT_EXIT_USAGE;
    }
    return -1;
}

static int agent_main(const struct agent_config *cfg)
{
    struct agent a;
    int rc = 1;

    if (agent_init(&a, cfg))
        rc = agent_run(&a);
    agent_free(&a);
    return rc;
}

int main(int argc, char **argv)
{
    struct agent_args args;
    struct agent_config cfg;
    struct jv_err err;
    int rc = agent_parse_args(argc, argv, &args);

    if (rc >= 0)
        return rc;
    if (!agent_config_load(args.config, &cfg, &err)) {
        fprintf(stderr, "stamp-agent: invalid config %s: %s\n", args.config, err.message);
        return AGENT_EXIT_USAGE;
    }
    if (cfg.prov.enabled && !args.migrate) {
        /* the KEK file is part of the config: refused here, exit 2 (dps_server loads it again) */
        char kerr[400];
        struct envelope *env = dps_secrets_load(&cfg, kerr, sizeof kerr);
        if (!env) {
            fprintf(stderr, "stamp-agent: invalid config %s: kekFile: %s\n", args.config, kerr);
            agent_config_free(&cfg);
            return AGENT_EXIT_USAGE;
        }
        envelope_free(env);
    }
    if (args.check_config) {
        printf("stamp-agent: config %s is valid\n", args.config);
        agent_config_free(&cfg);
        return 0;
    }
    if (args.log_level < 0)
        args.log_level = cfg.log_level >= 0 ? cfg.log_level : LOG_INFO;
    log_init("stamp-agent", (enum log_level)args.log_level);
    if (args.migrate) {
        const char *db = getenv("STAMP_AGENT_MIGRATE_DATABASE");
        rc = dps_migrate_run(&cfg, db && *db ? db : cfg.prov.database, 30000);
        agent_config_free(&cfg);
        libevent_global_shutdown();
        return rc;
    }
    rc = agent_main(&cfg);
    agent_config_free(&cfg);
    libevent_global_shutdown();
    return rc;
}
