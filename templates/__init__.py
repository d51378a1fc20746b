"""Jinja2 templates for real-server setup, and their renderer."""
