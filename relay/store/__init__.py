"""The durable store: tables, engines, the records ingest writes, the delivery queue dispatch
claims from, and one backend module per database."""
