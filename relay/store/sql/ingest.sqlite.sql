-- Ingest on SQLite (relay.store.sqlite runs these through the plain driver, in one write
-- transaction per batch). Each query starts with a comment line naming it;
-- relay.store.named_sql loads them. {rows} is filled in per statement with one "(?, …)" group
-- per row (a multi-row VALUES: one statement for many rows, within SQLite's bound-parameter
-- limit); {ids} with one ? per id.

-- insert_events: new events, skipping bodies already stored for their integration; returns the
-- id and key of each row actually inserted.
INSERT INTO events (integration_id, type, subject_id, call_id, body_sha256, raw, occurred_at,
                    transport, transport_meta, received_at)
VALUES {rows}
ON CONFLICT (integration_id, body_sha256) DO NOTHING
RETURNING id, integration_id, body_sha256;

-- known_events: the ids of bodies already stored; both key columns, so each key is a search of
-- the unique index ({iids}: one ? per integration id, {shas}: one ? per digest).
SELECT id, integration_id, body_sha256 FROM events
WHERE integration_id IN ({iids}) AND body_sha256 IN ({shas});

-- insert_deliveries: deliveries of the events just inserted, or of a replay.
INSERT INTO deliveries (event_id, integration_id, connector, ordering_key, state, attempts,
                        next_attempt_at, created_at, updated_at)
VALUES {rows};

-- insert_numbers: the phone numbers the events just inserted mention.
INSERT INTO event_numbers (event_id, number)
VALUES {rows};
