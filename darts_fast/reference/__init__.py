"""DARTS (its convolutional and its recurrent space), PC-DARTS and GDAS as their authors wrote
them, in plain PyTorch: the test oracle and the benchmark baseline.

Each method's mixed op, cell, network and genotype rule is written here from its authors' code
(``darts``: quark0/darts; ``pc_darts``: yuhuixu1993/PC-DARTS; ``gdas``: D-X-Y/AutoDL-Projects;
``pdarts``: chenxin061/pdarts, with its stage bookkeeping),
sharing with darts_fast only the leaf candidate operations (``spaces.cnn.operations``), the
genotype names (``spaces.cnn.genotypes``) and the outputs' table type
(``spaces.cnn.architecture.ArchitectureTable``), so that the fused networks are tested against
code that is not their own. ``Architect`` is DARTS' original architect. The recurrent space
(``rnn``, ``rnn_architect``: quark0/darts ``rnn/``) shares its genotype names
(``spaces.rnn.genotypes``) and the language model around the search cell
(``spaces.rnn.model``: embedding, dropouts, tied decoder), which nothing fuses. The alphas'
device moves (``spaces.alphas``) are shared by all. Each module names where it departs from its
authors' code.
"""
from .architect import Architect
from .darts import MixedOp, Network
from .gdas import GDASNetwork
from .pc_darts import PartialChannelMixedOp, PCNetwork
from .pdarts import PDARTSCell, PDARTSMixedOp, PDARTSNetwork
from .rnn import DARTSCell, DARTSCellSearch, RNNModel, RNNModelSearch
from .rnn_architect import RNNArchitect

__all__ = ["Architect", "DARTSCell", "DARTSCellSearch", "GDASNetwork", "MixedOp", "Network",
           "PCNetwork", "PDARTSCell", "PDARTSMixedOp", "PDARTSNetwork", "PartialChannelMixedOp",
           "RNNArchitect", "RNNModel", "RNNModelSearch"]
