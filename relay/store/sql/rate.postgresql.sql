-- Token buckets every process of a cluster shares, on PostgreSQL (relay.store.postgres runs them
-- through asyncpg; relay.connector.Limiters asks for them). SQLite runs one process, whose
-- buckets stay in memory. A bucket is kept the GCRA way: one row holding when its next token is
-- due (``tat``, epoch seconds on the database's clock, so the processes' clocks never matter).

-- take: one token of bucket $2 of connector $1, whose tokens come every $3 seconds and of which
-- at most $4 may go at once (a burst). Returns how many seconds the caller waits before it may
-- send (0: now); the token is its own from this statement on, so a caller that gives up wastes
-- it rather than letting another process exceed the limit. One statement, one round trip in
-- autocommit: the row lock of the upsert orders concurrent takers of one bucket, and the one
-- clock reading (the CTE, materialised once) is both the insert's and the answer's ``now``.
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)
INSERT INTO rate_buckets AS b (connector, bucket, tat)
SELECT $1::text, $2::text, clock.now + $3::float8 FROM clock
ON CONFLICT (connector, bucket) DO UPDATE SET tat = greatest(b.tat + $3::float8, excluded.tat)
RETURNING greatest(b.tat - $3::float8 * $4::int - (SELECT now FROM clock), 0);
