"""On-device profilers and the host-side profiling campaign."""
