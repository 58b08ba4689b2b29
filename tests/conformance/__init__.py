"""The conformance suite: every registered rung against the one application contract."""
