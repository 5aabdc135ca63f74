"""Shortcut audits of data and models: ``shortcuts.py`` (the audits), ``command.py`` (``deepfake audit``)."""
