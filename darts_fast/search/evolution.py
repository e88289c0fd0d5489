"""Search strategies that pick one architecture of the cell space (``spaces.cnn.paths``) from a
trained weight-sharing supernet: SPOS' evolution, Real et al.'s regularized (aging) evolution and
Li & Talwalkar's random search. They know nothing of networks or data, only callables:

- ``score(arch)`` (``score(arch, full=...)`` for :class:`RandomSearch`): a float, higher is
  better (an accuracy); NaN is refused;
- ``sample(rng)``: a random architecture, by default ``random_architecture(steps, candidates,
  rng)``;
- ``legal(arch)``: whether ``arch`` is within the budget (FLOPs, parameters); None: all are.

Each owns a ``numpy.random.RandomState(seed)`` and runs by ``step()`` (one generation, chunk of
cycles or round, returning a dict for a log line) until ``done``; ``best()`` is (architecture,
score), ``history`` the (architecture, score) pairs in evaluation order, and ``state_dict()`` /
``load_state_dict()`` carry all a search needs to go on bit-identically, as JSON values. The gene
operators are in :mod:`darts_fast.search.evolution_genes`.
"""
import numbers

from .evolution_genes import (Strategy, arch_from_plain, arch_to_plain, crossover, edit, edits,
                              integer, mutate)


class SPOSEvolution(Strategy):
    """SPOS' evolutionary search (Guo et al. 2020, the authors' ``EvolutionSearcher``).

    Generation 0 is ``population`` random architectures; generation ``g > 0`` is ``mutations``
    mutants and ``crossovers`` crosses of parents drawn uniformly from ``top_k`` (the best
    ``select`` of everything scored so far, a stable sort on the score, earlier first among
    ties), topped up with random ones to ``population``. Each generation is merged into ``top_k``
    as it is scored. A candidate counts only if never seen and ``legal``; only those are scored,
    each once. As the authors, candidates come ten at a time (the whole ten drawn before any is
    checked, the rest of the last ten dropped), mutants and crosses stop after ``10 * wanted``
    tries, and the random top-up is unbounded but for ``random_tries * wanted`` tries here: short
    of that the generation is short, and a generation with nothing new ends the search
    (``exhausted``: the space, or its legal part, is used up).

    Genes: the authors' space is a chain of choice blocks, one gene each; the DARTS cell's genes
    here are our adaptation: mutation redraws each (input, candidate) pair with probability
    ``m_prob``, crossover takes each node's two pairs from one parent or the other
    (:func:`~darts_fast.search.evolution_genes.mutate`, ``crossover``). The authors' loop scores
    a last population it never selects from; here ``generations`` populations are scored
    (1000 with the defaults) and all count.
    """

    name = "spos"
    length = "generations"

    def __init__(self, score, steps, candidates, *, sample=None, legal=None, seed=0,
                 population=50, select=10, mutations=25, crossovers=25, m_prob=0.1,
                 generations=20, random_tries=100):
        self.population_size = integer("population", population, 1)
        self.select = integer("select", select, 1)
        self.mutations = integer("mutations", mutations, 0)
        self.crossovers = integer("crossovers", crossovers, 0)
        if self.mutations + self.crossovers > self.population_size:
            raise ValueError(f"mutations + crossovers must be <= population ({population}); "
                             f"got {mutations} + {crossovers}")
        if isinstance(m_prob, bool) or not (isinstance(m_prob, numbers.Real) and 0 <= m_prob <= 1):
            raise ValueError(f"m_prob must be a probability in [0, 1]; got {m_prob!r}")
        self.m_prob = float(m_prob)
        self.generations = integer("generations", generations, 1)
        self.random_tries = integer("random_tries", random_tries, 1)
        super().__init__(score, steps, candidates, sample, legal, seed, dict(
            population=self.population_size, select=self.select, mutations=self.mutations,
            crossovers=self.crossovers, m_prob=self.m_prob, generations=self.generations,
            random_tries=self.random_tries))
        self.generation, self.exhausted = 0, False
        self.scores, self.top_k, self.population = {}, [], []

    @property
    def done(self):
        return self.exhausted or self.generation >= self.generations

    @property
    def history(self):
        return list(self.scores.items())

    def best(self):
        return self.top(self.history)

    def _accept(self, arch):
        """The authors' ``is_legal``: unseen and within the budget; then scored."""
        if arch in self.scores or not self.within_budget(arch):
            return False
        self.scores[arch] = self.evaluate(arch)
        return True

    def _collect(self, make, wanted, tries):
        found, batch = [], []
        while len(found) < wanted and tries > 0:
            tries -= 1
            if not batch:
                batch = [make() for _ in range(10)][::-1]
            arch = batch.pop()
            if self._accept(arch):
                found.append(arch)
        return found

    def _parent(self):
        return self.top_k[self.rng.randint(len(self.top_k))]

    def step(self):
        """One generation. Returns ``{"generation", "evaluated", "mutations", "crossovers",
        "random", "best", "top_k_mean", "exhausted"}`` (the counts this generation's)."""
        if self.done:
            raise RuntimeError("the search is done")
        children = [[], []]
        if self.generation > 0:
            children = [
                self._collect(lambda: mutate(self._parent(), self.candidates, self.m_prob,
                                             self.rng), self.mutations, 10 * self.mutations),
                self._collect(lambda: crossover(self._parent(), self._parent(), self.rng),
                              self.crossovers, 10 * self.crossovers)]
        wanted = self.population_size - len(children[0]) - len(children[1])
        randoms = self._collect(self.draw, wanted, self.random_tries * wanted)
        if self.generation == 0 and not randoms:
            raise RuntimeError(f"no random architecture within the budget in "
                               f"{self.random_tries * wanted} draws (legal rejects nearly all)")
        self.population = children[0] + children[1] + randoms
        self.top_k = sorted(self.top_k + self.population,
                            key=lambda arch: -self.scores[arch])[:self.select]
        self.generation += 1
        self.exhausted = not self.population
        top = [self.scores[arch] for arch in self.top_k]
        return {"generation": self.generation, "evaluated": len(self.scores),
                "mutations": len(children[0]), "crossovers": len(children[1]),
                "random": len(randoms), "best": top[0], "top_k_mean": sum(top) / len(top),
                "exhausted": self.exhausted}

    def state_dict(self):
        return self._state(
            generation=self.generation, exhausted=self.exhausted,
            scores=[[arch_to_plain(a), s] for a, s in self.scores.items()],
            top_k=[arch_to_plain(a) for a in self.top_k],
            population=[arch_to_plain(a) for a in self.population])

    def load_state_dict(self, state):
        state = self._load(state)
        self.generation, self.exhausted = int(state["generation"]), bool(state["exhausted"])
        self.scores = {arch_from_plain(a): float(s) for a, s in state["scores"]}
        self.top_k = [arch_from_plain(a) for a in state["top_k"]]
        self.population = [arch_from_plain(a) for a in state["population"]]


