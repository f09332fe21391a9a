-- The delivery queue's hot statements on PostgreSQL (relay.store.postgres runs them through
-- asyncpg). Each query starts with a comment line naming it; relay.store.named_sql loads them.
-- {state:…} and {states:…} are spelled from relay.store.states.DeliveryState at load time.

-- claim: lease up to $3 due deliveries of connector $1 at time $2, until $4, for worker $5.
-- One statement, so one round trip in autocommit. Expired leases (a crashed worker's) are picked
-- before due pending rows; each pick walks the (state, connector, next_attempt_at, id) index in
-- due order and stops at its limit, and skips a row while an earlier delivery with the same
-- ordering key is still active. The CTEs are read lazily, so the due pick only locks what the
-- expired pick left room for. ``= ANY(ARRAY(...))`` keeps the update on the primary key even
-- under a generic plan (an ``IN (subquery LIMIT $n)`` is estimated at 10% of the table and
-- planned as a sequential scan of deliveries).
WITH expired AS (
  SELECT d.id FROM deliveries AS d
  WHERE d.connector = $1 AND d.state = {state:running} AND d.lease_until < $2
    AND NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.ordering_key = d.ordering_key
                    AND e.id < d.id AND e.state IN ({states:active}))
  ORDER BY d.lease_until, d.id LIMIT $3
  FOR UPDATE SKIP LOCKED
), due AS (
  SELECT d.id FROM deliveries AS d
  WHERE d.connector = $1 AND d.state = {state:pending} AND d.next_attempt_at <= $2
    AND NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.ordering_key = d.ordering_key
                    AND e.id < d.id AND e.state IN ({states:active}))
  ORDER BY d.next_attempt_at, d.id LIMIT $3
  FOR UPDATE SKIP LOCKED
), picked AS (
  SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT $3
)
UPDATE deliveries SET state = {state:running}, attempts = deliveries.attempts + 1,
  lease_until = $4, leased_by = $5, updated_at = $2
FROM events AS ev
WHERE deliveries.id = ANY(ARRAY(SELECT id FROM picked)) AND ev.id = deliveries.event_id
RETURNING deliveries.id, deliveries.event_id, deliveries.integration_id, deliveries.attempts,
  ev.raw;

-- supersede: for a connector that coalesces calls ($1), at time $2: each pending
-- delivery of the calls at the head of its queue (the keys of the next $3 due deliveries, the
-- ones a claim would pick) becomes superseded when a pending sibling (same ordering key) holds a
-- newer state of the call: a final record beats any live event and an older final record; a
-- snapshot beats an older snapshot (by the event's own time, then arrival). The live end carries
-- no numbers, so it supersedes nothing. Run in the claim's transaction, before the claim, so the
-- claim picks the winner; a row another worker has claimed meanwhile is no longer pending and
-- is left alone. Bounded: it reads only the siblings of the keys the claim would pick.
UPDATE deliveries SET state = {state:superseded}, completed_at = $2, updated_at = $2
WHERE id = ANY(ARRAY(
  SELECT d.id FROM deliveries AS d JOIN events AS ev ON ev.id = d.event_id
  WHERE d.state = {state:pending} AND d.ordering_key = ANY(ARRAY(
      SELECT h.ordering_key FROM deliveries AS h
      WHERE h.connector = $1 AND h.state = {state:pending} AND h.next_attempt_at <= $2
        AND NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.ordering_key = h.ordering_key
                        AND e.id < h.id AND e.state IN ({states:active}))
      ORDER BY h.next_attempt_at, h.id LIMIT $3))
    AND EXISTS (
      SELECT 1 FROM deliveries AS w JOIN events AS we ON we.id = w.event_id
      WHERE w.ordering_key = d.ordering_key AND w.state = {state:pending} AND w.id <> d.id
        AND ((we.type IN ({types:final}) AND ev.type IN ({types:snapshot}, {types:live_end}))
          OR (((we.type IN ({types:final}) AND ev.type IN ({types:final}))
               OR (we.type IN ({types:snapshot}) AND ev.type IN ({types:snapshot})))
              AND (we.occurred_at > ev.occurred_at
                   OR (we.occurred_at = ev.occurred_at AND w.id > d.id)))))
  FOR UPDATE OF d SKIP LOCKED));

-- finish: one statement for a whole batch of outcomes, at time $7 by worker $8.
-- Moves the deliveries this worker still holds and records every attempt (as history, even
-- where the lease was taken over); returns how many deliveries moved. $1..$6 are per delivery
-- (id, next state, error, attempts refund, next attempt, completed at), $9..$13 per attempt
-- (number, started, duration, outcome, status code); the error, $3, is shared.
WITH v AS (
  SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::timestamptz[],
                       $6::timestamptz[]) AS v(id, state, error, refund, next_at, done_at)
), moved AS (
  UPDATE deliveries AS d SET state = v.state, last_error = v.error,
    attempts = d.attempts - v.refund, next_attempt_at = coalesce(v.next_at, d.next_attempt_at),
    completed_at = v.done_at, lease_until = NULL, leased_by = NULL, updated_at = $7
  FROM v
  WHERE d.id = v.id AND d.id = ANY($1::bigint[]) AND d.state = {state:running}
    AND d.leased_by = $8::text
  RETURNING 1
), history AS (
  INSERT INTO attempts
    (delivery_id, number, started_at, duration_ms, outcome, status_code, error, worker)
  SELECT h.*, $8::text FROM unnest($1::bigint[], $9::int[], $10::timestamptz[], $11::int[],
                                   $12::text[], $13::int[], $3::text[]) AS h
)
SELECT count(*) FROM moved;

-- pause: connector $1 waits out a quota until $2 (reason $3), recorded at $4.
INSERT INTO connector_state (connector, state, paused_until, pause_reason, updated_at)
VALUES ($1, '{}', $2, $3, $4)
ON CONFLICT (connector) DO UPDATE SET paused_until = excluded.paused_until,
  pause_reason = excluded.pause_reason, updated_at = excluded.updated_at;
