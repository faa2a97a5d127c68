-- 004_tenant_lifecycle: enrollment key rotation and tenant removal.
-- A rotation makes a fresh key primary and keeps the previous one valid (the
-- DPS group's secondaryKey) until the next rotation, so devices holding keys
-- derived from it keep working. A removed tenant stays as a tombstone without
-- keys or installer tokens: its id is never reused, so the device history left
-- in the geography databases can never be inherited by a new tenant.
ALTER TABLE tenants
    ADD COLUMN enrollment_key_previous text,
    ADD COLUMN deleted_at timestamptz,
    ALTER COLUMN enrollment_key DROP NOT NULL,
    ADD CONSTRAINT tenants_key_unless_deleted CHECK (deleted_at IS NOT NULL OR enrollment_key IS NOT NULL);
