"""Hurricane's search core: operators, spaces, architectures, supernet, training.

Nothing in this package talks to a device (see ``devices/`` and ``profilers/``).
"""

__version__ = "0.1.0"
