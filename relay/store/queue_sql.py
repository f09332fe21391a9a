"""The delivery queue's hot statements, as plain SQL for the drivers.

They run a few hundred times a second, and SQLAlchemy's statement building and per-row parameter
processing cost more CPU than the database does; relay.queue runs them. Everything else (release,
reading pauses) stays in SQLAlchemy Core.
"""

# A claim picks due rows in index order and stops at its limit; a row waits while an earlier
# delivery with the same ordering key is still active. Expired leases (a crashed worker's) are
# picked before due pending rows.
_EARLIER = (
    "NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.ordering_key = d.ordering_key"
    " AND e.id < d.id AND e.state IN ('pending', 'running'))"
)
_PICK_EXPIRED = (
    "SELECT d.id FROM deliveries AS d WHERE d.connector = {c} AND d.state = 'running'"
    f" AND d.lease_until < {{now}} AND {_EARLIER} ORDER BY d.lease_until, d.id LIMIT {{n}}"
)
_PICK_DUE = (
    "SELECT d.id FROM deliveries AS d WHERE d.connector = {c} AND d.state = 'pending'"
    f" AND d.next_attempt_at <= {{now}} AND {_EARLIER} ORDER BY d.next_attempt_at, d.id"
    " LIMIT {n}"
)
_LEASE = (
    "UPDATE deliveries SET state = 'running', attempts = deliveries.attempts + 1,"
    " lease_until = {until}, leased_by = {worker}, updated_at = {now}"
)

# PostgreSQL: one statement, so one round trip in autocommit. The CTEs are read lazily, so the
# due-row pick only locks what the expired pick left room for; ``= ANY(ARRAY(...))`` keeps the
# update on the primary key even under a generic plan (an ``IN (subquery LIMIT $n)`` is estimated
# at 10% of the table and planned as a sequential scan of deliveries).
PG_CLAIM = (
    "WITH expired AS ("
    + _PICK_EXPIRED.format(c="$1", now="$2", n="$3")
    + " FOR UPDATE SKIP LOCKED), due AS ("
    + _PICK_DUE.format(c="$1", now="$2", n="$3")
    + " FOR UPDATE SKIP LOCKED), picked AS ("
    "SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT $3) "
    + _LEASE.format(until="$4", worker="$5", now="$2")
    + " FROM events AS ev WHERE deliveries.id = ANY(ARRAY(SELECT id FROM picked))"
    " AND ev.id = deliveries.event_id"
    " RETURNING deliveries.id, deliveries.event_id, deliveries.integration_id,"
    " deliveries.attempts, ev.raw"
)
# One statement for a whole batch of outcomes: move the deliveries we still hold, record every
# attempt. $1..$6 are per delivery, $9..$12 per attempt (the error, $3, is shared).
PG_FINISH = (
    "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[],"
    " $5::timestamptz[], $6::timestamptz[]) AS v(id, state, error, refund, next_at, done_at)),"
    " moved AS (UPDATE deliveries AS d SET state = v.state, last_error = v.error,"
    " attempts = d.attempts - v.refund, next_attempt_at = coalesce(v.next_at, d.next_attempt_at),"
    " completed_at = v.done_at, lease_until = NULL, leased_by = NULL, updated_at = $7"
    " FROM v WHERE d.id = v.id AND d.id = ANY($1::bigint[]) AND d.state = 'running'"
    " AND d.leased_by = $8::text RETURNING 1),"
    " history AS (INSERT INTO attempts"
    " (delivery_id, number, started_at, duration_ms, outcome, status_code, error, worker)"
    " SELECT h.*, $8::text FROM unnest($1::bigint[], $9::int[], $10::timestamptz[], $11::int[],"
    " $12::text[], $13::int[], $3::text[]) AS h)"
    " SELECT count(*) FROM moved"
)
SQLITE_CLAIM_EXPIRED = (
    _LEASE.format(until="?", worker="?", now="?")
    + " WHERE id IN ("
    + _PICK_EXPIRED.format(c="?", now="?", n="?")
    + ") RETURNING id, event_id, integration_id, attempts"
)
SQLITE_CLAIM_DUE = (
    _LEASE.format(until="?", worker="?", now="?")
    + " WHERE id IN ("
    + _PICK_DUE.format(c="?", now="?", n="?")
    + ") RETURNING id, event_id, integration_id, attempts"
)
SQLITE_FINISH = (
    "UPDATE deliveries SET state = ?, last_error = ?, attempts = attempts - ?,"
    " next_attempt_at = coalesce(?, next_attempt_at), completed_at = ?, lease_until = NULL,"
    " leased_by = NULL, updated_at = ? WHERE id = ? AND state = 'running' AND leased_by = ?"
)
SQLITE_ATTEMPT = (
    "INSERT INTO attempts"
    " (delivery_id, number, started_at, duration_ms, outcome, status_code, error, worker)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_PAUSE = (
    "INSERT INTO connector_state (connector, state, paused_until, pause_reason, updated_at)"
    " VALUES ({}, '{{}}', {}, {}, {}) ON CONFLICT (connector) DO UPDATE SET"
    " paused_until = excluded.paused_until, pause_reason = excluded.pause_reason,"
    " updated_at = excluded.updated_at"
)
PG_PAUSE = _PAUSE.format("$1", "$2", "$3", "$4")
SQLITE_PAUSE = _PAUSE.format("?", "?", "?", "?")
