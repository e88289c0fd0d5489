"""The fused node of DARTS' recurrent search cell against the plain-torch formula of the original
``DARTSCellSearch.cell`` in float64, gradcheck and opcheck."""
import pytest
import torch
from helpers import DEVICES, TOLERANCE, rel_err

from darts_fast import kernels

ACTIVATIONS = (torch.tanh, torch.relu, torch.sigmoid, lambda x: x)


def plain_node(states, ch, probs):
    """The original's arithmetic in plain torch ops: every (predecessor, activation) term
    materialised, then weighted and summed."""
    H = states.shape[-1]
    c, h = ch[..., :H].sigmoid(), ch[..., H:]
    out = torch.zeros_like(states[0])
    for k, f in enumerate(ACTIVATIONS):
        unweighted = states + c * (f(h) - states)
        out = out + (unweighted * probs[:, k, None, None]).sum(0)
    return out


def make(J, B, H, dtype=torch.float64, device="cpu", requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + 100 * J + 10 * B + H)
    states = torch.randn(J, B, H, generator=g, dtype=torch.float64)
    ch = 2 * torch.randn(J, B, 2 * H, generator=g, dtype=torch.float64)
    probs = torch.randn(J, 5, generator=g, dtype=torch.float64).softmax(-1)[:, 1:]
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
            for t in (states, ch, probs)]


def forward_backward(fn, inputs, grad):
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, grad)


def check_against_plain(inputs, grad, tol):
    out, grads = forward_backward(kernels.rnn_node, inputs, grad)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref, ref_grads = forward_backward(plain_node, inputs64, grad.double())
    assert out.shape == ref.shape and out.dtype == inputs[0].dtype
    assert rel_err(out, ref) < tol
    for a, b, t in zip(grads, ref_grads, inputs):
        assert a.shape == t.shape and a.dtype == t.dtype
        assert rel_err(a, b) < tol


# The last size spans several of the CPU kernel's chunks (16384 elements) and rows.
SIZES = [(1, 1), (5, 7), (3, 33), (67, 301)]


@pytest.mark.parametrize("J", [1, 3, 8])
@pytest.mark.parametrize("B,H", SIZES)
def test_float64_matches_plain_formula(device, J, B, H):
    inputs = make(J, B, H, device=device)
    grad = torch.randn(B, H, dtype=torch.float64, device=device)
    check_against_plain(inputs, grad, TOLERANCE[torch.float64])


