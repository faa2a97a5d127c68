-- 009_installer_tokens: the installer-token life cycle (docs/api.md,
-- "Installer tokens"). A token gets a public id (it names the token in
-- lists, in the placement decision record and in the device history, without
-- the secret), an expiry (at most 30 days after creation, checked by the API),
-- an optional scope (a registration-id prefix, a maximum number of
-- placements) and a revocation time. placements counts the first placements
-- the token made; it is raised atomically before each one (UPDATE ... WHERE
-- placements < max_placements), so two control planes can never let a token
-- exceed max_placements. Revoked tokens stay listed: the devices they placed
-- still name them.
ALTER TABLE installer_tokens
    ADD COLUMN id                     text,
    ADD COLUMN expires_at             timestamptz,
    ADD COLUMN registration_id_prefix text,
    ADD COLUMN max_placements         bigint CHECK (max_placements >= 1),
    ADD COLUMN placements             bigint NOT NULL DEFAULT 0 CHECK (placements >= 0),
    ADD COLUMN revoked_at             timestamptz;

-- Tokens issued before this migration never expired: they get an id and the
-- longest expiry a new token may have, counted from now.
UPDATE installer_tokens
   SET id = substr(md5(token_sha256 || random()::text || clock_timestamp()::text), 1, 16),
       expires_at = now() + interval '30 days';

ALTER TABLE installer_tokens
    ALTER COLUMN id SET NOT NULL,
    ALTER COLUMN expires_at SET NOT NULL,
    ADD CONSTRAINT installer_tokens_id_syntax CHECK (id ~ '^[0-9a-f]{16}$'),
    ADD CONSTRAINT installer_tokens_within_max CHECK (max_placements IS NULL OR placements <= max_placements);
CREATE UNIQUE INDEX installer_tokens_id_uidx ON installer_tokens (id);
-- lists page by (tenant, id); the old (tenant) index is a prefix of it
CREATE INDEX installer_tokens_tenant_id_idx ON installer_tokens (tenant_id, id);
DROP INDEX installer_tokens_tenant_idx;
