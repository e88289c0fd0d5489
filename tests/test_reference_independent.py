"""darts_fast.reference is code of its own: no class shared with the fused networks, no import of
their cell, network or method code; and its three genotype rules give hand-computed genotypes on
a fixed table of alphas (and betas)."""
import ast
import inspect
import math
import pathlib

import pytest
import torch
import torch.nn as nn

import darts_fast
from darts_fast import reference
from darts_fast.methods import gdas, pc_darts, pdarts
from darts_fast.reference import darts as reference_darts
from darts_fast.reference import gdas as reference_gdas
from darts_fast.reference import pc_darts as reference_pc_darts
from darts_fast.search import architect
from darts_fast.spaces.alphas import LeafAlphas
from darts_fast.spaces.cnn import mixed_op, network

FAST_MODULES = [network, mixed_op, pc_darts, gdas, pdarts, architect]
REFERENCE_CLASSES = [reference.MixedOp, reference.Network, reference.Architect,
                     reference.PartialChannelMixedOp, reference.PCNetwork, reference.GDASNetwork,
                     reference_darts.Cell, reference_pc_darts.PCCell, reference_gdas.GDASCell,
                     reference.PDARTSMixedOp, reference.PDARTSCell, reference.PDARTSNetwork]
# What the reference may import: the leaf candidate operations, the genotype names, the outputs'
# table type, its own modules, and libraries.
# The language model around the recurrent search cell (spaces.rnn.model) and the alphas' device
# moves (spaces.alphas) compute nothing the fused code fuses.
ALLOWED_IMPORTS = {"..spaces.cnn.operations", "..spaces.cnn.genotypes",
                   "..spaces.cnn.architecture", "..spaces.rnn.genotypes", "..spaces.rnn.model",
                   "..spaces.alphas", ".architect", ".darts",
                   ".gdas", ".pc_darts", ".pdarts", ".rnn", ".rnn_architect",
                   "functools", "math", "numpy", "torch", "torch.nn", "torch.nn.functional"}


def fast_classes():
    return {cls for module in FAST_MODULES for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__.startswith("darts_fast.") and cls is not LeafAlphas}


@pytest.mark.parametrize("cls", REFERENCE_CLASSES, ids=lambda c: c.__name__)
def test_no_class_shared_with_the_fused_code(cls):
    fast = fast_classes()
    assert {darts_fast.Network, darts_fast.MixedOp, darts_fast.GDASNetwork} <= fast
    assert not set(inspect.getmro(cls)) & fast
    assert all(c.__module__.startswith(("darts_fast.reference.", "torch.", "builtins"))
               for c in inspect.getmro(cls) if c is not LeafAlphas)


@pytest.mark.parametrize("cls, kwargs", [(reference.Network, {}), (reference.PCNetwork, {}),
                                         (reference.GDASNetwork, {"conv_bias": True}),
                                         (reference.PDARTSNetwork, {"p": 0.2})],
                         ids=["darts", "pc-darts", "gdas", "pdarts"])
def test_every_module_is_the_references_a_leaf_operation_or_torchs(cls, kwargs):
    model = cls(8, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2, **kwargs)
    for name, module in model.named_modules():
        where = type(module).__module__
        assert where.startswith(("darts_fast.reference.", "torch.")) or \
            where == "darts_fast.spaces.cnn.operations", (name, where)


@pytest.mark.parametrize("path", sorted(pathlib.Path(reference.__file__).parent.glob("*.py")),
                         ids=lambda p: p.name)
