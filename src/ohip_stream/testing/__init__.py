"""Test kit: a local OHIP gateway (the emulator) and helpers for tests of integrations."""
