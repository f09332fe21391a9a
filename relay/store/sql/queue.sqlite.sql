-- The delivery queue's hot statements on SQLite (relay.store.sqlite runs them through the plain
-- driver on the writer thread). Each query starts with a comment line naming it;
-- relay.store.named_sql loads them. {state:…} and {states:…} are spelled from
-- relay.store.states.DeliveryState at load time.

-- supersede: for a connector that coalesces calls (?1), at time ?2: each pending
-- delivery of the calls at the head of its queue (the keys of the next ?3 due deliveries, the
-- ones a claim would pick) becomes superseded when a pending sibling (same ordering key) holds a
-- newer state of the call: a final record beats any live event and an older final record; a
-- snapshot beats an older snapshot (by the event's own time, then arrival). The live end carries
-- no numbers, so it supersedes nothing. Run in the claim's transaction, before the claim, so the
-- claim picks the winner; a row another worker has claimed meanwhile is no longer pending and
-- is left alone. Bounded: it reads only the siblings of the keys the claim would pick.
UPDATE deliveries SET state = {state:superseded}, completed_at = ?2, updated_at = ?2
WHERE id IN (
  SELECT d.id FROM deliveries AS d JOIN events AS ev ON ev.id = d.event_id
  WHERE d.state = {state:pending} AND d.ordering_key IN (
      SELECT h.ordering_key FROM deliveries AS h
      WHERE h.connector = ?1 AND h.state = {state:pending} AND h.next_attempt_at <= ?2
        AND NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.ordering_key = h.ordering_key
                        AND e.id < h.id AND e.state IN ({states:active}))
      ORDER BY h.next_attempt_at, h.id LIMIT ?3)
    AND EXISTS (
      SELECT 1 FROM deliveries AS w JOIN events AS we ON we.id = w.event_id
      WHERE w.ordering_key = d.ordering_key AND w.state = {state:pending} AND w.id <> d.id
        AND ((we.type IN ({types:final}) AND ev.type IN ({types:snapshot}, {types:live_end}))
          OR (((we.type IN ({types:final}) AND ev.type IN ({types:final}))
               OR (we.type IN ({types:snapshot}) AND ev.type IN ({types:snapshot})))
              AND (we.occurred_at > ev.occurred_at
                   OR (we.occurred_at = ev.occurred_at AND w.id > d.id))))));

-- claim_expired: lease, until ?1, for worker ?2 at time ?3, up to ?6 deliveries of connector ?4
-- whose lease ran out before ?5 (a crashed worker's), oldest lease first. A row waits while an
-- earlier delivery with the same ordering key is still active.
UPDATE deliveries SET state = {state:running}, attempts = deliveries.attempts + 1,
  lease_until = ?, leased_by = ?, updated_at = ?
WHERE id IN (
  SELECT d.id FROM deliveries AS d
  WHERE d.connector = ? AND d.state = {state:running} AND d.lease_until < ?
    AND NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.ordering_key = d.ordering_key
                    AND e.id < d.id AND e.state IN ({states:active}))
  ORDER BY d.lease_until, d.id LIMIT ?
)
RETURNING id, event_id, integration_id, attempts;

-- claim_due: lease, until ?1, for worker ?2 at time ?3, up to ?6 pending deliveries of
-- connector ?4 due by ?5, in due order: the pick walks the (state, connector, next_attempt_at,
-- id) index and stops at its limit. A row waits while an earlier delivery with the same
-- ordering key is still active.
UPDATE deliveries SET state = {state:running}, attempts = deliveries.attempts + 1,
  lease_until = ?, leased_by = ?, updated_at = ?
WHERE id IN (
  SELECT d.id FROM deliveries AS d
  WHERE d.connector = ? AND d.state = {state:pending} AND d.next_attempt_at <= ?
    AND NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.ordering_key = d.ordering_key
                    AND e.id < d.id AND e.state IN ({states:active}))
  ORDER BY d.next_attempt_at, d.id LIMIT ?
)
RETURNING id, event_id, integration_id, attempts;

-- event_bodies: the raw bodies of the claimed deliveries' events; {ids} is one ? per id.
SELECT id, raw FROM events WHERE id IN ({ids});

-- finish: move one delivery on (next state, error, attempts refund, next attempt, completed at,
-- updated at), only while worker ?8 still holds its lease on delivery ?7; run once per outcome.
UPDATE deliveries SET state = ?, last_error = ?, attempts = attempts - ?,
  next_attempt_at = coalesce(?, next_attempt_at), completed_at = ?, lease_until = NULL,
  leased_by = NULL, updated_at = ?
WHERE id = ? AND state = {state:running} AND leased_by = ?;

-- attempt: one attempt's history row, recorded whether or not the lease was still held.
INSERT INTO attempts
  (delivery_id, number, started_at, duration_ms, outcome, status_code, error, worker)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- pause: connector ?1 waits out a quota until ?2 (reason ?3), recorded at ?4.
INSERT INTO connector_state (connector, state, paused_until, pause_reason, updated_at)
VALUES (?, '{}', ?, ?, ?)
ON CONFLICT (connector) DO UPDATE SET paused_until = excluded.paused_until,
  pause_reason = excluded.pause_reason, updated_at = excluded.updated_at;
