"""batch_norm_weighted_sum, the weighted sum with the candidates' final BatchNorm folded in,
against nn.functional.batch_norm followed by the weighted sum (float64 and float32), gradcheck,
opcheck, and what bad input gets; with ``rest`` and ``groups``, against PC-DARTS' concatenation
and view-transpose-view shuffle of the result."""
import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCE, rel_err

from darts_fast import kernels

LAYOUTS = [torch.contiguous_format, torch.channels_last]


def inputs(device, dtype, K=4, shape=(3, 5, 4, 6), layout=torch.contiguous_format, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = [(2 * torch.randn(shape, generator=g, dtype=torch.float64) + k).to(device, dtype)
          .contiguous(memory_format=layout).requires_grad_() for k in range(K)]
    w = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0).to(device, dtype)
    mean = torch.randn(K, shape[1], generator=g, dtype=torch.float64).to(device)
    var = torch.rand(K, shape[1], generator=g, dtype=torch.float64).to(device) + 0.5
    return ys, w.requires_grad_(), mean, var


def expected(ys, w, mean, var, batch_stats, eps):
    """Each y through F.batch_norm (training mode for the batch rows, the given statistics for
    the others), then weighted: what the original mixed op computes."""
    out, stats = 0, []
    for k, y in enumerate(ys):
        rm, rv = mean[k].clone().to(y.dtype), var[k].clone().to(y.dtype)
        normalised = F.batch_norm(y, rm, rv, training=batch_stats[k], momentum=1.0, eps=eps)
        out = out + w[k] * normalised
        stats.append((rm, rv))  # momentum 1: the batch mean and unbiased variance
    return out, stats


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_batch_norm_then_weighted_sum(device, dtype, layout):
    ys, w, mean, var = inputs(device, dtype, layout=layout)
    batch_stats, eps = [True, False, True, True], 1e-5
    invstd = torch.rsqrt(var + eps)
    out, used_mean, used_invstd, batch_var = kernels.batch_norm_weighted_sum(
        ys, w, mean, invstd, batch_stats, eps)
    ref, stats = expected(ys, w, mean, var, batch_stats, eps)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and rel_err(out, ref) < tol
    n = ys[0].numel() // ys[0].shape[1]
    for k in range(len(ys)):
        if batch_stats[k]:
            assert rel_err(used_mean[k], stats[k][0]) < tol
            assert rel_err(batch_var[k] * n / (n - 1), stats[k][1]) < tol
        else:
            assert torch.equal(used_mean[k], mean[k].to(used_mean.dtype))
            assert rel_err(used_invstd[k], invstd[k]) < tol and not batch_var[k].any()
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [*ys, w], g)
    want = torch.autograd.grad(ref, [*ys, w], g)
    for a, b in zip(got, want):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_gradcheck_and_gradgradcheck(layout):
    ys, w, mean, var = inputs("cpu", torch.float64, K=3, shape=(2, 3, 3, 2), layout=layout)
    invstd = torch.rsqrt(var + 1e-3)

    def fn(*args):
        return kernels.batch_norm_weighted_sum(args[:-1], args[-1], mean, invstd,
                                               [True, False, True], 1e-3)[0]

    assert torch.autograd.gradcheck(fn, (*ys, w))
    assert torch.autograd.gradgradcheck(fn, (*ys, w))


def test_gradients_without_the_weight_gradient_or_batch_rows():
    """The paths that keep no ys: fixed statistics and constant weights."""
    ys, w, mean, var = inputs("cpu", torch.float64)
    w = w.detach()
    invstd = torch.rsqrt(var + 1e-5)
    out = kernels.batch_norm_weighted_sum(ys, w, mean, invstd, [False] * 4, 1e-5)[0]
    ref, _ = expected(ys, w, mean, var, [False] * 4, 1e-5)
    g = torch.randn_like(out, requires_grad=True)
    got = torch.autograd.grad(out, ys, g, create_graph=True)
    want = torch.autograd.grad(ref, ys, g, create_graph=True)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-12
    assert rel_err(torch.autograd.grad(got[0].sum(), g)[0],
                   torch.autograd.grad(want[0].sum(), g)[0]) < 1e-12


