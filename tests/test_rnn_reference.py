"""DARTS' recurrent search model and the model of a genotype (darts_fast.reference.rnn and
spaces.rnn.model) against the formulas written out by hand (rnn_formulas), in float64: outputs,
hidden states, losses, gradients, BatchNorm statistics, masks fixed by seeding; construction order,
state_dict, the genotype rule on a hand-worked table."""
import pytest
import torch
import torch.nn as nn

import rnn_formulas as hand
from darts_fast.reference.rnn import DARTSCell, DARTSCellSearch, RNNModel, RNNModelSearch
from darts_fast.spaces.rnn.model import embedded_dropout
from darts_fast.spaces.genotype_text import GenotypeError
from darts_fast.spaces.rnn.genotypes import DARTS_V1, DARTS_V2, ENAS, Genotype
from helpers import rel_err

NTOKEN, N, B, T = 50, 12, 3, 5
TOL = 1e-10
NO_DROPOUT = (0.0, 0.0, 0.0, 0.0, 0.0)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, NTOKEN, (T, B), generator=g)
    target = torch.randint(0, NTOKEN, (T * B,), generator=g)
    hidden = torch.randn(1, B, N, generator=g, dtype=torch.float64)
    return tokens, target, hidden


def search_model(dropouts=NO_DROPOUT):
    torch.manual_seed(1)
    model = RNNModelSearch(NTOKEN, N, N, N, *dropouts).double()
    with torch.no_grad():  # alphas far from uniform, so that the weighting matters
        model.weights.copy_(torch.randn(36, 5, dtype=torch.float64))
    return model


def weights(model):
    return dict(model.named_parameters())


def test_state_dict_names_and_construction_order():
    torch.manual_seed(3)
    model = RNNModelSearch(NTOKEN, N, N, N)
    torch.manual_seed(3)
    torch.empty(NTOKEN, N).normal_()                          # nn.Embedding's own init
    W0 = torch.empty(2 * N, 2 * N).uniform_(-0.04, 0.04)
    Ws = [torch.empty(N, 2 * N).uniform_(-0.04, 0.04) for _ in range(8)]
    torch.empty(NTOKEN, N).uniform_()                         # nn.Linear's weight and bias
    torch.empty(NTOKEN).uniform_()
    torch.empty(NTOKEN, N).uniform_(-0.04, 0.04)              # init_weights: the encoder, then
    E = torch.empty(NTOKEN, N).uniform_(-0.04, 0.04)          # the tied decoder again
    alphas = torch.randn(36, 5) * 1e-3

    ws = [f"rnns.0._Ws.{i}" for i in range(8)]
    assert list(model.state_dict()) == (
        ["encoder.weight", "rnns.0._W0"] + ws
        + ["rnns.0.bn.running_mean", "rnns.0.bn.running_var", "rnns.0.bn.num_batches_tracked",
           "decoder.weight", "decoder.bias"])
    assert [name for name, _ in model.named_parameters()] == (
        ["encoder.weight", "rnns.0._W0"] + ws + ["decoder.bias"])
    assert model.decoder.weight is model.encoder.weight
    assert torch.equal(model.encoder.weight, E) and torch.equal(model.rnns[0]._W0, W0)
    assert all(torch.equal(a, b) for a, b in zip(model.rnns[0]._Ws, Ws))
    assert torch.equal(model.decoder.bias, torch.zeros(NTOKEN))
    assert torch.equal(model.weights, alphas) and model.weights.is_leaf
    assert model.arch_parameters() == [model.weights] and model.rnns[0].weights is model.weights


def test_search_model_matches_the_formulas():
    model = search_model()
    tokens, target, hidden = batch()
    loss, next_hidden = model._loss([hidden], tokens, target)
    log_prob, _ = model(tokens, [hidden])
    leaves = list(model.parameters()) + [model.weights]
    grads = torch.autograd.grad(loss, leaves)

    bn = hand.BatchNorm(N, torch.float64)
    masks = hand.ones_masks(NTOKEN, B, N, torch.float64)
    p = weights(model)
    log_prob_hand, h_hand = hand.search_model(p, model.weights, bn, tokens, hidden[0], masks)
    loss_hand = hand.nll(log_prob_hand, target)
    grads_hand = torch.autograd.grad(loss_hand, leaves)

    assert rel_err(log_prob.view(-1, NTOKEN), log_prob_hand) < TOL
    assert len(next_hidden) == 1 and next_hidden[0].shape == (1, B, N)
    assert rel_err(next_hidden[0][0], h_hand) < TOL
    assert abs(loss.item() - loss_hand.item()) < TOL * loss_hand.item()
    for leaf, g, g_hand in zip(leaves, grads, grads_hand):
        assert g_hand.norm() > 0 and rel_err(g, g_hand) < TOL, leaf.shape
    # One BatchNorm for s0 and the 8 nodes of each of the T steps, in both passes.
    assert model.rnns[0].bn.num_batches_tracked.item() == 2 * 9 * T and bn.count == 9 * T


