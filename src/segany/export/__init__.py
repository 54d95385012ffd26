"""Exporters of segany models to other runtimes."""
