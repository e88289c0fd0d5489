"""Parameters, MACs and latency of candidates and genotypes (darts_fast.spaces.cnn.resources),
against counts taken from the networks themselves: ``numel`` of their parameters and
``FlopCounterMode`` on real forward passes."""
import functools
import json
import math
import random

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from darts_fast.methods.pc_darts import PCNetwork
from darts_fast.reference.darts import MixedOp as ReferenceMixedOp
from darts_fast.reference.pc_darts import PartialChannelMixedOp as ReferencePCMixedOp
from darts_fast.spaces.cnn import resources
from darts_fast.spaces.cnn.eval_model import NetworkCIFAR
from darts_fast.spaces.cnn.genotypes import DARTS_V2, PRIMITIVES, Genotype
from darts_fast.spaces.cnn.network import Network

# 'none' among them: random search with weight sharing draws it into its genotypes.
OPERATIONS = list(PRIMITIVES) + ["sep_conv_7x7", "conv_7x1_1x7"]


def network_count(genotype, C, layers, num_classes=10, image_size=32, auxiliary=False):
    """(trainable parameters, MACs of one image in eval mode) of the built network."""
    net = NetworkCIFAR(C, num_classes, layers, auxiliary, genotype).eval()
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, image_size, image_size))
    return params, counter.get_total_flops() // 2


def random_genotype(rng, steps):
    def cell():
        return [(rng.choice(OPERATIONS), rng.randrange(node + 2))
                for node in range(steps) for _ in range(2)]
    concat = sorted(rng.sample(range(2, steps + 2), rng.randint(1, steps)))
    return Genotype(cell(), concat, cell(), sorted(rng.sample(range(2, steps + 2), 2)))


def test_darts_v2_published_size():
    cost = resources.genotype_cost(DARTS_V2)
    assert (cost.params, cost.flops) == network_count(DARTS_V2, 36, 20)
    assert round(cost.params / 1e6, 1) == 3.3  # DARTS' published 3.3M, head excluded
    assert resources.genotype_cost(DARTS_V2, auxiliary=True).params == \
        network_count(DARTS_V2, 36, 20, auxiliary=True)[0]


@pytest.mark.parametrize("C, layers, num_classes, image_size, auxiliary, steps", [
    (8, 5, 10, 32, False, 4), (12, 6, 100, 32, True, 3), (6, 3, 7, 16, True, 5),
    (10, 1, 10, 8, False, 2), (16, 8, 10, 24, False, 4)])
def test_random_genotypes_match_network(C, layers, num_classes, image_size, auxiliary, steps):
    rng = random.Random(C * 1000 + layers)
    for _ in range(2):
        genotype = random_genotype(rng, steps)
        cost = resources.genotype_cost(genotype, C, layers, num_classes, image_size, auxiliary)
        assert (cost.params, cost.flops) == network_count(genotype, C, layers, num_classes,
                                                          image_size, auxiliary), genotype


def test_cost_table_is_kept_and_leaves_the_rng_alone():
    state = torch.random.get_rng_state()
    table = resources.cost_table(C=14, layers=4)
    assert table is resources.cost_table(14, 4, 10, 32, False)
    table.cost(DARTS_V2)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("genotype, match", [
    (DARTS_V2._replace(normal=[("conv_9x9", 0)] + DARTS_V2.normal[1:]), "genotype.*conv_9x9"),
    (DARTS_V2._replace(normal=DARTS_V2.normal[:3]), "genotype"),
    (DARTS_V2._replace(normal=[("sep_conv_3x3", 2)] + DARTS_V2.normal[1:]), "genotype.*input"),
    (DARTS_V2._replace(normal=[("sep_conv_3x3",)] + DARTS_V2.normal[1:]), "genotype"),
    (DARTS_V2._replace(normal=[("sep_conv_3x3", 0.5)] + DARTS_V2.normal[1:]), "genotype"),
    (DARTS_V2._replace(reduce_concat=[0, 1]), "genotype.*reduce_concat"),
    ({"normal": []}, "genotype.*Genotype")])
