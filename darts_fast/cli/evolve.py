"""``darts-fast evolve RUN``: chooses the architecture of a search's trained weight-sharing
supernet by scoring its paths (``search.path_score``) under a strategy (``search.evolution``):
SPOS' evolution, regularised evolution or randomNAS' random search, within an optional budget of
the trained network's parameters and multiply-adds (``spaces.cnn.resources``).

The supernet is the search's last checkpoint, loaded into ``SinglePathNetwork`` (any search of
DARTS' network loads). Paths are scored on the search's validation split and recalibrated on its
training split, both in order and without augmentation: every path sees the same batches, and a
rerun the same scores. The evolution has its own run folder (config.json, checkpoint.pt after
each generation, log.txt, evolution.csv, history.csv with every scored architecture, and the
best one's genotype.json, genotype.txt and pictures); ``--resume`` continues it bit-identically,
longer with a larger ``--generations``, ``--cycles`` or ``--rounds``. Everything is checked
before the folder is made: a refused command writes nothing.
"""
import argparse
import csv
import io
import itertools
import os
import shutil

import torch.nn as nn

from ..search.evolution import RandomSearch, RegularizedEvolution, SPOSEvolution
from ..search.path_score import PathScorer
from ..spaces.cnn.genotypes import genotype_text
from ..spaces.cnn.paths import to_genotype
from ..spaces.cnn.resources import genotype_cost
from ..spaces.cnn.single_path import SinglePathNetwork
from . import architecture_outputs, checkpoint, datasets, loaders, runtime
from . import evolve_options as eo
from .errors import UsageError
from .report import RunLog
from .run_dir import CHECKPOINT, CONFIG, LOCK, RunDir, RunDirError, hold
from .stored_run import ADDED_LATER, read_json

STRATEGIES = {"spos": SPOSEvolution, "regularized": RegularizedEvolution, "random": RandomSearch}


def run(options):
    if options.resume:
        config = read_json(os.path.join(options.resume, CONFIG), "--resume",
                           "the evolution's configuration")
        if not isinstance(config, dict) or config.get("command") != "evolve" or \
                not isinstance(config.get("options"), dict):
            raise UsageError(f"--resume {options.resume!r} is not an evolution's run folder")
        options = eo.resumed(options, config)
    else:
        eo.resolve(options)
    device = runtime.auto_device(options)
    model, search, data = _supernet(options.run, device)
    strategy, scorer = _strategy(options, model, search, data, device)
    if options.resume:
        folder = RunDir(options.resume, hold(options.resume), config)
        try:
            rows = _restore(folder, strategy)
            folder.update_options(eo.stored(options))
        except BaseException:
            folder.close()
            raise
    else:
        existed = options.run_dir is not None and os.path.exists(options.run_dir)
        folder, rows = RunDir.create(options.run_dir, "evolve", eo.stored(options)), []
    log = RunLog(folder, "evolve", len(rows) + 1)
    try:
        log.info(f"{options.strategy} evolution of the supernet in {options.run} on {device}"
                 f"; run folder {folder.path}" + (f"; resuming after step {len(rows)}"
                                                  if rows else ""))
        return _evolve(folder, log, model, strategy, scorer, rows)
    except UsageError:
        if not options.resume and not rows:  # refused at its first step: it leaves nothing
            log.close()
            _empty(folder.path, remove=not existed)
        raise
    finally:
        log.close()
        folder.close()


def _empty(path, remove):
    """Removes what a refused evolution wrote: the folder it made, or the content of the empty
    folder it was given (but the lock, which it still holds)."""
    if remove:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in os.listdir(path):
        if name != LOCK:
            target = os.path.join(path, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            else:
                os.remove(target)


def _evolve(folder, log, model, strategy, scorer, rows):
    if rows:  # a kill between the checkpoint and its outputs left them a step behind
        _write(folder, log, model, strategy, rows)
    try:
        while not strategy.done:
            row = dict(strategy.step(), scored=scorer.scored)
            rows.append(row)
            folder.save_checkpoint({"command": "evolve", "run_id": folder.config["run_id"],
                                    "options": folder.config["options"], "epoch": len(rows),
                                    "rows": rows, "strategy": strategy.state_dict()})
            _write(folder, log, model, strategy, rows)
            log.info(", ".join(f"{k} {_text(v)}" for k, v in row.items()))
    except KeyboardInterrupt:
        log.info(f"interrupted; continue with: darts-fast evolve --resume {folder.path}")
        return 130
    except RuntimeError as e:  # a budget nothing meets, a space used up
        raise UsageError(f"the evolution stopped: {e}") from None
    arch, score = strategy.best()
    print(f"\nevolution finished: {folder.path}\n  genotype:  {folder.file('genotype.json')} "
          f"({100 * score:.2f}% on the validation split)\n  history:   "
          f"{folder.file('history.csv')}")
    return 0


def _text(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write(folder, log, model, strategy, rows):
    step = len(rows)
    arch, score = strategy.best()
    genotype = to_genotype(arch, model._primitives, model._steps, model._multiplier)
    architecture_outputs.write_genotype(folder, step, genotype, score=score)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "score", "params", "flops", "genotype"])
    for i, (a, s) in enumerate(strategy.history):
        g = to_genotype(a, model._primitives, model._steps, model._multiplier)
        cost = genotype_cost(g)
        writer.writerow([i, f"{s:.6f}", cost.params, cost.flops, genotype_text(g)])
    folder.write_text("history.csv", text.getvalue())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    folder.write_text("evolution.csv", text.getvalue())
    log.events.add_scalar("evolution/best", score, step)