def test_double_backward_with_ys_computed_from_one_another():
    """The mixed op's case: the identity's output is the input of the other candidates. Under
    create_graph=True each y gets its partial derivative, as the plain backward gives it, and
    the second derivatives are those of the formula in torch ops."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(3, generator=g, dtype=torch.float64), 0).requires_grad_()
    mean = torch.zeros(3, 4, dtype=torch.float64)
    var = torch.ones(3, 4, dtype=torch.float64)
    batch_stats = [False, True, True]
    ys = [x, torch.relu(x), F.avg_pool2d(x, 3, 1, 1)]
    out = kernels.batch_norm_weighted_sum(ys, w, mean, torch.rsqrt(var + 1e-5), batch_stats,
                                          1e-5)[0]
    ref, _ = expected(ys, w, mean, var, batch_stats, 1e-5)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    plain = torch.autograd.grad(out, [x, w], grad, retain_graph=True)
    got = torch.autograd.grad(out, [x, w], grad, create_graph=True)
    want = torch.autograd.grad(ref, [x, w], grad, create_graph=True)
    for a, b, c in zip(got, want, plain):
        assert rel_err(a, b) < 1e-12 and rel_err(c, b) < 1e-12
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got[0] * v).sum() + got[1].sum(), [x, w],
                                        retain_graph=True),
                    torch.autograd.grad((want[0] * v).sum() + want[1].sum(), [x, w])):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_opcheck(layout):
    ys, w, mean, var = inputs("cpu", torch.float32, layout=layout)
    args = (ys, w, mean.float(), torch.rsqrt(var + 1e-5).float(), [True, False, True, False], 1e-5)
    torch.library.opcheck(torch.ops.darts_fast.batch_norm_weighted_sum.default, args)
    g = torch.randn(ys[0].shape)
    detached = [y.detach() for y in ys]
    stats = kernels.batch_norm_weighted_sum(*args)[1:3]
    torch.library.opcheck(torch.ops.darts_fast.batch_norm_weighted_sum_backward.default,
                          (g, detached, w.detach(), *stats, args[4], [True, False, True, True],
                           True))


def assert_same_bits_on_every_run_and_thread_count(once):
    """``once()``'s tensors twice with the threads at hand and once with one thread: equal bits."""
    first = once()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = once()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, once(), single):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_same_bits_on_every_run_and_thread_count():
    ys, w, mean, var = inputs("cpu", torch.float32, shape=(16, 8, 16, 16))
    invstd = torch.rsqrt(var + 1e-5).float()

    def once():
        out = kernels.batch_norm_weighted_sum(ys, w, mean.float(), invstd, [True] * 4, 1e-5)
        return [out[0], *torch.autograd.grad(out[0], [*ys, w], torch.ones_like(out[0]))]

    assert_same_bits_on_every_run_and_thread_count(once)


def test_empty_batch():
    ys = [torch.zeros(0, 3, 4, 4, requires_grad=True) for _ in range(2)]
    w = torch.tensor([0.5, 0.5], requires_grad=True)
    out, mean, invstd, var = kernels.batch_norm_weighted_sum(ys, w, torch.zeros(2, 3),
                                                              torch.ones(2, 3), [True, True], 1e-5)
    assert out.shape == (0, 3, 4, 4)
    grads = torch.autograd.grad(out, [*ys, w], torch.zeros_like(out))
    assert grads[0].shape == (0, 3, 4, 4) and torch.equal(grads[-1], torch.zeros(2))


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(mean=torch.zeros(3, 5)), r"mean must have shape \[K, C\] = \[4, 5\]"),
    (lambda a: a.update(invstd=torch.ones(4, 4)), r"invstd must have shape \[K, C\] = \[4, 5\]"),
    (lambda a: a.update(weights=torch.ones(3)), "weights must be 1-D with one entry per tensor"),
    (lambda a: a.update(batch_stats=[True]), "batch_stats must have one flag per tensor in ys"),
    (lambda a: a.update(ys=[torch.randn(3, 5, 4)] * 4), "ys must be 4-D"),
    (lambda a: a.update(ys=a["ys"][:3] + [torch.randn(3, 5, 4, 5)]), r"ys\[3\] is"),
    (lambda a: a.update(mean=torch.zeros(4, 5, requires_grad=True)), "mean is a constant"),
])
def test_bad_input_is_named(change, message):
    ys, w, mean, var = inputs("cpu", torch.float32)
    args = dict(ys=[y.detach() for y in ys], weights=w.detach(), mean=mean.float(),
                invstd=var.float(), batch_stats=[True] * 4, eps=1e-5)
    change(args)
    with pytest.raises((RuntimeError, ValueError), match=message):
        kernels.batch_norm_weighted_sum(**args)


def authors_shuffle(mixed, rest, groups):
    """PC-DARTS' concatenation and channel shuffle, as its authors wrote them."""
    ans = torch.cat([mixed, rest], dim=1)
    b, c, h, w = ans.shape
    return ans.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


