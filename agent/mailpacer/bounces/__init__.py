"""Inbound bounces: VERP return paths, DSN parsing (RFC 3464) and the SMTP listener."""
