-- 003_agent_roles: least privilege for stamp agents (docs/security.md
-- "Database roles"). Several stamps share their geography's database; each
-- agent connects as its own role and row-level security gives that role the
-- rows of its own DPS instances only.
--
-- A migration cannot know the stamps, so the mapping of role -> DPS instance
-- ids is data: stamp_agent_dps, filled by stamp_agent_grant() which the setup
-- step (infra/stack, the test support) calls as the owner for each agent.

CREATE TABLE stamp_agent_dps (
    role_name  name NOT NULL,
    dps_id     text NOT NULL,
    PRIMARY KEY (role_name, dps_id)
);

-- FORCE: the table owner is filtered too, so nothing but a superuser or the
-- owner policy below sees every stamp's rows.
ALTER TABLE dps_enrollments ENABLE ROW LEVEL SECURITY;
ALTER TABLE dps_enrollments FORCE ROW LEVEL SECURITY;
ALTER TABLE dps_registrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE dps_registrations FORCE ROW LEVEL SECURITY;
ALTER TABLE stamp_agent_dps ENABLE ROW LEVEL SECURITY;
ALTER TABLE stamp_agent_dps FORCE ROW LEVEL SECURITY;

-- The role that runs the migrations (the owner) keeps every row: a later
-- migration may have to rewrite rows of every stamp.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY dps_enrollments_owner ON dps_enrollments TO %I USING (true) WITH CHECK (true)',
                   current_user);
    EXECUTE format('CREATE POLICY dps_registrations_owner ON dps_registrations TO %I USING (true) WITH CHECK (true)',
                   current_user);
    EXECUTE format('CREATE POLICY stamp_agent_dps_owner ON stamp_agent_dps TO %I USING (true) WITH CHECK (true)',
                   current_user);
END
$$;

-- Everyone else: the rows of the DPS instances mapped to their role. The
-- ARRAY(...) does not depend on the row: it is an InitPlan, run once per
-- statement, and "dps_id = ANY($0)" becomes part of the primary-key index
-- condition, so a point lookup stays one index probe (docs/security.md has
-- the measurement).
CREATE POLICY stamp_agent_dps_self ON stamp_agent_dps USING (role_name = current_user);
CREATE POLICY dps_enrollments_agent ON dps_enrollments
    USING (dps_id = ANY (ARRAY(SELECT m.dps_id FROM stamp_agent_dps m WHERE m.role_name = current_user)))
    WITH CHECK (dps_id = ANY (ARRAY(SELECT m.dps_id FROM stamp_agent_dps m WHERE m.role_name = current_user)));
CREATE POLICY dps_registrations_agent ON dps_registrations
    USING (dps_id = ANY (ARRAY(SELECT m.dps_id FROM stamp_agent_dps m WHERE m.role_name = current_user)))
    WITH CHECK (dps_id = ANY (ARRAY(SELECT m.dps_id FROM stamp_agent_dps m WHERE m.role_name = current_user)));

-- Give an agent role what a stamp agent needs, for exactly these DPS
-- instances (replacing what it had): its rows of the stamp tables, its own
-- mapping rows (the policies read them as the agent), the migrations table
-- (to see the schema is current) and geo_identity (the geography check).
-- Nothing else: no table of the control plane. Run by the owner (or a
-- superuser); a later migration that adds a stamp table adds it here.
CREATE FUNCTION stamp_agent_grant(agent name, dps_ids text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF dps_ids IS NULL OR cardinality(dps_ids) = 0 THEN
        RAISE EXCEPTION 'stamp_agent_grant: % needs at least one DPS instance id', agent;
    END IF;
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON dps_enrollments, dps_registrations TO %I', agent);
    EXECUTE format('GRANT SELECT ON stamp_agent_dps, stamp_schema_migrations TO %I', agent);
    IF to_regclass('geo_identity') IS NOT NULL THEN
        EXECUTE format('GRANT SELECT (geography) ON geo_identity TO %I', agent);
    END IF;
    DELETE FROM stamp_agent_dps WHERE role_name = agent;
    INSERT INTO stamp_agent_dps (role_name, dps_id) SELECT agent, d FROM unnest(dps_ids) AS d;
END
$$;

-- Take it all back (the role itself is dropped by whoever created it).
CREATE FUNCTION stamp_agent_revoke(agent name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('REVOKE ALL ON dps_enrollments, dps_registrations, stamp_agent_dps, stamp_schema_migrations FROM %I',
                   agent);
    IF to_regclass('geo_identity') IS NOT NULL THEN
        EXECUTE format('REVOKE ALL ON geo_identity FROM %I', agent);
    END IF;
    DELETE FROM stamp_agent_dps WHERE role_name = agent;
END
$$;

REVOKE ALL ON FUNCTION stamp_agent_grant(name, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION stamp_agent_revoke(name) FROM PUBLIC;
