"""Self-Lengthen (DESIGN §1): self-instruct -> initial -> two-stage extension -> SFT data -> train both roles."""

ROLES = ("generator", "extender")
