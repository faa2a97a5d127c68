-- 011_stamp_drift: what the registration drift pass (controlplane/stamp_drift.c)
-- keeps between passes, so that several routers and restarts agree: the
-- rolling cursor and the last report per DPS instance, a lease so that one
-- router at a time runs an instance's pass, and the orphans seen (a stamp
-- registration owned by "tenant:T" whose device is not assigned at that
-- instance and not retired). The comparison itself is cp_stamp_drift_record:
-- one short transaction after the HTTP calls, nothing held across them.
CREATE TABLE stamp_drift_state (
    dps_id          text PRIMARY KEY,
    cursor_id       text,              -- the sample walks ids strictly after this; NULL: from the first
    lease_owner     text,              -- the router running a pass now
    lease_until     timestamptz,
    checked_at      timestamptz,       -- when the last pass ended, whatever its outcome
    repaired_total  bigint NOT NULL DEFAULT 0,   -- orphan repairs enqueued (stamp_ops rows written), ever
    report          jsonb              -- the last pass's report (GET .../registration-drift)
);

CREATE TABLE stamp_drift_orphans (
    dps_id           text NOT NULL,
    registration_id  text NOT NULL,    -- a DPS instance holds each id once
    tenant_id        text NOT NULL,    -- from the registration's owner "tenant:<id>"
    stamp_id         text,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    repaired_at      timestamptz,      -- when a 'deprovision' (reason 'orphan') was enqueued
    op_id            bigint,           -- the stamp_ops row, NULL when one was already pending
    PRIMARY KEY (dps_id, registration_id)
);

-- The counts per tenant read the devices of one instance; without this they
-- would scan every device of the geography each pass.
CREATE INDEX devices_dps_tenant_idx ON devices (dps_id, tenant_id) WHERE status IN ('assigned', 'retired');

-- Claim an instance's pass: true with the cursor when no other router holds
-- the lease and the last pass ended at least p_min_gap_ms ago (a pass per
-- interval, however many routers run). The lease outlives a crashed router
-- by p_lease_ms at most.
CREATE FUNCTION cp_stamp_drift_claim(p_dps text, p_owner text, p_lease_ms int, p_min_gap_ms int)
RETURNS TABLE (o_claimed boolean, o_cursor text) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stamp_drift_state (dps_id) VALUES (p_dps) ON CONFLICT DO NOTHING;
    RETURN QUERY
    UPDATE stamp_drift_state s SET lease_owner = p_owner, lease_until = now() + p_lease_ms * interval '1 millisecond'
     WHERE s.dps_id = p_dps
       AND (s.lease_until IS NULL OR s.lease_until < now() OR s.lease_owner = p_owner)
       AND (s.checked_at IS NULL OR s.checked_at <= now() - p_min_gap_ms * interval '1 millisecond')
    RETURNING true, s.cursor_id;
END $$;

-- The orphans part of a report: every orphan row of the instance (capped),
-- oldest first, with when its repair is due and when it was enqueued.
CREATE FUNCTION cp_stamp_drift_orphans_json(p_dps text, p_grace_s int, p_max int) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('tenantId', o.tenant_id, 'registrationId', o.registration_id,
               'firstSeenAt', cp_ts(o.first_seen_at), 'repairAt', cp_ts(o.first_seen_at + p_grace_s * interval '1 second'),
               'repairedAt', cp_ts(o.repaired_at)) ORDER BY o.first_seen_at, o.registration_id), '[]'::jsonb)
      FROM (SELECT * FROM stamp_drift_orphans WHERE dps_id = p_dps
             ORDER BY first_seen_at, registration_id LIMIT p_max) o
$$;

-- Undelivered stamp operations at an instance (the outbox of 010), or NULL
-- when this database has no outbox.
CREATE FUNCTION cp_stamp_drift_pending(p_dps text) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF to_regclass('stamp_ops') IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT count(*) FROM stamp_ops WHERE dps_id = p_dps);
END $$;

