"""The multi-tensor ops against per-tensor loops, on fuzzed lists."""
import pytest
import torch
from helpers import DEVICES

from darts_fast import kernels

CHUNK = 65536  # the kernels' chunk size: sizes around it cross chunk and launch boundaries


def fuzzed_sizes(seed, count=300):
    g = torch.Generator().manual_seed(seed)
    special = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, 0, 1]
    sizes = special + torch.randint(0, 3000, (count - len(special),), generator=g).tolist()
    order = torch.randperm(len(sizes), generator=g).tolist()
    return [sizes[i] for i in order]


def fuzzed_list(sizes, seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            .reshape(-1, 1) if n % 2 else
            torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            for n in sizes]


DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm(device, dtype):
    ts = fuzzed_list(fuzzed_sizes(1), 2, dtype, device)
    got = kernels.multi_tensor_norm(ts)
    expected = torch.stack([t.double().pow(2).sum() for t in ts]).sum().sqrt()
    assert got.shape == () and got.dtype == dtype and got.device.type == device.type
    assert abs(got.double().item() - expected.item()) <= 1e-6 * expected.item()
    assert torch.equal(got, kernels.multi_tensor_norm(ts))  # deterministic


def test_norm_of_non_contiguous_and_empty(device):
    base = torch.randn(6, 8, dtype=torch.float64, device=device)
    ts = [base.t(), base[:, ::2], torch.empty(0, device=device, dtype=torch.float64)]
    expected = sum(t.pow(2).sum() for t in ts).sqrt()
    assert torch.allclose(kernels.multi_tensor_norm(ts), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axpy(device, dtype):
    sizes = fuzzed_sizes(3)
    ys = fuzzed_list(sizes, 4, dtype, device)
    xs = fuzzed_list(sizes, 5, dtype, device)
    alpha = torch.tensor(-0.37, dtype=dtype, device=device)
    expected = [y + alpha * x for y, x in zip(ys, xs)]
    kernels.multi_tensor_axpy_(ys, xs, alpha)
    for y, e in zip(ys, expected):
        torch.testing.assert_close(y, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_buffers", [True, False])
def test_virtual_step(device, dtype, with_buffers):
    sizes = fuzzed_sizes(6)
    w = fuzzed_list(sizes, 7, dtype, device)
    g = fuzzed_list(sizes, 8, dtype, device)
    bufs = fuzzed_list(sizes, 9, dtype, device) if with_buffers else []
    out = [torch.empty_like(t) for t in w]
    w_before = [t.clone() for t in w]
    eta, mu, wd = 0.025, 0.9, 3e-4
    kernels.multi_tensor_virtual_step(out, w, g, bufs, eta, mu, wd)
    for i, o in enumerate(out):
        b = bufs[i] if with_buffers else torch.zeros_like(w[i])
        expected = w[i] - eta * (mu * b + (g[i] + wd * w[i]))
        torch.testing.assert_close(o, expected, rtol=1e-6, atol=1e-7)
        assert torch.equal(w[i], w_before[i])  # inputs untouched: w can be restored exactly


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_difference(device, dtype):
    sizes = fuzzed_sizes(10, count=40)
    d, p, n = (fuzzed_list(sizes, s, dtype, device) for s in (11, 12, 13))
    r = torch.tensor(0.003, dtype=dtype, device=device)
    out = kernels.multi_tensor_finite_difference(d, p, n, r, 0.025)
    for i, o in enumerate(out):
        expected = d[i] - 0.025 * ((p[i] - n[i]) / (2 * r))
        assert o.shape == d[i].shape
        torch.testing.assert_close(o, expected, rtol=1e-5, atol=1e-5)


def test_layout_of_inputs_follows_outputs(device):
    w = [torch.randn(3, 4, 5, 6, dtype=torch.float64, device=device)
         .contiguous(memory_format=torch.channels_last)]
    g = [torch.randn(3, 4, 5, 6, dtype=torch.float64, device=device)]
    out = [torch.empty_like(w[0])]
    kernels.multi_tensor_virtual_step(out, w, g, [], 0.1, 0.0, 0.0)
    torch.testing.assert_close(out[0], w[0] - 0.1 * g[0], rtol=1e-12, atol=1e-12)
    ys = [torch.zeros(4, 6, dtype=torch.float64, device=device)]
    xs = [torch.randn(6, 4, dtype=torch.float64, device=device).t()]
    kernels.multi_tensor_axpy_(ys, xs, torch.tensor(2.0, dtype=torch.float64, device=device))
    torch.testing.assert_close(ys[0], 2 * xs[0])


def test_opcheck(device):
    def lst(seed, sizes=(5, 0, 70000, 1)):
        return fuzzed_list(list(sizes), seed, torch.float32, device)

    r = torch.tensor(0.5, device=device)
    eta_cpu, eta_device = torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.1, device=device)
    ops = torch.ops.darts_fast
    torch.library.opcheck(ops.multi_tensor_norm, (lst(1),))
    torch.library.opcheck(ops.multi_tensor_axpy_, (lst(1), lst(2), r))
    for eta in (eta_cpu, eta_device):
        torch.library.opcheck(ops.multi_tensor_virtual_step,
                              (lst(1), lst(2), lst(3), lst(4), eta, 0.9, 3e-4))
        torch.library.opcheck(ops.multi_tensor_virtual_step,
                              (lst(1), lst(2), lst(3), [], eta, 0.9, 3e-4))
        torch.library.opcheck(ops.multi_tensor_finite_difference,
                              (lst(1), lst(2), lst(3), r, eta))
    for keep in (True, False):
        torch.library.opcheck(ops.multi_tensor_revert_,
                              (lst(1), lst(2), torch.tensor(keep, device=device)))


def test_eta_as_number_cpu_scalar_or_device_tensor_agree(device):
    """A captured step passes eta as a device tensor; the result has the bits of a float eta."""
    sizes = fuzzed_sizes(14, count=30)
    w, g, b, d, p, n = (fuzzed_list(sizes, s, torch.float32, device) for s in range(15, 21))
    r = torch.tensor(0.003, device=device)
    steps, diffs = [], []
    for eta in (0.025, torch.tensor(0.025, dtype=torch.float64),
                torch.tensor(0.025, device=device), torch.tensor(0.025, device=device).double()):
        out = [torch.empty_like(t) for t in w]
        kernels.multi_tensor_virtual_step(out, w, g, b, eta, 0.9, 3e-4)
        steps.append(out)
        diffs.append(kernels.multi_tensor_finite_difference(d, p, n, r, eta))
    for results in (steps, diffs):
        for other in results[1:]:
            assert all(torch.equal(x, y) for x, y in zip(results[0], other))


def test_revert(device):
    """Mixed dtypes (BatchNorm's int64 counter, bool, float16), layouts that differ between a
    tensor and its saved copy, empty tensors; keep=True leaves every bit, keep=False restores."""
    g = torch.Generator().manual_seed(21)

    def make():
        return [torch.randn(3, 4, 5, 6, generator=g).to(device)
                .contiguous(memory_format=torch.channels_last),
                torch.randint(0, 2**40, (7,), generator=g).to(device),
                torch.rand(CHUNK + 5, generator=g).to(device) > 0.5,
                torch.randn(2 * CHUNK + 1, generator=g).to(device, torch.float16),
                torch.empty(0, device=device),
                torch.tensor(3.5, device=device)]

    tensors, saved = make(), make()
    saved[0] = saved[0].contiguous()  # another layout than tensors[0]
    before = [t.clone() for t in tensors]
    kernels.multi_tensor_revert_(tensors, saved, torch.tensor(True, device=device))
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))
    kernels.multi_tensor_revert_(tensors, saved, torch.tensor(False))  # a CPU flag works too
    assert all(torch.equal(t, s) for t, s in zip(tensors, saved))
    assert tensors[0].is_contiguous(memory_format=torch.channels_last)