class RegularizedEvolution(Strategy):
    """Regularized (aging) evolution, Real et al. 2019 (AmoebaNet), as their published loop.

    The first step scores ``population`` (P) random architectures; each cycle after it draws
    ``sample_size`` (S) members of the population uniformly with replacement
    (``rng.randint(P)`` each), takes the best of them (the first among ties) as the parent,
    scores its child, one edit (:func:`~darts_fast.search.evolution_genes.edit`: the kind, one
    pair's candidate or one pair's input, uniform, then the position, then a different value),
    appends it and removes the oldest member: the population is always ``history[-P:]``. A step
    runs ``cycles_per_step`` cycles; the search ends at ``cycles`` scored architectures, the
    initial P included (1000 by default, SPOS' budget). Children outside the budget are redrawn
    from the same parent, at most ``tries`` times (the initial population: ``tries * P`` draws),
    then a RuntimeError; an architecture met again is scored again, as in the paper (the
    population may hold it twice).
    """

    name = "regularized"
    length = "cycles"

    def __init__(self, score, steps, candidates, *, sample=None, legal=None, seed=0,
                 population=50, sample_size=10, cycles=1000, cycles_per_step=50, tries=100):
        self.population_size = integer("population", population, 1)
        self.sample_size = integer("sample_size", sample_size, 1)
        if self.sample_size > self.population_size:
            raise ValueError(f"sample_size must be <= population ({population}); "
                             f"got {sample_size}")
        self.cycles = integer("cycles", cycles, self.population_size)
        self.cycles_per_step = integer("cycles_per_step", cycles_per_step, 1)
        self.tries = integer("tries", tries, 1)
        super().__init__(score, steps, candidates, sample, legal, seed, dict(
            population=self.population_size, sample_size=self.sample_size, cycles=self.cycles,
            cycles_per_step=self.cycles_per_step, tries=self.tries))
        if len(self.candidates) < 2 and self.steps < 2:
            raise ValueError("candidates: one candidate and one node leave no edit to make; "
                             "give two candidates or more, or steps >= 2")
        self.history = []

    @property
    def done(self):
        return len(self.history) >= self.cycles

    @property
    def population(self):
        return self.history[-self.population_size:]

    def best(self):
        return self.top(self.history)

    def _child(self, parent):
        for _ in range(self.tries):
            child = edit(parent, self.candidates, self.rng)
            if self.within_budget(child):
                return child
        raise RuntimeError(f"no edit of {parent} within the budget in {self.tries} tries "
                           f"({len(edits(parent, self.candidates))} kinds of edit)")

    def step(self):
        """The initial population, or ``cycles_per_step`` cycles. Returns ``{"evaluated", "new",
        "best", "population_best", "population_mean"}``."""
        if self.done:
            raise RuntimeError("the search is done")
        start = len(self.history)
        if start == 0:
            for arch in self.draw_legal(self.population_size, self.tries, "population"):
                self.history.append((arch, self.evaluate(arch)))
        for _ in range(min(self.cycles_per_step, self.cycles - start) if start else 0):
            population = self.population
            sample = [population[self.rng.randint(len(population))]
                      for _ in range(self.sample_size)]
            child = self._child(self.top(sample)[0])
            self.history.append((child, self.evaluate(child)))
        scores = [s for _, s in self.population]
        return {"evaluated": len(self.history), "new": len(self.history) - start,
                "best": self.best()[1], "population_best": max(scores),
                "population_mean": sum(scores) / len(scores)}

    def state_dict(self):
        return self._state(history=[[arch_to_plain(a), s] for a, s in self.history])

    def load_state_dict(self, state):
        state = self._load(state)
        self.history = [(arch_from_plain(a), float(s)) for a, s in state["history"]]