-- Record a pass and release the lease; returns the report.
--   p_error NOT NULL: the stamp could not be asked (status "unreachable"):
--     the orphans seen before stay, nothing is repaired, the cursor stays.
--   otherwise p_summary is GET /registrationSummary's answer and p_items the
--   page of GET /registrationIds read strictly after p_after (p_next: its
--   "next", NULL when the page reached the end: the cursor wraps).
-- A tenant's row compares the stamp's 'assigned' registrations it owns with
-- its devices assigned at the instance (controlPlane) and retired there
-- (their registrations stay, disabled): the counts agree when
-- 0 <= stamp - controlPlane <= retired.
CREATE FUNCTION cp_stamp_drift_record(p_dps text, p_stamp text, p_owner text, p_summary jsonb, p_items jsonb,
                                      p_after text, p_next text, p_grace_s int, p_max_orphans int, p_error text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_tenants jsonb := '[]';
    v_unowned bigint := 0;
    v_unregistered bigint := 0;
    v_checked int := coalesce(jsonb_array_length(p_items), 0);
    v_drift boolean := false;
    v_repaired int := 0;
    v_repair_error text;
    o record;
    v_op bigint;
    v_st stamp_drift_state;
    v_report jsonb;
BEGIN
    SELECT * INTO v_st FROM stamp_drift_state WHERE dps_id = p_dps FOR UPDATE;
    IF NOT FOUND OR v_st.lease_owner IS DISTINCT FROM p_owner THEN
        RETURN NULL;   -- the lease ran out and another router took the pass over
    END IF;
    -- A device assigned here again, or retired, is no orphan, sampled or not.
    DELETE FROM stamp_drift_orphans x USING devices d
     WHERE x.dps_id = p_dps AND d.tenant_id = x.tenant_id AND d.registration_id = x.registration_id
       AND ((d.status = 'assigned' AND d.dps_id = p_dps) OR d.status = 'retired');
    IF p_error IS NULL THEN
        WITH s_cnt AS (
            SELECT substr(e->>'owner', 8) AS tenant_id, sum(coalesce((e->>'assigned')::bigint, 0)) AS n
              FROM jsonb_array_elements(coalesce(p_summary->'owners', '[]')) e
             WHERE e->>'owner' LIKE 'tenant:%' GROUP BY 1),
        c_cnt AS (
            SELECT tenant_id, count(*) FILTER (WHERE status = 'assigned') AS n,
                   count(*) FILTER (WHERE status = 'retired') AS retired
              FROM devices WHERE dps_id = p_dps AND status IN ('assigned', 'retired') GROUP BY 1),
        j AS (
            SELECT tenant_id, coalesce(c_cnt.n, 0) AS cpn, coalesce(c_cnt.retired, 0) AS ret, coalesce(s_cnt.n, 0) AS stn
              FROM s_cnt FULL JOIN c_cnt USING (tenant_id))
        SELECT coalesce(jsonb_agg(jsonb_build_object('tenantId', tenant_id, 'controlPlane', cpn, 'retired', ret,
                   'stamp', stn, 'difference', stn - cpn) ORDER BY tenant_id), '[]')
          INTO v_tenants FROM j WHERE stn - cpn < 0 OR stn - cpn > ret;
        SELECT coalesce(sum(coalesce((e->>'assigned')::bigint, 0)), 0) INTO v_unowned
          FROM jsonb_array_elements(coalesce(p_summary->'owners', '[]')) e
         WHERE e->>'owner' IS NULL OR e->>'owner' NOT LIKE 'tenant:%';

        -- The sampled registrations owned by a tenant whose device is not
        -- assigned here (deprovisioned, moved, unknown) and not retired.
        CREATE TEMP TABLE IF NOT EXISTS stamp_drift_sample (registration_id text PRIMARY KEY, tenant_id text,
                                                            orphan boolean) ON COMMIT DROP;
        INSERT INTO stamp_drift_sample
        SELECT i->>'registrationId', substr(i->>'owner', 8),
               i->>'owner' LIKE 'tenant:%' AND NOT coalesce(
                   (SELECT (d.status = 'assigned' AND d.dps_id = p_dps) OR d.status = 'retired' FROM devices d
                     WHERE d.tenant_id = substr(i->>'owner', 8) AND d.registration_id = i->>'registrationId'), false)
          FROM jsonb_array_elements(coalesce(p_items, '[]')) i
         WHERE i->>'registrationId' IS NOT NULL
        ON CONFLICT DO NOTHING;
        -- Orphan rows in the sampled range that are no longer orphans there:
        -- gone from the stamp, or owned otherwise now.
        DELETE FROM stamp_drift_orphans x
         WHERE x.dps_id = p_dps AND (p_after IS NULL OR x.registration_id > p_after)
           AND (p_next IS NULL OR x.registration_id <= p_next)
           AND NOT EXISTS (SELECT 1 FROM stamp_drift_sample s WHERE s.registration_id = x.registration_id
                            AND s.orphan AND s.tenant_id = x.tenant_id);
        INSERT INTO stamp_drift_orphans AS x (dps_id, registration_id, tenant_id, stamp_id)
        SELECT p_dps, registration_id, tenant_id, p_stamp FROM stamp_drift_sample WHERE orphan
        ON CONFLICT (dps_id, registration_id) DO UPDATE SET last_seen_at = now();
        DROP TABLE stamp_drift_sample;

        -- Repair what has been an orphan for the grace period (again after
        -- another grace period if it is still there: a device registering
        -- itself again with its group-derived key).
        FOR o IN SELECT * FROM stamp_drift_orphans
                  WHERE dps_id = p_dps AND first_seen_at <= now() - p_grace_s * interval '1 second'
                    AND (repaired_at IS NULL OR repaired_at <= now() - p_grace_s * interval '1 second')
                  ORDER BY first_seen_at, registration_id LIMIT 1000 LOOP
            BEGIN
                v_op := cp_stamp_op_enqueue(o.tenant_id, o.registration_id, 'deprovision', p_dps, p_stamp, 'orphan');
            EXCEPTION WHEN undefined_function THEN
                v_repair_error := 'no stamp operation outbox in this geography database (cp_stamp_op_enqueue)';
                EXIT;
            END;
            -- NULL: an undelivered 'deprovision' of it is already queued
            UPDATE stamp_drift_orphans SET repaired_at = now(), op_id = coalesce(v_op, op_id)
             WHERE dps_id = p_dps AND registration_id = o.registration_id;
            IF v_op IS NOT NULL THEN
                v_repaired := v_repaired + 1;
            END IF;
        END LOOP;
        -- Drift is what the stamp holds beyond the control plane's account
        -- (more registrations than assigned + retired devices, or orphans).
        -- Fewer is not: with approach 1 a device is assigned first and
        -- registers at the stamp after, so an assignment without its
        -- registration is normal until the device comes; it is counted in
        -- "unregistered" (and its tenant listed), not called drift.
        v_drift := EXISTS (SELECT 1 FROM jsonb_array_elements(v_tenants) t
                            WHERE (t->>'difference')::bigint > (t->>'retired')::bigint)
                   OR EXISTS (SELECT 1 FROM stamp_drift_orphans WHERE dps_id = p_dps);
        SELECT coalesce(sum(greatest(-(t->>'difference')::bigint, 0)), 0) INTO v_unregistered
          FROM jsonb_array_elements(v_tenants) t;
        v_report := jsonb_build_object('status', CASE WHEN v_drift THEN 'drift' ELSE 'ok' END,
                                     'tenantsListed', 'with_difference', 'tenants', v_tenants, 'unowned', v_unowned,
                                     'unregistered', v_unregistered);
        UPDATE stamp_drift_state SET cursor_id = p_next, repaired_total = repaired_total + v_repaired
         WHERE dps_id = p_dps;
    ELSE
        v_report := jsonb_build_object('status', 'unreachable', 'error', p_error, 'tenantsListed', 'with_difference',
                                     'tenants', coalesce(v_st.report->'tenants', '[]'), 'unowned',
                                     coalesce(v_st.report->'unowned', '0'));
    END IF;
    v_report := v_report || jsonb_build_object(
        'dpsInstanceId', p_dps, 'checkedAt', cp_ts(now()),
        'sample', jsonb_build_object('checked', CASE WHEN p_error IS NULL THEN v_checked ELSE 0 END,
                                     'after', p_after,
                                     'cursor', CASE WHEN p_error IS NULL THEN p_next ELSE v_st.cursor_id END,
                                     'orphanCount', (SELECT count(*) FROM stamp_drift_orphans WHERE dps_id = p_dps),
                                     'orphans', cp_stamp_drift_orphans_json(p_dps, p_grace_s, p_max_orphans)),
        'graceSeconds', p_grace_s,
        'repairedLastPass', v_repaired,
        'repaired', (SELECT repaired_total FROM stamp_drift_state WHERE dps_id = p_dps));
    IF v_repair_error IS NOT NULL THEN
        v_report := v_report || jsonb_build_object('repairError', v_repair_error);
    END IF;
    UPDATE stamp_drift_state SET report = v_report, checked_at = now(), lease_owner = NULL, lease_until = NULL
     WHERE dps_id = p_dps;
    RETURN v_report;
END $$;
