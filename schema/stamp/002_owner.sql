-- 002_owner: every registration belongs to an owner, and only a credential of
-- that owner reaches it (docs/stamp-dps.md "Registration ownership").
--
-- An enrollment's owner is its tenant when the control plane manages it
-- (initialTwin.tags.managedBy = 'stampcp' with a tenantId tag), so a device
-- may move between two enrollments of one tenant; a hand-made enrollment owns
-- its registrations alone. The column is derived from the document, so every
-- write path of the service API keeps it right without knowing about it.
ALTER TABLE dps_enrollments ADD COLUMN owner text GENERATED ALWAYS AS (
    CASE WHEN doc #>> '{initialTwin,tags,managedBy}' = 'stampcp'
              AND coalesce(doc #>> '{initialTwin,tags,tenantId}', '') <> ''
         THEN 'tenant:' || (doc #>> '{initialTwin,tags,tenantId}')
         ELSE 'enrollment:' || kind || ':' || enrollment_id END) STORED;
CREATE INDEX dps_enrollments_owner_idx ON dps_enrollments (dps_id, owner) WHERE kind = 'group';

-- A registration's owner is fixed when the row is created; register never
-- rewrites it (ON CONFLICT ... WHERE owner = EXCLUDED.owner). Rows made
-- before this migration take the owner of the enrollment they were made by.
ALTER TABLE dps_registrations ADD COLUMN owner text;
UPDATE dps_registrations r SET owner = coalesce(
    (SELECT e.owner FROM dps_enrollments e
      WHERE e.dps_id = r.dps_id AND e.kind = r.enrollment_kind AND e.enrollment_id = r.enrollment_id),
    'enrollment:' || r.enrollment_kind || ':' || r.enrollment_id);
ALTER TABLE dps_registrations ALTER COLUMN owner SET NOT NULL;
