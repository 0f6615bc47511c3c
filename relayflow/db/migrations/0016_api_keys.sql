-- API keys for programs (`relayflow.auth`): made with `relayflow-admin keys create`, shown once,
-- stored as a keyed hash of the whole key (never the key), looked up by the public id the key
-- carries. A revoked key stays, so that `keys list` still shows what it was and when it ended.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    role         text NOT NULL CHECK (role IN ('submit', 'read', 'operator', 'admin')),
    name         text,
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Written at most once a minute per key (`touch_key`), not on every request.
    last_used_at timestamptz,
    revoked_at   timestamptz
);
