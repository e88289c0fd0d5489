"""The README's set-up commands are the ones CI runs; its image-folder walkthrough runs as
written."""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import torch

from darts_fast.cli import checkpoint
from darts_fast.export_model import build_network

ROOT = pathlib.Path(__file__).resolve().parent.parent


def command_under(heading):
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return re.search(r"```\n(.*?)\n```", section, re.S).group(1)


def test_ci_runs_the_readme_test_command():
    command = command_under("Run the tests")
    assert "\n" not in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_main_command_installs_and_runs_a_search():
    command = command_under("Set up and run")
    assert "\n" not in command
    assert "pip install --no-build-isolation --no-deps -e ." in command
    assert "darts-fast search" in command


def test_readme_image_folder_walkthrough_ends_in_a_model_a_fresh_python_loads(tmp_path):
    """The README's commands from generated 64x64 images of 5 classes to an exported model, run
    as written; the model loaded in a fresh Python gives the logits of the network rebuilt here
    from the train run's checkpoint."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Your own images, ImageNet, and the found network as a model file\n",
                         1)[1]
    block = re.search(r"```\n(.*?)\n```", section, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    for line in block.splitlines():
        argv = shlex.split(line)
        argv = [sys.executable, "-m", "darts_fast", *argv[1:]] if argv[0] == "darts-fast" \
            else [sys.executable, *argv[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (line, done.stderr[-2000:])
    assert "tensor(" in done.stdout  # the last line prints the logits
    run = tmp_path / "runs" / "shapes-train"
    spec = json.loads((run / "network.json").read_text())
    assert spec["input"]["size"] == 64 and len(spec["input"]["classes"]) == 5
    network = build_network(spec, "test")
    network.load_state_dict(checkpoint.load(str(run / "checkpoint.pt"))["model"])
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    mean = torch.tensor(spec["input"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["input"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = network((x - mean) / std)[0]
    code = ("import sys, torch, darts_fast; model = darts_fast.load(sys.argv[1]); "
            "torch.save(model(torch.load(sys.argv[2])).detach(), sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(run / "export"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, env=env, timeout=300)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), want, rtol=1e-5, atol=1e-6)
