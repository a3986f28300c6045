"""Methods: a method declares its adapter roles and its ordered list of stages (see base.py)."""
