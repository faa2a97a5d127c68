-- 001_dps: a stamp's provisioning service state, in its geography's database,
-- keyed by DPS instance (several stamps of a geography share the database).
-- Enrollments are kept as the JSON documents the service API exchanges, with
-- the columns the device API looks up by pulled out.
CREATE TABLE dps_enrollments (
    dps_id          text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('group', 'individual')),
    enrollment_id   text NOT NULL,   -- enrollmentGroupId, or registrationId of an individual enrollment
    attestation     text NOT NULL CHECK (attestation IN ('symmetricKey', 'x509')),
    doc             jsonb NOT NULL,  -- the enrollment as the service API returns it (without etag/timestamps)
    etag            bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dps_id, kind, enrollment_id)
);

-- One row per device registration on an instance. The PUT commits a row in
-- 'assigning' before answering 202; the allocation then moves it to
-- 'assigned' (or 'failed') in one UPDATE ... WHERE status = 'assigning', so a
-- restart between the two finishes the work exactly once.
CREATE TABLE dps_registrations (
    dps_id            text NOT NULL,
    registration_id   text NOT NULL,
    enrollment_kind   text NOT NULL,
    enrollment_id     text NOT NULL,
    operation_id      text NOT NULL,
    status            text NOT NULL CHECK (status IN ('assigning', 'assigned', 'failed', 'disabled')),
    substatus         text,
    assigned_hub      text,
    device_id         text,
    error_code        integer,
    error_message     text,
    device_payload    jsonb,   -- what the device sent (for a custom allocation webhook)
    payload           jsonb,   -- what the webhook returned (back to the device)
    attestation_info  jsonb,   -- x509 certificate info, for the registration state
    etag              bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dps_id, registration_id)
);
CREATE INDEX dps_registrations_enrollment_idx
    ON dps_registrations (dps_id, enrollment_kind, enrollment_id, registration_id);
CREATE INDEX dps_registrations_hub_idx ON dps_registrations (assigned_hub) WHERE status = 'assigned';
