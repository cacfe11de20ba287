"""Recipes, sweep launchers and benchmarks built on pojax."""