@pytest.mark.parametrize("J", [1, 3, 8])
def test_float32_against_float64(device, J):
    inputs = make(J, 67, 301, dtype=torch.float32, device=device)
    grad = torch.randn(67, 301, device=device)
    check_against_plain(inputs, grad, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("probs_dtype", ["same", "float32"])
def test_reduced_precision_accumulates_in_float32(device, dtype, probs_dtype):
    states, ch, probs = make(3, 9, 40, device=device, requires_grad=False)
    states, ch = states.to(dtype), ch.to(dtype)
    probs = probs.to(dtype if probs_dtype == "same" else torch.float32)
    inputs = [t.requires_grad_() for t in (states, ch, probs)]
    grad = torch.randn(9, 40, device=device).to(dtype)
    out, grads = forward_backward(kernels.rnn_node, inputs, grad)
    # The oracle: the same 16-bit inputs in float64, each result rounded once to its dtype.
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref, ref_grads = forward_backward(plain_node, inputs64, grad.double())
    eps = torch.finfo(dtype).eps
    assert out.dtype == dtype and rel_err(out, ref) < 2 * eps
    for a, b, t in zip(grads, ref_grads, inputs):
        assert a.dtype == t.dtype and rel_err(a, b) < 2 * eps


def test_relu_kink_as_torch(device):
    """h exactly 0 (and c, s zero too) in some places: relu'(0) = 0, as torch's relu backward."""
    states, ch, probs = make(3, 4, 6, device=device, requires_grad=False)
    H = states.shape[-1]
    ch[:, ::2, H:] = 0.0
    ch[:, 1, :] = 0.0
    states[:, 1, :] = 0.0
    grad = torch.randn(4, 6, dtype=torch.float64, device=device)
    check_against_plain([t.requires_grad_() for t in (states, ch, probs)], grad, 1e-12)


def test_large_pre_activations(device):
    """sigmoid and tanh saturate without overflow: exp(-c) = inf gives sigmoid(c) = 0, not nan."""
    for dtype in (torch.float32, torch.float64):
        states, ch, probs = make(2, 3, 5, dtype=dtype, device=device, requires_grad=False)
        ch = ch * 500
        inputs = [t.requires_grad_() for t in (states, ch, probs)]
        grad = torch.randn(3, 5, dtype=dtype, device=device)
        out, grads = forward_backward(kernels.rnn_node, inputs, grad)
        assert all(torch.isfinite(t).all() for t in (out, *grads))
        check_against_plain(inputs, grad, TOLERANCE[dtype])


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded_probs"])
def test_non_contiguous_inputs(device, layout):
    states, ch, probs = make(3, 5, 7, device=device, requires_grad=False)
    if layout == "transposed":
        states = states.transpose(0, 1).contiguous().transpose(0, 1)
        ch = ch.permute(2, 0, 1).contiguous().permute(1, 2, 0)
        probs = probs.t().contiguous().t()
    elif layout == "sliced":
        states = torch.cat([states, states], -1)[..., ::2]
        ch = torch.cat([ch, ch], 1)[:, 5:]
        probs = torch.cat([probs, probs], 0)[::2]
    else:
        probs = probs[:1].expand(3, 4)
    assert not (states.is_contiguous() and ch.is_contiguous() and probs.is_contiguous())
    grad = torch.randn(7, 5, dtype=torch.float64, device=device).t()
    inputs = [t.requires_grad_() for t in (states, ch, probs)]
    check_against_plain(inputs, grad, 1e-12)


def test_empty_batch(device):
    inputs = make(3, 0, 5, dtype=torch.float32, device=device)
    out = kernels.rnn_node(*inputs)
    assert out.shape == (0, 5)
    grads = torch.autograd.grad(out.sum(), inputs)
    assert grads[0].shape == (3, 0, 5) and grads[1].shape == (3, 0, 10)
    assert torch.equal(grads[2], torch.zeros(3, 4, device=device))


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False),
                                  (False, False, True), (True, False, True)])
def test_computes_only_needed_grads(device, need):
    states, ch, probs = make(3, 5, 7, device=device, requires_grad=False)
    inputs = [t.requires_grad_(n) for t, n in zip((states, ch, probs), need)]
    wanted = [t for t in inputs if t.requires_grad]
    grad = torch.randn(5, 7, dtype=torch.float64, device=device)
    got = torch.autograd.grad(kernels.rnn_node(*inputs), wanted, grad)
    ref = torch.autograd.grad(plain_node(*inputs), wanted, grad)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12
    packed = torch.ops.darts_fast.rnn_node_backward(grad, states, ch, probs, list(need))
    for t, g, n in zip(inputs, packed, need):
        assert g.shape == (t.shape if n else (0,))


def test_probs_grad_is_deterministic(device):
    states, ch, probs = make(8, 64, 300, dtype=torch.float32, device=device)
    grad = torch.randn(64, 300, device=device)
    first = torch.autograd.grad(kernels.rnn_node(states, ch, probs), probs, grad)[0]
    for _ in range(3):
        again = torch.autograd.grad(kernels.rnn_node(states, ch, probs), probs, grad)[0]
        assert torch.equal(first, again)


