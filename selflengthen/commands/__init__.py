"""The four commands (`selflengthen [eval|collect|report]`): each a thin `main` over a library module.

Each has its own `cli.main(name, job)` (the Hydra edge) and never imports another command (a test walks
the import graph). The package entry `python -m selflengthen <command>` dispatches to them.
"""
