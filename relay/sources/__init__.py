"""Where events come from: the HTTP webhook and the SQS consumer."""
