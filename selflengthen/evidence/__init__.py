"""The evidence of a run, from its artifacts: the held-out eval (heldout, scored with judge and the
published benchmarks' files), the final length-controlled data set (dataset) and the tables and plots
(tables). The commands in commands/ are thin over these modules.
"""
