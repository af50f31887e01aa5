-- A pruned run keeps its row, emptied (its input, output and error) and marked with when it was
-- pruned: its id stays taken for good, so a new run cannot start under it and add to the
-- ledger entries (kept forever) that the old run's operation ids key.
ALTER TABLE runs ADD COLUMN pruned_at_ms BIGINT;

-- The highest version number a workflow was ever given: pruning deletes unneeded versions,
-- and a new version must never take the number of one that is gone.
ALTER TABLE workflows ADD COLUMN versions_made BIGINT NOT NULL DEFAULT 0;
UPDATE workflows SET versions_made =
    (SELECT COALESCE(MAX(version), 0) FROM deployments WHERE deployments.workflow = workflows.name);
