"""The pure rules about text: word counting and paragraphs (text), the quality filter (filters),
length-aware sampling (sampling) and length constraints (length_control). No engine, no file, no config
beyond the plain sections they are handed.
"""
