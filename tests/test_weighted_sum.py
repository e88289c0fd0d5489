"""The fused weighted sum against the Python sum, float64, gradcheck and opcheck."""
import pytest
import torch
from helpers import DEVICES, TOLERANCE, rel_err

from darts_fast import kernels

SHAPES = [(2, 3, 5, 7), (4, 16, 8, 8), (1,), (3, 70001)]  # the last spans several chunks


def python_sum(xs, w):
    return sum(w[k] * x for k, x in enumerate(xs))


def make(K, shape, dtype, device, requires_grad=True):
    g = torch.Generator().manual_seed(K * 1000 + len(shape))
    xs = [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
          .requires_grad_(requires_grad) for _ in range(K)]
    w = torch.randn(K, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return xs, w.requires_grad_(requires_grad)


def forward_backward(fn, xs, w, g):
    out = fn(xs, w)
    grads = torch.autograd.grad(out, [*xs, w], g)
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 3, 8, 9, 17])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_python_sum(device, dtype, K, shape):
    xs, w = make(K, shape, dtype, device)
    # Its own generator: the upstream gradient must not depend on which tests drew from the
    # global one before.
    g = torch.randn(shape, generator=torch.Generator().manual_seed(K + len(shape)),
                    dtype=torch.float64).to(device=device, dtype=dtype)
    out, grads = forward_backward(kernels.weighted_sum, xs, w, g)
    # The oracle: the Python sum evaluated in float64.
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    w64 = w.detach().double().requires_grad_()
    ref, ref_grads = forward_backward(python_sum, xs64, w64, g.double())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel_err(out, ref) < tol
    for a, b in zip(grads, ref_grads):
        assert a.dtype == dtype
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_accumulates_in_float32(device, dtype):
    xs, w = make(8, (4, 8, 16, 16), dtype, device)
    w32 = w.detach().float().requires_grad_()
    g = torch.randn(xs[0].shape, device=device).to(dtype)
    out, grads = forward_backward(kernels.weighted_sum, xs, w32, g)
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    w64 = w.detach().double().requires_grad_()
    ref, ref_grads = forward_backward(python_sum, xs64, w64, g.double())
    eps = torch.finfo(dtype).eps
    assert out.dtype == dtype and grads[-1].dtype == torch.float32
    assert rel_err(out, ref) < 2 * eps
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 2 * eps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [9, 17])
def test_reduced_precision_sum_is_rounded_once(device, dtype, K):
    """More inputs than one kernel launch takes (8): the running sum must stay in float32 between
    launches. Large terms that cancel expose a sum rounded to 16 bits in between: with K=9,
    [1000, 0.3 x 7, -1000] gives 2.0996 in float16, and 2.0 if the sum is rounded after 8."""
    xs = [torch.full((3, 1000), v, device=device).to(dtype)
          for v in [1000.0] + [0.3] * (K - 2) + [-1000.0]]
    w = torch.ones(K, device=device)
    out = kernels.weighted_sum(xs, w)
    # The oracle: the exact sum of the same 16-bit inputs, rounded once.
    expected = torch.stack([x.double() for x in xs]).sum(0).to(dtype)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "mixed"])
def test_any_memory_layout(device, layout):
    xs, w = make(4, (2, 6, 5, 7), torch.float64, device, requires_grad=False)
    if layout == "channels_last":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    elif layout == "transposed":
        xs = [x.transpose(2, 3) for x in xs]
    elif layout == "sliced":
        xs = [torch.cat([x, x], dim=3)[..., ::2] for x in xs]
    else:
        xs = [xs[0], xs[1].contiguous(memory_format=torch.channels_last), xs[2].transpose(2, 3)
              .contiguous().transpose(2, 3), xs[3]]
    xs = [x.requires_grad_() for x in xs]
    w.requires_grad_()
    g = torch.randn(xs[0].shape, dtype=torch.float64, device=device).transpose(0, 1).contiguous() \
        .transpose(0, 1)
    out, grads = forward_backward(kernels.weighted_sum, xs, w, g)
    ref, ref_grads = forward_backward(python_sum, xs, w, g)
    assert out.shape == ref.shape
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, ref) < 1e-12
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 1e-12


def test_empty_tensors(device):
    xs, w = make(3, (0, 4, 5), torch.float32, device)
    out = kernels.weighted_sum(xs, w)
    assert out.shape == (0, 4, 5)
    grads = torch.autograd.grad(out.sum(), [*xs, w])
    assert all(gx.shape == (0, 4, 5) for gx in grads[:-1])
    assert torch.equal(grads[-1], torch.zeros(3, device=device))


@pytest.mark.parametrize("need", ["xs_only", "weights_only", "some_xs"])
def test_computes_only_needed_grads(device, need):
    xs, w = make(4, (3, 5, 6), torch.float64, device, requires_grad=False)
    if need in ("xs_only", "some_xs"):
        for x in (xs if need == "xs_only" else xs[1:3]):
            x.requires_grad_()
    if need == "weights_only":
        w.requires_grad_()
    inputs = [t for t in (*xs, w) if t.requires_grad]
    g = torch.randn(xs[0].shape, dtype=torch.float64, device=device)
    grads = torch.autograd.grad(kernels.weighted_sum(xs, w), inputs, g)
    ref = torch.autograd.grad(python_sum(xs, w), inputs, g)
    for a, b in zip(grads, ref):
        assert rel_err(a, b) < 1e-12
    packed, grad_w = torch.ops.darts_fast.weighted_sum_backward(
        g, xs, w, [False, True, False, True], False)
    assert len(packed) == 2 and grad_w.numel() == 0
    assert torch.allclose(packed[1], w[3] * g)


