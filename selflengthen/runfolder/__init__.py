"""The run folder's core: where every file of a run lives (layout), how it is written and read back
(store: atomic writes, item logs, done records, the run lock), what each record must hold (records) and
the run's identity (manifest: semantic config, stage order, drift). The lowest floor: it imports nothing
else of the package.
"""
