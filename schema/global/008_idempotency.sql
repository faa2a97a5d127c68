-- 008_idempotency: Idempotency-Key on the admin API's creates
-- (controlplane/idempotency.c, docs/api.md "Idempotency"). A key is scoped
-- by its caller ("operator" or "key:<api key id>"). The first request holds
-- the row in state 'pending' (claim: its random token); its 2xx answer is
-- then kept until expires_at (24 h) and replayed to the same request.
-- answer is sealed: answer_key is a random data key under the KEK
-- (common/envelope.h, AAD "idempotency:<caller>:<sha256 of the key>"),
-- answer the AES-256-GCM ciphertext of {"location","body"} under it
-- (base64 of nonce | ciphertext | tag). Nothing in it is in clear.
CREATE TABLE idempotency_keys (
    caller       text NOT NULL,
    idem_key     text NOT NULL,
    fingerprint  text NOT NULL,          -- SHA-256 hex of method, path and query, body
    claim        text NOT NULL,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    status       int,
    answer_key   text,
    answer       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (caller, idem_key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
