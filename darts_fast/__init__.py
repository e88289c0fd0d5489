"""darts_fast: fused kernels and drop-in classes for DARTS architecture search.

Drop-in use in the original DARTS code: replace ``from model_search import MixedOp`` by
``from darts_fast import MixedOp`` and ``from architect import Architect`` by
``from darts_fast import Architect``; in the recurrent search (``rnn/``), ``model.RNNModelSearch``
by ``darts_fast.RNNModelSearch`` and ``from architect import Architect`` by ``from darts_fast
import RNNArchitect as Architect``. The command line lives apart, in ``darts_fast.cli``.
"""
from . import kernels
from .export import load
from .methods.gdas import GDASNetwork
from .methods.pc_darts import PartialChannelMixedOp, PCNetwork
from .methods.proxyless import ProxylessArchitect, ProxylessNetwork
from .search.architect import Architect
from .search.rnn_architect import RNNArchitect
from .search.step import SearchStep
from .search.sync_batch_norm import SyncBatchNorm2d
from .spaces.cnn.genotypes import DARTS, DARTS_V1, DARTS_V2, PRIMITIVES, Genotype
from .spaces.cnn.mixed_op import MixedOp
from .spaces.cnn.network import Cell, Network
from .spaces.cnn.single_path import SinglePathNetwork
from .spaces.rnn.search_model import RNNModelSearch

__all__ = [
    "Architect", "Cell", "DARTS", "DARTS_V1", "DARTS_V2", "GDASNetwork", "Genotype", "MixedOp",
    "Network", "PCNetwork", "PRIMITIVES", "PartialChannelMixedOp", "ProxylessArchitect",
    "ProxylessNetwork", "RNNArchitect", "RNNModelSearch", "SearchStep", "SinglePathNetwork",
    "SyncBatchNorm2d", "kernels", "load",
]
__version__ = "0.1.0"
