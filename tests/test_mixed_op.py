"""The fused MixedOp against the reference (original) MixedOp."""
import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCE, rel_err

import darts_fast
from darts_fast import reference
from darts_fast.spaces.cnn import mixed_op as fused_module
from darts_fast.spaces.cnn.network import Cell


def pair(C, stride, device, dtype, seed=0, fold_batch_norm=True):
    torch.manual_seed(seed)
    fused = darts_fast.MixedOp(C, stride, fold_batch_norm=fold_batch_norm).to(device=device,
                                                                             dtype=dtype)
    torch.manual_seed(seed)
    ref = reference.MixedOp(C, stride).to(device=device, dtype=dtype)
    return fused, ref


def run(op, x, w, g):
    out = op(x, w)
    grads = torch.autograd.grad(out, [x, w, *op.parameters()], g)
    return out, grads


# Batch 64 at C=16@32x32 is the DARTS search shape; smaller batches keep the CPU suite quick.
CASES = [(16, 32, 1, 4), (16, 32, 2, 4), (32, 16, 1, 4), (32, 16, 2, 4), (64, 8, 1, 8),
         (64, 8, 2, 8)]


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C,HW,stride,batch", CASES)
def test_matches_reference(device, dtype, C, HW, stride, batch, fold):
    """Training mode twice (running statistics updated twice), then eval mode."""
    fused, ref = pair(C, stride, device, dtype, fold_batch_norm=fold)
    tol = TOLERANCE[dtype]
    for mode in ("train", "train", "eval"):
        fused.train(mode == "train")
        ref.train(mode == "train")
        x = torch.randn(batch, C, HW, HW, device=device, dtype=dtype, requires_grad=True)
        if device.type == "cpu" and mode == "eval":
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.softmax(torch.randn(8, device=device, dtype=dtype), 0).requires_grad_()
        g = torch.randn(batch, C, HW // stride, HW // stride, device=device, dtype=dtype)
        out_f, grads_f = run(fused, x, w, g)
        out_r, grads_r = run(ref, x, w, g)
        assert rel_err(out_f, out_r) < tol
        for a, b in zip(grads_f, grads_r):
            assert rel_err(a, b) < tol
        for (name, bf), br in zip(fused.named_buffers(), ref.buffers()):  # running statistics
            assert rel_err(bf, br) < tol, name


def test_same_modules_names_and_init():
    fused, ref = pair(8, 2, "cpu", torch.float32, seed=3)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(fused.state_dict()) == list(ref.state_dict())
    for a, b in zip(fused.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    ref.load_state_dict(fused.state_dict())


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
def test_none_skipped_and_identity_not_copied(monkeypatch, fold):
    seen = {}
    name = "batch_norm_weighted_sum" if fold else "weighted_sum"
    real = getattr(fused_module, name)

    def spy(xs, w, *rest):
        seen["xs"], seen["w"] = list(xs), w
        return real(xs, w, *rest)

    monkeypatch.setattr(fused_module, name, spy)
    op = darts_fast.MixedOp(4, 1, fold_batch_norm=fold)
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(8), 0)
    op(x, w)
    assert len(seen["xs"]) == 7  # 'none' is neither computed nor passed
    assert torch.equal(seen["w"], w[1:])
    identity = darts_fast.PRIMITIVES.index("skip_connect") - 1
    assert seen["xs"][identity] is x


def test_inside_cell_like_the_original():
    torch.manual_seed(0)
    fused = Cell(4, 4, 12, 12, 6, True, False, darts_fast.MixedOp)
    torch.manual_seed(0)
    ref = Cell(4, 4, 12, 12, 6, True, False, reference.MixedOp)
    s0, s1 = torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)
    weights = torch.softmax(torch.randn(14, 8), -1)
    assert rel_err(fused(s0, s1, weights), ref(s0, s1, weights)) < 1e-5


def test_compile_fullgraph():
    torch.manual_seed(0)
    op = darts_fast.MixedOp(4, 1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.softmax(torch.randn(8), 0).requires_grad_()
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    g = torch.randn(2, 4, 8, 8)
    out_c = compiled(x, w)
    grads_c = torch.autograd.grad(out_c, [x, w], g)
    out_e = op(x, w)
    grads_e = torch.autograd.grad(out_e, [x, w], g)
    assert rel_err(out_c, out_e) < 1e-6
    for a, b in zip(grads_c, grads_e):
        assert rel_err(a, b) < 1e-6


def test_bad_weights():
    op = darts_fast.MixedOp(4, 1)
    with pytest.raises(ValueError, match="weights must be 1-D with one entry per candidate"):
        op(torch.randn(1, 4, 4, 4), torch.ones(7))
    with pytest.raises(ValueError, match="at least one operation besides 'none'"):
        darts_fast.MixedOp(4, 1, primitives=["none"])
    with pytest.raises(ValueError, match="primitives: unknown operation.s. 'conv_9x9'; known: "):
        darts_fast.MixedOp(4, 1, primitives=["conv_9x9", "none"])


def test_custom_primitives():
    torch.manual_seed(0)
    prims = ["max_pool_3x3", "none", "sep_conv_3x3"]
    fused = darts_fast.MixedOp(4, 1, primitives=prims)
    torch.manual_seed(0)
    ref = reference.MixedOp(4, 1, primitives=prims)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float32)
    w = torch.softmax(torch.randn(3), 0)
    assert rel_err(fused(x, w), ref(x, w)) < 1e-6
    assert isinstance(fused._ops[1], nn.Module)


def test_folded_batch_norms_must_share_eps():
    op = darts_fast.MixedOp(4, 1)
    op._ops[4].op[-1].eps = 1e-3  # sep_conv_3x3's final BatchNorm
    with pytest.raises(ValueError, match="folded BatchNorms must share one eps"):
        op(torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(8), 0))
    op.fold_batch_norm = False
    assert op(torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(8), 0)).shape == (2, 4, 6, 6)
