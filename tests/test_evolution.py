"""The search strategies of darts_fast.search.evolution against transcriptions of the authors'
loops (SPOS' EvolutionSearcher, Real et al.'s aging evolution, randomNAS' get_eval_arch) run on
the same RandomState calls, and the gene operators' distributions."""
import collections
import functools
import io
import json

import numpy as np
import pytest
import torch

from darts_fast.search.evolution import RandomSearch, RegularizedEvolution, SPOSEvolution
from darts_fast.search.evolution_genes import crossover, edit, mutate
from darts_fast.spaces.cnn.paths import Architecture, check_architecture, random_architecture

STEPS, CANDIDATES = 3, [1, 2, 4, 5]
_W = np.random.RandomState(7).rand(2, 2, 2 * STEPS, STEPS + 1, 6)
PARENT = Architecture(((0, 1), (1, 2), (2, 4), (0, 5), (3, 1), (1, 2)),
                      ((1, 5), (0, 5), (0, 1), (2, 2), (2, 4), (3, 4)))


def table_score(arch, table=0):
    """A deterministic score without ties: a sum of one random weight per pair."""
    return float(sum(_W[table, c, n, j, k] for c, cell in enumerate(arch)
                     for n, (j, k) in enumerate(cell)))


def budget(arch):
    """About one random architecture in six is over it."""
    return sum(k == 5 for cell in arch for _, k in cell) <= 4


