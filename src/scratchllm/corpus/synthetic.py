"""Synthetic data: template/grammar generators that need no model, and continuations from a checkpoint.

The generators are deterministic given a seed and make documents whose correctness is known by
construction (the arithmetic is right, the sorted list is sorted), in the spirit of TinyStories-style
and procedurally generated pre-training data:

* ``arithmetic`` - worked arithmetic: bare sums, word problems, two-step expressions.
* ``grammar``    - short stories from a small probabilistic grammar.
* ``code``       - small Python modules built from function/class templates.
* ``tasks``      - algorithmic tasks with answers: sort, reverse, count, compare, continue a sequence.

Continuations sampled from a trained checkpoint are ``data/continuations.py`` (they need the model).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

from scratchllm.corpus.embedded import Document
from scratchllm.errors import ScratchError

NAMES = ["Ada", "Ben", "Chloe", "Dev", "Ela", "Finn", "Grace", "Hugo", "Iris", "Jon", "Kira", "Leo", "Maya",
         "Nico", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Viktor", "Wen", "Yara", "Zane"]
ITEMS = ["apple", "marble", "book", "coin", "pencil", "shell", "sticker", "card", "cookie", "stone", "ribbon",
         "button", "leaf", "feather", "stamp"]
PLACES = ["the park", "the old mill", "the river", "the library", "the market", "the hill", "the garden",
          "the harbour", "the forest", "the bakery", "the station", "the beach", "the attic", "the school"]
ANIMALS = ["dog", "cat", "fox", "owl", "rabbit", "duck", "horse", "frog", "squirrel", "goat", "hedgehog", "crow"]
ADJECTIVES = ["small", "quiet", "curious", "brave", "sleepy", "bright", "old", "tiny", "clever", "muddy", "shy",
              "happy", "grumpy", "gentle", "noisy"]
FEELINGS = ["happy", "sad", "surprised", "proud", "worried", "excited", "tired", "calm", "scared", "glad"]
WEATHER = ["it was raining", "the sun was warm", "the wind was cold", "snow covered the ground",
           "the sky was grey", "fog hid the trees", "the air smelled of rain"]


def _pronoun(name: str) -> tuple[str, str]:
    return ("she", "her") if name[-1] in "aeiy" else ("he", "his")


# ----------------------------------------------------------------------------------------------


def arithmetic(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(6, 12)):
        kind = rng.randrange(4)
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        if kind == 0:
            op = rng.choice("+-*")
            r = {"+": a + b, "-": a - b, "*": a * b}[op]
            lines.append(f"Question: What is {a} {op} {b}?\nAnswer: {a} {op} {b} = {r}.")
        elif kind == 1:
            name, item = rng.choice(NAMES), rng.choice(ITEMS)
            he, _ = _pronoun(name)
            a, b = rng.randint(5, 60), rng.randint(1, 40)
            if rng.random() < 0.5:
                story, r = f"{he.capitalize()} finds {b} more", a + b
            else:
                b = min(b, a - 1)
                story, r = f"{he.capitalize()} gives {b} to a friend", a - b
            lines.append(f"{name} has {a} {item}s. {story}. How many {item}s does {name} have now?\n"
                         f"Answer: {r} {item}{'s' if r != 1 else ''}.")
        elif kind == 2:
            c = rng.randint(2, 12)
            s = a + b
            lines.append(f"Compute ({a} + {b}) * {c}.\nFirst, {a} + {b} = {s}. Then {s} * {c} = {s * c}. "
                         f"The answer is {s * c}.")
        else:
            q, d = rng.randint(2, 99), rng.randint(2, 12)
            n = q * d + rng.randint(0, d - 1)
            lines.append(f"Divide {n} by {d}.\nAnswer: {n} = {d} * {n // d} + {n % d}, so the quotient is "
                         f"{n // d} and the remainder is {n % d}.")
    return "\n\n".join(lines) + "\n"


_GRAMMAR: dict[str, list[str]] = {
    "STORY": ["OPEN EVENT EVENT PROBLEM EVENT RESOLVE END"],
    "OPEN": ["Once upon a time, a ADJ ANIMAL named NAME lived near PLACE.",
             "There was a ADJ ANIMAL called NAME who loved PLACE.",
             "One morning, NAME the ADJ ANIMAL woke up early because WEATHER."],
    "EVENT": ["NAME walked to PLACE and saw a ADJ ANIMAL.",
              "At PLACE, NAME found a ADJ ITEM under a bench.",
              "NAME met a friend, and they talked about PLACE for a long time.",
              "Because WEATHER, NAME stayed close to PLACE.",
              "NAME tried to climb a tree, but the branches were too ADJ.",
              "Later, NAME shared a ITEM with a ADJ ANIMAL, who felt FEELING."],
    "PROBLEM": ["Suddenly, NAME lost the ITEM and felt FEELING.",
                "Then a storm came, and NAME could not find the way home.",
                "But the ADJ ANIMAL at PLACE did not want to be friends."],
    "RESOLVE": ["After a while, NAME asked for help, and everyone looked together.",
                "NAME took a deep breath and remembered what a friend had said.",
                "A ADJ ANIMAL showed NAME a path back through PLACE."],
    "END": ["In the end, NAME felt FEELING and went home to sleep.",
            "From that day on, NAME always visited PLACE with a friend.",
            "NAME learned that being ADJ is not the same as being alone."],
}


def grammar(rng: random.Random) -> str:
    slots = {"NAME": rng.choice(NAMES)}
    fill = {"ADJ": ADJECTIVES, "ANIMAL": ANIMALS, "PLACE": PLACES, "ITEM": ITEMS, "FEELING": FEELINGS,
            "WEATHER": WEATHER}

    def expand(symbol: str) -> str:
        out = []
        for word in rng.choice(_GRAMMAR[symbol]).split(" "):
            core = word.rstrip(".,")
            tail = word[len(core):]
            if core in _GRAMMAR:
                out.append(expand(core) + tail)
            elif core == "NAME":
                out.append(slots["NAME"] + tail)
            elif core in fill:
                out.append(rng.choice(fill[core]) + tail)
            else:
                out.append(word)
        return " ".join(out)

    paragraphs = [expand("STORY") for _ in range(rng.randint(1, 3))]
    text = "\n\n".join(paragraphs)
    return text.replace(" a a", " an a").replace(" a o", " an o").replace(" a e", " an e") + "\n"


_VERBS = ["count", "filter", "scale", "merge", "clip", "sum", "find", "group", "rank", "split"]
_NOUNS = ["values", "scores", "prices", "items", "words", "records", "steps", "points", "names", "weights"]


def code(rng: random.Random) -> str:
    parts = ['"""Helpers generated from templates (synthetic data)."""\n']
    for _ in range(rng.randint(3, 6)):
        verb, noun = rng.choice(_VERBS), rng.choice(_NOUNS)
        k = rng.randint(2, 20)
        kind = rng.randrange(4)
        if kind == 0:
            parts.append(
                f"def {verb}_{noun}({noun}, limit={k}):\n"
                f'    """Return the {noun} that are at most limit."""\n'
                f"    return [x for x in {noun} if x <= limit]\n"
            )
        elif kind == 1:
            op = rng.choice(["+", "*", "-"])
            parts.append(
                f"def {verb}_{noun}_total({noun}):\n"
                f'    """Fold the {noun} with {op!r}, starting from {0 if op != "*" else 1}."""\n'
                f"    total = {0 if op != '*' else 1}\n"
                f"    for x in {noun}:\n"
                f"        total = total {op} x\n"
                f"    return total\n"
            )
        elif kind == 2:
            cls = noun.capitalize().rstrip("s") + rng.choice(["Store", "Counter", "Buffer", "Table"])
            parts.append(
                f"class {cls}:\n"
                f'    """Keep up to {k} {noun} in insertion order."""\n\n'
                f"    def __init__(self):\n"
                f"        self.{noun} = []\n\n"
                f"    def add(self, item):\n"
                f"        if len(self.{noun}) >= {k}:\n"
                f"            self.{noun}.pop(0)\n"
                f"        self.{noun}.append(item)\n\n"
                f"    def __len__(self):\n"
                f"        return len(self.{noun})\n"
            )
        else:
            a, b = rng.randint(1, 9), rng.randint(0, 9)
            parts.append(
                f"def {verb}_{noun}_line(x):\n"
                f'    """Evaluate the line y = {a} * x + {b}."""\n'
                f"    return {a} * x + {b}\n\n\n"
                f"assert {verb}_{noun}_line({k}) == {a * k + b}\n"
            )
    return "\n\n".join(parts)


def tasks(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(6, 12)):
        kind = rng.randrange(5)
        if kind == 0:
            xs = [rng.randint(0, 99) for _ in range(rng.randint(3, 9))]
            lines.append(f"Sort the numbers {', '.join(map(str, xs))}.\nSorted: {', '.join(map(str, sorted(xs)))}.")
        elif kind == 1:
            ws = rng.sample(ITEMS + ANIMALS, rng.randint(3, 6))
            lines.append(f"Reverse the list: {' '.join(ws)}.\nReversed: {' '.join(reversed(ws))}.")
        elif kind == 2:
            w = rng.choice(ITEMS + ANIMALS + NAMES).lower()
            ch = rng.choice(w)
            lines.append(f"How many times does the letter '{ch}' appear in '{w}'?\nAnswer: {w.count(ch)}.")
        elif kind == 3:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            rel = "greater than" if a > b else "less than" if a < b else "equal to"
            lines.append(f"Compare {a} and {b}.\nAnswer: {a} is {rel} {b}.")
        else:
            start, step = rng.randint(0, 50), rng.randint(2, 9)
            seq = [start + i * step for i in range(5)]
            lines.append(f"Continue the sequence {', '.join(map(str, seq))}, ...\n"
                         f"Next: {seq[-1] + step}, {seq[-1] + 2 * step}. (Each step adds {step}.)")
    return "\n\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "arithmetic": arithmetic, "grammar": grammar, "code": code, "tasks": tasks,
}


def synthetic_documents(generators: Sequence[str], count: int, seed: int = 0, domain: str = "synthetic") -> Iterator[Document]:
    """``count`` documents, cycling through ``generators``; the same seed gives the same documents."""
    for name in generators:
        if name not in GENERATORS:
            raise ScratchError(f"unknown synthetic generator {name!r}", f"choose from {', '.join(GENERATORS)}")
    for i in range(count):
        name = generators[i % len(generators)]
        rng = random.Random(f"{seed}:{name}:{i}")
        yield Document(GENERATORS[name](rng), domain, f"synthetic:{name}#{i}")


# ----------------------------------------------------------------------------------------------
# Continuations from a trained checkpoint
