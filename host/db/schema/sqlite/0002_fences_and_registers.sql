-- The newest fencing token the ledger has seen per lock key: a call carrying an older token
-- comes from a holder whose lease has passed to someone else, and is refused.
CREATE TABLE ledger_fences (
    key   TEXT PRIMARY KEY,
    token INTEGER NOT NULL
) WITHOUT ROWID;

-- Versioned registers: a JSON value that workflows read and write under a lock, or
-- optimistically by version.
CREATE TABLE ledger_registers (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