def test_search_model_running_statistics_and_eval_mode_are_the_formulas():
    model = search_model()
    tokens, _, hidden = batch(1)
    model(tokens, [hidden])
    bn = hand.BatchNorm(N, torch.float64)
    masks = hand.ones_masks(NTOKEN, B, N, torch.float64)
    p = weights(model)
    hand.search_model(p, model.weights, bn, tokens, hidden[0], masks)
    assert rel_err(model.rnns[0].bn.running_mean, bn.mean) < TOL
    assert rel_err(model.rnns[0].bn.running_var, bn.var) < TOL

    # Eval mode: no masks, every BatchNorm on those running statistics.
    model.eval()
    bn.training = False
    log_prob, next_hidden = model(tokens, [hidden])
    log_prob_hand, h_hand = hand.search_model(p, model.weights, bn, tokens, hidden[0], masks)
    assert rel_err(log_prob.view(-1, NTOKEN), log_prob_hand) < TOL
    assert rel_err(next_hidden[0][0], h_hand) < TOL


@pytest.mark.parametrize("genotype", [None, DARTS_V2], ids=["search", "darts-v2"])
def test_dropout_masks_fixed_by_seeding(genotype):
    dropout, dropouth, dropoutx, dropouti, dropoute = 0.4, 0.25, 0.75, 0.2, 0.3
    dropouts = (dropout, dropouth, dropoutx, dropouti, dropoute)
    if genotype is None:
        model = search_model(dropouts)
    else:
        model = RNNModel(NTOKEN, N, N, N, *dropouts, genotype=genotype).double()
    tokens, target, hidden = batch(2)
    torch.manual_seed(11)
    log_prob, next_hidden = model(tokens, [hidden])

    # The original's draws, in its order: embedding rows, input, x and h (CPU, float32), output.
    torch.manual_seed(11)
    f64 = torch.float64
    masks = {
        "embedding": torch.empty(NTOKEN, 1, dtype=f64).bernoulli_(1 - dropoute) / (1 - dropoute),
        "input": torch.empty(1, B, N, dtype=f64).bernoulli_(1 - dropouti) / (1 - dropouti),
        "x": (torch.floor(torch.rand(B, N) + (1 - dropoutx)) / (1 - dropoutx)).to(f64),
        "h": (torch.floor(torch.rand(B, N) + (1 - dropouth)) / (1 - dropouth)).to(f64),
        "output": torch.empty(1, B, N, dtype=f64).bernoulli_(1 - dropout) / (1 - dropout),
    }
    assert all((m == 0).any() and (m > 0).any() for m in masks.values())
    p = weights(model)
    if genotype is None:
        log_prob_hand, h_hand = hand.search_model(p, model.weights, hand.BatchNorm(N, f64),
                                                  tokens, hidden[0], masks)
    else:
        log_prob_hand, h_hand = hand.genotype_model(p, genotype, tokens, hidden[0], masks)
    assert rel_err(log_prob.view(-1, NTOKEN), log_prob_hand) < TOL
    assert rel_err(next_hidden[0][0], h_hand) < TOL


