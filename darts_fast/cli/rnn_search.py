"""``darts-fast search --space rnn``: DARTS' recurrent search (the original
``rnn/train_search.py``) on the fused search model and architect, or with ``--reference`` on the
authors' own.

An epoch walks the training text from its start, in sequences of ``bptt`` rows (``bptt / 2``
with probability 0.05, drawn from a generator of ``--seed`` that the checkpoint keeps). A step
at row ``i`` with a sequence of ``n`` rows, at ``eta = lr * n / bptt``:
  1. an architecture step on the validation text's rows from ``i mod (rows - 1)`` (``bptt``
     rows: the original's ``search_data``, the valid split at ``--batch_size`` columns), from
     the validation hidden state the previous step left, at ``eta``;
  2. a weight step on the training rows ``i .. i + n``: SGD at ``eta`` with ``--wdecay`` on
     ``NLL + alpha AR + beta TAR`` (``search.rnn_loss.weight_loss``), its gradient clipped to
     ``--clip``; the hidden state carries over to the next step.
Both hidden states start from zeros each epoch and are cut from the graph at every step. The
weights' rate has no schedule. After each epoch the validation text at 10 columns is scored
(``rnn_data.evaluate``), and the genotype and the softmaxed alphas are written."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..reference import rnn as reference_rnn
from ..reference.rnn_architect import RNNArchitect as ReferenceArchitect
from ..search.rnn_architect import RNNArchitect
from ..search.step import SearchStep
from ..spaces.rnn import search_model
from ..spaces.rnn.genotypes import PRIMITIVES, STEPS, genotype_text, genotype_to_dict
from . import loop, ranks, rnn_data, runtime, search_state, visualize
from .corpus import get_batch, sequence_length, sequence_lr
from .errors import UsageError
from .report import TokenMeter, perplexity
from .rnn_options import EVAL_BATCH_SIZE


def run(options):
    if ranks.under_torchrun():
        raise UsageError("search --space rnn runs in one process; torchrun runs the cnn search")
    if options.reference and options.hessian == "exact":
        raise UsageError("--hessian exact is a darts_fast option; the --reference algorithm has "
                         "only the original finite difference")
    if not options.reference and not kernels.has_ops():  # before the run folder is touched
        raise UsageError(str(kernels.unavailable("darts-fast search --space rnn")))
    corpus = rnn_data.load_corpus(options)
    rnn_data.check_batches(corpus, options, {"train": [options.batch_size],
                                             "valid": [options.batch_size, EVAL_BATCH_SIZE]})
    device = runtime.auto_device(options)
    return loop.run(_job(options, corpus, device))


def _job(options, corpus, device):
    runtime.seed_everything(options.seed)
    network = reference_rnn.RNNModelSearch if options.reference else search_model.RNNModelSearch
    model = network(len(corpus.dictionary), options.emsize, options.nhid,
                    options.nhidlast, options.dropout, options.dropouth, options.dropoutx,
                    options.dropouti, options.dropoute).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=options.lr, weight_decay=options.wdecay)
    job = RNNSearchJob(options, model, optimizer, None, None, device)
    job.corpus = corpus
    job.train_data = rnn_data.batches(corpus, "train", options.batch_size, device)
    job.search_data = rnn_data.batches(corpus, "valid", options.batch_size, device)
    job.val_data = rnn_data.batches(corpus, "valid", EVAL_BATCH_SIZE, device)
    job.lengths = np.random.default_rng(options.seed)
    _add_steps(job, model, optimizer, options)
    return job


def _add_steps(job, model, optimizer, options):
    """The architect and the step of the search: the authors' loop (--reference) or the fused
    ``SearchStep`` with the recurrent loss."""
    if options.reference:
        job.architect = ReferenceArchitect(model, options)
        job.search_step = None
        return
    job.architect = RNNArchitect(model, options, hessian=options.hessian)
    # One graph per sequence length (bptt and bptt / 2; a rare last length runs eagerly).
    job.search_step = SearchStep(model, job.architect, optimizer, grad_clip=options.clip,
                                 unrolled=options.unrolled,
                                 loss_fn=job.loss_fn,
                                 cuda_graph=job.device.type == "cuda"
                                 and not options.no_cuda_graph)


class RNNSearchJob(rnn_data.LanguageModelJob):
    command = "search"
    finished = "search finished"

    def new_meter(self):
        return TokenMeter(skip_non_finite=True, device=self.device)

    def validate(self):
        loss = rnn_data.evaluate(self.model, self.val_data, self.options.bptt)
        return loss, perplexity(loss)

    def begin_epoch(self, epoch):
        self.hidden = self.model.init_hidden(self.options.batch_size)
        self.hidden_valid = self.model.init_hidden(self.options.batch_size)

    def sequence_length(self):
        return sequence_length(self.lengths, self.options.bptt)

    def step(self, batch, lr):
        i, seq_len = batch
        o = self.options
        eta = sequence_lr(lr, seq_len, o.bptt)
        train = get_batch(self.train_data, i, seq_len)
        valid = get_batch(self.search_data, i % (len(self.search_data) - 1), o.bptt)
        self.optimizer.param_groups[0]["lr"] = eta
        try:
            raw = self._reference_step(train, valid) if self.search_step is None else \
                self._fused_step(train, valid, eta)
        finally:
            self.optimizer.param_groups[0]["lr"] = lr
        return raw, train[0].numel()

    def _reference_step(self, train, valid):
        o, model = self.options, self.model
        (x, y), (xv, yv) = train, valid
        model.train()
        # The hidden states are kept cut from the graphs that made them.
        hidden_valid, _ = self.architect.step(self.hidden, x, y.reshape(-1), self.hidden_valid,
                                              xv, yv.reshape(-1), self.optimizer, o.unrolled)
        self.hidden_valid = rnn_data.detach(hidden_valid)
        self.optimizer.zero_grad()
        loss, (hidden, raw) = self.loss_fn(model, (self.hidden, x, y.reshape(-1)))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), o.clip)
        self.optimizer.step()
        self.hidden = rnn_data.detach(hidden)
        return raw.detach()

    def _fused_step(self, train, valid, eta):
        (x, y), (xv, yv) = train, valid
        # SearchStep returns its outputs detached: the hidden states are cut from their graphs.
        _, (self.hidden, raw) = self.search_step.step_batches(
            (self.hidden, x, y.reshape(-1)), (self.hidden_valid, xv, yv.reshape(-1)), eta)
        self.hidden_valid = self.search_step.architecture_output
        return raw

    def skip_counters(self):
        if self.search_step is None:
            return {}
        return {"weight": self.search_step.skipped_steps,
                "architecture": getattr(self.architect, "skipped_steps", None)}

    def extra_state(self):
        return {**search_state.save(self.model, self.architect),
                "sequence_lengths": self.lengths.bit_generator.state}

    def restore_extra(self, state):
        search_state.restore(self.model, self.architect, state)
        self.lengths.bit_generator.state = state["sequence_lengths"]

    def tensors_to_check(self):
        return [*self.model.parameters(), *self.model.arch_parameters()]

    def write_outputs(self, run, log, epoch, rows):
        genotype = self.model.genotype()
        text = genotype_text(genotype)
        record = dict(genotype_to_dict(genotype), epoch=epoch, text=text)
        run.write_json(f"genotype_epoch_{epoch:03d}.json", record)
        run.write_json("genotype.json", record)
        run.write_text("genotype.txt", text + "\n")
        probs = F.softmax(self.model.arch_parameters()[0].detach().float(), dim=-1).cpu()
        alphas = {"epoch": epoch, "candidates": list(PRIMITIVES), "edges": _edges(),
                  "weights": probs.tolist()}
        run.write_json(f"alphas_epoch_{epoch:03d}.json", alphas)
        run.write_json("alphas.json", alphas)
        run.write_bytes("alphas.png", visualize.recurrent_alphas_png(
            probs.numpy(), PRIMITIVES, alphas["edges"], f"softmax(alpha), epoch {epoch}"))
        log.events.add_image("alphas/recurrent", probs, epoch, dataformats="HW")
        log.events.add_text("genotype", text, epoch)

    def describe(self):
        o = self.options
        order = "second" if o.unrolled else "first"
        return (f"{'reference' if o.reference else 'fused'} {order}-order recurrent DARTS "
                f"search on {self.device}, {self.corpus.summary()}; {len(self.train_data)} "
                f"training rows of {o.batch_size} sequences")

    def output_lines(self, run):
        return [f"genotype:  {run.file('genotype.json')} (and genotype.txt: "
                f"{genotype_text(self.model.genotype())})",
                f"alphas:    {run.file('alphas.json')} (softmax per edge)",
                f"pictures:  {run.file('alphas.png')}, {run.file('curves.png')}"]


def _edges():
    """[predecessor, node] of each row of the alphas: node i's rows are its predecessors
    0 .. i - 1 (state 0 is made from the input and the previous hidden state)."""
    return [[j, i] for i in range(1, STEPS + 1) for j in range(i)]
