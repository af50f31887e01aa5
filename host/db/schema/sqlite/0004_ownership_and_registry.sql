-- Run ownership: the host executing a run holds a lease on it, renewed while it runs. Appends
-- are fenced by the owner, so a host that lost its lease (paused, partitioned) can no longer
-- write to the run; another host takes over an expired lease and resumes the run by replay.
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_by_workflow ON runs (workflow, created_at_ms);

-- The registry: every version of a workflow ever deployed (one per distinct module), and the
-- version new runs of each workflow get.
CREATE TABLE deployments (
    workflow       TEXT NOT NULL,
    version        INTEGER NOT NULL,
    hash           TEXT NOT NULL REFERENCES modules (hash),
    deployed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (workflow, version)
) WITHOUT ROWID;
CREATE UNIQUE INDEX deployments_by_hash ON deployments (workflow, hash);

CREATE TABLE workflows (
    name            TEXT PRIMARY KEY,
    active_version  INTEGER NOT NULL,
    activated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
