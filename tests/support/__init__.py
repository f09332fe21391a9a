"""What the tests share, one module per kind of helper: test modules import from here (never
from one another, never from conftest), and conftest.py holds only pytest fixtures.

- ``samples``: the Wildix samples shipped in the package, by name.
- ``databases``: the PostgreSQL test database (``PG_URL``) and a fresh database per test.
- ``relay``: config and settings for tests, a relay running for real, a ``relay worker`` process.
- ``cli``: the ``relay`` command, as a subprocess or in-process.
- ``calls``: Wildix call scenarios (the events of one call) built from the samples.
- ``crm``: one description of each CRM (fake, config block, seed, records) and CRM scenario steps.
- ``connectors``: connector instances made through the config loader.
- ``operations``: a relay with the admin token set; the admin API; waiting on delivery states.
- ``sqs``: settings with SQS integrations and waiting on the consumer's status.
"""
