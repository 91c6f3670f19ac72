"""Handlers of the Stage II ops (specs: their section in protocol/catalogue.py; see docs/backend-api.md)."""

HANDLERS: dict = {}
