"""What an export holds (see ``export.py``): the spec of its network, the network rebuilt from
it, the deployed module around that network, and its size.

The spec is JSON: ``{"class": "NetworkCIFAR" or "NetworkImageNet", "kwargs": {"C",
"num_classes", "layers", "auxiliary", "genotype" (as ``genotype_to_dict`` writes it),
"in_channels", "image_size"}, "input": {"dataset", "classes", "channels", "size", "mean", "std",
"stem"}}``, with any other JSON keys kept as they are (the command line adds ``"source"``)."""
import json
import numbers

import torch
import torch.nn as nn

from .spaces.cnn.eval_model import NetworkCIFAR, NetworkImageNet
from .spaces.cnn.genotypes import genotype_from_dict, genotype_to_dict
from .spaces.cnn.resources import count_module
from .spaces.genotype_text import GenotypeError

FORMAT = "darts_fast-model-1"
NETWORKS = {cls.__name__: cls for cls in (NetworkCIFAR, NetworkImageNet)}
_BY_STEM = {cls.stem_kind: cls for cls in NETWORKS.values()}


class ExportError(ValueError):
    """An export that cannot be written as asked, or a file that is not a readable export; the
    message names the path."""


class Deployed(nn.Module):
    """The exported network as deployed: ``forward(images)`` takes float images in [0, 1], N x
    channels x size x size, normalises them with the input's mean and std and returns the
    logits, ``network(normalise(images))[0]``; ``forward_normalized(x)`` takes input already
    normalised. ``.network`` is the evaluation network, ``.spec`` the spec, ``.input`` its input
    description."""

    def __init__(self, network, spec):
        super().__init__()
        self.network = network
        self.spec = spec
        self.input = spec["input"]
        dtype = next(network.parameters()).dtype
        # Not in the state_dict: the spec holds them, and .network's state_dict is the export's.
        for name in ("mean", "std"):
            values = torch.tensor(self.input[name], dtype=dtype).view(1, -1, 1, 1)
            self.register_buffer(name, values, persistent=False)

    def forward(self, images):
        return self.forward_normalized((images - self.mean) / self.std)

    def forward_normalized(self, x):
        return self.network(x)[0]


def network_spec(genotype, C, num_classes, layers, auxiliary, input, **extra):
    """The spec of the evaluation network of ``genotype`` for images described by ``input``
    (its ``stem`` picks the class); ``extra``: more JSON keys to keep with it."""
    check_input(input, "the input description")
    cls = _BY_STEM[input["stem"]]
    kwargs = {"C": C, "num_classes": num_classes, "layers": layers, "auxiliary": auxiliary,
              "genotype": genotype_to_dict(genotype), "in_channels": input["channels"],
              "image_size": input["size"]}
    return {"class": cls.__name__, "kwargs": kwargs, "input": dict(input), **extra}


def check_spec(spec, where):
    """Refuses a spec that is not JSON or lacks what ``build_network`` reads."""
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{where}: the spec is not JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("class") not in NETWORKS or \
            not isinstance(spec.get("kwargs"), dict) or "input" not in spec:
        raise ExportError(f"{where}: the spec must hold class (one of {', '.join(NETWORKS)}), "
                          f"kwargs and input")
    check_input(spec["input"], where)


def check_input(input, where):
    def count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    ok = isinstance(input, dict) and count(input.get("channels")) and count(input.get("size")) \
        and input.get("stem") in _BY_STEM and isinstance(input.get("classes"), list)
    ok = ok and all(isinstance(input.get(k), list) and len(input[k]) == input["channels"] and
                    all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in input[k])
                    for k in ("mean", "std"))
    if not ok or not all(v > 0 for v in input["std"]):
        raise ExportError(f"{where}: the input description must hold channels and size "
                          f"(positive integers), classes (a list), mean and std (a number per "
                          f"channel, std > 0) and stem (one of {', '.join(_BY_STEM)}); got "
                          f"{input!r}")


def build_network(spec, where, fork_rng=True):
    """The evaluation network the spec describes, in eval mode, its weights initialised from
    the global generator: from a fork of it (which stays as it was), or, without ``fork_rng``,
    drawn from it as the original's training script draws them."""
    check_spec(spec, where)
    kwargs = dict(spec["kwargs"])
    try:
        kwargs["genotype"] = genotype_from_dict(kwargs.get("genotype"))
        with torch.random.fork_rng(devices=[], enabled=fork_rng):
            network = NETWORKS[spec["class"]](**kwargs)
    except (GenotypeError, TypeError, ValueError) as e:
        raise ExportError(f"{where}: its spec does not build a {spec['class']}: {e}") from None
    return network.eval()


def network_cost(network, input):
    """(parameters, multiply-adds) of ``network`` on one image of ``input``: the parameters but
    the auxiliary head's (it runs in training only), the multiply-adds of its convolutions and
    linear layers as ``resources.count_module`` counts them."""
    params = sum(p.numel() for n, p in network.named_parameters()
                 if not n.startswith("auxiliary_head."))
    dtype = next(network.parameters()).dtype
    shape = (1, input["channels"], input["size"], input["size"])
    return params, count_module(network, shape, dtype).flops
