"""darts_fast without its compiled library: ``darts_fast._C`` blocked (as when it was never built,
or built for another torch) or standing for one built from older sources that lacks operators.
The package and what needs no kernel still import, nothing is registered for a missing operator,
and each kernel function raises one RuntimeError naming the failure and the rebuild command. Each
case runs in a child Python whose ``sys.meta_path`` finder stands in for the library."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
REBUILD = "pip install --no-build-isolation --no-deps -e ."

# Run first in the child: a finder that answers the import of darts_fast._C.
FINDERS = {
    # The library cannot be loaded.
    "missing": """
        class Finder:
            def find_spec(self, name, path=None, target=None):
                if name == "darts_fast._C":
                    raise ImportError("darts_fast._C blocked by the test")
    """,
    # A library from older sources: it defines the weighted sum's operators only (and a CPU
    # kernel of the forward).
    "stale": """
        import importlib.machinery

        class Finder:
            def find_spec(self, name, path=None, target=None):
                if name == "darts_fast._C":
                    spec = importlib.machinery.ModuleSpec(name, self, origin="/old/_C.so")
                    spec.has_location = True  # sets __file__
                    return spec

            def create_module(self, spec):
                return None

            def exec_module(self, module):
                import torch
                module.lib = torch.library.Library("darts_fast", "DEF")
                module.lib.define("weighted_sum(Tensor[] xs, Tensor weights) -> Tensor")
                module.lib.define("weighted_sum_backward(Tensor grad, Tensor[] xs, "
                                  "Tensor weights, bool[] xs_need_grad, bool weights_need_grad) "
                                  "-> (Tensor[], Tensor)")
                module.lib.impl("weighted_sum", lambda xs, w: sum(wk * x for wk, x in zip(w, xs)),
                                "CPU")
    """,
    # The library as built: the control that shows the recording below sees registrations.
    "built": """
        class Finder:
            def find_spec(self, name, path=None, target=None):
                return None
    """,
}

CHILD = """
    import sys
    sys.meta_path.insert(0, Finder())

    import json

    import torch

    registered = []  # the darts_fast operators given a fake kernel or autograd, in order
    for name in ("register_fake", "register_autograd"):
        def record(op, *args, _original=getattr(torch.library, name), _name=name, **kwargs):
            if str(op).startswith("darts_fast::"):
                registered.append(f"{_name} {op}")
            return _original(op, *args, **kwargs)
        setattr(torch.library, name, record)

    import darts_fast
    from darts_fast import kernels
    from darts_fast.spaces.cnn.genotypes import DARTS_V2, parse_genotype

    assert parse_genotype(str(DARTS_V2)) == DARTS_V2 and parse_genotype("DARTS_V2") == DARTS_V2

    x = torch.ones(2, 3, 4, 4)
    calls = {
        "weighted_sum": lambda: kernels.weighted_sum([x, x], torch.ones(2)),
        "batch_norm_weighted_sum": lambda: kernels.batch_norm_weighted_sum(
            [x, x], torch.ones(2), torch.zeros(2, 3), torch.ones(2, 3), [True, False], 1e-5),
        "multi_tensor_norm": lambda: kernels.multi_tensor_norm([x]),
        "multi_tensor_axpy_": lambda: kernels.multi_tensor_axpy_([x.clone()], [x],
                                                                 torch.tensor(1.0)),
        "multi_tensor_virtual_step": lambda: kernels.multi_tensor_virtual_step(
            [x.clone()], [x], [x], [], 0.1, 0.9, 0.0),
        "multi_tensor_finite_difference": lambda: kernels.multi_tensor_finite_difference(
            [x], [x], [x], torch.tensor(1.0), 0.1),
        "multi_tensor_revert_": lambda: kernels.multi_tensor_revert_([x.clone()], [x],
                                                                     torch.tensor(False)),
        "rnn_node": lambda: kernels.rnn_node(torch.ones(2, 3, 4), torch.ones(2, 3, 8),
                                             torch.ones(2, 4)),
    }
    errors = {}
    for name, call in calls.items():
        try:
            call()
        except RuntimeError as e:
            errors[name] = [str(e), repr(e.__cause__)]
    print(json.dumps({"has_ops": kernels.has_ops(), "registered": registered,
                      "errors": errors}))
