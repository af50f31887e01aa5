-- A pruned run keeps its row, emptied (its input, output and error) and marked with when it was
-- pruned: its id stays taken, so a new run cannot start under it and be answered by the
-- ledger from the old run's operation records, which outlive it. The row goes once those
-- records are pruned too.
ALTER TABLE runs ADD COLUMN pruned_at_ms INTEGER;
