"""Fuzzing every reader a foreign file reaches (issue 21): see docs/FORMAT.md, "Fuzzing"."""
