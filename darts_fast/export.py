"""A found network as files to deploy (``save``) and back as a module (``load``).

An export folder holds:

* ``model.pt``: ``torch.save`` of ``{"format": "darts_fast-model-1", "spec": spec, "state_dict":
  the evaluation network's state_dict}``, tensors and JSON values only, which
  ``torch.load(path, weights_only=True)`` reads (the spec: see ``export_model``);
* ``model.ts``: TorchScript of the deployed module, traced, with the methods ``forward`` and
  ``forward_normalized`` and the spec as JSON in its extra file ``spec.json``; it runs without
  darts_fast (``torch.jit.load``, or libtorch's ``torch::jit::load`` in C++);
* ``model.onnx``: ONNX of ``forward`` (input ``images``, output ``logits``, any batch size), for a
  float32 network where the ``onnx`` and ``onnxscript`` packages are installed (run by ONNX
  Runtime in the check where it is installed too);
* ``model.json``: the spec, the parameters and multiply-adds of one image, the files with their
  SHA-256, what was skipped and why, notes: for people, not read back.

The deployed module takes images as float tensors in [0, 1], N x channels x size x size (the
input description's), normalises them itself with its mean and std and returns the logits:
``forward(images) == network(normalise(images))[0]``; ``forward_normalized(x)`` takes input
already normalised (as the run's loaders feed it). Every file is read back and run on the
example and on a second random batch before the folder is presented as done.
"""
import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import warnings
import zipfile

import torch

from .export_check import check_onnx, same_logits, same_state
from .export_model import FORMAT, Deployed, ExportError, build_network, check_spec, network_cost

__all__ = ["save", "load", "Deployed", "ExportError", "FORMAT"]

MODEL_PT, MODEL_TS, MODEL_ONNX, MODEL_JSON = "model.pt", "model.ts", "model.onnx", "model.json"
ONNX_MISSING = "the onnx and onnxscript packages are not installed (pip install onnx onnxscript)"


def save(network, spec, folder, example, notes=()):
    """Writes the export of ``network`` (a ``NetworkCIFAR``/``NetworkImageNet`` the ``spec``
    describes, left as it is) into ``folder``, a new or empty folder; ``example``: a batch of
    images as the deployed module takes them; ``notes``: lines for model.json. Everything is
    written into a temporary folder beside ``folder`` and checked there, then renamed: a failed
    or killed export leaves no ``folder``. Returns model.json's content."""
    folder = os.path.abspath(os.fspath(folder))
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise ExportError(f"{folder!r} exists and is not an empty folder; give a new or empty "
                          f"folder")
    check_spec(spec, folder)
    source = Deployed(copy.deepcopy(network).cpu().eval(), spec).eval()
    size, channels = spec["input"]["size"], spec["input"]["channels"]
    if not isinstance(example, torch.Tensor) or example.dim() != 4 or \
            tuple(example.shape[1:]) != (channels, size, size):
        raise ExportError(f"the example must be a batch of {channels} x {size} x {size} images, "
                          f"got {getattr(example, 'shape', type(example).__name__)}")
    dtype = source.mean.dtype
    other = torch.rand((example.shape[0] + 1, channels, size, size), dtype=dtype,
                       generator=torch.Generator().manual_seed(0))
    batches = [example.detach().to("cpu", dtype), other]
    parent, name = os.path.split(folder)
    made = _outermost_missing(parent)  # removed with the rest if the export fails
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.mkdir(temporary)
    try:
        record = _write(source, spec, temporary, batches, notes)
        for file in os.listdir(temporary):
            _fsync(os.path.join(temporary, file))
        os.rename(temporary, folder)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(made or temporary, ignore_errors=True)
        raise
    return record


