"""Handlers of the Stage I ops (specs: their section in protocol/catalogue.py; see docs/backend-api.md)."""

HANDLERS: dict = {}
