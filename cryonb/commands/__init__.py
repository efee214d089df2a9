"""Subcommands of the ``cryonb`` command line (each module has ``add_args`` and ``main``)."""
