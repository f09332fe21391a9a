-- Ingest on PostgreSQL (relay.store.postgres runs these through asyncpg). Each query starts
-- with a comment line naming it; relay.store.named_sql loads them. {state:…} is spelled from
-- relay.store.states.DeliveryState at load time. Rows travel as one array per column (unnest),
-- so each statement is prepared once whatever the row count; JSON travels as text. Text
-- arrays are VARCHAR without a length: a cast to VARCHAR(n) would cut a longer value
-- silently, where storing it in the column refuses it (a data error: that row's fault).

-- record_events: a whole batch of events, with the deliveries and phone numbers of those that
-- are new, as one statement: one transaction in autocommit, one round trip.
-- $1..$9: the events' columns; $10..$13: each delivery's event key (integration id, body
-- digest), connector and ordering key; $14..$16: each phone number's event key and number;
-- $17: the batch's time. A body already stored comes back from its unique index (a no-op update
-- of a column no index holds) with its id, so dedupe needs no lookup of its own: a lookup is
-- planned once per connection, and one planned while the table was small went on scanning all
-- of it. ``xmax = 0`` tells the rows inserted here from those found; a concurrent batch with
-- the same body makes this one wait for its commit, then find its row.
WITH ev AS (
  INSERT INTO events (integration_id, type, subject_id, call_id, body_sha256, raw, occurred_at,
                      transport, transport_meta, received_at)
  SELECT u.integration_id, u.type, u.subject_id, u.call_id, u.body_sha256, u.raw,
         u.occurred_at, u.transport, u.transport_meta::JSON, $17
  FROM unnest($1::VARCHAR[], $2::VARCHAR[], $3::VARCHAR[], $4::VARCHAR[],
              $5::VARCHAR[], $6::BYTEA[], $7::TIMESTAMP WITH TIME ZONE[], $8::VARCHAR[],
              $9::TEXT[])
       WITH ORDINALITY AS u(integration_id, type, subject_id, call_id, body_sha256, raw,
                            occurred_at, transport, transport_meta, ord)
  ORDER BY u.ord
  ON CONFLICT (integration_id, body_sha256) DO UPDATE SET type = events.type
  RETURNING id, integration_id, body_sha256, xmax = 0 AS inserted
), dl AS (
  INSERT INTO deliveries (event_id, connector, ordering_key, integration_id, state, attempts,
                          next_attempt_at, created_at, updated_at)
  SELECT ev.id, u.connector, u.ordering_key, ev.integration_id, {state:pending}, 0, $17, $17,
         $17
  FROM unnest($10::VARCHAR[], $11::VARCHAR[], $12::VARCHAR[], $13::VARCHAR[])
       WITH ORDINALITY AS u(owner_integration_id, owner_body_sha256, connector, ordering_key,
                            ord)
  JOIN ev ON ev.integration_id = u.owner_integration_id
         AND ev.body_sha256 = u.owner_body_sha256 AND ev.inserted
  ORDER BY u.ord
), nb AS (
  INSERT INTO event_numbers (event_id, number)
  SELECT ev.id, u.number
  FROM unnest($14::VARCHAR[], $15::VARCHAR[], $16::VARCHAR[])
       WITH ORDINALITY AS u(owner_integration_id, owner_body_sha256, number, ord)
  JOIN ev ON ev.integration_id = u.owner_integration_id
         AND ev.body_sha256 = u.owner_body_sha256 AND ev.inserted
  ORDER BY u.ord
)
SELECT id, integration_id, body_sha256, inserted FROM ev;

-- add_deliveries: deliveries for events already stored (a replay), one array per column.
INSERT INTO deliveries (event_id, integration_id, connector, ordering_key, state, attempts,
                        next_attempt_at, created_at, updated_at)
SELECT u.event_id, u.integration_id, u.connector, u.ordering_key, u.state, u.attempts,
       u.next_attempt_at, u.created_at, u.updated_at
FROM unnest($1::BIGINT[], $2::VARCHAR[], $3::VARCHAR[], $4::VARCHAR[],
            $5::VARCHAR[], $6::INTEGER[], $7::TIMESTAMP WITH TIME ZONE[],
            $8::TIMESTAMP WITH TIME ZONE[], $9::TIMESTAMP WITH TIME ZONE[])
     WITH ORDINALITY AS u(event_id, integration_id, connector, ordering_key, state, attempts,
                          next_attempt_at, created_at, updated_at, ord)
ORDER BY u.ord;
