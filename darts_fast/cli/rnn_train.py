"""``darts-fast train --space rnn``: the final training of a recurrent cell (the original
``rnn/train.py``), a genotype's language model trained from scratch.

An epoch walks the training text in sequences of ``n = min(max(5, int(N(b, 5))), bptt +
max_seq_len_delta)`` rows, ``b = bptt`` (``bptt / 2`` with probability 0.05), drawn from a
generator of ``--seed`` that the checkpoint keeps; each step is SGD at ``lr * n / bptt`` with
``--wdecay`` on ``NLL + alpha AR + beta TAR`` (``search.rnn_loss.weight_loss``), the gradient
clipped to ``--clip``, the hidden state carried from step to step (zeros at each epoch's start).

After each epoch the validation text at 10 columns is scored. Once a validation loss is worse
than the best of all the earlier ones but the last ``--nonmono``, the weights' optimizer becomes
averaged SGD (``ASGD(t0=0, lambd=0)``: the average of the weights since the switch), and from
then on the epochs are scored on that average, as the original does. The best-scoring weights
(the average, once switched) are kept; when the last epoch is done the test text at one column is
scored on them: ``final.json`` holds both perplexities."""
import contextlib
import copy

import numpy as np
import torch
import torch.nn as nn

from ..spaces.rnn.genotypes import genotype_text, genotype_to_dict, parse_genotype
from ..spaces.rnn.model import RNNModel
from . import loop, ranks, rnn_data, runtime
from .corpus import get_batch, sequence_length, sequence_lr
from .errors import UsageError
from .report import TokenMeter, perplexity
from .rnn_options import EVAL_BATCH_SIZE, TEST_BATCH_SIZE


def run(options):
    if ranks.under_torchrun():
        raise UsageError("train --space rnn runs in one process; torchrun runs the cnn search")
    if options.genotype is None:
        raise UsageError("train --space rnn needs --genotype (a JSON file, a name such as DARTS, "
                         "or Genotype(recurrent=[...], concat=[...]) text)")
    genotype = parse_genotype(options.genotype)
    corpus = rnn_data.load_corpus(options)
    rnn_data.check_batches(corpus, options, {"train": [options.batch_size],
                                             "valid": [EVAL_BATCH_SIZE],
                                             "test": [TEST_BATCH_SIZE]})
    device = runtime.auto_device(options)
    runtime.seed_everything(options.seed)
    model = RNNModel(len(corpus.dictionary), options.emsize, options.nhid, options.nhidlast,
                     options.dropout, options.dropouth, options.dropoutx, options.dropouti,
                     options.dropoute, genotype=genotype).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=options.lr, weight_decay=options.wdecay)
    job = RNNTrainJob(options, model, optimizer, None, None, device)
    job.genotype, job.corpus = genotype, corpus
    job.train_data = rnn_data.batches(corpus, "train", options.batch_size, device)
    job.val_data = rnn_data.batches(corpus, "valid", EVAL_BATCH_SIZE, device)
    job.test_data = rnn_data.batches(corpus, "test", TEST_BATCH_SIZE, device)
    job.lengths = np.random.default_rng(options.seed)
    job.averaging = False
    job.history = []  # the validation losses of the epochs before the switch
    job.best = {"loss": float("inf"), "epoch": 0, "model": None}
    job.switched = False  # in the epoch just validated: logged with its outputs
    return loop.run(job)


