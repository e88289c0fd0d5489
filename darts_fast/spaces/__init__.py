"""Search spaces: what a network is built of and how its architecture is described, apart from
any search method (``cnn``: DARTS' convolutional cell)."""
