"""Command-line verbs behind server.py: database resolution, users, demo data, simulate, bench."""