def test_imports_nothing_but_the_leaf_operations_and_genotype_names(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


# --- the genotype rules on a fixed table (steps=2: rows 0<-0, 0<-1, 1<-0, 1<-1, 1<-2) ---------
# Columns: none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5,
# dil_conv_3x3, dil_conv_5x5. Softmax weights of the normal rows, by hand:
#   row 0: sep_conv_3x3 e^2 / (e^2 + 7) = 0.514, the others 0.069
#   row 1: dil_conv_5x5 e^5 / (e^5 + 7) = 0.955
#   row 2: none e^10 wins; max_pool_3x3 e^5 / (e^10 + e^5 + 6) = 0.0067, the others 4.5e-5
#   row 3: skip_connect and sep_conv_3x3 tie, e^3 / (2 e^3 + 6) = 0.435 each
#   row 4: avg_pool_3x3 and sep_conv_5x5 tie, e^4 / (2 e^4 + 6) = 0.474 each
# The reduction rows are all 0: 1/8 everywhere, every comparison a tie.
NORMAL = [[0, 0, 0, 0, 2, 0, 0, 0],
          [0, 0, 0, 0, 0, 0, 0, 5],
          [10, 5, 0, 0, 0, 0, 0, 0],
          [0, 0, 0, 3, 3, 0, 0, 0],
          [0, 0, 4, 0, 0, 4, 0, 0]]
# PC-DARTS' edge factors, per node the softmax of its betas:
#   node 0: softmax(4, 0) = 0.982, 0.018: rows 0 and 1 rank 0.514 * 0.982 = 0.50 over
#           0.955 * 0.018 = 0.017;
#   node 1: softmax(10, 0, 0) = 0.99991, 4.5e-5, 4.5e-5: rows 2, 3, 4 rank 0.0067, 2.0e-5, 2.2e-5.
BETAS_NORMAL = [4, 0, 10, 0, 0]

EXPECTED = {
    # Per node the 2 edges whose best non-none weight is largest, each with its best candidate
    # (ties: the lower input, the first candidate).
    "darts": ([("dil_conv_5x5", 1), ("sep_conv_3x3", 0),
               ("avg_pool_3x3", 2), ("skip_connect", 1)],
              [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0),
               ("max_pool_3x3", 1)]),
    # The same rule on the weights times the edge factors.
    "pc-darts": ([("sep_conv_3x3", 0), ("dil_conv_5x5", 1),
                  ("max_pool_3x3", 0), ("avg_pool_3x3", 2)],
                 [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0),
                  ("max_pool_3x3", 1)]),
    # Per node the 2 heaviest (candidate, input) pairs (ties: inputs, then candidates, in order):
    # node 1 takes both of row 4's tied candidates.
    "gdas": ([("dil_conv_5x5", 1), ("sep_conv_3x3", 0),
              ("avg_pool_3x3", 2), ("sep_conv_5x5", 2)],
             [("max_pool_3x3", 0), ("avg_pool_3x3", 0), ("max_pool_3x3", 0),
              ("avg_pool_3x3", 0)]),
}
NETWORKS = {"darts": reference.Network, "pc-darts": reference.PCNetwork,
            "gdas": reference.GDASNetwork}


def test_the_hand_computed_weights():
    """The numbers the comments above rank, recomputed from their formulas."""
    weights = torch.softmax(torch.tensor(NORMAL, dtype=torch.float64), dim=-1)
    e = math.e
    for (row, k), value in {(0, 4): e ** 2 / (e ** 2 + 7), (1, 7): e ** 5 / (e ** 5 + 7),
                            (2, 1): e ** 5 / (e ** 10 + e ** 5 + 6),
                            (3, 3): e ** 3 / (2 * e ** 3 + 6), (4, 5): e ** 4 / (2 * e ** 4 + 6)
                            }.items():
        assert weights[row, k].item() == pytest.approx(value, rel=1e-12)
    assert weights[3, 3] == weights[3, 4] and weights[4, 2] == weights[4, 5]


@pytest.mark.parametrize("method", EXPECTED)
def test_genotype_rules_give_the_hand_computed_genotype(method):
    model = NETWORKS[method](8, 10, 3, None, steps=2, multiplier=2)
    with torch.no_grad():
        model.alphas_normal.copy_(torch.tensor(NORMAL, dtype=torch.float32))
        model.alphas_reduce.zero_()
        if method == "pc-darts":
            model.betas_normal.copy_(torch.tensor(BETAS_NORMAL, dtype=torch.float32))
            model.betas_reduce.zero_()
    genotype = model.genotype()
    assert (genotype.normal, genotype.reduce) == EXPECTED[method]
    assert list(genotype.normal_concat) == list(genotype.reduce_concat) == [2, 3]
