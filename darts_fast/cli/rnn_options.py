"""The options of ``--space rnn``: DARTS' recurrent search (the original ``rnn/train_search.py``)
and the final training of a recurrent cell (``rnn/train.py``), with the original's names and
defaults, and the run-folder options that every command shares."""
import torch

from .errors import UsageError
from .options import (device_name, folder_name, fraction, hessian_option, non_negative, number,
                      positive, positive_int, seed, thread_count)
from .stored_run import RESUMABLE

SPACES = ("cnn", "rnn")
EVAL_BATCH_SIZE = 10  # the original's batch of the validation text
TEST_BATCH_SIZE = 1  # and of the test text
SYNTHETIC_SIZE = 60_000
# Half of a length of 1 is a sequence of no rows, on which a step would never move on.
sequence_rows = number(int, 2, what="an integer >= 2")


def add_space_option(p, default):
    p.add_argument("--space", choices=SPACES, default=default,
                   help="the search space: cnn, DARTS' convolutional cell on images; rnn, its "
                        "recurrent cell on text (Penn Treebank); each has its own options "
                        "(--space rnn --help lists the recurrent ones)")


def _model_options(p, size, batch_size, epochs, epochs_help, wdecay, dropoute, seed_default):
    add_space_option(p, "rnn")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=["synthetic", "ptb"], default=None,
                      help="ptb (Penn Treebank: --data, else the treebank package) or the "
                           "offline synthetic language; default: ptb when --data is given, "
                           "else synthetic")
    data.add_argument("--data", type=folder_name, default=None,
                      help="a folder holding ptb.train.txt, ptb.valid.txt and ptb.test.txt "
                           "(default: none)")
    data.add_argument("--synthetic_size", type=positive_int, default=SYNTHETIC_SIZE,
                      help="tokens of the synthetic language's training text (its validation "
                           "and test texts are a fifth of it each)")
    m = p.add_argument_group("model")
    m.add_argument("--emsize", type=positive_int, default=size,
                   help="size of word embeddings (--emsize, --nhid and --nhidlast are equal)")
    m.add_argument("--nhid", type=positive_int, default=size, help="units of the recurrent cell")
    m.add_argument("--nhidlast", type=positive_int, default=size,
                   help="units of the cell's output (the decoder's input)")
    m.add_argument("--dropout", type=fraction, default=0.75,
                   help="locked dropout of the cell's output")
    m.add_argument("--dropouth", type=fraction, default=0.25,
                   help="variational dropout of the cell's hidden states")
    m.add_argument("--dropoutx", type=fraction, default=0.75,
                   help="variational dropout of the cell's inputs")
    m.add_argument("--dropouti", type=fraction, default=0.2,
                   help="locked dropout of the embedded words")
    m.add_argument("--dropoute", type=fraction, default=dropoute,
                   help="dropout of whole words from the embedding")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=positive, default=20.0,
                   help="the weights' SGD learning rate (scaled per step by the sequence's "
                        "length / --bptt)")
    t.add_argument("--clip", type=non_negative, default=0.25,
                   help="the largest norm of the weights' gradient in a step")
    t.add_argument("--epochs", type=positive_int, default=epochs, help=epochs_help)
    t.add_argument("--batch_size", type=positive_int, default=batch_size,
                   help="sequences per step")
    t.add_argument("--bptt", type=sequence_rows, default=35,
                   help="sequence length (a twentieth of the steps take half)")
    t.add_argument("--seed", type=seed, default=seed_default,
                   help="seed of every random generator: the same seed, the same run")
    t.add_argument("--alpha", type=non_negative, default=0.0,
                   help="activation regularisation: alpha mean(dropped output^2) (0: none)")
    t.add_argument("--beta", type=non_negative, default=1e-3,
                   help="temporal activation regularisation: beta mean((h_t - h_{t-1})^2) of "
                        "the cell's outputs (0: none)")
    t.add_argument("--wdecay", type=non_negative, default=wdecay,
                   help="the weights' weight decay")


