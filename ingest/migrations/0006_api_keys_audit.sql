-- Operator API keys and the audit trail of every write.
--
-- A key is `flt_<id>_<secret>`: the id is public (it names the key in lists, logs and the audit
-- trail), the secret is 256 random bits. Only the SHA-256 of the whole key is stored: for a
-- high-entropy token a fast hash is the right tool (no password to guess, so nothing for a slow
-- hash to protect), and a lookup by id then one constant-time compare costs microseconds.
CREATE TABLE api_keys (
    id             text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    name           text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    role           text        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_sha256  bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text        NOT NULL DEFAULT '',
    last_used_at   timestamptz,
    revoked_at     timestamptz
);

-- One row per accepted write, whoever made it: an API key (key_id, key_name, role) or the `fleet`
-- command on the server (key_id NULL, key_name 'cli:<user>'). `before` and `after` hold the
-- values the write changed, never a secret (a rotated password is recorded as rotated, not kept).
CREATE TABLE audit_log (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time      timestamptz NOT NULL DEFAULT clock_timestamp(),
    key_id    text,
    key_name  text        NOT NULL,
    role      text,
    action    text        NOT NULL,
    route     text        NOT NULL DEFAULT '',
    target    text        NOT NULL DEFAULT '',
    before    jsonb,
    after     jsonb
);
CREATE INDEX audit_log_time ON audit_log (time DESC);
CREATE INDEX audit_log_key ON audit_log (key_id, id DESC);
CREATE INDEX audit_log_target ON audit_log (target, id DESC);
