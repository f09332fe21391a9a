"""Dispatch: claim due deliveries, run them through their connectors under attempt time limits,
and record what each attempt came to under the retry policy."""
