"""Command modules that sit above the features they combine (imported by ``cli.py`` only when their command runs)."""
