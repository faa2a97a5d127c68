/*
 * fuzz_agent_config.c - libFuzzer harness: the stamp agent's config file
 * parser (stamp-agent/agent_config.c agent_config_load: ids, redis address,
 * provisioning section with DPS instances, hubs, base64 policy keys) on the
 * input as a file; agent_config_free after success (after a failure the
 * loader has freed everything itself, which the leak check verifies).
 *
 * Input: the config file.
 */
#include <string.h>

#include "agent_config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct agent_config cfg;
    struct jv_err e;
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);

    if (fd < 0)
        return 0;
    if (agent_config_load(path, &cfg, &e)) {
        if (cfg.n_dps > AGENT_MAX_DPS || cfg.n_hubs > AGENT_MAX_HUBS || cfg.prov.n_policies > AGENT_MAX_POLICIES ||
            cfg.redis.direct.port < 0 || cfg.redis.direct.port > 65535 || !cfg.stamp_id || !cfg.region)
            abort();
        for (size_t i = 0; i < cfg.prov.n_policies; i++)
            if (cfg.prov.policies[i].keylen < 0 || cfg.prov.policies[i].keylen > 64)
                abort();
        agent_config_free(&cfg);
    } else if (!memchr(e.message, 0, sizeof e.message) || e.code[0] == '\0') {
        abort();
    }
    close(fd);
    return 0;
}
