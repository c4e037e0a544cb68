"""Shared s3 fixtures (session-scoped where expensive)."""
