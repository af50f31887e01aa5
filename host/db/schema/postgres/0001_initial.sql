-- The same schema as the SQLite files (host/schema/sqlite/), in one migration, in the schema
-- the connection's search_path names. See the SQLite files for why each table exists.
CREATE TABLE modules (
    hash           TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    bytes          BYTEA NOT NULL,
    size_bytes     BIGINT NOT NULL,
    deployed_at_ms BIGINT NOT NULL
);

CREATE TABLE runs (
    run_id              TEXT PRIMARY KEY,
    workflow            TEXT NOT NULL,
    module_hash         TEXT NOT NULL REFERENCES modules (hash),
    status              TEXT NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'stuck')),
    input               TEXT NOT NULL,
    output              TEXT,
    error               TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    next_seq            BIGINT NOT NULL,
    owner               TEXT,
    lease_expires_at_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_status ON runs (status, created_at_ms);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at_ms);

-- No foreign key to runs: every append ends by updating its run's row, which fails (and
-- rolls the append back) if the run does not exist; the key's trigger on every insert cost a
-- tenth of the server's time in the transfer benchmark.
CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    at_ms  BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE ledger_accounts (
    account      TEXT PRIMARY KEY,
    balance      BIGINT NOT NULL CHECK (balance >= 0),
    held         BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    opened_at_ms BIGINT NOT NULL
);

CREATE TABLE ledger_ops (
    op_id   TEXT PRIMARY KEY,
    action  TEXT NOT NULL,
    request TEXT NOT NULL,
    status  TEXT NOT NULL CHECK (status IN ('applied', 'rejected', 'tombstone')),
    reply   TEXT NOT NULL,
    at_ms   BIGINT NOT NULL
);

CREATE TABLE ledger_entries (
    op_id   TEXT NOT NULL,
    account TEXT NOT NULL,
    delta   BIGINT NOT NULL,
    PRIMARY KEY (op_id, account)
);

CREATE TABLE ledger_holds (
    hold_id  TEXT PRIMARY KEY,
    account  TEXT NOT NULL,
    amount   BIGINT NOT NULL CHECK (amount >= 0),
    state    TEXT NOT NULL CHECK (state IN ('held', 'captured', 'voided')),
    captured BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE ledger_orders (
    order_id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    merchant TEXT NOT NULL,
    amount   BIGINT NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('created', 'paid', 'cancelled'))
);

CREATE TABLE ledger_records (
    reference TEXT PRIMARY KEY,
    order_id  TEXT NOT NULL,
    amount    BIGINT NOT NULL,
    at_ms     BIGINT NOT NULL
);

CREATE TABLE locks (
    key           TEXT PRIMARY KEY,
    owner         TEXT,
    token         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

CREATE TABLE ledger_fences (
    key   TEXT PRIMARY KEY,
    token BIGINT NOT NULL
);

CREATE TABLE ledger_registers (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE ledger_prepared (
    xid     TEXT NOT NULL,
    branch  BIGINT NOT NULL,
    account TEXT NOT NULL,
    delta   BIGINT NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('prepared', 'committed', 'aborted')),
    PRIMARY KEY (xid, branch)
);

CREATE TABLE deployments (
    workflow       TEXT NOT NULL,
    version        BIGINT NOT NULL,
    hash           TEXT NOT NULL REFERENCES modules (hash),
    deployed_at_ms BIGINT NOT NULL,
    PRIMARY KEY (workflow, version)
);
CREATE UNIQUE INDEX deployments_by_hash ON deployments (workflow, hash);

CREATE TABLE workflows (
    name            TEXT PRIMARY KEY,
    active_version  BIGINT NOT NULL,
    activated_at_ms BIGINT NOT NULL
);
