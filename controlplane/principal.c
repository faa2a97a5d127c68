/*
 * principal.c - the scope vocabulary of API keys (principal.h).
 */
#include "principal.h"

#include <jansson.h>
#include <stdio.h>

static const struct {
    uint32_t bit;
    const char *word;
} principal_scopes[] = {
    {SCOPE_PLATFORM_ADMIN, "platform:admin"},
    {SCOPE_TENANTS_READ, "tenants:read"},
    {SCOPE_TENANTS_WRITE, "tenants:write"},
    {SCOPE_DEVICES_READ, "devices:read"},
    {SCOPE_DEVICES_WRITE, "devices:write"},
    {SCOPE_PROVISION_ON_BEHALF, "provision:on-behalf"},
    {SCOPE_KEYS_WRITE, "keys:write"},
    {SCOPE_TRANSFERS_WRITE, "transfers:write"},
    {SCOPE_COSTS_READ, "costs:read"},
    {SCOPE_OPS_FAILOVER, "ops:failover"},
};
#define PRINCIPAL_NSCOPES (sizeof principal_scopes / sizeof principal_scopes[0])

const char *principal_scope_word(uint32_t bit)
{
    for (size_t i = 0; i < PRINCIPAL_NSCOPES; i++)
        if (principal_scopes[i].bit == bit)
            return principal_scopes[i].word;
    return NULL;
}

uint32_t principal_scope_from_word(const char *word)
{
    for (size_t i = 0; i < PRINCIPAL_NSCOPES; i++)
        if (strcmp(principal_scopes[i].word, word) == 0)
            return principal_scopes[i].bit;
    return 0;
}

json_t *principal_scopes_json(uint32_t scopes)
{
    json_t *a = json_array();
    for (size_t i = 0; i < PRINCIPAL_NSCOPES; i++)
        if (scopes & principal_scopes[i].bit)
            json_array_append_new(a, json_string(principal_scopes[i].word));
    return a;
}

void principal_scope_words(uint32_t scopes, char *out, size_t outlen)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < PRINCIPAL_NSCOPES; i++)
        if (scopes & principal_scopes[i].bit) {
            int w = snprintf(out + o, outlen - o, "%s%s", o ? " and " : "", principal_scopes[i].word);
            if (w < 0 || (size_t)w >= outlen - o)
                return;
            o += (size_t)w;
        }
}
