-- 014_ratelimit_epoch: the DPS buckets' epoch, remembered outside Redis.
--
-- The rate-limit script keeps an epoch in Redis (controlplane/ratelimit.h,
-- "After Redis loses its data"): a router that remembers an epoch and finds
-- it gone knows Redis lost the buckets, and they start empty instead of full.
-- A router's memory dies with it, so if every router restarted along with
-- Redis nobody remembered, and a whole minute's allowance could go through
-- again. Each router writes the epoch it sees here and reads it at start
-- (controlplane/ratelimit_epoch.c). One row.
CREATE TABLE ratelimit_epoch (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    epoch      text NOT NULL CHECK (length(epoch) BETWEEN 1 AND 39),
    noted_at   timestamptz NOT NULL DEFAULT now()
);
