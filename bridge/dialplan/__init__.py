"""Dialplans: YAML schema, loader with line numbers, and the no-I/O runner."""
