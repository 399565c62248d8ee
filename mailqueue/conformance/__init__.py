"""Checking an implementation against the spec documents."""
