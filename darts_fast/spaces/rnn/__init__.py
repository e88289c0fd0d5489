"""DARTS' recurrent search space (the language-model cell of quark0/darts ``rnn/``): the candidate
activations, the cell size and the genotypes."""
