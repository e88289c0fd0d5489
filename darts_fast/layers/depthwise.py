r"""Depthwise convolution with a faster gradient for the input.

For :math:`y = \mathrm{conv}(x, w)` with stride :math:`s`, padding :math:`p`, dilation :math:`d`
and one filter per channel, the input gradient is a transposed convolution, which the CPU
backends run far slower than a forward convolution when the filter is dilated or strided (up to
50x on the dilated 5x5 of DARTS). The same gradient is a forward convolution of the
zero-upsampled output gradient with the flipped filter (used on the CPU):

.. math::
    \frac{\partial L}{\partial x} = \mathrm{conv}\big(\mathrm{pad}_{q}(\uparrow_s g),\;
    \mathrm{flip}(w)\big), \qquad q = d\,(k-1) - p,

with :math:`\uparrow_s g` placing :math:`g` on every :math:`s`-th pixel.

The weight gradient is the backend's own, except for a dilated filter at stride 1 (DARTS'
``dil_conv``), whose dilated weight gradient oneDNN's AVX2 code (AMD and older Intel CPUs) runs
4-5x slower than its undilated one on channels_last inputs. With dilation :math:`d` and padding
:math:`p` a multiple of :math:`d`, an output pixel of parity :math:`(a, b)` modulo :math:`d` reads
input pixels of that parity alone, so the gradient is the undilated filter's (padding
:math:`p/d`) over the :math:`d^2` parity components :math:`x[:, :, a::d, b::d]` and
:math:`g[:, :, a::d, b::d]` stacked on the batch: the same sums, regrouped.

Values equal ``F.conv2d``'s within float rounding; the backward is itself differentiable
(double backward works).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import dense_layout


def is_depthwise(conv):
    return (isinstance(conv, nn.Conv2d) and conv.bias is None and conv.groups > 1
            and conv.groups == conv.in_channels == conv.out_channels
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))


def conv2d(conv, x):
    """``conv(x)``, through the faster input gradient when ``conv`` is depthwise and runs on the
    CPU (cuDNN's own depthwise gradient is left in place on CUDA); a trace (TorchScript export)
    records the plain convolution, which it can save."""
    if x.device.type != "cpu" or torch.jit.is_tracing() or not is_depthwise(conv):
        return conv(x)
    return _DepthwiseConv2d.apply(x, conv.weight, conv.stride, conv.padding, conv.dilation)


def _input_grad(g, w, input_shape, stride, padding, dilation):
    channels = w.shape[0]
    k = w.shape[-2:]
    if stride != (1, 1):
        size = [(g.shape[2] - 1) * stride[0] + 1, (g.shape[3] - 1) * stride[1] + 1]
        up = torch.empty(g.shape[0], channels, *size, dtype=g.dtype, device=g.device,
                         memory_format=dense_layout(g)).zero_()
        up[:, :, ::stride[0], ::stride[1]] = g
    else:
        up = g
    pads = []
    for axis in (1, 0):  # F.pad takes the last dimension first
        q = dilation[axis] * (k[axis] - 1) - padding[axis]
        covered = up.shape[2 + axis] + dilation[axis] * (k[axis] - 1) - 2 * padding[axis]
        pads += [q, q + input_shape[2 + axis] - covered]
    return F.conv2d(F.pad(up, pads), w.flip(-1, -2), None, 1, 0, dilation, channels)


def _weight_grad(g, x, w, stride, padding, dilation):
    channels = w.shape[0]
    d = dilation[0]
    if stride == (1, 1) and d > 1 and dilation[1] == d and \
            all(n % d == 0 for n in (*padding, *x.shape[2:], *g.shape[2:])):
        x, g = (torch.cat([t[:, :, a::d, b::d] for a in range(d) for b in range(d)])
                for t in (x, g))
        padding, dilation = (padding[0] // d, padding[1] // d), (1, 1)
    return torch.ops.aten.convolution_backward(
        g, x, w, None, stride, padding, dilation, False, [0, 0], channels,
        [False, True, False])[1]


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, w, stride, padding, dilation):
        return F.conv2d(x, w, None, stride, padding, dilation, w.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, stride, padding, dilation = inputs
        ctx.save_for_backward(x, w)
        ctx.conv = (stride, padding, dilation)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            if any(q < 0 for q in (dilation[i] * (w.shape[2 + i] - 1) - padding[i]
                                   for i in (0, 1))):
                grad_x = torch.nn.grad.conv2d_input(x.shape, w, g, stride, padding, dilation,
                                                    w.shape[0])
            else:
                grad_x = _input_grad(g, w, x.shape, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(g, x, w, stride, padding, dilation)
        return grad_x, grad_w, None, None, None
