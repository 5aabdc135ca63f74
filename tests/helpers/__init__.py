"""Helpers shared by the tests (imported, not fixtures)."""
