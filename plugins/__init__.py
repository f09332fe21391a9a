"""First-party connectors, registered through the ``relay`` entry-point group like any plugin."""
