"""Standalone scripts that run on the device (stdlib + one runtime, Python >= 3.8)."""
