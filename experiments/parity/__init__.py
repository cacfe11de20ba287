"""Parity scripts: golden files from reference implementations that cannot run in CI."""
