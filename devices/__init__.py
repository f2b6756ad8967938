"""Device adapters: transports, runtimes, specs."""
