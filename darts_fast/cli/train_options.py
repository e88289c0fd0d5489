"""The options of ``darts-fast train``: the original ``train.py``'s, or with ``--dataset imagenet``
the original ``train_imagenet.py``'s defaults (``IMAGENET``): NetworkImageNet, label smoothing,
the learning rate decayed by 0.97 every epoch, 250 epochs."""
from .data_options import add_data_options
from .options import common_options, fraction, non_negative, positive, positive_int

# Defaults that depend on --dataset: train.py's, and train_imagenet.py's.
CIFAR = {"batch_size": 96, "epochs": 600, "init_channels": 36, "layers": 20,
         "learning_rate": 0.025, "weight_decay": 3e-4, "drop_path_prob": 0.2,
         "label_smoothing": 0.0, "lr_schedule": "cosine"}
IMAGENET = {"batch_size": 128, "epochs": 250, "init_channels": 48, "layers": 14,
            "learning_rate": 0.1, "weight_decay": 3e-5, "drop_path_prob": 0.0,
            "label_smoothing": 0.1, "lr_schedule": "step"}


def add_train_options(t):
    common_options(t, batch_size=None, epochs=None, init_channels=None, layers=None,
                   seed_default=0)
    add_data_options(t)
    t.add_argument("--genotype", default=None,
                   help="a genotype JSON file, a name (DARTS, DARTS_V1, DARTS_V2) or the text "
                        "Genotype(normal=[...], normal_concat=..., reduce=[...], ...); no "
                        "default: required")
    t.add_argument("--auxiliary", action="store_true", help="use the auxiliary tower")
    t.add_argument("--auxiliary_weight", type=non_negative, default=0.4,
                   help="the auxiliary tower's share of the loss")
    t.add_argument("--drop_path_prob", type=fraction, default=None,
                   help="drop path probability of the last epoch, reached linearly from 0")
    t.add_argument("--label_smoothing", type=fraction, default=None,
                   help="the share of each target spread evenly over the classes (the "
                        "original ImageNet CrossEntropyLabelSmooth)")
    t.add_argument("--lr_schedule", choices=["cosine", "step"], default=None,
                   help="cosine: annealed to 0 over --epochs; step: multiplied by --lr_gamma "
                        "every --lr_decay_period epochs")
    t.add_argument("--lr_gamma", type=positive, default=0.97,
                   help="--lr_schedule step's factor (default %(default)s)")
    t.add_argument("--lr_decay_period", type=positive_int, default=1,
                   help="--lr_schedule step's epochs between two decays (default %(default)s)")
    t.set_defaults(learning_rate=None, weight_decay=None)
    for action in t._actions:
        if action.dest in CIFAR:
            action.help = (f"{action.help} (default {CIFAR[action.dest]}; "
                           f"{IMAGENET[action.dest]} with --dataset imagenet)")


def resolve_train_defaults(options):
    """Fills the options left to ``--dataset`` with its defaults."""
    defaults = IMAGENET if options.dataset == "imagenet" else CIFAR
    for name, value in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, value)
