"""Session fixture: one tiny trained run (owned by training; see docs/architecture.md)."""
