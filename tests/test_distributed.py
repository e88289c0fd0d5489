"""The architect across two processes (gloo, CPU) against the same averaged formulas computed in
one process: each rank's shard, gradients averaged over the ranks, BatchNorm statistics per
shard, alphas identical on every rank; with SyncBatchNorm2d, the single-process search on the
concatenated batch."""
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

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)
ETA, WORLD, STEPS = 0.025, 2, 2


def network(fold_batch_norm=True):
    torch.manual_seed(0)
    return darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2,
                              fold_batch_norm=fold_batch_norm).double()


def shard(step, rank):
    """(input_train, target_train, input_valid, target_valid) of one rank at one step."""
    g = torch.Generator().manual_seed(100 * step + rank)
    return [torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (3,), generator=g),
            torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (3,), generator=g)]


SCENARIOS = {"second-order-group": (True, False), "second-order-ddp": (True, True),
             "first-order-ddp": (False, True)}  # name: (unrolled, model wrapped in DDP)
SEARCH_STEPS = 3  # whole search steps (architect and weight step) through SearchStep and DDP


class OneRankInfiniteLoss(nn.CrossEntropyLoss):
    """An infinite loss on rank 1 alone, with the gradients of the plain loss everywhere: only
    the loss says the step must be undone, and only on one rank."""

    def forward(self, logits, target):
        loss = super().forward(logits, target)
        return loss + float("inf") if dist.get_rank() == 1 else loss


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
        for unrolled in (False, True):
            model, step = search_step(unrolled, nn.CrossEntropyLoss())
            for s in range(SEARCH_STEPS):
                step(*shard(s, rank), ETA)
            alphas = model.arch_parameters()
            darts_fast.search.distributed.check_identical(alphas, dist.group.WORLD, "alphas")
            with torch.no_grad():  # one ulp of drift on one rank
                if rank == 1:
                    alphas[0].view(-1)[0] = torch.nextafter(alphas[0].view(-1)[0],
                                                            alphas[0].new_tensor(1.0))
            try:
                darts_fast.search.distributed.check_identical(alphas, dist.group.WORLD, "alphas")
                drift = None
            except RuntimeError as e:
                drift = str(e)
            torch.save({"alphas": [a.detach() for a in alphas],
                        "buffers": [b.clone() for b in model.buffers()],
                        "weights": [p.detach().clone() for p in model.parameters()],
                        "drift": drift},
                       os.path.join(out_dir, f"search-step-{int(unrolled)}-rank{rank}.pt"))
        for unrolled in (False, True):
            model, step = search_step(unrolled, nn.CrossEntropyLoss(), sync_batch_norm=True)
            for s in range(SEARCH_STEPS):
                step(*shard(s, rank), ETA)
            torch.save(tensors_of(model),
                       os.path.join(out_dir, f"sync-bn-{int(unrolled)}-rank{rank}.pt"))
        model, step = search_step(False, OneRankInfiniteLoss())
        before = [p.detach().clone() for p in model.parameters()]
        step(*shard(0, rank), ETA)
        torch.save({"kept": any(not torch.equal(p, b) for p, b in zip(model.parameters(), before)),
                    "skipped": int(step.skipped_steps)},
                   os.path.join(out_dir, f"skip-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def search_step(unrolled, criterion, sync_batch_norm=False):
    """A SearchStep over the DDP-wrapped network (BatchNorm statistics kept per rank, or taken
    over all ranks with ``sync_batch_norm``)."""
    model = network()
    if sync_batch_norm:
        model = darts_fast.SyncBatchNorm2d.convert(network(fold_batch_norm=False))
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), ETA, momentum=ARGS.momentum,
                                weight_decay=ARGS.weight_decay)
    return model, darts_fast.SearchStep(ddp, darts_fast.Architect(ddp, ARGS), optimizer,
                                        criterion, grad_clip=5.0, unrolled=unrolled)


def tensors_of(model):
    return {"alphas": [a.detach().clone() for a in model.arch_parameters()],
            "buffers": [b.clone() for b in model.buffers()],
            "weights": [p.detach().clone() for p in model.parameters()]}


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


