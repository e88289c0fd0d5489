"""The command line of DARTS' recurrent space (``--space rnn``): a search and a final training
end to end on a tiny Penn-Treebank-layout folder, their perplexities against an evaluation
computed here from the checkpoint, exact resume, and what bad input gets (one line, exit 2, no
run folder)."""
import csv
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from darts_fast.cli import checkpoint, main
from darts_fast.reference.rnn import RNNModelSearch
from darts_fast.spaces.rnn.genotypes import DARTS, PRIMITIVES, genotype_to_dict
from darts_fast.spaces.rnn.model import RNNModel

SIZE = ["--emsize", "16", "--nhid", "16", "--nhidlast", "16"]
TINY = [*SIZE, "--batch_size", "4", "--bptt", "5", "--threads", "1", "--device", "cpu"]
BPTT = 5


def run(argv):
    return main.main([str(a) for a in argv])


def error_of(argv, capsys):
    """The one error line of a command refused with exit 2."""
    capsys.readouterr()
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    return lines[0]


def sentences(seed, tokens):
    """Lines of words w0..w19 (a word's successor depends on it), about ``tokens`` words."""
    g = torch.Generator().manual_seed(seed)
    lines, count = [], 0
    while count < tokens:
        n = int(torch.randint(3, 9, (1,), generator=g))
        w = int(torch.randint(0, 20, (1,), generator=g))
        words = []
        for _ in range(n):
            words.append(f"w{w}")
            w = (w * 7 + int(torch.randint(0, 3, (1,), generator=g))) % 20
        lines.append(" ".join(words))
        count += n + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ptb")
    texts = {"train": sentences(1, 400), "valid": sentences(2, 150) + "w3 zebra w4\n",
             "test": sentences(3, 100)}
    for split, text in texts.items():
        (folder / f"ptb.{split}.txt").write_text(text)
    return folder


def word_ids(folder):
    """Each split's ids, numbered by first appearance over train, valid, test, <eos> after each
    line (the original data.py)."""
    ids, out = {}, {}
    for split in ("train", "valid", "test"):
        words = [w for line in (folder / f"ptb.{split}.txt").read_text().splitlines()
                 for w in line.split() + ["<eos>"]]
        out[split] = torch.tensor([ids.setdefault(w, len(ids)) for w in words])
    return out, len(ids)


def columns(ids, batch):
    rows = len(ids) // batch
    return ids[:rows * batch].view(batch, rows).t()


def perplexity_loss(model, data, batch):
    """The original's evaluation, written out: sum over bptt chunks of NLL * chunk rows, over
    the rows of the data."""
    model.eval()
    hidden = [torch.zeros(1, batch, 16)]
    total = 0.0
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, BPTT):
            n = min(BPTT, data.size(0) - 1 - i)
            log_prob, hidden = model(data[i:i + n], hidden)
            total += F.nll_loss(log_prob.reshape(-1, log_prob.size(2)),
                                data[i + 1:i + 1 + n].reshape(-1)).item() * n
    return total / data.size(0)


