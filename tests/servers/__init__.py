"""Real SMTP servers started privately for tests (never the system's own instances)."""
