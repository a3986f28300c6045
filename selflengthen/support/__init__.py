"""What every layer uses and no layer owns: config checks (checks: `rule(...)` metadata, pydantic
validation, ConfigError), console output (ui) and the experiment trackers (tracking).
"""