def rests(device, dtype, y, groups, layout, kind):
    """rest (N, (groups - 1) C, H, W) as a dense tensor, as the channel slice of a larger
    tensor that the mixed op passes (read in place), or as a strided tensor (copied)."""
    n, c, h, w = y.shape
    g = torch.Generator().manual_seed(7)
    if kind == "slice":
        whole = torch.randn(n, groups * c, h, w, generator=g, dtype=torch.float64)
        rest = whole.to(device, dtype).contiguous(memory_format=layout)[:, c:]
    elif kind == "strided":
        rest = torch.randn(n, (groups - 1) * c, h, 2 * w, generator=g,
                           dtype=torch.float64).to(device, dtype)[..., ::2]
    else:
        rest = torch.randn(n, (groups - 1) * c, h, w, generator=g, dtype=torch.float64)
        rest = rest.to(device, dtype).contiguous(memory_format=layout)
    return rest.requires_grad_()


@pytest.mark.parametrize("kind", ["dense", "slice", "strided"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("groups", [2, 4])
def test_shuffled_output_matches_cat_and_shuffle(device, dtype, layout, groups, kind):
    ys, w, mean, var = inputs(device, dtype, layout=layout)
    rest = rests(device, dtype, ys[0], groups, layout, kind)
    batch_stats, eps = [True, False, True, True], 1e-5
    invstd = torch.rsqrt(var + eps)
    out, used_mean, _, batch_var = kernels.batch_norm_weighted_sum(
        ys, w, mean, invstd, batch_stats, eps, rest, groups)
    plain = kernels.batch_norm_weighted_sum(ys, w, mean, invstd, batch_stats, eps)
    ref = authors_shuffle(expected(ys, w, mean, var, batch_stats, eps)[0], rest, groups)
    tol = TOLERANCE[dtype]
    assert out.shape == ref.shape and out.is_contiguous(memory_format=layout)
    assert rel_err(out, ref) < tol
    assert torch.equal(out[:, ::groups], plain[0])  # the same sum, only placed elsewhere
    assert torch.equal(used_mean, plain[1]) and torch.equal(batch_var, plain[3])
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [*ys, w, rest], g)
    want = torch.autograd.grad(ref, [*ys, w, rest], g)
    for a, b in zip(got, want):
        assert rel_err(a, b) < tol
    assert torch.equal(got[-1], want[-1])  # the rest's gradient is a copy of grad's channels


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_shuffled_output_with_more_candidates_than_one_launch_takes(device, layout):
    """K=10 (the CUDA kernels take 8 candidates per launch, the last launch shuffles)."""
    ys, w, mean, var = inputs(device, torch.float32, K=10, layout=layout)
    rest = rests(device, torch.float32, ys[0], 3, layout, "slice")
    batch_stats, eps = [k % 3 != 0 for k in range(10)], 1e-5
    out = kernels.batch_norm_weighted_sum(ys, w, mean, torch.rsqrt(var + eps), batch_stats, eps,
                                          rest, 3)[0]
    ref = authors_shuffle(expected(ys, w, mean, var, batch_stats, eps)[0], rest, 3)
    assert rel_err(out, ref) < TOLERANCE[torch.float32]
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [*ys, w, rest], g),
                    torch.autograd.grad(ref, [*ys, w, rest], g)):
        assert rel_err(a, b) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_shuffled_gradients_keep_the_layout_without_kept_ys(layout):
    """Fixed statistics and constant weights: the ys are not kept, and the gradients still take
    their layout."""
    ys, w, mean, var = inputs("cpu", torch.float64, layout=layout)
    rest = rests("cpu", torch.float64, ys[0], 2, layout, "dense")
    out = kernels.batch_norm_weighted_sum(ys, w.detach(), mean, torch.rsqrt(var + 1e-5),
                                          [False] * 4, 1e-5, rest, 2)[0]
    ref = authors_shuffle(expected(ys, w.detach(), mean, var, [False] * 4, 1e-5)[0], rest, 2)
    g = torch.randn_like(out)
    for a, b, x in zip(torch.autograd.grad(out, [*ys, rest], g),
                       torch.autograd.grad(ref, [*ys, rest], g), [*ys, rest]):
        assert rel_err(a, b) < 1e-12 and a.stride() == x.stride()


def test_shuffled_same_bits_on_every_run_and_thread_count():
    """channels_last with few channels (the tiled rows) and a shuffle."""
    ys, w, mean, var = inputs("cpu", torch.float32, K=7, shape=(64, 4, 16, 16),
                              layout=torch.channels_last)
    rest = rests("cpu", torch.float32, ys[0], 4, torch.channels_last, "slice")
    invstd = torch.rsqrt(var + 1e-5).float()

    def once():
        out = kernels.batch_norm_weighted_sum(ys, w, mean.float(), invstd, [True] * 7, 1e-5,
                                              rest, 4)
        return [out[0], *torch.autograd.grad(out[0], [*ys, w, rest], torch.ones_like(out[0]))]

    assert_same_bits_on_every_run_and_thread_count(once)


