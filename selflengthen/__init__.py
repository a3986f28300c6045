"""selflengthen: Self-Lengthen (Quan et al. 2024) — a model learns to write longer answers from its own
lengthened output, round after round. `python -m selflengthen iterations=N` runs it; see README.md."""

__version__ = "0.1.0"
