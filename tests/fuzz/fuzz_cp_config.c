/*
 * fuzz_cp_config.c - libFuzzer harness: the control plane's config file
 * parser (controlplane/cp_config.c cp_config_load: jv_load_file, then every
 * field check) on the input as a file, then cp_config_free on success and
 * failure alike (the leak check covers both paths).
 *
 * Input: the config file.
 */
#include <string.h>

#include "cp_config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cp_config cfg;
    struct jv_err e;
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);

    if (fd < 0)
        return 0;
    memset(&cfg, 0, sizeof cfg);
    memset(&e, 0, sizeof e);
    if (cp_config_load(path, &cfg, &e)) {
        if (cfg.n_geos < 0 || cfg.n_geos > CP_MAX_GEOGRAPHIES || cfg.listen_port < 0 || cfg.listen_port > 65535)
            abort();
        for (int i = 0; i < cfg.n_geos; i++)
            if (!cp_config_geo_conninfo(&cfg, cfg.geos[i].id))
                abort();
    } else if (!memchr(e.message, 0, sizeof e.message) || e.code[0] == '\0') {
        abort();
    }
    cp_config_free(&cfg);
    close(fd);
    return 0;
}