def test_same_bits_with_any_thread_count():
    states, ch, probs = make(8, 64, 300, dtype=torch.float32)
    grad = torch.randn(64, 300)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = kernels.rnn_node(states, ch, probs)
            results.append((out, *torch.autograd.grad(out, (states, ch, probs), grad)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_gradcheck(device):
    inputs = make(3, 2, 5, device=device)
    assert torch.autograd.gradcheck(kernels.rnn_node, inputs)


def test_gradgradcheck(device):
    """Double backward (the exact hypergradient) goes through the formula in torch ops."""
    inputs = make(3, 2, 5, device=device)
    assert torch.autograd.gradgradcheck(kernels.rnn_node, inputs)


def test_double_backward_with_inputs_computed_from_one_another():
    """The search cell's case: the node's pre-activations come from its states. Under
    create_graph=True each input gets its partial derivative, as the plain backward gives it."""
    states, ch, probs = make(3, 4, 5)
    W = torch.randn(5, 10, dtype=torch.float64, requires_grad=True)
    ch = states @ W
    grad = torch.randn(4, 5, dtype=torch.float64)
    inputs = [states, W, probs]
    plain = torch.autograd.grad(kernels.rnn_node(states, ch, probs), inputs, grad,
                                retain_graph=True)
    got = torch.autograd.grad(kernels.rnn_node(states, ch, probs), inputs, grad,
                              create_graph=True)
    want = torch.autograd.grad(plain_node(states, ch, probs), inputs, grad, create_graph=True)
    for a, b, c in zip(got, want, plain):
        assert rel_err(a, b) < 1e-12 and rel_err(c, b) < 1e-12
    second = [torch.autograd.grad(g[1].sum() + g[2].sum(), [states, W, probs],
                                  retain_graph=True) for g in (got, want)]
    for a, b in zip(*second):
        assert rel_err(a, b) < 1e-10


def test_opcheck(device):
    for requires_grad in (True, False):
        inputs = make(3, 4, 6, dtype=torch.float32, device=device, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.darts_fast.rnn_node, tuple(inputs))
    states, ch, probs = make(3, 4, 6, dtype=torch.float32, device=device, requires_grad=False)
    grad = torch.randn(4, 6, device=device)
    for need in ([True, True, True], [False, True, False], [False, False, False]):
        torch.library.opcheck(torch.ops.darts_fast.rnn_node_backward,
                              (grad, states, ch, probs, need))


def test_compile_fullgraph(device):
    inputs = make(3, 4, 6, dtype=torch.float32, device=device)
    compiled = torch.compile(kernels.rnn_node, fullgraph=True, backend="aot_eager")
    grad = torch.randn(4, 6, device=device)
    out, grads = forward_backward(compiled, inputs, grad)
    ref, ref_grads = forward_backward(plain_node, inputs, grad)
    assert rel_err(out, ref) < 1e-6
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 1e-6


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("J,B,H", [(1, 1, 1), (3, 5, 7), (8, 67, 301), (8, 256, 300)])
def test_cuda_matches_cpu(dtype, J, B, H):
    cpu = [t.to(dtype) for t in make(J, B, H, requires_grad=False)]
    grad = torch.randn(B, H, dtype=torch.float64).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        inputs = [t.to(device).requires_grad_() for t in cpu]
        out, grads = forward_backward(kernels.rnn_node, inputs, grad.to(device))
        results.append([out, *grads])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2 * torch.finfo(dtype).eps)
    for a, b in zip(*results):
        assert a.device.type == "cuda" and a.dtype == b.dtype
        assert rel_err(a.cpu(), b) < tol


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_graph_capture():
    inputs = make(8, 64, 300, dtype=torch.float32, device="cuda")
    grad = torch.randn(64, 300, device="cuda")
    expected = forward_backward(kernels.rnn_node, inputs, grad)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        forward_backward(kernels.rnn_node, inputs, grad)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = forward_backward(kernels.rnn_node, inputs, grad)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured[0], expected[0])
    for a, b in zip(captured[1], expected[1]):
        assert torch.equal(a, b)


