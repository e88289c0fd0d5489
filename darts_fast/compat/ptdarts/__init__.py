"""A drop-in for khanrc/pt.darts' search on darts_fast's fused kernels. In pt.darts' search.py,

    from models.search_cnn import SearchCNNController
    from architect import Architect

become ``from darts_fast.compat.ptdarts import Architect, SearchCNNController`` (and
``import genotypes as gt``: ``from darts_fast.compat.ptdarts import genotypes as gt``). The module
names, state_dict keys, alpha layout, initialisation and genotypes are pt.darts'; the numbers
too, within float rounding, but for the architect's finite difference, whose default is the
corrected formula (``finite_difference="ptdarts"`` gives pt.darts'; see ``architect``).
``to_darts_fast`` turns a found genotype into the one ``darts-fast train --genotype`` takes.
"""
from .architect import Architect
from .genotypes import PRIMITIVES, Genotype, from_darts_fast, from_str, parse, to_darts_fast
from .ops import MixedOp
from .search_cnn import SearchCell, SearchCNN, SearchCNNController

__all__ = [
    "Architect", "Genotype", "MixedOp", "PRIMITIVES", "SearchCNN", "SearchCNNController",
    "SearchCell", "from_darts_fast", "from_str", "parse", "to_darts_fast",
]