def _outermost_missing(path):
    """The outermost of ``path`` and its parents that does not exist (None: it exists)."""
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _write(source, spec, folder, batches, notes):
    def path(name):
        return os.path.join(folder, name)

    torch.save({"format": FORMAT, "spec": spec, "state_dict": source.network.state_dict()},
               path(MODEL_PT))
    loaded = load(path(MODEL_PT))
    same_state(loaded.network, source.network, path(MODEL_PT))
    same_logits(loaded, source, batches, path(MODEL_PT))
    with torch.no_grad(), _torchscript():
        traced = torch.jit.trace_module(source, {"forward": batches[0],
                                                    "forward_normalized": batches[0]},
                                        check_trace=False)
        try:
            torch.jit.save(traced, path(MODEL_TS),
                           _extra_files={"spec.json": json.dumps(spec)})
        except RuntimeError as e:
            raise ExportError(f"TorchScript cannot save this network: {e}".splitlines()[0]) \
                from None
    same_logits(load(path(MODEL_TS)), source, batches, path(MODEL_TS))
    skipped = {}
    if source.mean.dtype != torch.float32:
        skipped[MODEL_ONNX] = "written for float32 networks only"
    elif any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript")):
        skipped[MODEL_ONNX] = ONNX_MISSING
    else:
        _write_onnx(source, batches[0], path(MODEL_ONNX))
        skipped.update(check_onnx(path(MODEL_ONNX), source, batches))
    params, flops = network_cost(source.network, spec["input"])
    files = {name: {"bytes": os.path.getsize(path(name)), "sha256": _sha256(path(name))}
             for name in (MODEL_PT, MODEL_TS, MODEL_ONNX) if os.path.exists(path(name))}
    record = {"format": FORMAT, "spec": spec, "params": params, "flops": flops,
              "files": files, "skipped": skipped, "notes": list(notes),
              "usage": "darts_fast.load(folder) or torch.jit.load('model.ts'): forward(images) "
                       "takes float images in [0, 1], N x channels x size x size, normalises "
                       "them and returns the logits; forward_normalized(x) takes normalised "
                       "input"}
    with open(path(MODEL_JSON), "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    return record


@contextlib.contextmanager
def _torchscript():
    """Silences TorchScript's deprecation warnings: torch.export supersedes it, but TorchScript
    is the format that libtorch loads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        yield


def _write_onnx(module, example, file):
    """ONNX of ``module.forward`` in one file by torch.export's exporter (which needs
    onnxscript), the batch size left free."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    try:
        # The exporter warns of its own internals (deprecations, torchvision's operators absent).
        logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), file, input_names=["images"],
                              output_names=["logits"], dynamo=True, verbose=False,
                              external_data=False,
                              dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    except Exception as e:  # the exporter reports what it cannot convert in many types
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"ONNX cannot export this network ({type(e).__name__}: {first})") \
            from None
    finally:
        logger.setLevel(level)


def load(path):
    """The exported network in ``path`` (an export folder, its model.pt or its model.ts), on the
    CPU in eval mode: ``forward(images)`` the logits of float images in [0, 1],
    ``forward_normalized(x)`` those of normalised input, ``.spec`` and ``.input`` what
    ``export_model`` describes. From model.pt (a folder's first choice) it is a ``Deployed``
    around the rebuilt evaluation network (``.network``, its weights loaded strictly); from
    model.ts the TorchScript module. ExportError, naming the path, for anything else."""
    path = os.fspath(path)
    if os.path.isdir(path):
        file = next((os.path.join(path, name) for name in (MODEL_PT, MODEL_TS)
                     if os.path.isfile(os.path.join(path, name))), None)
        if file is None:
            raise ExportError(f"{path!r} holds neither {MODEL_PT} nor {MODEL_TS}: not an export "
                              f"folder (darts-fast export RUN writes one)")
    elif os.path.isfile(path):
        file = path
    else:
        raise ExportError(f"no model at {path!r}: no such file or folder")
    return _load_torchscript(file) if _is_torchscript(file) else _load_pt(file)


def _load_pt(file):
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports damage, truncation and foreign pickles in many types
        raise ExportError(f"{file!r} cannot be read as a model: it is damaged, partial or not a "
                          f"torch.save file ({type(e).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ExportError(f"{file!r} is not a darts_fast model (expected a {FORMAT} file, "
                          f"written by darts-fast export)")
    state, spec = saved.get("state_dict"), saved.get("spec")
    if not isinstance(state, dict) or \
            not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ExportError(f"{file!r} is damaged: its state_dict is not a dict of tensors")
    network = build_network(spec, file)
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    if floating:
        network.to(floating[0])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(f"{file!r} is damaged: its weights do not fit the {spec['class']} its "
                          f"spec describes ({first})") from None
    return Deployed(network, spec).eval()


def _is_torchscript(file):
    """Whether ``file`` is a TorchScript archive (a zip with code/), not a torch.save one."""
    with contextlib.suppress(zipfile.BadZipFile, OSError):
        with zipfile.ZipFile(file) as archive:
            return any("/code/" in name for name in archive.namelist())
    return False


def _load_torchscript(file):
    extra = {"spec.json": ""}
    try:
        with _torchscript():
            module = torch.jit.load(file, map_location="cpu", _extra_files=extra)
    except Exception as e:  # as torch.load: damage is reported in many types
        raise ExportError(f"{file!r} cannot be read as a TorchScript model: it is damaged or "
                          f"partial ({type(e).__name__})") from None
    try:
        spec = json.loads(extra["spec.json"])
    except json.JSONDecodeError:
        raise ExportError(f"{file!r} is a TorchScript model but not a darts_fast export (it has "
                          f"no spec.json)") from None
    check_spec(spec, file)
    module.spec, module.input = spec, spec["input"]
    return module.eval()


def _sha256(file):
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path):
    """Flushes a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
