"""DARTS' convolutional search space: the candidate operations, the fused mixed op, the search
network, the evaluation network and the genotypes."""
