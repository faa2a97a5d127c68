-- 005_sealed_secrets: enrollment keys and DPS service keys are stored sealed
-- (envelope encryption, common/envelope.h: "enc:v1:<kek-id>:<base64>"), never
-- in clear. NOT VALID: rows written before this migration are sealed by the
-- control plane's pass at start (or by stampcp-kek rewrap), and every write
-- from now on must store the sealed form.
ALTER TABLE tenants ADD CONSTRAINT tenants_keys_sealed CHECK (
    (enrollment_key IS NULL OR enrollment_key LIKE 'enc:%') AND
    (enrollment_key_previous IS NULL OR enrollment_key_previous LIKE 'enc:%')) NOT VALID;
ALTER TABLE dps_instances ADD CONSTRAINT dps_instances_service_key_sealed CHECK (
    service_key IS NULL OR service_key LIKE 'enc:%') NOT VALID;