def test_malformed_genotypes_are_refused(genotype, match):
    with pytest.raises(ValueError, match=match):
        resources.genotype_cost(genotype, C=8, layers=3)


@pytest.mark.parametrize("options, match", [
    (dict(C=0), "C"), (dict(layers=2.0), "layers"), (dict(image_size=30), "image_size"),
    (dict(layers=1, auxiliary=True), "auxiliary"), (dict(auxiliary="yes"), "auxiliary")])
def test_bad_configurations_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        resources.genotype_cost(DARTS_V2, **options)


def hook_counts(network):
    """The table by hand: each candidate's parameters and the MACs it performs in a real forward
    pass (the counter's total before and after it), summed per cell kind; ``fixed``, the
    whole network's parameters and MACs less the candidates'."""
    edges, candidates = network.alphas_normal.shape
    table = {kind: {"macs": torch.zeros(edges, candidates, dtype=torch.float64),
                    "params": torch.zeros(edges, candidates, dtype=torch.float64)}
             for kind in ("normal", "reduce")}
    counter, before, hooks = FlopCounterMode(display=False), {}, []
    for cell in network.cells:
        kind = table["reduce" if cell.reduction else "normal"]
        for e, mixed in enumerate(cell._ops):
            for k, op in enumerate(mixed._ops):
                kind["params"][e, k] += sum(p.numel() for p in op.parameters())

                def pre(module, args):
                    before[module] = counter.get_total_flops()

                def post(module, args, out, kind=kind, e=e, k=k):
                    kind["macs"][e, k] += (counter.get_total_flops() - before[module]) // 2
                hooks += [op.register_forward_pre_hook(pre), op.register_forward_hook(post)]
    network.eval()
    with torch.no_grad(), counter:
        network(torch.randn(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    total_params = sum(p.numel() for p in network.parameters())
    table["fixed"] = {
        "params": total_params - sum(table[k]["params"].sum().item() for k in ("normal", "reduce")),
        "macs": counter.get_total_flops() // 2 - sum(table[k]["macs"].sum().item()
                                                     for k in ("normal", "reduce"))}
    return table


def assert_same_costs(table, expected):
    for kind in ("normal", "reduce"):
        for key in ("macs", "params"):
            assert table[kind][key].dtype == torch.float64
            assert torch.equal(table[kind][key], expected[kind][key]), (kind, key)
    assert table["fixed"] == pytest.approx(expected["fixed"], abs=0)


@pytest.mark.parametrize("layers", [3, 5])
def test_supernet_costs_match_a_forward_pass(layers):
    criterion = nn.CrossEntropyLoss()
    reference = Network(4, 10, layers, criterion, mixed_op=ReferenceMixedOp)
    expected = hook_counts(reference)
    assert expected["normal"]["macs"][:, 0].eq(0).all()  # 'none'
    assert_same_costs(resources.supernet_costs(reference), expected)
    fused = Network(4, 10, layers, criterion)
    table = resources.supernet_costs(fused)
    assert_same_costs(table, expected)
    assert table["candidates"] == tuple(PRIMITIVES)
    assert table["cells"] == tuple("reduce" if c.reduction else "normal" for c in fused.cells)
    assert fused.training  # its modes are given back


def test_supernet_costs_partial_channels():
    criterion = nn.CrossEntropyLoss()
    reference = Network(8, 10, 3, criterion,
                        mixed_op=functools.partial(ReferencePCMixedOp, k=4))
    assert_same_costs(resources.supernet_costs(PCNetwork(8, 10, 3, criterion, k=4)),
                      hook_counts(reference))


def test_expected_cost_and_its_gradient():
    table = resources.supernet_costs(Network(4, 10, 3, nn.CrossEntropyLoss()))
    gen = torch.Generator().manual_seed(0)
    alphas = [torch.randn(14, 8, generator=gen, dtype=torch.float64, requires_grad=True)
              for _ in range(2)]
    by_hand = table["fixed"]["macs"]
    for kind, a in zip(("normal", "reduce"), alphas):
        for e, row in enumerate(a.tolist()):
            z = sum(math.exp(v) for v in row)
            by_hand += sum(math.exp(v) / z * table[kind]["macs"][e, k].item()
                           for k, v in enumerate(row))
    value = resources.expected_cost(*alphas, table, "macs")
    assert value.dim() == 0 and value.dtype == torch.float64
    assert value.item() == pytest.approx(by_hand, rel=1e-12)
    # In units of 1e5 MACs: the finite differences of ~1e6 lose too many digits.
    scaled = {"fixed": {"macs": table["fixed"]["macs"] / 1e5},
              **{kind: {"macs": table[kind]["macs"] / 1e5} for kind in ("normal", "reduce")}}
    assert torch.autograd.gradcheck(lambda a, b: resources.expected_cost(a, b, scaled, "macs"),
                                    alphas)
    with pytest.raises(ValueError, match="key"):
        resources.expected_cost(*alphas, table, "seconds")
    with pytest.raises(ValueError, match="alphas_reduce"):
        resources.expected_cost(alphas[0], alphas[1][:, :4], table, "params")


@pytest.fixture(scope="module")
def latency():
    torch.manual_seed(0)
    network = Network(4, 10, 3, nn.CrossEntropyLoss())
    state = {k: v.clone() for k, v in network.state_dict().items()}
    table = resources.measure_latency(network, repeats=2, warmup=1)
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())
    return network, table


