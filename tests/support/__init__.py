"""Helpers the tests share beside the fixtures in conftest.py."""