def _restore(folder, strategy):
    """Loads the checkpoint's state into ``strategy``; returns its rows (none: not started)."""
    folder.remove_temporaries()
    if not os.path.exists(folder.file(CHECKPOINT)):
        return []
    try:
        state = checkpoint.load(folder.file(CHECKPOINT))
    except checkpoint.CheckpointError as e:
        raise RunDirError(str(e)) from None
    if state.get("run_id") != folder.config["run_id"]:
        raise RunDirError(f"{CHECKPOINT} in {folder.path!r} belongs to another run")
    try:
        strategy.load_state_dict(state["strategy"])
    except (KeyError, ValueError) as e:
        raise RunDirError(f"{CHECKPOINT} in {folder.path!r} does not continue this evolution: "
                          f"{e}") from None
    return list(state["rows"])


def _supernet(path, device):
    """The supernet of the search in ``path``, on ``device``, and the search's options."""
    config = read_json(os.path.join(path, CONFIG), "RUN", "the search's configuration")
    search = config.get("options") if isinstance(config, dict) and \
        config.get("command") == "search" else None
    if not isinstance(search, dict) or search.get("space", "cnn") != "cnn":
        raise UsageError(f"RUN {path!r} is not a darts-fast search of the cell space")
    try:
        state = checkpoint.load(os.path.join(path, CHECKPOINT))
    except checkpoint.CheckpointError as e:
        raise UsageError(f"RUN: {e}") from None
    if state.get("run_id") != config.get("run_id"):
        raise UsageError(f"RUN: {CHECKPOINT} in {path!r} belongs to another run")
    search = argparse.Namespace(**{**ADDED_LATER, **search})
    data = datasets.search_data(search)
    options = {k: search.__dict__[k] for k in ("conv_bias", "track_running_stats")
               if search.__dict__.get(k) is not None}
    options.update(data.info.network_options())
    if search.primitives is not None:
        options["primitives"] = search.primitives.split(",")
    try:
        model = SinglePathNetwork(search.init_channels, data.info.num_classes, search.layers,
                                  nn.CrossEntropyLoss(),
                                  sample_none=search.method == "random-ws", **options)
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"RUN: the supernet of the --method {search.method} search in "
                         f"{path!r} is not DARTS' network, which evolve searches ({first})") \
            from None
    return model.to(device), search, data


def _strategy(options, model, search, data, device):
    """The strategy over the supernet's paths, and its scorer."""
    search.batch_size = options.batch_size or search.batch_size
    train, valid = (loaders.loader(search, data, indices, device, False, False)
                    for indices in datasets.search_split(data.labels, search))
    scorer = PathScorer(model, lambda: train, recalibration=options.recalibration_batches)

    def batches(limit):
        return valid if limit is None else itertools.islice(valid, limit)

    if options.strategy == "random":
        def score(arch, full):
            return scorer(arch, batches(None if full else options.eval_batches or 10))
    else:
        def score(arch):
            return scorer(arch, batches(options.eval_batches))

    legal = None
    if options.max_params is not None or options.max_flops is not None:
        def legal(arch):
            cost = genotype_cost(to_genotype(arch, model._primitives, model._steps,
                                             model._multiplier),
                                 options.eval_init_channels, options.eval_layers)
            return ((options.max_params is None or cost.params <= options.max_params * 1e6)
                    and (options.max_flops is None or cost.flops <= options.max_flops * 1e6))

    settings = {{"mutation_prob": "m_prob"}.get(name, name): getattr(options, name)
                for name in eo.STRATEGY_OPTIONS[options.strategy]
                if name != "recalibration_batches"}
    try:
        strategy = STRATEGIES[options.strategy](score, model._steps, model.drawn, legal=legal,
                                                seed=options.seed, **settings)
    except ValueError as e:  # settings that do not fit together
        raise UsageError(f"--strategy {options.strategy}: {e}") from None
    return strategy, scorer
