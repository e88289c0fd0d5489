"""What the op families share: loading the compiled library, registering a family's fake kernels
and autograd where its operators exist, the device check of every fake kernel, and the layout and
statistics dtype of ``batch_norm_weighted_sum`` (which the layers also use).

The library, ``darts_fast._C``, is loaded here and nowhere else. When it cannot be loaded (not
built, or built for another torch) or lacks an operator (built from other sources), the package
still imports: nothing is registered for the missing operators and every kernel function that
needs one raises one RuntimeError when called, naming what failed and how to rebuild.
"""
import functools

import torch

REBUILD = "pip install --no-build-isolation --no-deps -e ."

try:
    from .. import _C  # the schemas and kernels, registered when the library loads
except (ImportError, OSError) as error:  # not built, or built against another torch
    _C, LOAD_ERROR = None, error
else:
    LOAD_ERROR = None

ops = torch.ops.darts_fast  # the operators; call them from functions decorated with requires


def _defined(name):
    # torch.ops raises AttributeError for an operator that no loaded library defines.
    return hasattr(ops, name)


# The operators the kernel functions call (what ``requires`` was given).
REQUIRED = set()


def has_ops(*names):
    """Whether the library is loaded and defines every operator in ``names`` (``darts_fast::``
    omitted; none named: every operator the kernel functions call)."""
    return _C is not None and all(_defined(name) for name in names or REQUIRED)


def unavailable(what, names=()):
    """The RuntimeError for ``what`` (a function or an operator) when the library is not loaded
    or lacks the operators ``names``."""
    rebuild = (f"Rebuild it against the installed torch ({torch.__version__}) from the source "
               f"tree: {REBUILD}")
    if _C is None:
        return RuntimeError(f"{what} needs darts_fast's compiled operators, but the library "
                            f"darts_fast._C failed to load ({type(LOAD_ERROR).__name__}: "
                            f"{LOAD_ERROR}). {rebuild}")
    missing = ", ".join(f"darts_fast::{name}" for name in sorted(names or REQUIRED)
                        if not _defined(name))
    where = getattr(_C, "__file__", None) or "an unknown file"
    return RuntimeError(f"{what} needs the operators {missing}, which the library darts_fast._C, "
                        f"loaded from {where}, does not define: it was built from other sources. "
                        f"{rebuild}")


def requires(*names):
    """Decorator of a kernel function that calls the operators ``names``: the function itself
    where the library defines them all, otherwise one of the same name that raises
    :func:`unavailable`'s error (chained to the load error) when called."""
    REQUIRED.update(names)

    def decorate(fn):
        if has_ops(*names):
            return fn

        @functools.wraps(fn)
        def missing(*args, **kwargs):
            raise unavailable(f"darts_fast.kernels.{fn.__name__}", names) from LOAD_ERROR
        return missing
    return decorate


def register_fake(name):
    """``torch.library.register_fake`` of ``darts_fast::<name>`` as a decorator, where the library
    defines that operator; otherwise the function is returned unregistered."""
    def decorate(fn):
        if has_ops(name):
            torch.library.register_fake(f"darts_fast::{name}", fn)
        return fn
    return decorate


def register_autograd(name, backward, setup_context, backward_op):
    """``torch.library.register_autograd`` of ``darts_fast::<name>``, where the library defines
    it and the operator ``backward_op`` that ``backward`` calls."""
    if has_ops(name, backward_op):
        torch.library.register_autograd(f"darts_fast::{name}", backward,
                                        setup_context=setup_context)


def composite_grads(composite, inputs, needs, grad):
    """The gradients of ``composite(*inputs)`` with respect to each input where ``needs`` says
    so (None elsewhere), as differentiable tensors: a backward that ``create_graph=True`` can
    differentiate again. Each input enters through an alias of its own, so that an input computed
    from another (the identity candidate's output is the input of the others) gets its partial
    derivative only, not the path through the other input as well."""
    aliases = [t.view_as(t) for t in inputs]
    targets = [a for a, need in zip(aliases, needs) if need]
    found = iter(torch.autograd.grad(composite(*aliases), targets, grad, create_graph=True))
    return [next(found) if need else None for need in needs]


def check_one_device(op, named_tensors):
    """Every tensor on the first one's device. The dispatcher picks one kernel for a call whose
    tensors sit on several devices (a meta tensor among CPU tensors runs the fake kernel, for
    instance), so each kernel, the fake ones included, must refuse such a call itself."""
    (name0, t0), *rest = named_tensors
    for name, t in rest:
        torch._check(t.device == t0.device,
                     lambda: f"{op}: {name} is on {t.device} but {name0} is on {t0.device}; "
                             f"all tensors must be on one device")


def statistics_dtype(dtype):
    """The dtype of batch_norm_weighted_sum's statistics for candidate outputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_layout(t):
    """torch.channels_last for a 4-D tensor dense in that layout (and not also NCHW-contiguous),
    torch.contiguous_format otherwise: the layout batch_norm_weighted_sum computes in."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
            and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
