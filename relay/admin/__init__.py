"""Operations: the admin API, metrics, replay and the data lifecycle.

The web part (``relay.admin.api``, and the dashboard in ``relay.ui``) is mounted by the app only
when ``admin.token`` is set; the CLI commands of this package need none of it.
"""
