"""Drop-ins for other DARTS code bases, computed on darts_fast's fused kernels.

``darts_fast.compat.ptdarts``: khanrc/pt.darts' search network and architect (see
``docs/ptdarts.md``).
"""