"""


def run_child(case):
    code = textwrap.dedent(FINDERS[case]) + textwrap.dedent(CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def registrations(*ops):
    """What the op families register for ``ops`` (the forward operators), in import order."""
    backward = {"weighted_sum": "weighted_sum_backward",
                "batch_norm_weighted_sum": "batch_norm_weighted_sum_backward",
                "rnn_node": "rnn_node_backward"}
    fakes, autograd = [], []
    for op in ops:
        fakes += [f"register_fake darts_fast::{name}" for name in (op, backward.get(op)) if name]
        if op in backward:
            autograd.append(f"register_autograd darts_fast::{op}")
    return fakes, autograd


def test_without_the_library_the_package_imports_and_each_kernel_names_the_failure():
    got = run_child("missing")
    assert got["has_ops"] is False
    assert got["registered"] == []
    assert sorted(got["errors"]) == sorted([
        "weighted_sum", "batch_norm_weighted_sum", "multi_tensor_norm", "multi_tensor_axpy_",
        "multi_tensor_virtual_step", "multi_tensor_finite_difference", "multi_tensor_revert_",
        "rnn_node"])
    for name, (message, cause) in got["errors"].items():
        assert message.startswith(f"darts_fast.kernels.{name} needs darts_fast's compiled "
                                  f"operators"), message
        assert "darts_fast._C failed to load (ImportError: darts_fast._C blocked by the test)" \
            in message
        assert message.endswith(REBUILD)
        assert "blocked by the test" in cause  # chained to the load error


def test_a_library_without_some_operators_registers_and_runs_the_others():
    got = run_child("stale")
    assert got["has_ops"] is False  # not every operator the kernel functions call
    fakes, autograd = registrations("weighted_sum")
    assert sorted(got["registered"]) == sorted(fakes + autograd)
    assert sorted(got["errors"]) == sorted([
        "batch_norm_weighted_sum", "multi_tensor_norm", "multi_tensor_axpy_",
        "multi_tensor_virtual_step", "multi_tensor_finite_difference", "multi_tensor_revert_",
        "rnn_node"])
    for name, (message, _) in got["errors"].items():
        missing = "darts_fast::" + name + (f", darts_fast::{name}_backward"
                                           if name in ("batch_norm_weighted_sum", "rnn_node")
                                           else "")
        assert message.startswith(f"darts_fast.kernels.{name} needs the operators {missing}, "
                                  f"which the library darts_fast._C, loaded from /old/_C.so, "
                                  f"does not define: it was built from other sources"), message
        assert message.endswith(REBUILD)


def test_with_the_library_every_operator_is_registered_and_runs():
    got = run_child("built")
    assert got["has_ops"] is True
    assert got["errors"] == {}
    fakes, autograd = registrations("weighted_sum", "batch_norm_weighted_sum",
                                    "multi_tensor_norm", "multi_tensor_axpy_",
                                    "multi_tensor_virtual_step", "multi_tensor_finite_difference",
                                    "multi_tensor_revert_", "rnn_node")
    assert sorted(got["registered"]) == sorted(fakes + autograd)


COMMANDS = """
    import sys
    sys.meta_path.insert(0, Finder())

    import contextlib
    import io
    import json
    import os

    from darts_fast.cli.main import main

    small = ["--synthetic_size", "32", "--batch_size", "16", "--epochs", "1", "--init_channels",
             "4", "--layers", "2", "--threads", "1", "--device", "cpu"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        search = main(["search", "--run_dir", "search_run", *small])
        train = main(["train", "--genotype", "DARTS_V2", "--run_dir", "train_run", *small])
    print(json.dumps({"search": search, "train": train, "err": err.getvalue(),
                      "search_run": os.path.exists("search_run"),
                      "train_final": os.path.exists("train_run/final.json")}))
"""


@pytest.mark.parametrize("case", ["missing", "stale"])
def test_search_refuses_to_start_and_train_runs_without_the_kernels(case, tmp_path):
    """The evaluation network calls no darts_fast operator; a search does (the architect and the
    gradient clip), and is refused before its run folder is made."""
    code = textwrap.dedent(FINDERS[case]) + textwrap.dedent(COMMANDS)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["search"] == 2 and not got["search_run"]
    assert "darts-fast search: error: darts-fast search needs " in got["err"]
    assert got["err"].rstrip().endswith(REBUILD) or REBUILD in got["err"]
    assert got["train"] == 0 and got["train_final"]
