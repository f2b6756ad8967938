"""The jobs users run and the ``hurricane`` command line."""