def test_latency_table(latency):
    network, table = latency
    for kind in ("normal", "reduce"):
        seconds = table[kind]["seconds"]
        assert seconds.shape == (14, 8) and seconds.dtype == torch.float64
        assert seconds[:, 0].eq(0).all()  # 'none'
        assert torch.isfinite(seconds).all() and seconds[:, 1:].gt(0).all()
    assert 0 < table["fixed"]["seconds"] < math.inf
    assert table["shapes"][0][0] == (1, 4, 32, 32) and isinstance(table["device"], str)
    assert network.training


def test_latency_table_file(latency, tmp_path):
    network, table = latency
    path = tmp_path / "latency.json"
    resources.save_table(path, table, {"note": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["latency.json"]
    loaded = resources.load_table(path, network)
    for kind in ("normal", "reduce"):
        assert torch.equal(loaded[kind]["seconds"], table[kind]["seconds"])
    for key in ("candidates", "edges", "cells", "shapes", "device", "fixed"):
        assert loaded[key] == table[key], key
    assert loaded["meta"] == {"note": "test"}
    criterion = nn.CrossEntropyLoss()
    for other, match in ((Network(4, 10, 3, criterion, primitives=PRIMITIVES[:4]), "candidates"),
                         (Network(4, 10, 3, criterion, steps=3), "edges"),
                         (Network(4, 10, 5, criterion), "layers"),
                         (Network(6, 10, 3, criterion), "shapes")):
        with pytest.raises(ValueError, match=match):
            resources.load_table(path, other)
    with pytest.raises(ValueError, match="meta"):
        resources.save_table(tmp_path / "x.json", table, {"bad": object()})


def test_corrupted_latency_files(latency, tmp_path):
    network, table = latency
    path = tmp_path / "latency.json"
    resources.save_table(path, table)
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match="invalid JSON"):
        resources.load_table(path, network)
    path.write_text(json.dumps({"normal": []}))
    with pytest.raises(ValueError, match="not a darts_fast resource table"):
        resources.load_table(path, network)
    doc = json.loads(text)
    doc["normal"]["seconds"] = doc["normal"]["seconds"][:3]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="normal seconds"):
        resources.load_table(path, network)
    del doc["shapes"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="malformed.*shapes"):
        resources.load_table(path, network)


def test_supernet_costs_refuse_what_cannot_run():
    network = Network(4, 10, 3, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="image_size"):
        resources.supernet_costs(network, image_size=7)
    with pytest.raises(ValueError, match="network"):
        resources.supernet_costs(nn.Linear(2, 2))