def test_revert_bad_input():
    keep = torch.tensor(False)
    with pytest.raises(RuntimeError, match="keep must be a 0-dim bool tensor"):
        kernels.multi_tensor_revert_([torch.ones(2)], [torch.zeros(2)], torch.tensor(0.0))
    with pytest.raises(RuntimeError, match=r"saved\[0\] \(Long.*must match tensors\[0\]"):
        kernels.multi_tensor_revert_([torch.ones(2)], [torch.zeros(2, dtype=torch.long)], keep)
    with pytest.raises(RuntimeError, match="saved has 0 tensors but tensors has 1"):
        kernels.multi_tensor_revert_([torch.ones(2)], [], keep)
    with pytest.raises(RuntimeError, match=r"tensors\[0\] is written in place"):
        kernels.multi_tensor_revert_([torch.ones(1).expand(2)], [torch.zeros(2)], keep)


class TestBadInput:
    def test_mixed_dtypes(self):
        with pytest.raises(RuntimeError, match=r"tensors\[1\] has dtype Double.*one dtype"):
            kernels.multi_tensor_norm([torch.ones(2), torch.ones(2, dtype=torch.float64)])

    def test_length_mismatch(self):
        with pytest.raises(RuntimeError, match="xs has 1 tensors but ys has 2"):
            kernels.multi_tensor_axpy_([torch.ones(2), torch.ones(2)], [torch.ones(2)],
                                   torch.tensor(1.0))

    def test_shape_mismatch(self):
        with pytest.raises(RuntimeError, match=r"grads\[0\] has shape \[3\] but out\[0\]"):
            kernels.multi_tensor_virtual_step([torch.ones(2)], [torch.ones(2)], [torch.ones(3)],
                                          [], 0.1, 0.9, 0.0)

    def test_alpha_not_scalar(self):
        with pytest.raises(RuntimeError, match="alpha must be a 0-dim tensor"):
            kernels.multi_tensor_axpy_([torch.ones(2)], [torch.ones(2)], torch.ones(2))

    def test_empty_norm(self):
        with pytest.raises(ValueError, match="tensors must be a non-empty list"):
            kernels.multi_tensor_norm([])

    def test_empty_lists_are_no_ops(self):
        kernels.multi_tensor_virtual_step([], [], [], [], 0.1, 0.9, 0.0)
        assert kernels.multi_tensor_finite_difference([], [], [], torch.tensor(1.0), 0.1) == []

    def test_overlapping_output(self):
        y = torch.ones(1).expand(4)
        with pytest.raises(RuntimeError, match="ys\\[0\\] is written in place"):
            kernels.multi_tensor_axpy_([y], [torch.ones(4)], torch.tensor(1.0))

    @pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
    def test_cuda_mixed_devices(self):
        with pytest.raises(RuntimeError, match=r"tensors\[1\] is on cuda.*one device"):
            kernels.multi_tensor_norm([torch.ones(2), torch.ones(2, device="cuda")])


@pytest.mark.parametrize("op", ["norm", "axpy", "virtual_step", "finite_difference", "revert"])
def test_meta_among_cpu_tensors_is_refused(op):
    cpu, meta = [torch.ones(3)], [torch.ones(3, device="meta")]
    calls = {
        "norm": lambda: kernels.multi_tensor_norm(cpu + meta),
        "axpy": lambda: kernels.multi_tensor_axpy_(cpu, meta, torch.tensor(1.0)),
        "virtual_step": lambda: kernels.multi_tensor_virtual_step(cpu, meta, cpu, [], 0.1, 0.9,
                                                                  0.0),
        "finite_difference": lambda: kernels.multi_tensor_finite_difference(
            cpu, cpu, cpu, torch.tensor(1.0, device="meta"), 0.1),
        "revert": lambda: kernels.multi_tensor_revert_(cpu, meta, torch.tensor(False)),
    }
    with pytest.raises(RuntimeError, match="on meta but .* is on cpu|on cpu but .* is on meta"):
        calls[op]()