def within(counts, probs):
    """Each count within 5 sigma of its expectation, the chi-square under df + 6 sqrt(2 df)."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    expected = counts.sum() * probs
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected * (1 - probs)) + 1), counts
    df = len(counts) - 1
    assert ((counts - expected) ** 2 / expected).sum() < df + 6 * np.sqrt(2 * df) + 1e-9


def run(search):
    logs = []
    while not search.done:
        logs.append(search.step())
    return logs


def distinct_inputs(arch):
    return all(cell[n][0] != cell[n + 1][0] for cell in arch for n in range(0, len(cell), 2))


def authors_spos(score, legal, seed):
    """EvolutionSearcher.search of megvii-model/SinglePathOneShot, np.random as a RandomState,
    the genes DARTS' pairs, and one update_top_k after the loop (ours merges every population)."""
    population_num, select_num, max_epochs, m_prob = 50, 10, 20, 0.1
    mutation_num = crossover_num = 25
    r = np.random.RandomState(seed)
    rand = functools.partial(random_architecture, STEPS, CANDIDATES, r)
    def choice(x):
        return x[r.randint(len(x))] if isinstance(x, tuple) else choice(tuple(x))
    vis_dict, order, keep_top_k = {}, [], []
    def is_legal(cand):
        info = vis_dict.setdefault(cand, {})
        if 'visited' in info or not legal(cand):
            return False
        info['err'], info['visited'] = -score(cand), True
        order.append(cand)
        return True
    def stack_random_cand(random_func):
        while True:
            yield from [random_func() for _ in range(10)]
    def get(random_func, num, res, max_iters):
        cand_iter = stack_random_cand(random_func)
        while len(res) < num and max_iters > 0:
            max_iters -= 1
            cand = next(cand_iter)
            if is_legal(cand):
                res.append(cand)
        return res
    def mutation():
        cand = [list(cell) for cell in choice(keep_top_k)]
        for cell in cand:
            for i in range(len(cell)):
                if r.random_sample() < m_prob:
                    cell[i] = (choice([j for j in range(i // 2 + 2) if j != cell[i ^ 1][0]]),
                               choice(CANDIDATES))
        return Architecture(*map(tuple, cand))
    def cross():
        p1, p2 = choice(keep_top_k), choice(keep_top_k)
        return Architecture(*(sum((choice([a[n:n + 2], b[n:n + 2]]) for n in range(0, len(a), 2)),
                                  ()) for a, b in zip(p1, p2)))
    def update_top_k(cands):
        keep_top_k[:] = sorted(keep_top_k + cands, key=lambda x: vis_dict[x]['err'])[:select_num]
    candidates = get(rand, population_num, [], float('inf'))
    for _ in range(max_epochs):
        update_top_k(candidates)
        res = get(mutation, mutation_num, [], mutation_num * 10)
        res += get(cross, crossover_num, [], 10 * crossover_num)
        candidates = get(rand, population_num, res, float('inf'))
    update_top_k(candidates)
    return order, keep_top_k


def test_spos_matches_the_authors_loop_and_its_invariants():
    scored = []
    def score(arch):
        assert budget(arch) and arch not in scored
        scored.append(arch)
        return table_score(arch)
    spos = SPOSEvolution(score, STEPS, CANDIDATES, legal=budget, seed=3, generations=21)
    logs = run(spos)
    assert all(log["mutations"] + log["crossovers"] + log["random"] == 50 for log in logs)
    order, top = authors_spos(table_score, budget, 3)
    assert [a for a, _ in spos.history] == scored == order and len(order) == 21 * 50
    scores = sorted((s for _, s in spos.history), reverse=True)
    assert spos.top_k == top and [spos.scores[a] for a in spos.top_k] == scores[:10]
    assert spos.best() == (top[0], scores[0]) and logs[-1]["best"] == scores[0]
    assert sum(log["mutations"] for log in logs[1:]) > 400  # mutants do get through


def test_spos_stops_when_the_space_is_used_up():
    spos = SPOSEvolution(table_score, 1, [0], seed=0, population=10, select=3, mutations=3,
                         crossovers=3, random_tries=20)  # four architectures in all
    logs = run(spos)
    assert spos.exhausted and len(logs) == 2 and logs[-1]["evaluated"] == 4 == len(spos.scores)
    with pytest.raises(RuntimeError, match="budget"):
        SPOSEvolution(table_score, STEPS, CANDIDATES, legal=lambda a: False).step()


def test_mutation_distribution():
    rng, n, parent = np.random.RandomState(0), 12000, PARENT
    children = [mutate(parent, CANDIDATES, 1.0, rng) for _ in range(n)]
    # m_prob 1, node 4 of the normal cell: pair 4 avoids the old sibling input 1, pair 5 pair 4's
    joint = collections.Counter((c.normal[4][0], c.normal[5][0]) for c in children)
    assert set(joint) == {(i, j) for i in (0, 2, 3) for j in range(4) if j != i}
    within([joint[key] for key in sorted(joint)], [1 / 9] * 9)
    within([sum(c.reduce[3][1] == k for c in children) for k in CANDIDATES], [1 / 4] * 4)
    # m_prob 0.3: a node's first pair changes unless redrawn to itself, 1 in (node - 1) * 4
    children = [mutate(parent, CANDIDATES, 0.3, rng) for _ in range(n)]
    for c, cell in enumerate(parent):
        for n_pair in (0, 2, 4):
            p = 0.3 * (1 - 1 / ((n_pair // 2 + 1) * 4))
            changed = sum(child[c][n_pair] != cell[n_pair] for child in children)
            within([changed, n - changed], [p, 1 - p])


def test_crossover_distribution():
    rng = np.random.RandomState(1)
    first, second = (random_architecture(STEPS, CANDIDATES, rng) for _ in range(2))
    while any(x[n:n + 2] == y[n:n + 2] for x, y in zip(first, second) for n in range(0, 6, 2)):
        second = random_architecture(STEPS, CANDIDATES, rng)
    children = [crossover(first, second, rng) for _ in range(8000)]
    origin = np.array([[(x[n:n + 2] == a[n:n + 2]) + 2 * (x[n:n + 2] == b[n:n + 2])
                        for x, a, b in zip(child, first, second) for n in range(0, 2 * STEPS, 2)]
                       for child in children])
    assert set(origin.ravel()) == {1, 2}  # each node whole from one parent
    for node in range(2 * STEPS):
        within([(origin[:, node] == 1).sum(), (origin[:, node] == 2).sum()], [0.5, 0.5])
    within(np.bincount(2 * (origin[:, 0] - 1) + origin[:, 5] - 1, minlength=4), [0.25] * 4)
    for _ in range(300):
        a, b = (random_architecture(STEPS, CANDIDATES, rng) for _ in range(2))
        for child in (crossover(a, b, rng), mutate(a, CANDIDATES, 0.5, rng),
                      edit(a, CANDIDATES, rng)):
            assert check_architecture(child, STEPS, 6) == child and distinct_inputs(child)


def test_edit_distribution():
    rng, n, parent = np.random.RandomState(2), 16000, PARENT
    sites = collections.Counter()
    for _ in range(n):
        child = edit(parent, CANDIDATES, rng)
        diff = [(c, i, int(a[0] != b[0]), b) for c in range(2)
                for i, (a, b) in enumerate(zip(parent[c], child[c])) if a != b]
        assert len(diff) == 1 and distinct_inputs(child)
        c, i, is_input, new = diff[0]
        assert (parent[c][i][1] == new[1]) == bool(is_input)
        sites[(is_input, c, i, new)] += 1
    within([sum(v for k, v in sites.items() if k[0] == kind) for kind in (0, 1)], [0.5, 0.5])
    # candidate edits: 12 positions, 3 others each; input edits: nodes 3, 4 (1, 2 other inputs)
    within([sites[key] for key in sorted(sites) if key[0] == 0], [1 / 36] * 36)
    input_sites = sorted(key for key in sites if key[0] == 1)
    assert [(c, i) for _, c, i, _ in input_sites] == [(c, i) for c in range(2)
                                                      for i in (2, 3, 4, 4, 5, 5)]
    within([sites[key] for key in input_sites], [1 / 8, 1 / 8, 1 / 16, 1 / 16, 1 / 16, 1 / 16] * 2)


def real_et_al(score, legal, seed, population_size, sample_size, cycles):
    """regularized_evolution of Real et al.'s published code, random.choice a RandomState."""
    r, population, history = np.random.RandomState(seed), collections.deque(), []
    while len(population) < population_size:
        arch = random_architecture(STEPS, CANDIDATES, r)
        if legal(arch):
            population.append((arch, score(arch)))
            history.append(population[-1])
    while len(history) < cycles:
        sample = [list(population)[r.randint(len(population))] for _ in range(sample_size)]
        parent = max(sample, key=lambda i: i[1])
        child = edit(parent[0], CANDIDATES, r)
        while not legal(child):
            child = edit(parent[0], CANDIDATES, r)
        population.append((child, score(child)))
        history.append(population[-1])
        population.popleft()
    return history, list(population)


def test_regularized_evolution_matches_the_published_loop():
    ours = RegularizedEvolution(table_score, STEPS, CANDIDATES, legal=budget, seed=5,
                                population=20, sample_size=5, cycles=300, cycles_per_step=37)
    logs = [ours.step()]
    assert logs[0]["evaluated"] == 20 and ours.population == ours.history
    logs += run(ours)
    history, population = real_et_al(table_score, budget, 5, 20, 5, 300)
    assert ours.history == history and ours.population == population
    assert [log["new"] for log in logs] == [20] + [37] * 7 + [21]
    assert ours.best() == max(history, key=lambda e: e[1])
    assert logs[-1]["population_best"] == max(s for _, s in population)


def test_regularized_evolution_finds_the_optimum():
    target = Architecture(((0, 1), (1, 2), (2, 0), (0, 1)), ((1, 2), (0, 0), (0, 1), (2, 2)))
    def score(arch):  # pairs of each node also in the target's node
        return sum(len(set(a[n:n + 2]) & set(t[n:n + 2]))
                   for a, t in zip(arch, target) for n in (0, 2))
    search = RegularizedEvolution(score, 2, [0, 1, 2], seed=0, population=20, sample_size=5,
                                  cycles=400)
    run(search)
    best, value = search.best()
    assert value == 8 and all(set(b[n:n + 2]) == set(t[n:n + 2])
                              for b, t in zip(best, target) for n in (0, 2))
    assert np.mean([s for _, s in search.history[:20]]) < 3
    with pytest.raises(RuntimeError, match="budget"):
        RegularizedEvolution(score, 2, [0, 1, 2], legal=lambda a: False).step()
    with pytest.raises(ValueError, match="no edit"):
        RegularizedEvolution(score, steps=1, candidates=[2])


def test_random_search_rounds():
    calls = []
    def score(arch, full):
        calls.append((arch, full))
        return table_score(arch) if full else table_score(arch) + table_score(arch, 1)
    search = RandomSearch(score, STEPS, CANDIDATES, legal=budget, seed=11, rounds=2)
    logs = [search.step(), search.step()]
    assert search.done and len(calls) == 2 * 1010 and logs[-1]["rescored"] == 20
    r, winners, reranked = np.random.RandomState(11), [], []
    for round_calls in (calls[:1010], calls[1010:]):
        drawn = []
        while len(drawn) < 1000:
            arch = random_architecture(STEPS, CANDIDATES, r)
            drawn += [arch] if budget(arch) else []
        assert round_calls[:1000] == [(a, False) for a in drawn]
        cheap = np.array([table_score(a) + table_score(a, 1) for a in drawn])
        top = [drawn[i] for i in np.argsort(-cheap, kind="stable")[:10]]
        assert round_calls[1000:] == [(a, True) for a in top]
        full = [table_score(a) for a in top]
        winners.append((top[int(np.argmax(full))], max(full)))
        reranked.append(winners[-1][0] != top[0])
    assert search.round_best == winners and search.best() == max(winners, key=lambda w: w[1])
    assert any(reranked)  # the full score does change the pick


SMALL = [functools.partial(SPOSEvolution, table_score, STEPS, CANDIDATES, legal=budget,
                           population=12, select=4, mutations=5, crossovers=4, generations=6),
         functools.partial(RegularizedEvolution, table_score, STEPS, CANDIDATES, legal=budget,
                           population=10, sample_size=3, cycles=80, cycles_per_step=15),
         functools.partial(RandomSearch, lambda a, full: table_score(a, int(full)), STEPS,
                           CANDIDATES, legal=budget, rounds=4, samples=50, rescored=5)]


@pytest.mark.parametrize("kind", range(3))
def test_state_dict_round_trip(kind):
    whole, first, resumed = (SMALL[kind](seed=seed) for seed in (4, 4, 99))
    logs = run(whole)
    head = [first.step() for _ in range(2)]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = json.loads(json.dumps(torch.load(buffer, weights_only=True)))
    resumed.load_state_dict(state)
    assert head + run(resumed) == logs and resumed.history == whole.history
    assert resumed.best() == whole.best() and resumed.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="steps"):
        SMALL[kind]().load_state_dict(dict(state, settings=dict(state["settings"], steps=2)))
    with pytest.raises(ValueError, match="state"):
        SMALL[(kind + 1) % 3]().load_state_dict(state)


@pytest.mark.parametrize("cls, name, value", [
    (SPOSEvolution, "population", 0), (SPOSEvolution, "select", 2.5), (SPOSEvolution, "seed", -1),
    (SPOSEvolution, "m_prob", 1.5), (SPOSEvolution, "mutations", 30), (SPOSEvolution, "steps", 0),
    (SPOSEvolution, "generations", 0), (SPOSEvolution, "legal", "all"),
    (RegularizedEvolution, "sample_size", 60), (RegularizedEvolution, "cycles", 10),
    (RegularizedEvolution, "candidates", [1, 1]), (RandomSearch, "candidates", []),
    (RandomSearch, "rescored", 2000), (RandomSearch, "rounds", 0), (RandomSearch, "tries", 0)])
def test_bad_settings(cls, name, value):
    with pytest.raises(ValueError, match=name):
        cls(table_score, **dict(dict(steps=STEPS, candidates=CANDIDATES), **{name: value}))