def test_weight_grad_is_deterministic(device):
    xs, w = make(8, (16, 16, 32, 32), torch.float32, device)
    g = torch.randn(xs[0].shape, device=device)
    first = torch.autograd.grad(kernels.weighted_sum(xs, w), w, g)[0]
    for _ in range(3):
        again = torch.autograd.grad(kernels.weighted_sum(xs, w), w, g)[0]
        assert torch.equal(first, again)


def test_gradcheck_and_gradgradcheck(device):
    xs, w = make(3, (2, 3, 4), torch.float64, device)

    def fn(*args):
        return kernels.weighted_sum(args[:-1], args[-1])

    assert torch.autograd.gradcheck(fn, (*xs, w))
    assert torch.autograd.gradgradcheck(fn, (*xs, w))


def test_opcheck(device):
    for requires_grad in (True, False):
        xs, w = make(3, (2, 3, 4, 5), torch.float32, device, requires_grad)
        torch.library.opcheck(torch.ops.darts_fast.weighted_sum, (xs, w))
    xs, w = make(3, (2, 3, 4, 5), torch.float32, device, requires_grad=False)
    g = torch.randn(xs[0].shape, device=device)
    torch.library.opcheck(torch.ops.darts_fast.weighted_sum_backward,
                          (g, xs, w, [True, False, True], True))
    torch.library.opcheck(torch.ops.darts_fast.weighted_sum_backward,
                          (g, xs, w, [False, False, False], False))


def test_compile_fullgraph(device):
    xs, w = make(4, (2, 3, 8, 8), torch.float32, device)
    compiled = torch.compile(kernels.weighted_sum, fullgraph=True, backend="aot_eager")
    g = torch.randn(xs[0].shape, device=device)
    out, grads = forward_backward(compiled, xs, w, g)
    ref, ref_grads = forward_backward(python_sum, xs, w, g)
    assert rel_err(out, ref) < 1e-6
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 1e-6


class TestBadInput:
    def test_empty_list(self):
        with pytest.raises(RuntimeError, match="xs must be a non-empty list"):
            kernels.weighted_sum([], torch.ones(0))

    def test_shape_mismatch(self):
        with pytest.raises(RuntimeError, match=r"xs\[1\] has shape \[2, 4\] but xs\[0\]"):
            kernels.weighted_sum([torch.ones(2, 3), torch.ones(2, 4)], torch.ones(2))

    def test_dtype_mismatch(self):
        with pytest.raises(RuntimeError, match=r"xs\[1\] has dtype Double"):
            kernels.weighted_sum([torch.ones(2), torch.ones(2, dtype=torch.float64)], torch.ones(2))

    def test_integer_inputs(self):
        with pytest.raises(RuntimeError, match="xs must be float32, float64"):
            kernels.weighted_sum([torch.ones(2, dtype=torch.int64)], torch.ones(1))

    @pytest.mark.parametrize("shape", [(3,), (2, 1), ()])
    def test_weights_shape(self, shape):
        with pytest.raises(RuntimeError, match="weights must be a 1-D tensor with one entry"):
            kernels.weighted_sum([torch.ones(2), torch.ones(2)], torch.ones(shape))

    def test_weights_dtype(self):
        with pytest.raises(RuntimeError, match="weights must have the dtype of xs"):
            kernels.weighted_sum([torch.ones(2), torch.ones(2)], torch.ones(2, dtype=torch.float64))

    @pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
    def test_cuda_device_mismatch(self):
        with pytest.raises(RuntimeError, match=r"xs\[1\] is on cuda"):
            kernels.weighted_sum([torch.ones(2), torch.ones(2, device="cuda")], torch.ones(2))
        with pytest.raises(RuntimeError, match="weights is on cpu"):
            kernels.weighted_sum([torch.ones(2, device="cuda")], torch.ones(1))

    @pytest.mark.parametrize("where", ["xs", "weights"])
    def test_meta_among_cpu_tensors(self, where):
        # The dispatcher sends such a call to the fake kernel, which must refuse it too.
        xs = [torch.ones(2), torch.ones(2, device="meta" if where == "xs" else "cpu")]
        w = torch.ones(2, device="meta" if where == "weights" else "cpu")
        with pytest.raises(RuntimeError, match="is on meta but xs.0. is on cpu"):
            kernels.weighted_sum(xs, w)

    def test_backward_flags_length(self):
        with pytest.raises(RuntimeError, match="xs_need_grad must have one flag per tensor"):
            torch.ops.darts_fast.weighted_sum_backward(
                torch.ones(2), [torch.ones(2)], torch.ones(1), [True, True], True)