def _run_options(p):
    r = p.add_argument_group("run")
    r.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads of torch's operations, recorded with the run (--resume on "
                        f"another count needs --allow_thread_change); default: torch's, here "
                        f"{torch.get_num_threads()}")
    r.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    r.add_argument("--deterministic", action="store_true",
                   help="bit-identical reruns on a GPU too (deterministic algorithms only)")
    r.add_argument("--run_dir", type=folder_name, default=None,
                   help="a new or empty folder for the outputs and checkpoints "
                        "(default runs/<command>-<time>)")
    r.add_argument("--resume", type=folder_name, metavar="RUN_DIR", default=None)
    r.add_argument("--allow_thread_change", action="store_true",
                   help="with --resume: continue on another --threads count than the run's "
                        "checkpoint was computed on (the numbers then differ)")
    r.add_argument("--stop_after_epoch", type=positive_int, default=None,
                   help="stop after this epoch (checkpointed); --resume continues the run "
                        "(default: run every epoch)")


def _resume_help(p):
    """--resume's help, naming the options of this parser that may be given with it."""
    names = [a.dest for a in p._actions if a.dest in RESUMABLE]
    p._option_string_actions["--resume"].help = (
        f"continue the run in RUN_DIR from its last checkpoint with its own options; only "
        f"--{', --'.join(names)} may be given with it (default: a new run)")


def add_search_options(p):
    _model_options(p, size=300, batch_size=256, epochs=50, epochs_help="epochs of the search",
                   wdecay=5e-7, dropoute=0.0, seed_default=3)
    a = p.add_argument_group("architecture")
    a.add_argument("--arch_lr", type=non_negative, default=3e-3,
                   help="the alphas' Adam learning rate")
    a.add_argument("--arch_wdecay", type=non_negative, default=1e-3,
                   help="the alphas' weight decay")
    a.add_argument("--unrolled", action="store_true", help="second-order architecture gradient")
    hessian_option(a)
    a.add_argument("--reference", action="store_true",
                   help="run the authors' search model and architect (Python loop over the "
                        "activations) instead of the fused ones")
    a.add_argument("--no_cuda_graph", action="store_true",
                   help="run every step eagerly on CUDA (default: each sequence length's step is "
                        "captured once into a CUDA graph and replayed)")
    _run_options(p)
    _resume_help(p)


def add_train_options(p):
    _model_options(p, size=850, batch_size=64, epochs=300,
                   epochs_help="epochs of the training (the original's default is 8000, a run "
                               "stopped by hand)",
                   wdecay=8e-7, dropoute=0.1, seed_default=3)
    t = p.add_argument_group("final training")
    t.add_argument("--genotype", default=None,
                   help="a genotype JSON file (an rnn search's genotype.json), a name (DARTS, "
                        "DARTS_V1, DARTS_V2, ENAS) or the text Genotype(recurrent=[...], "
                        "concat=[...]); no default: required")
    t.add_argument("--nonmono", type=positive_int, default=5,
                   help="switch from SGD to averaged SGD once the validation loss is worse than "
                        "the best of all but the last this many epochs")
    t.add_argument("--max_seq_len_delta", type=positive_int, default=20,
                   help="the longest training sequence is --bptt plus this")
    _run_options(p)
    _resume_help(p)


def check_data_options(options):
    """Fills --dataset from --data and refuses the combinations that read nothing."""
    if options.dataset is None:
        options.dataset = "ptb" if options.data else "synthetic"
    if options.dataset == "synthetic" and options.data:
        raise UsageError("--data is for --dataset ptb; the synthetic language reads no files")


def check_model_options(options):
    """The sizes the cell takes: the original's model has one width, for the embedding, the
    cell's states and its output (the decoder's weight is the embedding)."""
    if not options.emsize == options.nhid == options.nhidlast:
        raise UsageError(f"--emsize {options.emsize}, --nhid {options.nhid} and --nhidlast "
                         f"{options.nhidlast} must be equal: the cell's states are as wide as "
                         f"the embedding, and the decoder's weight is the embedding")