class RNNTrainJob(rnn_data.LanguageModelJob):
    command = "train"
    finished = "training finished"

    def new_meter(self):
        return TokenMeter(device=self.device)

    def begin_epoch(self, epoch):
        self.epoch = epoch
        self.hidden = self.model.init_hidden(self.options.batch_size)

    def sequence_length(self):
        return sequence_length(self.lengths, self.options.bptt, jitter=True,
                               max_seq_len_delta=self.options.max_seq_len_delta)

    def step(self, batch, lr):
        i, seq_len = batch
        o, model = self.options, self.model
        x, y = get_batch(self.train_data, i, seq_len)
        group = self.optimizer.param_groups[0]
        group["lr"] = sequence_lr(lr, seq_len, o.bptt)
        try:
            model.train()
            self.optimizer.zero_grad()
            loss, (hidden, raw) = self.loss_fn(model, (self.hidden, x, y.reshape(-1)))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), o.clip)
            self.optimizer.step()
        finally:
            group["lr"] = lr
        self.hidden = rnn_data.detach(hidden)
        return raw.detach(), x.numel()

    def validate(self):
        with self._averaged():
            loss = rnn_data.evaluate(self.model, self.val_data, self.options.bptt)
            if loss < self.best["loss"]:
                self.best = {"loss": loss, "epoch": self.epoch + 1,
                             "model": {k: v.detach().cpu().clone()
                                       for k, v in self.model.state_dict().items()}}
        if not self.averaging:
            nonmono = self.options.nonmono
            if len(self.history) > nonmono and loss > min(self.history[:-nonmono]):
                self._switch()
                self.switched = True
            self.history.append(loss)
        return loss, perplexity(loss)

    def _averaged(self):
        """The model holds the averaged weights for the block once the optimizer averages."""
        return _Swapped(self.model, self.optimizer) if self.averaging else \
            contextlib.nullcontext()

    def _switch(self):
        o = self.options
        self.optimizer = torch.optim.ASGD(self.model.parameters(), lr=o.lr, t0=0, lambd=0.0,
                                          weight_decay=o.wdecay)
        self.averaging = True

    def prepare_restore(self, state):
        if state["averaging"]:
            self._switch()

    def extra_state(self):
        return {"sequence_lengths": self.lengths.bit_generator.state,
                "averaging": self.averaging, "history": list(self.history),
                "best": dict(self.best)}

    def restore_extra(self, state):
        self.lengths.bit_generator.state = state["sequence_lengths"]
        self.history = list(state["history"])
        self.best = dict(state["best"])

    def write_outputs(self, run, log, epoch, rows):
        if self.switched:
            log.info(f"epoch {epoch}: the validation loss did not improve on the best before the "
                     f"last {self.options.nonmono} epochs: switching to averaged SGD")
            self.switched = False
        run.write_json("genotype.json", dict(genotype_to_dict(self.genotype),
                                             text=genotype_text(self.genotype)))
        o = self.options
        final = {"epochs_done": epoch, "epochs": o.epochs, "averaging": self.averaging,
                 "valid_loss": float(rows[-1]["valid_loss"]),
                 "valid_ppl": float(rows[-1]["valid_ppl"]),
                 "best_epoch": self.best["epoch"], "best_valid_loss": self.best["loss"],
                 "best_valid_ppl": perplexity(self.best["loss"]),
                 "test_loss": None, "test_ppl": None}
        if epoch >= o.epochs:
            test = self._test_loss()
            final.update(test_loss=test, test_ppl=perplexity(test))
            log.info(f"test loss {test:.3f} ppl {perplexity(test):.2f} (the weights of epoch "
                     f"{self.best['epoch']}, the best on the validation text)")
        run.write_json("final.json", final)

    def _test_loss(self):
        """The test loss of the best weights; the model keeps its own weights."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best["model"])
        return rnn_data.evaluate(model, self.test_data, self.options.bptt, TEST_BATCH_SIZE)

    def describe(self):
        params = sum(p.numel() for p in self.model.parameters())
        return (f"training {params / 1e6:.2f}M parameters of {genotype_text(self.genotype)} on "
                f"{self.device}, {self.corpus.summary()}; {len(self.train_data)} training rows "
                f"of {self.options.batch_size} sequences")

    def output_lines(self, run):
        return [f"perplexity: {run.file('final.json')}", f"curves:    {run.file('curves.png')}"]


class _Swapped:
    """The model's weights replaced by the optimizer's averages (ASGD's ``ax``) in the block."""

    def __init__(self, model, optimizer):
        self.params = [p for p in model.parameters() if "ax" in optimizer.state.get(p, {})]
        self.averages = [optimizer.state[p]["ax"] for p in self.params]

    def __enter__(self):
        self.saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, ax in zip(self.params, self.averages):
                p.copy_(ax)

    def __exit__(self, *exc):
        with torch.no_grad():
            for p, saved in zip(self.params, self.saved):
                p.copy_(saved)
