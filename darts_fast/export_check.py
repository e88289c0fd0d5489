"""The checks an export passes before it is presented as done (``export.save``): each file read
back gives the source's weights exactly and its logits within float rounding."""
import importlib.util

import torch

from .export_model import ExportError

# TorchScript runs the source's operations: within float32 rounding of the same sums.
RTOL = 1e-5
# ONNX Runtime computes the convolutions with kernels of its own (other summation orders).
ONNX_RTOL = 1e-4
ONNX_RUNTIME_MISSING = "onnxruntime is not installed (pip install onnxruntime): model.onnx " \
                       "passed onnx.checker but was not run"


def same_state(loaded, source, file):
    """Refuses ``loaded``'s state_dict unless it equals ``source``'s exactly."""
    got, want = loaded.state_dict(), source.state_dict()
    if list(got) != list(want) or any(
            got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k]) for k in want):
        raise ExportError(f"{file!r} read back does not hold the network's weights")


def same_logits(loaded, source, batches, file):
    """Refuses ``loaded`` unless its ``forward`` and ``forward_normalized`` give ``source``'s
    logits on every batch (relative tolerance ``RTOL``)."""
    with torch.no_grad():
        for x in batches:
            for method in ("forward", "forward_normalized"):
                got, want = getattr(loaded, method)(x), getattr(source, method)(x)
                _compare(got, want, RTOL, f"{file!r} read back: its {method}")


def check_onnx(file, source, batches):
    """Checks the ONNX model in ``file``: by ``onnx.checker``, then run by ONNX Runtime on
    ``batches`` against ``source``'s ``forward`` where it is installed. Returns {file name: why}
    for what it could not do."""
    import onnx

    try:
        onnx.checker.check_model(file)
    except Exception as e:  # the checker's own error types
        raise ExportError(f"{file!r} fails onnx.checker: {e}".splitlines()[0]) from None
    if importlib.util.find_spec("onnxruntime") is None:
        return {"model.onnx run": ONNX_RUNTIME_MISSING}
    import onnxruntime

    session = onnxruntime.InferenceSession(file, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for x in batches:
            got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
            _compare(got, source(x), ONNX_RTOL, f"{file!r} run by ONNX Runtime")
    return {}


def _compare(got, want, rtol, what):
    scale = max(1.0, want.abs().max().item())
    if got.shape != want.shape or got.dtype != want.dtype or \
            not torch.allclose(got, want, rtol=rtol, atol=rtol * 0.1 * scale):
        difference = (got.double() - want.double()).abs().max().item() \
            if got.shape == want.shape else None
        raise ExportError(f"{what} differs from the network's logits (shape "
                          f"{tuple(got.shape)} vs {tuple(want.shape)}, largest difference "
                          f"{difference})")
