"""Sub-commands of qaflow-mail beyond the core ones in cli.py: each module has register(subparsers)."""
