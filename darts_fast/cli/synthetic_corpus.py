"""The offline default text: a small synthetic language that a recurrent model learns in a short
CPU run, whose source's best achievable perplexity is known exactly.

Each sentence (one line) is about one of ``TOPICS`` topics, which its first word names:

    subject_t verb_t determiner adjective* noun_t (preposition determiner adjective* noun_t)*

The topic is uniform, the words of a class follow a Zipf law, and adjectives and prepositional
phrases repeat with fixed probabilities. What the next word depends on (the sentence's topic and
where the sentence stands) is a function of the words so far, so the source is a Markov chain
over those states and its entropy rate is exact: the stationary average of each state's
next-word entropy. A model that remembers the topic over the sentence can reach the perplexity
exp(entropy rate); one that sees only the previous word loses the topic at each noun that
follows a determiner or an adjective, and its best is the source's bigram perplexity.
"""
import bisect

import numpy as np

from .corpus import EOS, SPLITS, Corpus

TOPICS = 8
SUBJECTS, VERBS, NOUNS = 6, 10, 15  # the words of each topic
ADJECTIVES, DETERMINERS, PREPOSITIONS = 30, 4, 8  # the words all topics share
P_ADJECTIVE = 0.3  # another adjective before the noun
P_PREPOSITION = 0.4  # another noun phrase after the noun, rather than the sentence's end
# Tens of thousands of tokens: a few seconds of a small model's epoch on a CPU, and enough
# valid text for one batch of 256 sequences of 35 words (256 x 36 = 9216 tokens).
SIZES = {"train": 60_000, "valid": 12_000, "test": 12_000}
START = "start"
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def zipf(n):
    """Zipf's law over ``n`` ranks: probabilities proportional to 1 / rank."""
    weights = 1.0 / np.arange(1, n + 1)
    return weights / weights.sum()


