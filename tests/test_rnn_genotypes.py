"""The recurrent space's genotypes (darts_fast.spaces.rnn.genotypes): the published cells, the
text, dict and JSON round trips, and each refusal naming what is wrong."""
import json

import numpy as np
import pytest
import torch

from darts_fast.reference.rnn import RNNModelSearch
from darts_fast.spaces.cnn.genotypes import DARTS_V2 as CNN_DARTS_V2
from darts_fast.spaces.genotype_text import GenotypeError
from darts_fast.spaces.cnn.genotypes import genotype_text as cnn_genotype_text
from darts_fast.spaces.rnn import genotypes
from darts_fast.spaces.rnn.genotypes import (CONCAT, DARTS, DARTS_V1, DARTS_V2, ENAS, NAMED,
                                             PRIMITIVES, STEPS, Genotype, genotype_from_dict,
                                             genotype_text, genotype_to_dict, parse_genotype,
                                             validate_genotype)

# The original's rnn/genotypes.py line, as printed there (concat a range).
ORIGINAL_V2 = ("Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), "
               "('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))")


def test_the_space_and_the_published_cells():
    assert Genotype._fields == ("recurrent", "concat")
    assert PRIMITIVES == ["none", "tanh", "relu", "sigmoid", "identity"]
    assert (STEPS, CONCAT) == (8, 8)
    assert DARTS is DARTS_V2 and NAMED == {"DARTS": DARTS_V2, "DARTS_V1": DARTS_V1,
                                           "DARTS_V2": DARTS_V2, "ENAS": ENAS}
    assert DARTS_V1.recurrent[5] == ("identity", 1) and DARTS_V2.recurrent[5] == ("sigmoid", 5)
    assert len(ENAS.recurrent) == 11 and ENAS.concat == [2, 5, 6, 9, 10, 11]
    for genotype in NAMED.values():
        validate_genotype(genotype)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_round_trips(name, tmp_path):
    genotype = NAMED[name]
    d = genotype_to_dict(genotype)
    assert json.loads(json.dumps(d)) == d
    assert genotype_from_dict(d) == genotype
    assert parse_genotype(genotype_text(genotype)) == genotype
    assert parse_genotype(json.dumps(d)) == genotype
    assert parse_genotype(f"  {name}\n") is genotype
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(d))
    assert parse_genotype(str(path)) == genotype
    path = tmp_path / "genotype.txt"
    path.write_text(genotype_text(genotype) + "\n")
    assert parse_genotype(str(path)) == genotype


def test_text_and_dict_forms():
    assert genotype_text(DARTS_V2) == ORIGINAL_V2.replace("range(1, 9)",
                                                          "[1, 2, 3, 4, 5, 6, 7, 8]")
    assert genotype_to_dict(Genotype([("relu", 0), ("tanh", 1)], range(1, 3))) == {
        "recurrent": [["relu", 0], ["tanh", 1]], "concat": [1, 2]}
    # The original's own text, its positional form; tuples and numpy integers are normalised.
    assert parse_genotype(ORIGINAL_V2) == DARTS_V2
    assert parse_genotype("Genotype([('relu', 0), ('tanh', 0)], [0, 2])") == Genotype(
        recurrent=[("relu", 0), ("tanh", 0)], concat=[0, 2])
    parsed = genotype_from_dict({"recurrent": (("relu", np.int64(0)),), "concat": (1,)})
    assert parsed == Genotype([("relu", 0)], [1]) and type(parsed.recurrent[0][1]) is int


def test_the_search_models_genotype_round_trips():
    torch.manual_seed(0)
    genotype = RNNModelSearch(20, 4, 4, 4).genotype()
    assert genotype.concat == range(1, 9)
    parsed = parse_genotype(genotype_text(genotype))
    assert parsed.recurrent == genotype.recurrent and parsed.concat == list(range(1, 9))


