"""Placeholder (engineer E2 owns and fills this module)."""

classes = ()
