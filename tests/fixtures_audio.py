"""Shared audio fixtures (session-scoped where expensive)."""