REFUSED_DICTS = [
    ([("relu", 0)], "must be an object with recurrent and concat; got list"),
    ({"recurrent": [["relu", 0]]}, "lacks concat"),
    ({"recurrent": [], "concat": [0]}, "recurrent must be a non-empty list"),
    ({"recurrent": "relu", "concat": [0]}, "recurrent must be a non-empty list"),
    ({"recurrent": [["relu"]], "concat": [1]}, r"node 1 must be an \(activation, predecessor\)"),
    ({"recurrent": [["relu", True]], "concat": [1]}, "node 1 must be an"),
    ({"recurrent": [["relu", "0"]], "concat": [1]}, "node 1 must be an"),
    ({"recurrent": [["relu", 0, 1]], "concat": [1]}, "node 1 must be an"),
    ({"recurrent": [["gelu", 0]], "concat": [1]},
     r"node 1 has unknown activation 'gelu' \(known: tanh, relu, sigmoid, identity\)"),
    ({"recurrent": [["none", 0]], "concat": [1]}, "node 1 has unknown activation 'none'"),
    ({"recurrent": [["relu", 0], ["tanh", 2]], "concat": [1]},
     r"node 2 takes state 2, but only states 0\.\.1 exist before it"),
    ({"recurrent": [["relu", -1]], "concat": [1]}, "node 1 takes state -1"),
    ({"recurrent": [["relu", 0]], "concat": []}, "concat must be a non-empty list"),
    ({"recurrent": [["relu", 0]], "concat": ["1"]}, "concat must be a non-empty list"),
    ({"recurrent": [["relu", 0]], "concat": 1}, "concat must be a non-empty list"),
    ({"recurrent": [["relu", 0], ["tanh", 1]], "concat": [0, 3]},
     r"concat names states \[3\], but the cell has states 0\.\.2"),
    ({"recurrent": [["relu", 0]], "concat": [1, 1]}, r"concat names a state twice: \[1, 1\]"),
]


@pytest.mark.parametrize("d, message", REFUSED_DICTS)
def test_refused_dicts(d, message):
    with pytest.raises(GenotypeError, match=message):
        genotype_from_dict(d)
    if isinstance(d, dict) and len(d) == 2:  # the same fault, by JSON text and by validation
        with pytest.raises(GenotypeError, match=message):
            parse_genotype(json.dumps(d))
        with pytest.raises(GenotypeError, match=message):
            validate_genotype(Genotype(**d))


REFUSED_SPECS = [
    ("DARTS_V3", r"'DARTS_V3' is neither a file, a known name \(DARTS, DARTS_V1, DARTS_V2, "
                 r"ENAS\) nor Genotype\(\.\.\.\) text"),
    ("{recurrent", "genotype JSON is malformed"),
    ("{}", "genotype lacks recurrent, concat"),
    ("Genotype(recurrent=[", "genotype text is malformed: SyntaxError"),
    ("Genotype(recurrent=[('relu', 0)], concat=[1]) + 1", "expected a single Genotype"),
    ("Genotype(recurrent=[('relu', 0)], concat=[1], normal=[])", "unknown argument normal"),
    ("Genotype([('relu', 0)], [1], [2])", "3 positional arguments, expected at most 2"),
    ("Genotype([('relu', 0)], [1], concat=[1])", "concat given twice"),
    ("Genotype(**{'recurrent': [], 'concat': []})", r"\*\* arguments are not literals"),
    ("Genotype(recurrent=[('relu', 0)], concat=range(0, 1000000))", "1000000 nodes in a range"),
    ("Genotype(recurrent=[('relu', x)], concat=[1])", "genotype text is malformed: ValueError"),
    (cnn_genotype_text(CNN_DARTS_V2), "unknown argument normal"),
]


@pytest.mark.parametrize("spec, message", REFUSED_SPECS)
def test_refused_specs(spec, message):
    with pytest.raises(GenotypeError, match=message):
        parse_genotype(spec)


def test_refused_files_and_arguments(tmp_path):
    binary = tmp_path / "genotype.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GenotypeError, match="cannot be read as text"):
        parse_genotype(str(binary))
    bad = tmp_path / "genotype.json"
    bad.write_text('{"recurrent": [["relu", 0]], "concat": [4]}')
    with pytest.raises(GenotypeError, match="concat names states"):
        parse_genotype(str(bad))
    with pytest.raises(GenotypeError, match="genotype spec must be a string"):
        parse_genotype(DARTS_V2)
    with pytest.raises(GenotypeError, match="recurrent must be a non-empty list"):
        validate_genotype(Genotype(recurrent=None, concat=[1]))
    assert issubclass(genotypes.GenotypeError, ValueError)
