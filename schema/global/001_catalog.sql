-- 001_catalog: the geode layout (geographies, regions, stamps, DPS instances, hubs).
-- The global catalog never holds a device identifier; those live in the geography databases.
CREATE TABLE geographies (
    id            text PRIMARY KEY,
    display_name  text NOT NULL,
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE regions (
    id                text PRIMARY KEY,
    geography_id      text NOT NULL REFERENCES geographies(id) ON DELETE RESTRICT,
    display_name      text NOT NULL,
    paired_region_id  text REFERENCES regions(id) ON DELETE RESTRICT,
    version           bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (paired_region_id IS DISTINCT FROM id)
);
CREATE INDEX regions_geography_idx ON regions (geography_id, id);

-- A region may only pair with a region of its own geography: checked here so
-- that no API path (or hand-written SQL) can break the rule.
CREATE FUNCTION regions_check_pair() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.paired_region_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM regions r
         WHERE r.id = NEW.paired_region_id AND r.geography_id = NEW.geography_id) THEN
        RAISE EXCEPTION 'paired region % is not in geography %', NEW.paired_region_id, NEW.geography_id
            USING ERRCODE = 'foreign_key_violation', COLUMN = 'paired_region_id';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER regions_pair_same_geography BEFORE INSERT OR UPDATE ON regions
    FOR EACH ROW EXECUTE FUNCTION regions_check_pair();

CREATE TABLE stamps (
    id            text PRIMARY KEY,
    region_id     text NOT NULL REFERENCES regions(id) ON DELETE RESTRICT,
    display_name  text NOT NULL,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'draining')),
    tenancy       text NOT NULL DEFAULT 'pooled' CHECK (tenancy IN ('pooled', 'dedicated')),
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stamps_region_idx ON stamps (region_id, id);

CREATE TABLE dps_instances (
    id                        text PRIMARY KEY,
    stamp_id                  text NOT NULL REFERENCES stamps(id) ON DELETE RESTRICT,
    id_scope                  text NOT NULL UNIQUE,
    endpoint                  text NOT NULL,
    max_registrations         integer NOT NULL DEFAULT 1000000 CHECK (max_registrations BETWEEN 1 AND 1000000),
    registrations_per_minute  integer NOT NULL DEFAULT 1000 CHECK (registrations_per_minute BETWEEN 1 AND 10000000),
    version                   bigint NOT NULL DEFAULT 1,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dps_instances_stamp_idx ON dps_instances (stamp_id, id);

CREATE TABLE hubs (
    id                 text PRIMARY KEY,
    stamp_id           text NOT NULL REFERENCES stamps(id) ON DELETE RESTRICT,
    host_name          text NOT NULL UNIQUE,
    max_devices        integer NOT NULL DEFAULT 1000000 CHECK (max_devices BETWEEN 1 AND 1000000),
    allocation_weight  integer NOT NULL DEFAULT 1 CHECK (allocation_weight BETWEEN 1 AND 1000),
    version            bigint NOT NULL DEFAULT 1,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX hubs_stamp_idx ON hubs (stamp_id, id);

-- API timestamps: RFC 3339 in UTC with milliseconds, the same everywhere.
CREATE FUNCTION cp_ts(ts timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;
