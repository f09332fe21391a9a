-- The delivery queue's hot statements on SQLite (relay.store.sqlite runs them through the plain
-- driver on the writer thread). Each query starts with a comment line naming it;
-- relay.store.named_sql loads them. {state:…} and {states:…} are spelled from
-- relay.store.states.DeliveryState at load time.

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