class TestBadInput:
    def test_states_not_3d(self):
        with pytest.raises(RuntimeError, match=r"states must be 3-D \[J, B, H\], got shape"):
            kernels.rnn_node(torch.ones(2, 3), torch.ones(1, 2, 6), torch.ones(1, 4))

    def test_no_predecessor(self):
        with pytest.raises(RuntimeError, match=r"at least one predecessor state \(J >= 1\)"):
            kernels.rnn_node(torch.ones(0, 2, 3), torch.ones(0, 2, 6), torch.ones(0, 4))

    @pytest.mark.parametrize("shape", [(2, 2, 3), (1, 3, 6), (1, 2, 5), (2, 6)])
    def test_ch_shape(self, shape):
        with pytest.raises(RuntimeError, match=r"ch must have shape \[J, B, 2H\] = \[1, 2, 6\]"):
            kernels.rnn_node(torch.ones(1, 2, 3), torch.ones(shape), torch.ones(1, 4))

    @pytest.mark.parametrize("shape", [(1, 5), (2, 4), (4,)])
    def test_probs_shape(self, shape):
        with pytest.raises(RuntimeError, match=r"probs must have shape \[J, 4\] = \[1, 4\]"):
            kernels.rnn_node(torch.ones(1, 2, 3), torch.ones(1, 2, 6), torch.ones(shape))

    def test_integer_states(self):
        with pytest.raises(RuntimeError, match="states must be float32, float64"):
            kernels.rnn_node(torch.ones(1, 2, 3, dtype=torch.int64),
                             torch.ones(1, 2, 6, dtype=torch.int64), torch.ones(1, 4))

    def test_ch_dtype(self):
        with pytest.raises(RuntimeError, match="ch has dtype Double but states have dtype Float"):
            kernels.rnn_node(torch.ones(1, 2, 3), torch.ones(1, 2, 6, dtype=torch.float64),
                             torch.ones(1, 4))

    def test_probs_dtype(self):
        with pytest.raises(RuntimeError, match=r"probs must have the dtype of states \(Float\), "
                                               r"got Double"):
            kernels.rnn_node(torch.ones(1, 2, 3), torch.ones(1, 2, 6),
                             torch.ones(1, 4, dtype=torch.float64))
        with pytest.raises(RuntimeError, match=r"probs must have the dtype of states \(Half\) or "
                                               r"float32, got Double"):
            kernels.rnn_node(torch.ones(1, 2, 3, dtype=torch.half),
                             torch.ones(1, 2, 6, dtype=torch.half),
                             torch.ones(1, 4, dtype=torch.float64))

    @pytest.mark.parametrize("where", ["ch", "probs"])
    def test_meta_among_cpu_tensors(self, where):
        # The dispatcher sends such a call to the fake kernel, which must refuse it too.
        ch = torch.ones(1, 2, 6, device="meta" if where == "ch" else "cpu")
        probs = torch.ones(1, 4, device="meta" if where == "probs" else "cpu")
        with pytest.raises(RuntimeError, match=f"{where} is on meta but states is on cpu"):
            kernels.rnn_node(torch.ones(1, 2, 3), ch, probs)

    @pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
    def test_cuda_device_mismatch(self):
        with pytest.raises(RuntimeError, match="ch is on cpu but states are on cuda"):
            kernels.rnn_node(torch.ones(1, 2, 3, device="cuda"), torch.ones(1, 2, 6),
                             torch.ones(1, 4, device="cuda"))
        with pytest.raises(RuntimeError, match="probs is on cpu but states are on cuda"):
            kernels.rnn_node(torch.ones(1, 2, 3, device="cuda"),
                             torch.ones(1, 2, 6, device="cuda"), torch.ones(1, 4))

    def test_backward_grad_shape_and_dtype(self):
        args = (torch.ones(1, 2, 3), torch.ones(1, 2, 6), torch.ones(1, 4), [True] * 3)
        with pytest.raises(RuntimeError, match=r"grad must have the output's shape \[B, H\] = "
                                               r"\[2, 3\], got \[3, 2\]"):
            torch.ops.darts_fast.rnn_node_backward(torch.ones(3, 2), *args)
        with pytest.raises(RuntimeError, match="grad must have the dtype and device of states"):
            torch.ops.darts_fast.rnn_node_backward(torch.ones(2, 3, dtype=torch.float64), *args)
