-- 005_hub_registry: the device identities on the stamp's IoT hubs (the hub
-- registry, stamp-agent/hub_registry.h; docs/stamp-dps.md "Hub registry").
--
-- One row per identity, keyed by (hub host name lower-cased, deviceId). An
-- assignment upserts the identity in the same statement that settles the
-- registration to 'assigned' (dps_id/registration_id/owner say which
-- registration made it); identities made through the registry API itself
-- have them NULL. Symmetric keys are sealed (common/envelope.h) with the AAD
-- "hub:<hubHost>:<deviceId>:symmetric-key", never stored in clear.
CREATE TABLE hub_devices (
    hub_host          text NOT NULL CHECK (hub_host = lower(hub_host)),
    device_id         text NOT NULL,
    dps_id            text,
    registration_id   text,
    owner             text,
    status            text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    status_reason     text,
    auth_type         text NOT NULL CHECK (auth_type IN ('sas', 'selfSigned', 'certificateAuthority', 'none')),
    primary_key       text CHECK (primary_key LIKE 'enc:%'),
    secondary_key     text CHECK (secondary_key LIKE 'enc:%'),
    primary_thumbprint   text,
    secondary_thumbprint text,
    iot_edge          boolean NOT NULL DEFAULT false,
    generation_id     text NOT NULL,
    etag              bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    status_updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hub_host, device_id),
    CHECK ((dps_id IS NULL) = (registration_id IS NULL))
);
-- The identity a registration made (to remove it when the device moves).
CREATE INDEX hub_devices_registration_idx ON hub_devices (dps_id, registration_id) WHERE dps_id IS NOT NULL;

-- Row-level security as the other stamp tables (003): an agent sees the
-- identities of the hubs its DPS instances made them on, and the ones made
-- through the registry API (dps_id NULL) on any hub. Hub host names are the
-- stamp's own (provisioning.hubs[]), so agents of one stamp share them.
ALTER TABLE hub_devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE hub_devices FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    EXECUTE format('CREATE POLICY hub_devices_owner ON hub_devices TO %I USING (true) WITH CHECK (true)',
                   current_user);
END
$$;
CREATE POLICY hub_devices_agent ON hub_devices
    USING (dps_id IS NULL OR dps_id = ANY (ARRAY(SELECT m.dps_id FROM stamp_agent_dps m WHERE m.role_name = current_user)))
    WITH CHECK (dps_id IS NULL OR dps_id = ANY (ARRAY(SELECT m.dps_id FROM stamp_agent_dps m WHERE m.role_name = current_user)));

-- stamp_agent_grant/revoke (003) learn the new table.
CREATE OR REPLACE FUNCTION stamp_agent_grant(agent name, dps_ids text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF dps_ids IS NULL OR cardinality(dps_ids) = 0 THEN
        RAISE EXCEPTION 'stamp_agent_grant: % needs at least one DPS instance id', agent;
    END IF;
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON dps_enrollments, dps_registrations, hub_devices TO %I', agent);
    EXECUTE format('GRANT SELECT ON stamp_agent_dps, stamp_schema_migrations TO %I', agent);
    IF to_regclass('geo_identity') IS NOT NULL THEN
        EXECUTE format('GRANT SELECT (geography) ON geo_identity TO %I', agent);
    END IF;
    DELETE FROM stamp_agent_dps WHERE role_name = agent;
    INSERT INTO stamp_agent_dps (role_name, dps_id) SELECT agent, d FROM unnest(dps_ids) AS d;
END
$$;

CREATE OR REPLACE FUNCTION stamp_agent_revoke(agent name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('REVOKE ALL ON dps_enrollments, dps_registrations, hub_devices, stamp_agent_dps, stamp_schema_migrations FROM %I',
                   agent);
    IF to_regclass('geo_identity') IS NOT NULL THEN
        EXECUTE format('REVOKE ALL ON geo_identity FROM %I', agent);
    END IF;
    DELETE FROM stamp_agent_dps WHERE role_name = agent;
END
$$;
REVOKE ALL ON FUNCTION stamp_agent_grant(name, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION stamp_agent_revoke(name) FROM PUBLIC;

-- Existing assignments get their identities (type only: keys of devices
-- assigned before this migration are not known to the database in clear).
INSERT INTO hub_devices (hub_host, device_id, dps_id, registration_id, owner, auth_type, generation_id)
SELECT DISTINCT ON (lower(r.assigned_hub), r.device_id)
       lower(r.assigned_hub), r.device_id, r.dps_id, r.registration_id, r.owner,
       CASE WHEN r.attestation_info IS NULL THEN 'sas'
            WHEN r.enrollment_kind = 'group' THEN 'certificateAuthority' ELSE 'selfSigned' END,
       md5(r.dps_id || '/' || r.registration_id)
  FROM dps_registrations r
 WHERE r.status = 'assigned' AND r.assigned_hub IS NOT NULL AND r.device_id IS NOT NULL
 ORDER BY lower(r.assigned_hub), r.device_id, r.updated_at DESC;
