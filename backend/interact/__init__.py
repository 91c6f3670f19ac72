"""Interactions (paper §3.1.1–3.1.5): selection, parts (add/remove), transforms, drag, semantic edit and
interactive SDS."""
