/*
 * agent_load.c - owns the stamp's load counters and renders them as JSON.
 */
#include "agent_load.h"

#include <stdlib.h>
#include <string.h>

void agent_load_init(struct agent_load *load, char *const *dps_ids, size_t n_dps,
                     char *const *hub_ids, size_t n_hubs)
{
    load->dps = xcalloc(n_dps, sizeof *load->dps);
    load->n_dps = n_dps;
    for (size_t i = 0; i < n_dps; i++)
        load->dps[i].id = xstrdup(dps_ids[i]);
    load->hubs = xcalloc(n_hubs, sizeof *load->hubs);
    load->n_hubs = n_hubs;
    for (size_t i = 0; i < n_hubs; i++)
        load->hubs[i].id = xstrdup(hub_ids[i]);
    load->groups = NULL;
    load->n_groups = 0;
}

void agent_load_free(struct agent_load *load)
{
    for (size_t i = 0; i < load->n_dps; i++)
        free(load->dps[i].id);
    for (size_t i = 0; i < load->n_hubs; i++)
        free(load->hubs[i].id);
    agent_load_groups_clear(load);
    free(load->dps);
    free(load->hubs);
    memset(load, 0, sizeof *load);
}

struct agent_dps_load *agent_load_dps(struct agent_load *load, const char *id)
{
    for (size_t i = 0; i < load->n_dps; i++)
        if (strcmp(load->dps[i].id, id) == 0)
            return &load->dps[i];
    return NULL;
}

struct agent_hub_load *agent_load_hub(struct agent_load *load, const char *id)
{
    for (size_t i = 0; i < load->n_hubs; i++)
        if (strcmp(load->hubs[i].id, id) == 0)
            return &load->hubs[i];
    return NULL;
}

void agent_load_groups_clear(struct agent_load *load)
{
    for (size_t i = 0; i < load->n_groups; i++) {
        free(load->groups[i].dps);
        free(load->groups[i].group);
    }
    free(load->groups);
    load->groups = NULL;
    load->n_groups = 0;
}

void agent_load_group_add(struct agent_load *load, const char *dps, const char *group, uint64_t devices)
{
    struct agent_group_load *g;

    load->groups = xrealloc(load->groups, (load->n_groups + 1) * sizeof *load->groups);
    g = &load->groups[load->n_groups++];
    g->dps = xstrdup(dps);
    g->group = xstrdup(group);
    g->devices = devices;
}

/* json_array_append_new() steals item even on failure, so one check covers both. */
static bool agent_load_append(json_t *arr, json_t *item)
{
    return item && json_array_append_new(arr, item) == 0;
}

static json_t *agent_load_dps_json(const struct agent_load *load)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < load->n_dps; i++) {
        const struct agent_dps_load *d = &load->dps[i];
        json_t *item = json_pack("{s:s, s:I, s:I, s:I}", "id", d->id,
                                 "registrations", (json_int_t)d->registrations,
                                 "registrationsLastMinute", (json_int_t)d->registrations_last_minute,
                                 "throttledLastMinute", (json_int_t)d->throttled_last_minute);
        if (!agent_load_append(arr, item)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *agent_load_hubs_json(const struct agent_load *load)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < load->n_hubs; i++) {
        const struct agent_hub_load *h = &load->hubs[i];
        json_t *item = json_pack("{s:s, s:I}", "id", h->id, "devices", (json_int_t)h->devices);
        if (!agent_load_append(arr, item)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *agent_load_groups_json(const struct agent_load *load)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < load->n_groups; i++) {
        const struct agent_group_load *g = &load->groups[i];
        json_t *item = json_pack("{s:s, s:s, s:I}", "dps", g->dps, "group", g->group,
                                 "devices", (json_int_t)g->devices);
        if (!agent_load_append(arr, item)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *agent_load_json(const struct agent_load *load)
{
    json_t *dps = agent_load_dps_json(load);
    json_t *hubs = agent_load_hubs_json(load);
    json_t *groups = agent_load_groups_json(load);

    if (!dps || !hubs || !groups) {
        json_decref(dps);
        json_decref(hubs);
        json_decref(groups);
        return NULL;
    }
    /* "o" steals the references, also when json_pack fails. */
    return json_pack("{s:o, s:o, s:o}", "dps", dps, "hubs", hubs, "groups", groups);
}