def test_gradcheck_tiny_search_cell():
    torch.manual_seed(4)
    cell = DARTSCellSearch(2, 2, 0.0, 0.0).double()
    names = ["_W0"] + [f"_Ws.{i}" for i in range(8)]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(2, B, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(1, B, 2, dtype=torch.float64, requires_grad=True)
    alphas = torch.randn(36, 5, dtype=torch.float64, requires_grad=True)

    def run(x, h, alphas, *params):
        cell.weights = alphas
        return torch.func.functional_call(cell, dict(zip(names, params)), (x, h))[0]

    assert torch.autograd.gradcheck(run, (x, h, alphas, *params))


# --- the genotype rule on a hand-worked table ------------------------------------------------
# Rows of node i (1..8): 0<-0 | 1, 2: 1<-0, 1 | 3..5 | 6..9 | 10..14 | 15..20 | 21..27 | 28..35.
# Columns: none, tanh, relu, sigmoid, identity; every row not listed is 0 (1/5 each).
TABLE = {0: [0, 0, 3, 0, 0],        # node 1: relu from 0
         1: [5, 0, 0, 0, 0],        # node 2: row 1 none wins, the others e^0/(e^5+4) = 0.0066;
         2: [0, 0, 0, 1, 0],        #   row 2 sigmoid e/(e+4) = 0.405: sigmoid from 1
         # node 3: rows 3..5 all 1/5: a tie everywhere, state 0, the first activation, tanh
         7: [0, 0, 2, 0, 0],        # node 4: rows 7 and 9 tie at e^2/(e^2+4) = 0.649:
         9: [0, 0, 0, 0, 2],        #   the lower state wins: relu from 1
         12: [0, 1, 1, 0, 0],       # node 5: row 12 tanh = relu = e/(2e+3) = 0.322 (first: tanh)
         14: [0, 0, 0, 0.5, 0],     #   beats row 14 e^.5/(e^.5+4) = 0.292: tanh from 2
         20: [0, 0, 0, 0, 4],       # node 6: identity from 5
         21: [10, 0, 0, 0, 1],      # node 7: row 21 identity e/(e^10+e+3) = 1.2e-4 loses;
         24: [0, 0, 0, 0.1, 0],     #   row 24 sigmoid e^.1/(e^.1+4) = 0.216 > 0.2: sigmoid from 3
         30: [0, 0, 0, 0, 0.3],     # node 8: row 30 identity e^.3/(e^.3+4) = 0.252 > 0.2 and
         35: [0, -1, -1, -1, -1]}   #   row 35's e^-1/(1+4e^-1) = 0.149: identity from 2
EXPECTED = [("relu", 0), ("sigmoid", 1), ("tanh", 0), ("relu", 1), ("tanh", 2), ("identity", 5),
            ("sigmoid", 3), ("identity", 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_genotype_rule_on_a_hand_worked_table(dtype):
    model = RNNModelSearch(NTOKEN, N, N, N).to(dtype)
    with torch.no_grad():
        model.weights.zero_()
        for row, values in TABLE.items():
            model.weights[row] = torch.tensor(values, dtype=dtype)
    genotype = model.genotype()
    assert genotype.recurrent == EXPECTED
    assert list(genotype.concat) == list(range(1, 9))


@pytest.mark.parametrize("genotype", [DARTS_V1, DARTS_V2, ENAS], ids=["v1", "v2", "enas"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_genotype_model_matches_the_formulas(genotype, training):
    torch.manual_seed(5)
    model = RNNModel(NTOKEN, N, N, N, *NO_DROPOUT, genotype=genotype).double().train(training)
    assert len(model.rnns[0]._Ws) == len(genotype.recurrent)
    tokens, target, hidden = batch(3)
    log_prob, next_hidden = model(tokens, [hidden])
    loss = nn.functional.nll_loss(log_prob.view(-1, NTOKEN), target)
    leaves = list(model.parameters())
    grads = torch.autograd.grad(loss, leaves)

    p = weights(model)
    masks = hand.ones_masks(NTOKEN, B, N, torch.float64)
    log_prob_hand, h_hand = hand.genotype_model(p, genotype, tokens, hidden[0], masks)
    grads_hand = torch.autograd.grad(hand.nll(log_prob_hand, target), leaves)
    assert rel_err(log_prob.view(-1, NTOKEN), log_prob_hand) < TOL
    assert rel_err(next_hidden[0][0], h_hand) < TOL
    for g, g_hand in zip(grads, grads_hand):
        assert g_hand.norm() > 0 and rel_err(g, g_hand) < TOL


def test_alphas_move_with_the_module_and_new_copies_them():
    model = RNNModelSearch(NTOKEN, N, N, N, dropout=0.1, dropoute=0.0)
    alphas = model.weights
    optimizer = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
    model.double()
    assert model.weights is alphas and model.rnns[0].weights is alphas
    assert alphas.dtype == torch.float64 and alphas.is_leaf and alphas.requires_grad
    tokens, target, hidden = batch(4)
    model._loss([hidden], tokens, target)[0].backward()
    optimizer.step()

    torch.manual_seed(6)
    copy = model.new()
    assert copy._args == (NTOKEN, N, N, N, 0.1, 0.5, 0.5, 0.5, 0.0)
    assert copy.weights is not alphas and torch.equal(copy.weights, alphas)
    assert copy.weights.dtype == torch.float64 and copy.rnns[0].weights is copy.weights
    assert all(p.dtype == torch.float64 for p in copy.parameters())
    assert not torch.equal(copy.rnns[0]._W0, model.rnns[0]._W0)  # fresh draws
    assert list(copy.state_dict()) == list(model.state_dict())


def test_init_hidden_and_embedded_dropout_without_padding():
    model = RNNModelSearch(NTOKEN, N, N, N).double()
    (h,) = model.init_hidden(B)
    assert h.shape == (1, B, N) and h.dtype == torch.float64 and not h.any()
    # No padding index: the last word's embedding is looked up and trained like any other.
    embed = nn.Embedding(NTOKEN, N)
    words = torch.tensor([[NTOKEN - 1, 0], [NTOKEN - 1, 1]])
    embedded_dropout(embed, words, dropout=0).sum().backward()
    assert torch.equal(embed.weight.grad[NTOKEN - 1], torch.full((N,), 2.0))


def test_constructor_refusals():
    with pytest.raises(ValueError, match="ninp, nhid and nhidlast must be equal"):
        RNNModelSearch(NTOKEN, N, N + 1, N)
    with pytest.raises(ValueError, match="cell_cls=DARTSCell needs a genotype"):
        RNNModel(NTOKEN, N, N, N)
    with pytest.raises(ValueError, match="genotype must be None for cell_cls=DARTSCellSearch"):
        RNNModel(NTOKEN, N, N, N, cell_cls=DARTSCellSearch, genotype=DARTS_V2)
    with pytest.raises(GenotypeError, match="node 2 takes state 5"):
        DARTSCell(N, N, 0.0, 0.0, Genotype(recurrent=[("relu", 0), ("tanh", 5)], concat=[1]))
