-- 004_sealed_keys: the primaryKey and secondaryKey of symmetric-key
-- enrollments are stored sealed (common/envelope.h, stamp-agent/dps_secrets.h),
-- never in clear. NOT VALID: documents written before this migration are
-- sealed by the agent's pass at start (or by stampcp-kek rewrap); every write
-- from now on must store the sealed form.
ALTER TABLE dps_enrollments ADD CONSTRAINT dps_enrollments_keys_sealed CHECK (
    attestation <> 'symmetricKey' OR (
        coalesce(doc #>> '{attestation,symmetricKey,primaryKey}', 'enc:') LIKE 'enc:%' AND
        coalesce(doc #>> '{attestation,symmetricKey,secondaryKey}', 'enc:') LIKE 'enc:%')) NOT VALID;