def rows_of(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def search(folder, ptb, *extra):
    return run(["search", "--space", "rnn", *TINY, "--data", ptb, "--run_dir", folder, *extra])


SEARCHES = {"reference": ["--reference"], "reference second order": ["--reference", "--unrolled"],
            "fused": [], "fused second order": ["--unrolled"]}


@pytest.fixture(scope="module", params=list(SEARCHES))
def finished_search(request, ptb, tmp_path_factory):
    folder = tmp_path_factory.mktemp("search") / "run"
    extra = SEARCHES[request.param]
    assert search(folder, ptb, "--epochs", "2", *extra) == 0
    return folder, extra


def test_search_writes_its_outputs_and_perplexities_an_evaluation_reproduces(finished_search,
                                                                             ptb):
    folder, _ = finished_search
    for name in ("config.json", "checkpoint.pt", "curves.png", "genotype.json", "genotype.txt",
                 "alphas.json", "alphas.png", "genotype_epoch_002.json", "alphas_epoch_002.json",
                 "log.txt"):
        assert (folder / name).is_file(), name
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert {"ppl/train", "ppl/valid", "loss/valid", "lr"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("ppl/valid")] == pytest.approx(
        [float(r["valid_ppl"]) for r in rows_of(folder)])
    assert json.loads((folder / "config.json").read_text())["options"]["space"] == "rnn"
    rows = rows_of(folder)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        for split in ("train", "valid"):
            loss, ppl = float(r[f"{split}_loss"]), float(r[f"{split}_ppl"])
            assert ppl == pytest.approx(math.exp(loss), rel=1e-4, abs=0.006)
    ids, ntoken = word_ids(ptb)
    state = checkpoint.load(str(folder / "checkpoint.pt"))
    model = RNNModelSearch(ntoken, 16, 16, 16, 0.75, 0.25, 0.75, 0.2, 0.0)
    model.load_state_dict(state["model"])
    with torch.no_grad():
        model.weights.copy_(state["alphas"][0])
    loss = perplexity_loss(model, columns(ids["valid"], 10), 10)
    assert float(rows[-1]["valid_loss"]) == pytest.approx(loss, abs=6e-5)
    probs = F.softmax(state["alphas"][0], dim=-1)
    alphas = json.loads((folder / "alphas.json").read_text())
    assert alphas["candidates"] == PRIMITIVES and len(alphas["edges"]) == 36
    assert torch.allclose(torch.tensor(alphas["weights"]), probs, atol=1e-6)
    genotype = json.loads((folder / "genotype.json").read_text())
    expected = genotype_to_dict(model.genotype())
    assert {k: genotype[k] for k in expected} == expected
    assert (folder / "genotype.txt").read_text().strip() == genotype["text"]
    unseen = "valid 1 (1 distinct)"  # "zebra", absent from train
    assert unseen in (folder / "log.txt").read_text()


def test_search_stopped_and_resumed_equals_the_run_never_stopped(finished_search, ptb, tmp_path):
    whole, extra = finished_search
    folder = tmp_path / "stopped"
    assert search(folder, ptb, "--epochs", "2", "--stop_after_epoch", "1", *extra) == 0
    assert len(rows_of(folder)) == 1
    assert run(["search", "--resume", folder, "--space", "rnn", "--threads", "1"]) == 0
    same = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert same(rows_of(folder)) == same(rows_of(whole))
    a, b = (checkpoint.load(str(f / "checkpoint.pt")) for f in (folder, whole))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert torch.equal(a["alphas"][0], b["alphas"][0])
    assert a["sequence_lengths"] == b["sequence_lengths"]


def test_space_given_on_resume_must_be_the_runs(finished_search, capsys):
    folder, _ = finished_search
    line = error_of(["search", "--resume", folder, "--space", "cnn"], capsys)
    assert "--space cnn" in line and "rnn search run" in line


def test_search_help_lists_the_recurrent_options_with_their_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        run(["search", "--space", "rnn", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--emsize", "--dropoutx", "--arch_lr", "--bptt", "--wdecay", "--beta"):
        assert option in text
    assert "size of word embeddings (--emsize, --nhid and --nhidlast are equal) (default " \
           "300)" in text


def test_train_a_named_genotype_scores_the_best_weights_on_the_test_text(ptb, tmp_path):
    folder = tmp_path / "train"
    argv = ["train", "--space", "rnn", *TINY, "--data", ptb, "--genotype", "DARTS",
            "--epochs", "4", "--nonmono", "1", "--lr", "40"]
    assert run([*argv, "--run_dir", folder]) == 0
    final = json.loads((folder / "final.json").read_text())
    assert final["averaging"], "the settings were chosen so that the run switches to ASGD"
    assert math.isfinite(final["valid_ppl"]) and math.isfinite(final["test_ppl"])
    assert final["test_ppl"] == pytest.approx(math.exp(final["test_loss"]))
    ids, ntoken = word_ids(ptb)
    state = checkpoint.load(str(folder / "checkpoint.pt"))
    model = RNNModel(ntoken, 16, 16, 16, 0.75, 0.25, 0.75, 0.2, 0.1, genotype=DARTS)
    model.load_state_dict(state["best"]["model"])
    assert final["test_loss"] == pytest.approx(perplexity_loss(model, columns(ids["test"], 1), 1),
                                               rel=1e-6)
    assert final["best_valid_loss"] == pytest.approx(
        perplexity_loss(model, columns(ids["valid"], 10), 10), rel=1e-6)
    # Stopped while on SGD, resumed across the switch to averaged SGD: the same numbers.
    stopped = tmp_path / "stopped"
    assert run([*argv, "--run_dir", stopped, "--stop_after_epoch", "2"]) == 0
    assert run(["train", "--resume", stopped, "--threads", "1"]) == 0
    same = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert same(rows_of(stopped)) == same(rows_of(folder))
    assert json.loads((stopped / "final.json").read_text()) == final


@pytest.mark.parametrize("files, argv, expected", [
    ({"train": b"w1 w2\n\xff\xfe w3\n"}, [], "is not UTF-8: byte 0xff"),
    ({"train": b"  \n"}, [], "is empty"),
    ({"valid": None}, [], "lacks ptb.valid.txt"),
    ({"test": b"w1 w2\n"}, [], "fewer than one batch"),
    ({}, ["--bptt", "1"], "--bptt: expected an integer >= 2"),
    ({}, ["--dropout", "nan"], "--dropout: expected a number in [0, 1)"),
    ({}, ["--lr", "inf"], "--lr: expected a finite number > 0"),
    ({}, ["--nhid", "24"], "--nhid 24 and --nhidlast 16 must be equal"),
    ({}, ["--dataset", "synthetic"], "--data is for --dataset ptb"),
    ({}, ["--reference", "--hessian", "exact"], "--hessian exact is a darts_fast option"),
])
def test_bad_input_is_one_line_and_writes_nothing(ptb, tmp_path, capsys, files, argv, expected):
    data = tmp_path / "data"
    shutil.copytree(ptb, data)
    for split, content in files.items():
        path = data / f"ptb.{split}.txt"
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    folder = tmp_path / "run"
    command = "train" if "test" in files else "search"
    genotype = ["--genotype", "DARTS"] if command == "train" else []
    line = error_of([command, "--space", "rnn", *TINY, "--data", data, "--run_dir", folder,
                     *genotype, *argv], capsys)
    assert expected in line
    assert not folder.exists()


@pytest.mark.parametrize("genotype, expected", [
    (None, "needs --genotype"),
    ("NOPE", "NOPE"),
])
def test_train_refuses_a_missing_or_unknown_genotype(ptb, tmp_path, capsys, genotype, expected):
    folder = tmp_path / "run"
    argv = ["train", "--space", "rnn", *TINY, "--data", ptb, "--run_dir", folder]
    line = error_of(argv + (["--genotype", genotype] if genotype else []), capsys)
    assert expected in line and not folder.exists()
