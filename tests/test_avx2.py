"""The convolutions the networks run, on oneDNN's AVX2 code path (AMD and older Intel CPUs).

oneDNN's AVX2 weight gradient of a stride-2 1x1 convolution on a channels_last input with fewer
input channels than its channel block (8) writes past its workspace (uxlfoundation/oneDNN#6035):
a hang, a corrupted heap, or wrong weight gradients without an error. ``ONEDNN_MAX_CPU_ISA=AVX2``
selects that code on any x86 CPU, and ``MALLOC_CHECK_=3`` makes glibc abort on a corrupted heap,
so each check runs in a child process with both set, under a time limit: it fails by a wrong
gradient, a crash or a hang, on 1 and 2 threads.

Run as a script, this module is that child: it takes each module the networks build with few
channels (the factorized reduction and PC-DARTS' partial-channel mixed op at stride 2, the
separable, dilated, pointwise, factorized 7x1/1x7 convolutions and the stem) on channels_last
inputs with 1, 2, 4 and 7 channels, and holds its float32 gradients, after 20 forward and
backward passes, against float64's.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

import darts_fast
from darts_fast.methods.pc_darts import PartialChannelMixedOp
from darts_fast.spaces.cnn.stems import build_stems, cifar_stem
from darts_fast.spaces.cnn.operations import (
    OPS,
    FactorizedReduce,
    ReLUConvBN,
    forward_fast,
)

CHANNELS = (1, 2, 4, 7)
# float32 against float64 through a convolution and a BatchNorm, a few thousand values.
TOLERANCE = 1e-4
LIMIT_S = 240  # under pytest.ini's per-test limit, so the child is named


def avx2_env(threads):
    # The child imports the darts_fast this process imports (a checkout may shadow an install).
    path = os.pathsep.join([os.path.dirname(os.path.dirname(darts_fast.__file__)),
                            os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", MALLOC_CHECK_="3",
                OMP_NUM_THREADS=str(threads), PYTHONPATH=path)


def run_child(argv, threads, cwd=None):
    try:
        done = subprocess.run(argv, env=avx2_env(threads), cwd=cwd, capture_output=True,
                              text=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung for {LIMIT_S} s on the AVX2 path ({threads} threads): "
                    f"{' '.join(map(str, argv))}\n{e.stdout or ''}{e.stderr or ''}")
    assert done.returncode == 0, (f"exit {done.returncode} on the AVX2 path ({threads} threads)\n"
                                  f"{done.stdout}{done.stderr}")
    return done


@pytest.mark.parametrize("threads", [1, 2])
def test_convolutions_with_few_channels_on_the_avx2_path(threads):
    done = run_child([sys.executable, __file__], threads)
    assert "checked" in done.stdout, done.stdout


@pytest.mark.parametrize("threads", [1, 2])
def test_pc_darts_search_runs_to_the_end_on_the_avx2_path(threads, tmp_path):
    folder = tmp_path / "run"
    run_child([sys.executable, "-m", "darts_fast", "search", "--method", "pc-darts",
               "--layers", "3", "--init_channels", "8", "--batch_size", "8",
               "--synthetic_size", "48", "--epochs", "2", "--arch_start_epoch", "1",
               "--device", "cpu", "--run_dir", str(folder)], threads)
    assert (folder / "genotype.json").is_file()


def _modules(C):
    """(name, module, input channels, stride) of what the networks run with C channels."""
    yield "FactorizedReduce", FactorizedReduce(C, 4, affine=False), C, 2
    yield "FactorizedReduce(affine)", FactorizedReduce(C, 4), C, 2
    yield "ReLUConvBN 1x1", ReLUConvBN(C, 4, 1, 1, 0), C, 1
    for stride in (1, 2):
        for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
                     "conv_7x1_1x7"):
            yield f"{name} stride {stride}", OPS[name](C, stride, False), C, stride
        if C % 2 == 0:  # PC-DARTS' candidates see a quarter of the channels, an even number
            yield f"PartialChannelMixedOp stride {stride}", PartialChannelMixedOp(4 * C, stride), \
                4 * C, stride
    for in_channels in (1, 3):  # grayscale and colour images
        yield f"cifar stem, {in_channels} input channels", cifar_stem(C, in_channels), \
            in_channels, 1
        stems = torch.nn.Module()
        build_stems(stems, "imagenet", 2 * C, in_channels)
        yield f"imagenet stem, {in_channels} input channels", \
            torch.nn.Sequential(stems.stem0, stems.stem1), in_channels, 8


def _gradients(module, x, weights, g):
    """The gradients of the input and parameters after 20 training passes (an overrun workspace
    shows as a corrupted heap), taken in eval mode: a training-mode BatchNorm makes the loss
    invariant to the scale of each filter before it, so with one input channel some weight
    gradients are 0 and only their rounding would be compared."""
    x = x.detach().requires_grad_()
    params = list(module.parameters())
    for mode in [True] * 20 + [False]:
        module.train(mode)
        y = module(x, weights) if isinstance(module, PartialChannelMixedOp) \
            else forward_fast(module, x)
        grads = torch.autograd.grad(y, [x] + params, g.to(y.dtype))
    return grads


def main():
    torch.manual_seed(0)
    failures, checked = [], 0
    for C in CHANNELS:
        for name, module, c_in, stride in _modules(C):
            x = torch.randn(4, c_in, 16, 16).contiguous(memory_format=torch.channels_last)
            weights = F.softmax(torch.randn(8), dim=0)
            with torch.no_grad():
                out = module(x, weights) if isinstance(module, PartialChannelMixedOp) \
                    else module(x)
            g = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
            module64 = copy.deepcopy(module).double()
            got = _gradients(module, x, weights, g)
            want = _gradients(module64, x.double(), weights.double(), g.double())
            for i, (a, b) in enumerate(zip(got, want)):
                error = rel_err(a, b)
                what = "input" if i == 0 else f"parameter {i - 1}"
                if not error < TOLERANCE:
                    failures.append(f"{name}, {C} channels: {what} gradient off by {error:.1e}")
            checked += 1
    print("\n".join(failures) or f"checked {checked} modules")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
