"""The architect across two processes (gloo, CPU) against the same averaged formulas computed in
one process: each rank's shard, gradients averaged over the ranks, BatchNorm statistics per
shard, alphas identical on every rank."""
import copy
import datetime
import os
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import darts_fast

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)
ETA, WORLD, STEPS = 0.025, 2, 2


def network():
    torch.manual_seed(0)
    return darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2).double()


def shard(step, rank):
    """(input_train, target_train, input_valid, target_valid) of one rank at one step."""
    g = torch.Generator().manual_seed(100 * step + rank)
    return [torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (3,), generator=g),
            torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (3,), generator=g)]


SCENARIOS = {"second-order-group": (True, False), "second-order-ddp": (True, True),
             "first-order-ddp": (False, True)}  # name: (unrolled, model wrapped in DDP)


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)  # two processes on the cores: spinning thread pools would fight
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        for name, (unrolled, wrap) in SCENARIOS.items():
            model = network()
            optimizer = torch.optim.SGD(model.parameters(), ETA, momentum=ARGS.momentum,
                                        weight_decay=ARGS.weight_decay)
            architect = darts_fast.Architect(
                nn.parallel.DistributedDataParallel(model) if wrap else model, ARGS,
                process_group=None if wrap else dist.group.WORLD)
            for step in range(STEPS):
                architect.step(*shard(step, rank), ETA, optimizer, unrolled)
            torch.save({"alphas": [a.detach() for a in model.arch_parameters()],
                        "buffers": [b.clone() for b in model.buffers()],
                        "weights": [p.detach().clone() for p in model.parameters()]},
                       os.path.join(out_dir, f"{name}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Every scenario, run once by two processes (one start-up for all)."""
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return folder


def mean(per_rank):
    return [sum(ts) / len(ts) for ts in zip(*per_rank)]


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def oracle(unrolled):
    """The averaged formulas, step by step, on one model per rank (shared weights and alphas,
    separate BatchNorm statistics)."""
    models = [network() for _ in range(WORLD)]
    alphas = models[0].arch_parameters()
    adam = torch.optim.Adam(alphas, lr=ARGS.arch_learning_rate, betas=(0.5, 0.999),
                            weight_decay=ARGS.arch_weight_decay)
    for step in range(STEPS):
        data = [shard(step, r) for r in range(WORLD)]
        if not unrolled:
            hyper = mean([grads(m._loss(d[2], d[3]), m.arch_parameters())
                          for m, d in zip(models, data)])
        else:
            w = [p.detach().clone() for p in models[0].parameters()]
            g_w = mean([grads(m._loss(d[0], d[1]), list(m.parameters()))
                        for m, d in zip(models, data)])
            w_virtual = [wi - ETA * (gi + ARGS.weight_decay * wi) for wi, gi in zip(w, g_w)]
            at_virtual = []
            for m, d in zip(models, data):
                unrolled_model = copy.deepcopy(m)  # scratch BatchNorm statistics, as the original
                with torch.no_grad():
                    for p, wv in zip(unrolled_model.parameters(), w_virtual):
                        p.copy_(wv)
                at_virtual.append(grads(unrolled_model._loss(d[2], d[3]),
                                        unrolled_model.arch_parameters()
                                        + list(unrolled_model.parameters())))
            at_virtual = mean(at_virtual)
            dalpha, v = at_virtual[:len(alphas)], at_virtual[len(alphas):]
            r = 0.01 / torch.cat([t.reshape(-1) for t in v]).norm()
            perturbed = []
            for sign in (1, -1):
                per_rank = []
                for m, d in zip(models, data):
                    with torch.no_grad():
                        for p, wi, vi in zip(m.parameters(), w, v):
                            p.copy_(wi + sign * r * vi)
                    per_rank.append(grads(m._loss(d[0], d[1]), m.arch_parameters()))
                perturbed.append(mean(per_rank))
            for m in models:
                with torch.no_grad():
                    for p, wi in zip(m.parameters(), w):
                        p.copy_(wi)
            hyper = [d - ETA * (gp - gn) / (2 * r) for d, gp, gn in zip(dalpha, *perturbed)]
        adam.zero_grad()
        for a, h in zip(alphas, hyper):
            a.grad = h
        adam.step()
        for m in models[1:]:
            with torch.no_grad():
                for a, a0 in zip(m.arch_parameters(), alphas):
                    a.copy_(a0)
    return models


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_equal_the_averaged_formulas(two_process_runs, name):
    ranks = [torch.load(two_process_runs / f"{name}-rank{r}.pt") for r in range(WORLD)]
    models = oracle(unrolled=SCENARIOS[name][0])
    for a, b in zip(ranks[0]["alphas"], ranks[1]["alphas"]):
        assert torch.equal(a, b)  # every rank takes the same alpha step
    for r, (saved, model) in enumerate(zip(ranks, models)):
        for got, expected in zip(saved["alphas"], model.arch_parameters()):
            assert torch.allclose(got, expected, rtol=0, atol=1e-12), r
        for got, expected in zip(saved["buffers"], model.buffers()):  # statistics per shard
            assert torch.allclose(got.double(), expected.double(), rtol=1e-10, atol=1e-12), r
        for got, expected in zip(saved["weights"], model.parameters()):
            assert torch.equal(got, expected.detach())  # restored bit for bit
