-- 001_identity: which geography this database belongs to.
-- One row, written by the first control plane that migrates the database and
-- checked by every one after it, so a connection string that points the eu
-- geography at the us database is caught instead of silently mixing data.
CREATE TABLE geo_identity (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    geography   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
