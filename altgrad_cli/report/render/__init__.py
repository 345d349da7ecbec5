"""Renderers: each reads a report (or the registry) and writes one output format; none computes."""
