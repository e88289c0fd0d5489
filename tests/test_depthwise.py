"""The depthwise convolution with the forward-convolution input gradient."""
import pytest
import torch
import torch.nn as nn

from darts_fast.layers import depthwise

# (channels, kernel, stride, padding, dilation, height): every depthwise conv of DARTS, and odd
# sizes whose last rows a strided filter does not reach.
CASES = [(2, 3, 1, 1, 1, 9), (2, 5, 2, 2, 1, 9), (2, 3, 2, 2, 2, 8), (2, 5, 2, 4, 2, 11),
         (3, 5, 1, 4, 2, 7), (2, 3, 1, 0, 1, 6), (2, 3, 1, 0, 2, 9)]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("C,k,s,p,d,H", CASES)
def test_gradcheck_and_gradgradcheck(C, k, s, p, d, H, layout):
    conv = nn.Conv2d(C, C, k, s, p, d, groups=C, bias=False).double()
    x = torch.randn(1, C, H, H + 1, dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_()

    def fn(x, w):
        return depthwise._DepthwiseConv2d.apply(x, w, conv.stride, conv.padding, conv.dilation)

    assert torch.equal(fn(x, conv.weight), conv(x))
    assert torch.autograd.gradcheck(fn, (x, conv.weight))
    assert torch.autograd.gradgradcheck(fn, (x, conv.weight))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("k,p,d,H,W", [(3, 2, 2, 8, 12), (5, 4, 2, 16, 8), (3, 3, 3, 9, 6),
                                       (3, 0, 2, 8, 8), (3, 2, 2, 7, 8), (3, 1, 2, 8, 8)])
def test_dilated_weight_gradient_over_parity_components(k, p, d, H, W, layout):
    """At stride 1 with padding and sizes that are multiples of the dilation, the weight gradient
    is taken over the pixel-parity components; elsewhere (odd size, padding 1 with dilation 2)
    by the backend: the same as the module's, in float64."""
    conv = nn.Conv2d(3, 3, k, 1, p, d, groups=3, bias=False).double()
    x = torch.randn(2, 3, H, W, dtype=torch.float64).contiguous(memory_format=layout)
    g = torch.randn(conv(x).shape, dtype=torch.float64).contiguous(memory_format=layout)
    expected = torch.autograd.grad(conv(x), conv.weight, g)[0]
    got = depthwise._weight_grad(g, x, conv.weight, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    w = conv.weight.detach().requires_grad_()
    xs = x[:1, :1].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x, w: depthwise._DepthwiseConv2d.apply(x, w, conv.stride, conv.padding,
                                                      conv.dilation), (xs, w[:1]))


def test_matches_module_gradients_in_float32():
    conv = nn.Conv2d(16, 16, 5, 2, 4, 2, groups=16, bias=False)
    x = torch.randn(8, 16, 32, 32, requires_grad=True)
    g = torch.randn(8, 16, 16, 16)
    expected = torch.autograd.grad(conv(x), [x, conv.weight], g)
    got = torch.autograd.grad(depthwise.conv2d(conv, x), [x, conv.weight], g)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_depthwise_convs_take_the_custom_path():
    assert depthwise.is_depthwise(nn.Conv2d(4, 4, 3, groups=4, bias=False))
    assert not depthwise.is_depthwise(nn.Conv2d(4, 4, 1, bias=False))
    assert not depthwise.is_depthwise(nn.Conv2d(4, 4, 3, groups=4, bias=True))
    assert not depthwise.is_depthwise(nn.Conv2d(4, 8, 3, groups=4, bias=False))


def test_evaluation_network_takes_the_fast_path_with_the_same_gradients(monkeypatch):
    import darts_fast.spaces.cnn.eval_model as eval_model
    from darts_fast import DARTS_V2

    torch.manual_seed(0)
    net = eval_model.NetworkCIFAR(4, 10, 3, True, DARTS_V2).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)  # the auxiliary head needs 8x8 at its cell

    def grads():
        logits, aux = net(x)
        return [logits, *torch.autograd.grad(logits.sum() + aux.sum(), list(net.parameters()))]

    calls = []
    real = depthwise._DepthwiseConv2d.apply
    monkeypatch.setattr(depthwise._DepthwiseConv2d, "apply",
                        lambda *a: calls.append(1) or real(*a))
    fast = grads()
    assert calls  # the cells' depthwise convolutions went through darts_fast.layers.depthwise
    monkeypatch.setattr(eval_model, "forward_fast", lambda op, h: op(h))  # the modules' forward
    calls.clear()
    plain = grads()
    assert not calls
    for a, b in zip(fast, plain):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