class RandomSearch(Strategy):
    """Random search with weight sharing, Li & Talwalkar 2019 (randomNAS' ``get_eval_arch``).

    Each round (one step) draws ``samples`` random architectures (repeats allowed, as theirs),
    scores each with ``score(arch, full=False)`` (their cheap evaluation), ranks them (a stable
    sort, the higher score first), re-scores the first ``rescored`` with ``score(arch,
    full=True)`` (their ``split='valid'``) and keeps the round's best re-scored one (the first
    among ties) in ``round_best``. ``history`` holds the cheap scores, ``full_history`` the
    re-scores. ``best()`` is the best of all re-scored ones; their script
    takes the first round's winner, which is the same for one round. Draws outside the budget are
    drawn again, at most ``tries * samples`` in a round. A failing score raises; their code scores
    it as the worst, which a ``score`` returning ``-inf`` reproduces.
    """

    name = "random"
    length = "rounds"

    def __init__(self, score, steps, candidates, *, sample=None, legal=None, seed=0,
                 rounds=1, samples=1000, rescored=10, tries=100):
        self.rounds = integer("rounds", rounds, 1)
        self.samples = integer("samples", samples, 1)
        self.rescored = integer("rescored", rescored, 1)
        if self.rescored > self.samples:
            raise ValueError(f"rescored must be <= samples ({samples}); got {rescored}")
        self.tries = integer("tries", tries, 1)
        super().__init__(score, steps, candidates, sample, legal, seed, dict(
            rounds=self.rounds, samples=self.samples, rescored=self.rescored, tries=self.tries))
        self.history, self.full_history, self.round_best = [], [], []

    @property
    def done(self):
        return len(self.round_best) >= self.rounds

    def best(self):
        return self.top(self.full_history)

    def step(self):
        """One round. Returns ``{"round", "evaluated", "rescored", "round_best", "best"}``."""
        if self.done:
            raise RuntimeError("the search is done")
        drawn = self.draw_legal(self.samples, self.tries, f"round {len(self.round_best)}")
        cheap = [(arch, self.evaluate(arch, full=False)) for arch in drawn]
        self.history += cheap
        ranked = sorted(cheap, key=lambda entry: -entry[1])[:self.rescored]
        full = [(arch, self.evaluate(arch, full=True)) for arch, _ in ranked]
        self.full_history += full
        self.round_best.append(self.top(full))
        return {"round": len(self.round_best), "evaluated": len(self.history),
                "rescored": len(self.full_history), "round_best": self.round_best[-1][1],
                "best": self.best()[1]}

    def state_dict(self):
        return self._state(**{key: [[arch_to_plain(a), s] for a, s in getattr(self, key)]
                              for key in ("history", "full_history", "round_best")})

    def load_state_dict(self, state):
        state = self._load(state)
        for key in ("history", "full_history", "round_best"):
            setattr(self, key, [(arch_from_plain(a), float(s)) for a, s in state[key]])
