-- Module store: components by content hash. Runs pin the hash they started with.
CREATE TABLE modules (
    hash           TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    bytes          BLOB NOT NULL,
    size_bytes     INTEGER NOT NULL,
    deployed_at_ms INTEGER NOT NULL
);

-- Projection of each run's state; the events table is the truth.
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    workflow      TEXT NOT NULL,
    module_hash   TEXT NOT NULL REFERENCES modules (hash),
    status        TEXT NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'stuck')),
    input         TEXT NOT NULL,
    output        TEXT,
    error         TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    -- The seq the next appended event must have: appends are version-checked against it.
    next_seq      INTEGER NOT NULL
);
CREATE INDEX runs_by_status ON runs (status, created_at_ms);

-- Append-only journal; (run_id, seq) unique so no two writers can append at one position.
CREATE TABLE events (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    seq    INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- Built-in ledger. balance is what is available; held is reserved by open holds.
CREATE TABLE ledger_accounts (
    account       TEXT PRIMARY KEY,
    balance       INTEGER NOT NULL CHECK (balance >= 0),
    held          INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    opened_at_ms  INTEGER NOT NULL
);

-- Every operation by its idempotency key: a repeat returns the first outcome. A tombstone marks
-- an operation undone before it ever ran: it can then never apply.
CREATE TABLE ledger_ops (
    op_id   TEXT PRIMARY KEY,
    action  TEXT NOT NULL,
    request TEXT NOT NULL,
    status  TEXT NOT NULL CHECK (status IN ('applied', 'rejected', 'tombstone')),
    reply   TEXT NOT NULL,
    at_ms   INTEGER NOT NULL
) WITHOUT ROWID;

-- Balance changes made by applied operations, for audits: balance = sum of its entries.
CREATE TABLE ledger_entries (
    op_id   TEXT NOT NULL,
    account TEXT NOT NULL,
    delta   INTEGER NOT NULL,
    PRIMARY KEY (op_id, account)
) WITHOUT ROWID;

CREATE TABLE ledger_holds (
    hold_id  TEXT PRIMARY KEY,
    account  TEXT NOT NULL,
    amount   INTEGER NOT NULL CHECK (amount >= 0),
    state    TEXT NOT NULL CHECK (state IN ('held', 'captured', 'voided')),
    captured INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE ledger_orders (
    order_id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    merchant TEXT NOT NULL,
    amount   INTEGER NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('created', 'paid', 'cancelled'))
) WITHOUT ROWID;

-- Recorded transactions; a reference can be recorded once (duplicate payment protection).
CREATE TABLE ledger_records (
    reference TEXT PRIMARY KEY,
    order_id  TEXT NOT NULL,
    amount    INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL
) WITHOUT ROWID;

-- Lease locks with a per-key fencing token that only ever grows.
CREATE TABLE locks (
    key           TEXT PRIMARY KEY,
    owner         TEXT,
    token         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