def entropy(p):
    """The entropy of the distribution ``p`` in nats (its zeros contribute nothing)."""
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class SyntheticLanguage:
    """The source of the language spelled by ``seed``. ``classes``: {class: (words, their
    probabilities)}, the classes being 'subject t', 'verb t', 'noun t' for each topic t,
    'adjective', 'determiner', 'preposition' and '<eos>'. ``states``: {state: [(class,
    probability, next state)]}, a state being what comes next: 'start', then 'verb t',
    'determiner t', 'noun t' (an adjective or the noun) and 'end t' (a preposition or <eos>)."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        short = iter(rng.permutation(_SYLLABLES).tolist())  # one syllable: function words
        pairs = rng.choice(len(_SYLLABLES) ** 2, TOPICS * (SUBJECTS + VERBS + NOUNS) + ADJECTIVES,
                           replace=False)
        long = iter(_SYLLABLES[k // len(_SYLLABLES)] + _SYLLABLES[k % len(_SYLLABLES)]
                    for k in pairs.tolist())
        sizes = {**{f"{kind} {t}": n for t in range(TOPICS)
                    for kind, n in (("subject", SUBJECTS), ("verb", VERBS), ("noun", NOUNS))},
                 "adjective": ADJECTIVES, "determiner": DETERMINERS, "preposition": PREPOSITIONS}
        self.classes = {name: ([next(short if name in ("determiner", "preposition") else long)
                                for _ in range(n)], zipf(n)) for name, n in sizes.items()}
        self.classes[EOS] = ([EOS], np.ones(1))
        self.states = {START: [(f"subject {t}", 1 / TOPICS, f"verb {t}") for t in range(TOPICS)]}
        for t in range(TOPICS):
            self.states.update({
                f"verb {t}": [(f"verb {t}", 1.0, f"determiner {t}")],
                f"determiner {t}": [("determiner", 1.0, f"noun {t}")],
                f"noun {t}": [("adjective", P_ADJECTIVE, f"noun {t}"),
                              (f"noun {t}", 1 - P_ADJECTIVE, f"end {t}")],
                f"end {t}": [("preposition", P_PREPOSITION, f"determiner {t}"),
                             (EOS, 1 - P_PREPOSITION, START)]})
        self.words = [word for words, _ in self.classes.values() for word in words]
        self._tables = {state: self._table(branches) for state, branches in self.states.items()}

    def _table(self, branches):
        """(words, cumulative probabilities, next states) of one state, to draw from."""
        words, probabilities, after = [], [], []
        for name, p, next_state in branches:
            class_words, class_p = self.classes[name]
            words += class_words
            probabilities.append(p * class_p)
            after += [next_state] * len(class_words)
        cumulative = np.cumsum(np.concatenate(probabilities))
        cumulative[-1] = 1.0  # a uniform draw below 1 always lands on a word
        return words, cumulative.tolist(), after

    def text(self, tokens, rng):
        """Whole sentences drawn with the numpy generator ``rng``, one a line, until they hold
        at least ``tokens`` tokens (each line's <eos> counted, as the reading counts it)."""
        lines, line, count, state = [], [], 0, START
        uniforms = _uniforms(rng)
        while count < tokens or state != START:
            words, cumulative, after = self._tables[state]
            k = bisect.bisect_right(cumulative, next(uniforms))
            state, count = after[k], count + 1
            if words[k] == EOS:
                lines.append(" ".join(line))
                line = []
            else:
                line.append(words[k])
        return "".join(f"{line}\n" for line in lines)

    def perplexities(self):
        """{name: perplexity} of the source: the best any model reaches (exp of the entropy
        rate), the best of a model that sees only the previous word, and of one that knows only
        the words' frequencies."""
        names = list(self.states)
        index = {word: i for i, word in enumerate(self.words)}
        emit = np.zeros((len(names), len(self.words)))  # P(next word | state)
        after = np.zeros((len(names), len(self.words)), dtype=np.int64)  # state after a word
        for s, (words, cumulative, nexts) in enumerate(self._tables[name] for name in names):
            columns = [index[word] for word in words]
            emit[s, columns] = np.diff(cumulative, prepend=0.0)
            after[s, columns] = [names.index(state) for state in nexts]
        moves = np.zeros((len(names), len(names)))
        for s in range(len(names)):
            np.add.at(moves[s], after[s], emit[s])
        stationary = _stationary(moves)
        rate = float(stationary @ [entropy(row) for row in emit])
        unigram = stationary @ emit
        # P(word, next word): from each state, a word, then the state it leads to emits.
        pairs = np.einsum("s,sa,sab->ab", stationary, emit, emit[after])
        return {"best achievable": float(np.exp(rate)),
                "previous word only": float(np.exp(entropy(pairs) - entropy(unigram))),
                "word frequencies only": float(np.exp(entropy(unigram)))}


def _uniforms(rng):
    """Uniform draws in [0, 1), fetched from ``rng`` in blocks (one call per draw is slow)."""
    while True:
        yield from rng.random(4096).tolist()


def _stationary(moves):
    """The stationary distribution of the chain with transition matrix ``moves`` (rows sum to
    1; irreducible): pi (moves - I) = 0 with the probabilities summing to 1."""
    n = len(moves)
    system = np.vstack([(moves - np.eye(n)).T, np.ones(n)])
    target = np.zeros(n + 1)
    target[-1] = 1.0
    return np.linalg.lstsq(system, target, rcond=None)[0]


def synthetic_corpus(seed=0, sizes=None):
    """The corpus of the language of ``seed``: its train, valid and test splits hold at least
    ``sizes[split]`` tokens each (``SIZES`` by default), each drawn from its own stream of the
    seed, so that a split does not change with the others' sizes."""
    sizes = {**SIZES, **(sizes or {})}
    language = SyntheticLanguage(seed)
    texts = {split: language.text(sizes[split], np.random.default_rng([seed, i]))
             for i, split in enumerate(SPLITS, start=1)}
    return Corpus(f"synthetic language (seed {seed})", texts,
                  {split: f"synthetic {split} split (seed {seed})" for split in SPLITS},
                  language.perplexities())
