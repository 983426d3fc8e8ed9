"""Shared helpers vendored into every Space."""
