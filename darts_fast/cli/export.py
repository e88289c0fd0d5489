"""``darts-fast export RUN``: the network of a train or search run as files to deploy
(``darts_fast.export``: model.pt, model.ts, model.onnx with the onnx and onnxscript packages,
model.json).

A train run exports the network it trained: the weights of its last checkpoint into the network
its network.json describes (for a run made before runs kept one: the cells of its genotype.json,
the constructor options of its config.json). A search run exports the evaluation
network of the genotype it found, UNTRAINED (initialised from the run's seed), sized by
``--init_channels``, ``--layers`` and ``--auxiliary``. The images it takes are the run's
(``data.json``; a run of an earlier version, which has none: CIFAR-10's). The run folder is
held (its lock) while it is read, so a run still running is refused; so is anything that is not
a CNN train or search run. A refused command writes nothing."""
import os

import torch

from ..export import ExportError, save
from ..export_model import build_network, network_spec
from ..spaces.cnn.genotypes import genotype_from_dict
from ..spaces.genotype_text import GenotypeError
from . import checkpoint, train_options
from .augmentation import CIFAR_MEAN, CIFAR_STD
from .datasets import CIFAR_CLASSES
from .errors import UsageError
from .image_data import DataInfo
from .options import folder_name, positive_int
from .run_dir import CHECKPOINT, CONFIG, hold
from .stored_run import DATA, read_json, stored_option

GENOTYPE = "genotype.json"
NETWORK = "network.json"
SIZE_OPTIONS = ("init_channels", "layers", "auxiliary")


def add_arguments(p):
    p.add_argument("run", metavar="RUN",
                   help="the folder of a darts-fast train or search run (no default: required)")
    p.add_argument("--out", type=folder_name, default=None,
                   help="a new or empty folder for the files (default RUN/export)")
    size = p.add_argument_group("a search run's network (a train run exports its own)")
    size.add_argument("--init_channels", type=positive_int, default=None,
                      help=f"channels of the first cell (default: train's, "
                           f"{train_options.CIFAR['init_channels']}; "
                           f"{train_options.IMAGENET['init_channels']} for imagenet)")
    size.add_argument("--layers", type=positive_int, default=None,
                      help=f"cells of the network (default: train's, "
                           f"{train_options.CIFAR['layers']}; "
                           f"{train_options.IMAGENET['layers']} for imagenet)")
    size.add_argument("--auxiliary", action="store_true",
                      help="with the auxiliary tower, as darts-fast train --auxiliary trains it "
                           "(it runs in training only)")
    p.set_defaults(threads=None)


def run(args):
    path = args.run
    out = args.out or os.path.join(path, "export")
    if not os.path.isdir(path):
        raise UsageError(f"RUN {path!r} is not a folder (expected the folder of a darts-fast "
                         f"train or search run)")
    config = _read_json(os.path.join(path, CONFIG), "a darts-fast run's configuration")
    command, options = (config.get("command"), config.get("options")) \
        if isinstance(config, dict) else (None, None)
    if command not in ("train", "search") or not isinstance(options, dict):
        raise UsageError(f"RUN {path!r} is not a train or search run (its {CONFIG} says "
                         f"{command!r}); export takes the folder of darts-fast train or search")
    if stored_option(options, "space") != "cnn":
        raise UsageError(f"RUN {path!r} is a {stored_option(options, 'space')} {command} run: "
                         f"export handles CNN runs")
    given = [f"--{name}" for name in SIZE_OPTIONS if getattr(args, name)]
    if command == "train" and given:
        raise UsageError(f"{', '.join(given)}: RUN {path!r} is a train run, which exports the "
                         f"network it trained; these are for a search run's network")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"--out {out!r} exists and is not an empty folder; give a new or empty "
                         f"folder")
    lock = hold(path)
    try:
        network, spec, notes = (_trained if command == "train" else _untrained)(
            path, config, args)
        info = spec["input"]
        example = torch.rand((2, info["channels"], info["size"], info["size"]),
                             generator=torch.Generator().manual_seed(0))
        try:
            record = save(network, spec, out, example, notes)
        except ExportError as e:
            raise UsageError(f"export to {out!r} failed, nothing written: {e}") from None
    finally:
        lock.release()
    print(_summary(path, out, spec, record))
    return 0


def read_input(path, options):
    """The input description of the run in ``path`` (``export_model``'s ``input``): its
    data.json, or for a run made before runs kept one, CIFAR-10's images."""
    file = os.path.join(path, DATA)
    if not os.path.exists(file):
        info = DataInfo(options.get("dataset") or "synthetic", CIFAR_CLASSES, 3, 32, CIFAR_MEAN,
                        CIFAR_STD, "cifar")
        return info.to_json()
    try:
        return DataInfo.from_json(_read_json(file, "a data description"), file).to_json()
    except ValueError as e:
        raise UsageError(str(e)) from None