def test_shuffled_gradcheck_and_gradgradcheck():
    ys, w, mean, var = inputs("cpu", torch.float64, K=3, shape=(2, 3, 3, 2),
                              layout=torch.channels_last)
    rest = rests("cpu", torch.float64, ys[0], 3, torch.channels_last, "slice")
    invstd = torch.rsqrt(var + 1e-3)

    def fn(*args):
        return kernels.batch_norm_weighted_sum(args[:3], args[3], mean, invstd,
                                               [True, False, True], 1e-3, args[4], 3)[0]

    assert torch.autograd.gradcheck(fn, (*ys, w, rest))
    assert torch.autograd.gradgradcheck(fn, (*ys, w, rest))


def test_shuffled_gradient_of_the_rest_alone():
    """Only rest needs a gradient: it is grad's rest channels."""
    ys, w, mean, var = inputs("cpu", torch.float64)
    rest = rests("cpu", torch.float64, ys[0], 4, torch.contiguous_format, "dense")
    out = kernels.batch_norm_weighted_sum([y.detach() for y in ys], w.detach(), mean,
                                          torch.rsqrt(var + 1e-5), [True] * 4, 1e-5, rest, 4)[0]
    g = torch.randn_like(out)
    (grad_rest,) = torch.autograd.grad(out, rest, g)
    assert torch.equal(grad_rest, g.view(3, 5, 4, 4, 6)[:, :, 1:].transpose(1, 2)
                       .reshape(rest.shape))


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_shuffled_opcheck(layout):
    ys, w, mean, var = inputs("cpu", torch.float32, layout=layout)
    rest = rests("cpu", torch.float32, ys[0], 4, layout, "slice")
    args = (ys, w, mean.float(), torch.rsqrt(var + 1e-5).float(), [True, False, True, False], 1e-5,
            rest, 4)
    torch.library.opcheck(torch.ops.darts_fast.batch_norm_weighted_sum.default, args)
    stats = kernels.batch_norm_weighted_sum(*args)[1:3]
    g = torch.randn(3, 20, 4, 6).contiguous(memory_format=layout)
    torch.library.opcheck(torch.ops.darts_fast.batch_norm_weighted_sum_backward.default,
                          (g, [y.detach() for y in ys], w.detach(), *stats, args[4],
                           [True, False, True, True], True, 4, True))


def test_shuffled_empty_batch():
    ys = [torch.zeros(0, 3, 4, 4, requires_grad=True) for _ in range(2)]
    rest = torch.zeros(0, 3, 4, 4, requires_grad=True)
    w = torch.tensor([0.5, 0.5], requires_grad=True)
    out = kernels.batch_norm_weighted_sum(ys, w, torch.zeros(2, 3), torch.ones(2, 3),
                                          [True, True], 1e-5, rest, 2)[0]
    assert out.shape == (0, 6, 4, 4)
    grads = torch.autograd.grad(out, [*ys, w, rest], torch.zeros_like(out))
    assert grads[-1].shape == (0, 3, 4, 4) and torch.equal(grads[-2], torch.zeros(2))


@pytest.mark.parametrize("rest,groups,message", [
    (torch.zeros(3, 14, 4, 6), 4,
     r"rest must have shape \[N, \(groups - 1\) \* C, H, W\] = \[3, 15, 4, 6\], got \[3, 14"),
    (torch.zeros(3, 15, 4, 6, dtype=torch.float64), 4, "rest must have the dtype"),
    (torch.zeros(3, 10, 4, 6), 1, "rest needs groups >= 2"),
    (None, 3, "groups > 1 needs rest"),
    (torch.zeros(3, 10, 4, 6), 0, "groups must be >= 1"),
])
def test_bad_rest_is_named(rest, groups, message):
    ys, w, mean, var = inputs("cpu", torch.float32)
    with pytest.raises(RuntimeError, match=message):
        kernels.batch_norm_weighted_sum([y.detach() for y in ys], w.detach(), mean.float(),
                                        var.float(), [True] * 4, 1e-5, rest, groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_on_cuda(dtype):
    """float16/bfloat16 ys with float32 statistics: the float32 result, rounded once."""
    ys, w, mean, var = inputs("cuda", torch.float32, K=9, shape=(4, 6, 8, 8))
    args = (mean.float(), torch.rsqrt(var + 1e-5).float(), [k % 3 != 0 for k in range(9)], 1e-5)
    exact = kernels.batch_norm_weighted_sum(ys, w, *args)
    low = kernels.batch_norm_weighted_sum([y.detach().to(dtype) for y in ys], w.detach().float(),
                                          *args)
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    assert low[0].dtype == dtype and rel_err(low[0], exact[0]) < tol
    assert low[1].dtype == torch.float32 and rel_err(low[1], exact[1]) < tol