def oracle(unrolled, steps=STEPS, weight_steps=False):
    """The averaged formulas, step by step, on one model per rank (shared weights and alphas,
    separate BatchNorm statistics); with ``weight_steps``, each architecture step is followed by
    the original's weight step on the averaged gradient (clipped to norm 5, SGD)."""
    models = [network() for _ in range(WORLD)]
    alphas = models[0].arch_parameters()
    adam = torch.optim.Adam(alphas, lr=ARGS.arch_learning_rate, betas=(0.5, 0.999),
                            weight_decay=ARGS.arch_weight_decay)
    sgd = torch.optim.SGD(models[0].parameters(), ETA, momentum=ARGS.momentum,
                          weight_decay=ARGS.weight_decay)
    for step in range(steps):
        data = [shard(step, r) for r in range(WORLD)]
        if not unrolled:
            hyper = mean([grads(m._loss(d[2], d[3]), m.arch_parameters())
                          for m, d in zip(models, data)])
        else:
            w = [p.detach().clone() for p in models[0].parameters()]
            g_w = mean([grads(m._loss(d[0], d[1]), list(m.parameters()))
                        for m, d in zip(models, data)])
            moment = [ARGS.momentum * sgd.state[p]["momentum_buffer"] if p in sgd.state else 0
                      for p in models[0].parameters()]  # the weight steps' momentum, if any
            w_virtual = [wi - ETA * (mi + gi + ARGS.weight_decay * wi)
                         for wi, gi, mi in zip(w, g_w, moment)]
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
        if weight_steps:
            data = [shard(step, r) for r in range(WORLD)]
            g_w = mean([grads(m._loss(d[0], d[1]), list(m.parameters()))
                        for m, d in zip(models, data)])
            for p, g in zip(models[0].parameters(), g_w):
                p.grad = g
            nn.utils.clip_grad_norm_(models[0].parameters(), 5.0)
            sgd.step()
            for m in models[1:]:
                with torch.no_grad():
                    for p, p0 in zip(m.parameters(), models[0].parameters()):
                        p.copy_(p0)
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


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_search_steps_through_ddp_equal_the_averaged_formulas(two_process_runs, unrolled):
    """Three whole search steps (SearchStep over DDP): alphas and weights equal on both ranks and
    equal to the single-process computation of the averaged formulas; statistics per shard."""
    ranks = [torch.load(two_process_runs / f"search-step-{int(unrolled)}-rank{r}.pt")
             for r in range(WORLD)]
    models = oracle(unrolled, steps=SEARCH_STEPS, weight_steps=True)
    for r, (saved, model) in enumerate(zip(ranks, models)):
        for got, expected in zip(saved["alphas"], model.arch_parameters()):
            expected = expected.detach()
            if r == 1:  # the one-ulp drift the worker added after the steps
                expected = expected.clone()
                expected.view(-1)[0] = torch.nextafter(expected.view(-1)[0],
                                                       expected.new_tensor(1.0))
            assert torch.allclose(got, expected, rtol=0, atol=1e-12), r
        for got, expected in zip(saved["weights"], model.parameters()):
            assert torch.allclose(got, expected.detach(), rtol=1e-10, atol=1e-12), r
        for got, expected in zip(saved["buffers"], model.buffers()):
            assert torch.allclose(got.double(), expected.double(), rtol=1e-10, atol=1e-12), r
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert torch.equal(a, b)


def test_drifting_alphas_are_named_on_every_rank(two_process_runs):
    for r in range(WORLD):
        saved = torch.load(two_process_runs / f"search-step-1-rank{r}.pt")
        assert saved["drift"] == "the alphas differ between the ranks: rank(s) 1 hold other " \
                                 "values than rank 0"


def test_a_step_one_rank_finds_not_finite_is_undone_on_every_rank(two_process_runs):
    for r in range(WORLD):
        saved = torch.load(two_process_runs / f"skip-rank{r}.pt")
        assert not saved["kept"] and saved["skipped"] == 1, r


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_sync_batch_norm_equals_one_process_on_the_whole_batch(two_process_runs, unrolled):
    """Two ranks with SyncBatchNorm2d, three search steps: alphas, weights and running
    statistics of the single-process search on the two shards concatenated (plain BatchNorm,
    folded into the fused mixed op)."""
    model = network()
    optimizer = torch.optim.SGD(model.parameters(), ETA, momentum=ARGS.momentum,
                                weight_decay=ARGS.weight_decay)
    step = darts_fast.SearchStep(model, darts_fast.Architect(model, ARGS), optimizer,
                                 nn.CrossEntropyLoss(), grad_clip=5.0, unrolled=unrolled)
    for s in range(SEARCH_STEPS):
        step(*[torch.cat(parts) for parts in zip(*(shard(s, r) for r in range(WORLD)))], ETA)
    expected = tensors_of(model)
    for r in range(WORLD):
        saved = torch.load(two_process_runs / f"sync-bn-{int(unrolled)}-rank{r}.pt")
        for key in ("alphas", "weights", "buffers"):
            assert len(saved[key]) == len(expected[key])
            for got, want in zip(saved[key], expected[key]):
                assert torch.allclose(got.double(), want.double(), rtol=1e-10, atol=1e-10), \
                    (r, key)


def test_sync_batch_norm_refuses_a_folded_network():
    with pytest.raises(ValueError, match="fold_batch_norm=False"):
        darts_fast.SyncBatchNorm2d.convert(network())
