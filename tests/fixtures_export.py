"""Session fixture: one tiny export of the tiny run (owned by export)."""
