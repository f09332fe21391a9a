"""Ingest: the webhook endpoint and SQS consumers verify and parse, routing picks the
deliveries, and the accept path records them through group commit before anything is acked."""
