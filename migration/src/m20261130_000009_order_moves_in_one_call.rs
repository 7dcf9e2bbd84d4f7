//! The order sagas' hooks (an order becomes PAID, FAILED, CANCELLED,
//! REFUNDED, or is released by an abandoned refund, with the event that
//! announces it) are applied for a whole batch of sagas in one call:
//! `sagaflow_move_orders(moves)`.
//!
//! Why: the hook was the one statement run once per order (1.00 per saga
//! under `pg_stat_statements`, 174–225 µs each, in `scale-out` on
//! 2026-11-30), where every other write of a batch of replies is one
//! statement for the batch. A single set-based `UPDATE orders … FROM` the
//! batch's moves was tried (bench/README finding 27) and lost: its
//! cached generic plan, made while a database is young, joined the moves
//! by hashing a sequential scan of `orders`. Here each move is its own
//! `UPDATE … WHERE order_no = …`, an index probe under any plan, in
//! array order, exactly as the per-order statements ran, with one round
//! trip for the batch.
//!
//! `moves` is a JSON array; each element has `order_no`, `saga_id`,
//! `by_refund` (the saga is the order's refund saga, not its payment
//! saga), `expect` (the one status the move starts from), `status` (the
//! new one; null keeps it), `set_failure` and `failure`, `clear_refund`,
//! and `event` (an outbox row: `message_id`, `topic`, `key`, `payload`,
//! `headers`), which is written only if the order moved. Returns the
//! 1-based positions of the moves whose order was not where the move
//! expects it: two writers disagree, and the caller must stop that saga
//! rather than overwrite the order.

const UP: &str = r#"
CREATE FUNCTION sagaflow_move_orders(moves jsonb) RETURNS SETOF integer
LANGUAGE plpgsql AS $$
DECLARE
    m jsonb;
    n integer;
BEGIN
    FOR m, n IN SELECT value, ordinality::integer FROM jsonb_array_elements(moves) WITH ORDINALITY LOOP
        UPDATE orders o
           SET status = COALESCE(m->>'status', o.status),
               failure_reason = CASE WHEN (m->>'set_failure')::boolean THEN m->>'failure'
                                     ELSE o.failure_reason END,
               refund_saga_id = CASE WHEN (m->>'clear_refund')::boolean THEN NULL
                                     ELSE o.refund_saga_id END,
               updated_at = now()
         WHERE o.order_no = m->>'order_no'
           AND o.status = m->>'expect'
           AND (CASE WHEN (m->>'by_refund')::boolean THEN o.refund_saga_id ELSE o.saga_id END)
               = (m->>'saga_id')::uuid;
        IF FOUND THEN
            INSERT INTO outbox (message_id, topic, key, payload, headers)
            VALUES ((m#>>'{event,message_id}')::uuid, m#>>'{event,topic}', m#>>'{event,key}',
                    m#>'{event,payload}', m#>'{event,headers}')
            ON CONFLICT (message_id) DO NOTHING;
        ELSE
            RETURN NEXT n;
        END IF;
    END LOOP;
END $$;
"#;

const DOWN: &str = "DROP FUNCTION sagaflow_move_orders(jsonb);";

crate::sql_migration!(UP, DOWN);
