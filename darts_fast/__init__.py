"""darts_fast: fused kernels and drop-in classes for DARTS architecture search.

Drop-in use in the original DARTS code: replace ``from model_search import MixedOp`` by
``from darts_fast import MixedOp`` and ``from architect import Architect`` by
``from darts_fast import Architect``. The command line lives apart, in ``darts_fast.cli``.
"""
from . import kernels
from .architect import Architect
from .gdas import GDASNetwork
from .genotypes import DARTS, DARTS_V1, DARTS_V2, PRIMITIVES, Genotype
from .mixed_op import MixedOp
from .pc_darts import PartialChannelMixedOp, PCNetwork
from .search_model import Cell, Network
from .search_step import SearchStep
from .sync_batch_norm import SyncBatchNorm2d

__all__ = [
    "Architect", "Cell", "DARTS", "DARTS_V1", "DARTS_V2", "GDASNetwork", "Genotype", "MixedOp",
    "Network", "PCNetwork", "PRIMITIVES", "PartialChannelMixedOp", "SearchStep", "SyncBatchNorm2d",
    "kernels",
]
__version__ = "0.1.0"
