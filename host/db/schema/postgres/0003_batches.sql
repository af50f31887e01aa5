-- Group commit on PostgreSQL: many runs' steps (each what `ledger_step` does for one), or many
-- runs' appends, in one statement, so one transaction, one commit and one round trip carry them
-- all. A step's writes still commit or roll back with its own journal events; the batch as a
-- whole is atomic, and the host writes a failed batch's steps again one by one, so one step's
-- failure never decides another's outcome.
--
-- Arguments are parallel arrays with one element per step, except the events before each
-- step's outcome and its fencing tokens, which are concatenated: `p_event_counts[i]` and
-- `p_token_counts[i]` say how many of them belong to step i. `p_starteds[i]` is '' for a run
-- that exists. Returns one row per step, in the order given, as `ledger_step` does.
CREATE FUNCTION ledger_steps(
    p_run_ids       text[],
    p_owners        text[],
    p_next_seqs     bigint[],
    p_starteds      text[],
    p_workflows     text[],
    p_module_hashes text[],
    p_inputs        text[],
    p_lease_ms      bigint[],
    p_event_counts  bigint[],
    p_kinds         text[],
    p_bodies        text[],
    p_calls         bigint[],
    p_reply_max     bigint[],
    p_op_ids        text[],
    p_actions       text[],
    p_requests      text[],
    p_accounts      text[],
    p_amounts       bigint[],
    p_token_counts  bigint[],
    p_token_keys    text[],
    p_token_values  bigint[],
    p_now           bigint
) RETURNS TABLE (status text, outcome text, next_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_event     bigint := 0;
    v_token     bigint := 0;
    v_i         integer;
BEGIN
    FOR v_i IN 1 .. coalesce(array_length(p_run_ids, 1), 0) LOOP
        RETURN QUERY SELECT * FROM ledger_step(
            p_run_ids[v_i], p_owners[v_i], p_next_seqs[v_i], NULLIF(p_starteds[v_i], ''),
            p_workflows[v_i], p_module_hashes[v_i], p_inputs[v_i], p_lease_ms[v_i],
            coalesce(p_kinds[v_event + 1 : v_event + p_event_counts[v_i]], '{}'),
            coalesce(p_bodies[v_event + 1 : v_event + p_event_counts[v_i]], '{}'),
            p_calls[v_i], p_reply_max[v_i], p_op_ids[v_i], p_actions[v_i], p_requests[v_i],
            p_accounts[v_i], p_amounts[v_i],
            coalesce(p_token_keys[v_token + 1 : v_token + p_token_counts[v_i]], '{}'),
            coalesce(p_token_values[v_token + 1 : v_token + p_token_counts[v_i]], '{}'),
            p_now);
        v_event := v_event + p_event_counts[v_i];
        v_token := v_token + p_token_counts[v_i];
    END LOOP;
END;
$$;

-- Appends of one or more events to many runs, each fenced as journal.rs `append_events` does:
-- a run's events are written only if this owner holds it at that position, and its projection
-- moves with them (status, output and error when `p_statuses[i]` is not '': a run that has
-- ended, or is compensating, as event.rs decides). Events are concatenated, `p_event_counts[i]`
-- of them for run i. Returns one row per run, in the order given: whether it was appended.
CREATE FUNCTION append_batch(
    p_run_ids      text[],
    p_owners       text[],
    p_next_seqs    bigint[],
    p_event_counts bigint[],
    p_kinds        text[],
    p_bodies       text[],
    p_statuses     text[],
    p_outputs      text[],
    p_errors       text[],
    p_now          bigint
) RETURNS TABLE (appended boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_event     bigint := 0;
    v_count     bigint;
    v_status    text;
    v_i         integer;
    v_j         integer;
BEGIN
    FOR v_i IN 1 .. coalesce(array_length(p_run_ids, 1), 0) LOOP
        v_count := p_event_counts[v_i];
        v_status := NULLIF(p_statuses[v_i], '');
        -- A run that has ended holds no lease: nothing executes it any more, and a stuck run
        -- must be free for whichever host an operator retries it on.
        UPDATE runs r SET next_seq = p_next_seqs[v_i] + v_count, updated_at_ms = p_now,
            status = COALESCE(v_status, r.status),
            output = CASE WHEN v_status IS NULL THEN r.output ELSE p_outputs[v_i] END,
            error = CASE WHEN v_status IS NULL THEN r.error ELSE p_errors[v_i] END,
            lease_expires_at_ms = CASE WHEN v_status IS NULL OR v_status = 'compensating'
                                       THEN r.lease_expires_at_ms ELSE 0 END
        WHERE r.run_id = p_run_ids[v_i] AND r.next_seq = p_next_seqs[v_i] AND r.owner = p_owners[v_i];
        appended := FOUND AND v_count > 0;
        IF appended THEN
            FOR v_j IN 1 .. v_count LOOP
                INSERT INTO events (run_id, seq, at_ms, kind, body)
                VALUES (p_run_ids[v_i], p_next_seqs[v_i] + v_j - 1, p_now,
                        p_kinds[v_event + v_j], p_bodies[v_event + v_j]);
            END LOOP;
        END IF;
        v_event := v_event + v_count;
        RETURN NEXT;
    END LOOP;
END;
$$;
