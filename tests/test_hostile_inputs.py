"""What hostile input gets: damaged CIFAR files are refused (one line, exit 2), never trained on;
a full disk during torch.save names what survived; a GDAS temperature the alphas' dtype cannot
carry is refused rather than redrawn forever; an empty batch through the fused mixed ops gives
what the original gives; weights of another dtype are used as the original uses them."""
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCE, rel_err
from test_cli import TINY, error_of, write_cifar

import darts_fast
from darts_fast import reference
from darts_fast.cli import cifar10
from darts_fast.methods import gdas
from darts_fast.methods.pc_darts import PartialChannelMixedOp

# Runs that the fixes refuse last one epoch where the code before them ran.
ONE_EPOCH = [*TINY, "--epochs", "1"]

# --- damaged CIFAR-10 files ---------------------------------------------------------------------


def archive_of(folder, path, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path


def flip(path, at, bit=0):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 1 << bit
    path.write_bytes(bytes(raw))


def search_error(tmp_path, capsys, source):
    """The error line of a search on ``source``; no run folder may be made."""
    line = error_of(["search", *ONE_EPOCH, "--data", source, "--run_dir", tmp_path / "run"],
                    capsys)
    assert not (tmp_path / "run").exists()
    return line.replace(str(source), "DATA")


@pytest.mark.parametrize("damage", ["deflate bit", "crc bit", "cut short"])
def test_a_damaged_gzip_archive_is_refused(tmp_path, capsys, damage):
    """tarfile stops before the gzip trailer: without reading to it, a flipped bit trained on
    altered pixels and a cut archive was read as far as it went."""
    archive = archive_of(write_cifar(tmp_path / "cifar", n=8), tmp_path / "c.tar.gz")
    size = archive.stat().st_size
    if damage == "deflate bit":
        flip(archive, size // 2)
    elif damage == "crc bit":
        flip(archive, size - 8)  # the CRC-32 of the trailer
    else:
        archive.write_bytes(archive.read_bytes()[:-100])
    line = search_error(tmp_path, capsys, archive)
    assert line.startswith("darts-fast search: error: --data 'DATA' is damaged: its gzip stream "
                           "is corrupt or cut short (") and line.endswith("; download it again")
    # The flipped bit in the compressed data may break the stream or only its checksum.
    reason = {"crc bit": "(BadGzipFile: CRC check failed ",
              "cut short": "(EOFError: Compressed file ended before the end-of-stream marker was "
                           "reached)"}
    assert reason.get(damage, "") in line, line


def test_a_damaged_tar_header_is_not_read_as_the_end(tmp_path, capsys):
    """A bad header after the first member ends tarfile's listing silently: it was reported as
    files missing."""
    archive = archive_of(write_cifar(tmp_path / "cifar", n=8), tmp_path / "c.tar", "w")
    with tarfile.open(archive) as tar:
        second = tar.getmembers()[2].offset  # the folder, data_batch_x, then this one
    flip(archive, second + 3)  # its name: the header checksum no longer matches
    assert search_error(tmp_path, capsys, archive) == (
        f"darts-fast search: error: --data 'DATA' is not a readable CIFAR-10 archive "
        f"(cifar-10-python.tar.gz) or folder: it is damaged or of another format (ReadError: "
        f"unreadable tar header at byte {second})")


def test_a_truncated_or_extended_batch_is_refused(tmp_path, capsys):
    folder = write_cifar(tmp_path / "cifar", n=8)
    batch = folder / "data_batch_2"
    whole = batch.read_bytes()
    expected = ("Expected a pickled dict with b'data', a uint8 array [N, 3072], and N integer "
                "b'labels' in 0..9")
    batch.write_bytes(whole[:-40])
    assert search_error(tmp_path, capsys, folder) == (
        f"darts-fast search: error: CIFAR-10 file 'DATA/data_batch_2' is damaged or malformed "
        f"(UnpicklingError: pickle data was truncated). {expected}")
    # Bytes after the pickle's end were ignored: a file with anything appended trained.
    batch.write_bytes(whole + b"\0" * 7)
    assert search_error(tmp_path, capsys, folder) == (
        f"darts-fast search: error: CIFAR-10 file 'DATA/data_batch_2' is damaged or malformed "
        f"(UnpicklingError: 7 bytes follow the pickle). {expected}")


class _Mkdir:
    """Unpickles by calling os.mkdir: any code a pickle names runs as it is read."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_batch_that_names_other_code_is_refused_before_it_runs(tmp_path, capsys):
    folder = write_cifar(tmp_path / "cifar", n=8)
    marker = tmp_path / "ran"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Mkdir(str(marker)), b"labels": []}, f)
    line = search_error(tmp_path, capsys, folder)
    assert not marker.exists()
    assert line.startswith("darts-fast search: error: CIFAR-10 file 'DATA/data_batch_1' is "
                           f"damaged or malformed (UnpicklingError: it names {os.mkdir.__module__}"
                           ".mkdir, which no CIFAR batch holds)"), line


def test_data_of_another_type_is_not_converted(tmp_path, capsys):
    """Converting to uint8 and int64 wrapped pixels above 255 and truncated fractional labels."""
    folder = write_cifar(tmp_path / "cifar", n=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.full((2, 3072), 300), b"labels": [1.5, 2.0]}, f)
    line = error_of(["train", *ONE_EPOCH, "--genotype", "DARTS", "--data", folder, "--run_dir",
                     tmp_path / "run"], capsys)
    assert line == (f"darts-fast train: error: CIFAR-10 file '{folder}/test_batch' is damaged or "
                    f"malformed: got data int64 [2, 3072] and labels float64 [2]. Expected a "
                    f"pickled dict with b'data', a uint8 array [N, 3072], and N integer "
                    f"b'labels' in 0..9")
    assert not (tmp_path / "run").exists()


def test_an_official_batch_must_have_its_digest(tmp_path, capsys, monkeypatch):
    """A bit flipped inside the pixels keeps the size and the structure: for the official
    batches (stood in for by this small one) the MD5 digest catches it."""
    folder = write_cifar(tmp_path / "cifar", n=8)
    batch = folder / "data_batch_3"
    whole = batch.read_bytes()
    monkeypatch.setitem(cifar10.OFFICIAL_BATCHES, "data_batch_3",
                        (len(whole), hashlib.md5(whole).hexdigest()))
    assert len(cifar10.load_cifar10(str(folder))[1]) == 40  # the intact file is read
    flip(batch, len(whole) - 200)  # a pixel of the last image
    assert search_error(tmp_path, capsys, folder) == (
        f"darts-fast search: error: CIFAR-10 file 'DATA/data_batch_3' is damaged: it has the "
        f"size of the official data_batch_3 but not its MD5 digest "
        f"({hashlib.md5(whole).hexdigest()}); download CIFAR-10 again")


def test_batches_without_images_are_refused(tmp_path, capsys):
    """train stopped with a traceback in its first step, its run folder made."""
    folder = write_cifar(tmp_path / "cifar", n=0)
    assert error_of(["train", *ONE_EPOCH, "--genotype", "DARTS", "--data", folder, "--run_dir",
                     tmp_path / "run"], capsys) == (
        f"darts-fast train: error: --data '{folder}': the CIFAR-10 data_batch_1, data_batch_2, "
        f"data_batch_3, data_batch_4, data_batch_5 hold no images")
    assert not (tmp_path / "run").exists()


def test_data_that_is_neither_a_folder_nor_a_file_is_named_so(tmp_path, capsys):
    """A FIFO was reported missing (and reading one would block)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert search_error(tmp_path, capsys, fifo) == (
        "darts-fast search: error: --data 'DATA' is neither a folder nor a file (expected the "
        "CIFAR-10 folder of python batches or cifar-10-python.tar.gz)")


# --- a full disk while the checkpoint is written ------------------------------------------------

FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, 1 << 18))  # below the checkpoint's size
from darts_fast.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_checkpoint_write_names_what_survived(tmp_path):
    """torch.save turned the failed write into a RuntimeError (a traceback, exit 1)."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, "search", *ONE_EPOCH, "--run_dir",
         str(out)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"darts-fast search: error: could not write {out}/checkpoint.pt: File too large. "
        f"No epoch had been checkpointed yet")
    assert not [name for name in os.listdir(out) if name.startswith(".checkpoint.pt")]
    assert not (out / "checkpoint.pt").exists()


# --- GDAS temperatures --------------------------------------------------------------------------

@pytest.fixture
def counted_noise(monkeypatch):
    """Counts the Gumbel draws; a sampling that redraws forever fails instead of hanging."""
    drawn = []
    original = gdas.gumbel_noise

    def gumbel_noise(alphas):
        drawn.append(1)
        assert len(drawn) < 1000, "the sampling redraws forever"
        return original(alphas)

    monkeypatch.setattr(gdas, "gumbel_noise", gumbel_noise)
    return drawn


def gdas_network(dtype=torch.float32):
    torch.manual_seed(0)
    return gdas.GDASNetwork(8, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2).to(dtype)


@pytest.mark.parametrize("tau", [1e-39, 1e-300, 1e39])
def test_a_temperature_the_dtype_cannot_carry_is_refused(counted_noise, tau):
    """Below float32's smallest normal number the logits divided by tau overflow and every draw
    was redrawn, forever; above its largest, tau rounds to inf."""
    model = gdas_network()
    model.tau = tau
    with pytest.raises(ValueError) as refused:
        model.sample()
    assert str(refused.value) == (f"GDASNetwork: tau {tau:g} is outside what the alphas' "
                                  f"torch.float32 carries (1.17549e-38 to 3.40282e+38)")
    assert not counted_noise
    model = gdas_network(torch.float64)  # float64 carries these
    model.tau = 1e-39
    model.sample()


def test_redraws_that_cannot_succeed_end_with_an_error(counted_noise, monkeypatch):
    """Noise of 50 makes every logit overflow float32 at tau 1e-37: every draw is redrawn."""
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self: self.fill_(torch.e ** -50))
    model = gdas_network()
    model.tau = 1e-37
    with pytest.raises(RuntimeError) as stopped:
        model.sample()
    assert str(stopped.value) == (
        "GDASNetwork: 101 draws in a row held inf or nan with finite alphas at tau 1e-37: the "
        "logits divided by tau overflow torch.float32; raise tau")
    assert len(counted_noise) == 101


def test_the_command_line_refuses_such_temperatures(tmp_path, capsys, counted_noise):
    line = error_of(["search", "--method", "gdas", *ONE_EPOCH, "--tau_max", "1e-300",
                     "--tau_min", "1e-300", "--run_dir", tmp_path / "run"], capsys)
    assert line == ("darts-fast search: error: argument --tau_max: expected a finite number > 0 "
                    "that float32 carries (1.17549e-38 to 3.40282e+38), got 1e-300 (see "
                    "darts-fast search --help)")
    assert not (tmp_path / "run").exists()


# --- empty batches and weights of another dtype through the fused mixed ops ---------------------

VARIANTS = [{}, {"fold_batch_norm": False}, {"recompute": True}]


def empty_batch_grads(out, op, x, w):
    """Gradients of x, w and every parameter, zeros where unused (as for an empty batch)."""
    return torch.autograd.grad(out, [x, w, *op.parameters()], torch.ones_like(out),
                               allow_unused=True, materialize_grads=True)


def assert_same(fused, ref, out_f, out_r, x, w):
    assert out_f.shape == out_r.shape
    for a, b in zip(empty_batch_grads(out_f, fused, x, w), empty_batch_grads(out_r, ref, x, w)):
        assert a.shape == b.shape and torch.equal(a, b)
    # An empty batch is counted (num_batches_tracked) but leaves the running statistics.
    assert all(torch.equal(a, b) for a, b in zip(fused.buffers(), ref.buffers()))


@pytest.mark.parametrize("stride", [1, 2])
def test_an_empty_batch_gives_what_the_original_gives(stride):
    """In training mode the folded BatchNorm refused N = 0 ('Expected more than 1 value per
    channel'), where nn.BatchNorm2d returns an empty output."""
    x = torch.randn(0, 8, 6, 6, requires_grad=True)
    w = torch.softmax(torch.randn(8), 0).requires_grad_()
    for options in VARIANTS:
        torch.manual_seed(0)
        fused = darts_fast.MixedOp(8, stride, **options)
        torch.manual_seed(0)
        ref = reference.MixedOp(8, stride)
        assert_same(fused, ref, fused(x, w), ref(x, w), x, w)
        for index in range(8):
            assert_same(fused, ref, fused(x, w, [index]),
                        ref.forward_gdas(x, w, index), x, w)


@pytest.mark.parametrize("stride", [1, 2])
def test_an_empty_batch_through_partial_channels(stride):
    """The authors' op cannot reshape an empty result (its view(b, -1, h, w) is ambiguous at
    b = 0): the fused one returns the empty shuffled output, and its candidates end as the
    authors' candidates do on the empty channels."""
    x = torch.randn(0, 8, 6, 6, requires_grad=True)
    w = torch.softmax(torch.randn(8), 0).requires_grad_()
    for options in VARIANTS:
        torch.manual_seed(0)
        fused = PartialChannelMixedOp(8, stride, k=4, **options)
        torch.manual_seed(0)
        ref = reference.PartialChannelMixedOp(8, stride, k=4)
        out = fused(x, w)
        assert out.shape == (0, 8, 6 // stride, 6 // stride)
        candidates = sum(wk * op(x[:, :2]) for wk, op in zip(w, ref._ops))
        for a, b in zip(empty_batch_grads(out, fused, x, w),
                        empty_batch_grads(candidates, ref, x, w)):
            assert a.shape == b.shape and torch.equal(a, b)
        assert all(torch.equal(a, b) for a, b in zip(fused.buffers(), ref.buffers()))


def test_weights_of_another_dtype_are_cast_as_the_original_casts_them():
    """The original's w_k * op_k(x) computes in x's dtype (0-dim weights do not promote): float64
    weights on float32 inputs, as under autocast; the kernels refused them."""
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
    for fused, ref in ((darts_fast.MixedOp(8, 2), reference.MixedOp(8, 2)),
                       (PartialChannelMixedOp(8, 1), reference.PartialChannelMixedOp(8, 1))):
        ref.load_state_dict(fused.state_dict())
        out_f, out_r = fused(x, w), ref(x, w)
        assert out_f.dtype == out_r.dtype == torch.float32
        assert rel_err(out_f, out_r) < TOLERANCE[torch.float32]
        g = torch.randn_like(out_f)
        for a, b in zip(*(torch.autograd.grad(out, [x, w], g) for out in (out_f, out_r))):
            assert a.dtype == b.dtype and rel_err(a, b) < TOLERANCE[torch.float32]
