-- A run someone cancelled never completes: a cancel is accepted only while the run has not
-- ended, and from then on the append that would journal `completed` is refused (the host then
-- compensates the run). The cancel and the completion both update the run's row, so one of
-- them comes first: a cancel after the completion is answered "already ended", a completion
-- after the cancel is refused. `append_batch` as in 0005, with that guard on both paths.

CREATE OR REPLACE FUNCTION append_batch(
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
    v_n         integer := coalesce(array_length(p_run_ids, 1), 0);
    v_event     bigint := 0;
    v_first     bigint[] := '{}';
    v_status    text;
    v_i         integer;
    v_j         integer;
BEGIN
    -- Two appends to one run: the second must see the first's position, so one at a time.
    IF (SELECT count(DISTINCT r) FROM unnest(p_run_ids) AS r) < v_n THEN
        FOR v_i IN 1 .. v_n LOOP
            v_status := NULLIF(p_statuses[v_i], '');
            UPDATE runs r SET next_seq = p_next_seqs[v_i] + p_event_counts[v_i], updated_at_ms = p_now,
                status = COALESCE(v_status, r.status),
                output = CASE WHEN v_status IS NULL THEN r.output ELSE p_outputs[v_i] END,
                error = CASE WHEN v_status IS NULL THEN r.error ELSE p_errors[v_i] END,
                lease_expires_at_ms = CASE WHEN v_status IS NULL OR v_status = 'compensating'
                                           THEN r.lease_expires_at_ms ELSE 0 END
            WHERE r.run_id = p_run_ids[v_i] AND r.next_seq = p_next_seqs[v_i] AND r.owner = p_owners[v_i]
              AND NOT (v_status IS NOT DISTINCT FROM 'completed' AND r.cancel_reason IS NOT NULL);
            appended := FOUND AND p_event_counts[v_i] > 0;
            IF appended THEN
                FOR v_j IN 1 .. p_event_counts[v_i] LOOP
                    INSERT INTO events (run_id, seq, at_ms, kind, body)
                    VALUES (p_run_ids[v_i], p_next_seqs[v_i] + v_j - 1, p_now,
                            p_kinds[v_event + v_j], p_bodies[v_event + v_j]);
                END LOOP;
            END IF;
            v_event := v_event + p_event_counts[v_i];
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;

    FOR v_i IN 1 .. v_n LOOP
        v_first := v_first || v_event;
        v_event := v_event + p_event_counts[v_i];
    END LOOP;
    -- A run that has ended holds no lease: nothing executes it any more, and a stuck run must
    -- be free for whichever host an operator retries it on.
    RETURN QUERY
    WITH s AS (
        SELECT * FROM unnest(p_run_ids, p_owners, p_next_seqs, p_event_counts, v_first,
                             p_statuses, p_outputs, p_errors)
            WITH ORDINALITY AS s(run_id, owner, from_seq, n_events, event0, status, output, error, i)
    ), moved AS (
        UPDATE runs r SET next_seq = s.from_seq + s.n_events, updated_at_ms = p_now,
            status = COALESCE(NULLIF(s.status, ''), r.status),
            output = CASE WHEN NULLIF(s.status, '') IS NULL THEN r.output ELSE s.output END,
            error = CASE WHEN NULLIF(s.status, '') IS NULL THEN r.error ELSE s.error END,
            lease_expires_at_ms = CASE WHEN NULLIF(s.status, '') IS NULL OR s.status = 'compensating'
                                       THEN r.lease_expires_at_ms ELSE 0 END
        FROM s
        WHERE r.run_id = s.run_id AND r.next_seq = s.from_seq AND r.owner = s.owner
          AND NOT (s.status = 'completed' AND r.cancel_reason IS NOT NULL)
        RETURNING s.i, s.run_id, s.from_seq, s.n_events, s.event0
    ), written AS (
        INSERT INTO events (run_id, seq, at_ms, kind, body)
        SELECT m.run_id, m.from_seq + e.j - 1, p_now, p_kinds[m.event0 + e.j], p_bodies[m.event0 + e.j]
        FROM moved m, generate_series(1, m.n_events) AS e(j)
    )
    SELECT m.i IS NOT NULL AND s.n_events > 0 FROM s LEFT JOIN moved m ON m.i = s.i ORDER BY s.i;
END;
$$;

ALTER FUNCTION append_batch(text[], text[], bigint[], bigint[], text[], text[], text[], text[],
                            text[], bigint)
    SET enable_seqscan = off SET plan_cache_mode = force_generic_plan;
