-- 007_device_claims: one active assignment across geographies
-- (docs/architecture.md "One geography per device").
--
-- A tenant resident in several geographies could get one device assigned in
-- two of them: two first requests at two routers each look the device up
-- everywhere, find it nowhere, and place it in different geographies. The
-- devices tables of two databases can't share a constraint, so one database
-- decides: the tenant's ARBITER geography (the first of its residency
-- geographies in sort order - one it is resident in, so keeping a
-- registration id there is allowed) holds a claim per device naming the one
-- geography its row may be in. A router writes the claim before the first
-- assignment of such a tenant's device; a router that finds another
-- geography claimed places the device there instead.
--
-- A claim outlives a failed assignment, a deprovisioning or a residency
-- change; when the claimed geography can't take the device, the router
-- FENCES the claim there (no assignment under that claim may commit there
-- any more, unless one already has) and only then moves the claim on, with a
-- new token (compare-and-set on the old one). Tokens grow per device and are
-- taken from the clock, so that a claim made under a later arbiter (after a
-- residency change) outranks the fences of the earlier one.
--
-- Devices assigned before this migration have no claim: a lookup that finds
-- the device answers from its row (as before); a claim is made only when no
-- geography holds it assigned. Single-geography tenants need no claim.

-- In the arbiter geography: the device's one geography.
CREATE TABLE device_claims (
    tenant_id        text NOT NULL,
    registration_id  text NOT NULL,
    geography        text NOT NULL,
    token            bigint NOT NULL,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, registration_id)
);

-- In a claimed geography: claims with a token <= fenced may not assign here.
CREATE TABLE device_claim_fences (
    tenant_id        text NOT NULL,
    registration_id  text NOT NULL,
    fenced           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, registration_id)
);

CREATE FUNCTION cp_claim_next_token(p_prev bigint) RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT greatest(coalesce(p_prev, 0) + 1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
$$;

-- Claim the device for p_geo (in its tenant's arbiter geography). p_from: a
-- token the router has fenced, or NULL. Outcomes:
--   claimed    the claim names p_geo (new, already, or moved on from p_from);
--              assign under `token`
--   elsewhere  the claim names `geography`, under `token`: place it there
CREATE FUNCTION cp_claim_device(p_tenant text, p_reg text, p_geo text, p_from bigint)
RETURNS TABLE (outcome text, geography text, token bigint) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    c device_claims;
BEGIN
    -- the claim must survive a failover, or a second one could be made
    PERFORM set_config('synchronous_commit', 'on', true);
    INSERT INTO device_claims (tenant_id, registration_id, geography, token)
        VALUES (p_tenant, p_reg, p_geo, cp_claim_next_token(0))
        ON CONFLICT DO NOTHING
        RETURNING * INTO c;
    IF FOUND THEN
        RETURN QUERY SELECT 'claimed'::text, c.geography, c.token; RETURN;
    END IF;
    SELECT * INTO c FROM device_claims d WHERE d.tenant_id = p_tenant AND d.registration_id = p_reg FOR UPDATE;
    IF p_from IS NOT NULL AND c.token = p_from THEN
        UPDATE device_claims d SET geography = p_geo, token = cp_claim_next_token(c.token), claimed_at = now()
         WHERE d.tenant_id = p_tenant AND d.registration_id = p_reg RETURNING * INTO c;
        RETURN QUERY SELECT 'claimed'::text, c.geography, c.token; RETURN;
    END IF;
    RETURN QUERY SELECT CASE WHEN c.geography = p_geo THEN 'claimed' ELSE 'elsewhere' END, c.geography, c.token;
END $$;

-- Lock the device's fence row (creating it), returning its fence: the first
-- lock of both functions below, so they serialise on it.
CREATE FUNCTION cp_claim_fence_lock(p_tenant text, p_reg text) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO device_claim_fences AS f (tenant_id, registration_id) VALUES (p_tenant, p_reg)
        ON CONFLICT (tenant_id, registration_id) DO UPDATE SET fenced = f.fenced
        RETURNING fenced
$$;

-- Fence the claim of token p_token in this (claimed) geography. Outcomes:
--   fenced   no assignment under a token <= p_token will commit here
--   active   the device is assigned here: the claim stands
CREATE FUNCTION cp_fence_claim(p_tenant text, p_reg text, p_token bigint) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    PERFORM cp_claim_fence_lock(p_tenant, p_reg);
    PERFORM 1 FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg AND status = 'assigned'
        FOR UPDATE;
    IF FOUND THEN
        RETURN 'active';
    END IF;
    UPDATE device_claim_fences SET fenced = greatest(fenced, p_token)
     WHERE tenant_id = p_tenant AND registration_id = p_reg;
    RETURN 'fenced';
END $$;

-- cp_assign_device under the claim of token p_token: the outcomes of
-- cp_assign_device, plus
--   claim_moved  the claim was fenced here meanwhile; nothing changed (the
--                router looks the device up again)
CREATE FUNCTION cp_assign_claimed_device(p_token bigint, p_tenant text, p_reg text, p_region text, p_stamp text,
                                         p_dps text, p_scope text, p_endpoint text, p_max bigint,
                                         p_decision jsonb, p_reason text)
RETURNS TABLE (outcome text, dev devices) LANGUAGE plpgsql AS $$
BEGIN
    IF cp_claim_fence_lock(p_tenant, p_reg) >= p_token THEN
        RETURN QUERY SELECT 'claim_moved'::text, NULL::devices; RETURN;
    END IF;
    RETURN QUERY SELECT * FROM cp_assign_device(p_tenant, p_reg, p_region, p_stamp, p_dps, p_scope, p_endpoint,
                                                p_max, p_decision, p_reason);
END $$;