def _trained(path, config, args):
    """The network a train run trained, its spec and notes."""
    options = config["options"]
    file = os.path.join(path, CHECKPOINT)
    if not os.path.exists(file):
        raise UsageError(f"RUN {path!r} has no {CHECKPOINT}: the run has not finished an epoch, "
                         f"there are no trained weights to export")
    try:
        state = checkpoint.load(file)
    except checkpoint.CheckpointError as e:
        raise UsageError(f"RUN: {e}") from None
    if not isinstance(state, dict) or state.get("run_id") != config.get("run_id") or \
            not isinstance(state.get("model"), dict):
        raise UsageError(f"{file!r} is not the checkpoint of the run in {path!r} (another run's, "
                         f"or one without the model's weights)")
    info = read_input(path, options)
    source = {"run": os.path.abspath(path), "command": "train", "run_id": config["run_id"],
              "trained": True, "epoch": state.get("epoch"), "epochs": options.get("epochs")}
    if os.path.exists(os.path.join(path, NETWORK)):  # the spec of what the run built
        built = _read_json(os.path.join(path, NETWORK), "the network the run trains")
        if not isinstance(built, dict):
            raise UsageError(f"{NETWORK} in {path!r} is not a network spec (expected an object "
                             f"with class, kwargs and input)")
        spec = {**built, "input": info, "source": source}
        described = f"{NETWORK} and {DATA}"
    else:  # a run made before runs kept network.json: the network its options build
        spec = _spec(_genotype(path), options.get("init_channels"), options.get("layers"),
                     bool(options.get("auxiliary")), info, source, path)
        described = f"{CONFIG}, {DATA} and {GENOTYPE}"
    network = _build(spec, path)
    try:
        network.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"{file!r}: its weights do not fit the network that {described} in "
                         f"{path!r} describe ({first})") from None
    return network, spec, []


def _untrained(path, config, args):
    """The evaluation network of a search run's genotype, initialised from the run's seed; its
    spec and the note that it is untrained."""
    options = config["options"]
    info = read_input(path, options)
    genotype = _genotype(path)
    defaults = train_options.IMAGENET if info["stem"] == "imagenet" else train_options.CIFAR
    C = args.init_channels or defaults["init_channels"]
    layers = args.layers or defaults["layers"]
    note = f"untrained: train it with darts-fast train --genotype " \
           f"{os.path.join(path, GENOTYPE)}"
    seed = options.get("seed") if isinstance(options.get("seed"), int) else 0
    source = {"run": os.path.abspath(path), "command": "search", "run_id": config.get("run_id"),
              "trained": False, "seed": seed, "note": note}
    spec = _spec(genotype, C, layers, args.auxiliary, info, source, path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _build(spec, path)
    return network, spec, [note]


def _spec(genotype, C, layers, auxiliary, info, source, path):
    if not all(isinstance(n, int) and n > 0 for n in (C, layers)):
        raise UsageError(f"{CONFIG} in {path!r} does not give the network's init_channels and "
                         f"layers as positive integers")
    try:
        return network_spec(genotype, C, len(info["classes"]), layers, auxiliary, info,
                            source=source)
    except ExportError as e:
        raise UsageError(str(e)) from None


def _build(spec, path):
    try:
        return build_network(spec, path)
    except ExportError as e:
        raise UsageError(str(e)) from None


def _genotype(path):
    file = os.path.join(path, GENOTYPE)
    try:
        return genotype_from_dict(_read_json(file, "the genotype the run writes after "
                                                        "its first epoch"))
    except GenotypeError as e:
        raise UsageError(f"{file!r}: {e}") from None


def _read_json(file, expected):
    return read_json(file, "RUN", expected)


def _summary(path, out, spec, record):
    info, kwargs, source = spec["input"], spec["kwargs"], spec["source"]
    what = (f"the train run {path} (epoch {source['epoch']} of {source['epochs']})"
            if source["trained"] else f"the genotype of the search run {path}, UNTRAINED")
    lines = [f"exported {what}: {out}"]
    if not source["trained"]:
        lines.append(f"UNTRAINED: random weights (seed {source['seed']}); "
                     f"{source['note'].split(': ', 1)[1]}")
    lines += [
        f"network:    {spec['class']}, {kwargs['C']} channels, {kwargs['layers']} cells, "
        f"{len(info['classes'])} classes; {record['params']:,} parameters, "
        f"{record['flops']:,} multiply-adds per image",
        f"input:      float images in [0, 1], N x {info['channels']} x {info['size']} x "
        f"{info['size']}, normalised inside (mean {_numbers(info['mean'])}, std "
        f"{_numbers(info['std'])})"]
    where = {"model.pt": "darts_fast.load", "model.ts": "torch.jit.load, no darts_fast needed",
             "model.onnx": "ONNX Runtime and others"}
    lines += [f"{name + ':':<11} {os.path.join(out, name)} ({where[name]})"
              for name in record["files"]]
    lines += [f"{name + ':':<11} skipped: {why}" for name, why in record["skipped"].items()]
    checked = [name for name in record["files"] if f"{name} run" not in record["skipped"]]
    lines += [f"{'model.json:':<11} {os.path.join(out, 'model.json')}",
              f"checked:    {', '.join(checked)} read back give the network's logits"]
    return "\n  ".join(lines)


def _numbers(values):
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
