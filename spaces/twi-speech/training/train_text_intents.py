"""Train the text intent classifier on intents.yaml and write it, with its model card.

    python spaces/twi-speech/training/train_text_intents.py [--seed 0] [--l2 1e-4] [--folds 5]

Trains on every intent's ``examples`` (fixed seed, a second or so on a CPU), scores the
``held_out`` paraphrases it never saw (accuracy, macro-F1, the most confused pairs), runs a
k-fold cross-validation on the training examples as a second, harsher estimate, and writes
``model.safetensors``, ``config.json`` and ``README.md`` to ``models/text-intent/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPACE = Path(__file__).resolve().parents[1]
# Run as a script, Python puts only training/ on sys.path: add the Space (intent_text, ...)
# and, in the monorepo, the root that holds shared/.
for _folder in (SPACE.parents[1], SPACE):
    if (_folder == SPACE or (_folder / "shared").is_dir()) and str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from intent_catalog import INTENTS_PATH, IntentCatalog, load_intents  # noqa: E402
from intent_text import CONFIG_FILE, WEIGHTS_FILE, TextIntentClassifier  # noqa: E402

logger = logging.getLogger("train_text_intents")

MODEL_DIR = SPACE / "models" / "text-intent"
# How many confused (true, predicted) pairs the report lists.
TOP_CONFUSIONS = 5


@dataclass(frozen=True)
class IntentReport:
    """How well predicted intents match the true ones."""

    # Number of texts scored.
    n: int
    # Fraction predicted right.
    accuracy: float
    # Unweighted mean of every label's F1 (a label never true nor predicted scores 0).
    macro_f1: float
    # The most frequent mistakes, as (true, predicted, count), most frequent first.
    confused: tuple[tuple[str, str, int], ...]
    # Every mistake, as (text, true, predicted, confidence).
    errors: tuple[tuple[str, str, str, float], ...]


def intent_report(
    texts: Sequence[str],
    y_true: Sequence[str],
    y_pred: Sequence[str],
    confidence: Sequence[float],
    labels: Sequence[str],
) -> IntentReport:
    """Accuracy, macro-F1 over ``labels`` and the mistakes of one set of predictions."""
    f1 = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != label and p == label for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == label and p != label for t, p in zip(y_true, y_pred, strict=True))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    rows = list(zip(texts, y_true, y_pred, confidence, strict=True))
    errors = tuple((x, t, p, float(c)) for x, t, p, c in rows if t != p)
    pairs = Counter((t, p) for _, t, p, _ in errors)
    # Ties in the order the mistakes came, so the report is the same on every run.
    confused = tuple((t, p, k) for (t, p), k in pairs.most_common(TOP_CONFUSIONS))
    correct = len(rows) - len(errors)
    return IntentReport(len(rows), correct / len(rows), float(np.mean(f1)), confused, errors)


def evaluate(model: TextIntentClassifier, pairs: Sequence[tuple[str, str]]) -> IntentReport:
    """Score ``model`` on (text, intent) pairs."""
    texts = [text for text, _ in pairs]
    predictions = model.predict(texts, top_k=1)
    return intent_report(
        texts,
        [label for _, label in pairs],
        [p.intent for p in predictions],
        [p.confidence for p in predictions],
        model.labels,
    )


def cross_validate(
    pairs: Sequence[tuple[str, str]], folds: int, *, seed: int, l2: float
) -> IntentReport:
    """Train on all but one fold of ``pairs`` and score that fold, for every fold.

    Each intent's examples are dealt round-robin over the folds after a seeded shuffle, so
    every fold holds every intent.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(pairs):
        by_label.setdefault(label, []).append(i)
    fold_of = np.zeros(len(pairs), dtype=int)
    for indices in by_label.values():
        for k, i in enumerate(rng.permutation(indices)):
            fold_of[i] = k % folds
    texts, y_true, y_pred, confidence = [], [], [], []
    for fold in range(folds):
        train = [p for p, f in zip(pairs, fold_of, strict=True) if f != fold]
        test = [p for p, f in zip(pairs, fold_of, strict=True) if f == fold]
        model = TextIntentClassifier.train(train, seed=seed, l2=l2)
        predictions = model.predict([text for text, _ in test], top_k=1)
        texts += [text for text, _ in test]
        y_true += [label for _, label in test]
        y_pred += [p.intent for p in predictions]
        confidence += [p.confidence for p in predictions]
    labels = list(dict.fromkeys(label for _, label in pairs))
    return intent_report(texts, y_true, y_pred, confidence, labels)


def format_report(title: str, report: IntentReport) -> str:
    """The report as text for a terminal."""
    lines = [
        f"{title}: {report.n} texts, accuracy {report.accuracy:.3f} "
        f"({report.n - len(report.errors)}/{report.n}), macro-F1 {report.macro_f1:.3f}"
    ]
    lines += [f"  confused: {t} -> {p} ({k}x)" for t, p, k in report.confused]
    return "\n".join(lines)


def model_card(
    catalog: IntentCatalog,
    model: TextIntentClassifier,
    held_out: IntentReport,
    cv: IntentReport | None,
    folds: int,
) -> str:
    """The model's README.md: what it is, how it was measured, what it cannot do."""
    info = model.training
    assert info is not None  # a model this command just trained
    size = model.weights.nbytes + model.idf.nbytes
    confused = "\n".join(f"| {t} | {p} | {k} |" for t, p, k in held_out.confused) or "| - | - | 0 |"
    errors = (
        "\n".join(f"| {text} | {t} | {p} | {c:.2f} |" for text, t, p, c in held_out.errors)
        or "| (none) | | | |"
    )
    cv_line = (
        f"| {folds}-fold cross-validation on the training examples | {cv.n} | "
        f"{cv.accuracy:.3f} | {cv.macro_f1:.3f} |"
        if cv
        else ""
    )
    features = model.settings
    shape = f"{len(model.vocabulary)} x {len(model.labels)}"
    held_out_line = (
        f"| held-out paraphrases (never trained on) | {held_out.n} | "
        f"{held_out.accuracy:.3f} | {held_out.macro_f1:.3f} |"
    )
    fewest = min(len(intent.examples) for intent in catalog.intents)
    return f"""---
language:
- ak
- tw
library_name: numpy
pipeline_tag: text-classification
tags:
- intent-classification
- twi
- akan
- e-commerce
---

# twi-speech text intent classifier

Maps a Twi (Akan: Asante and Akuapem) shopping command, typed or transcribed from speech, to
one of {len(model.labels)} intents of an e-commerce app (`go_home`, `search`, `add_to_cart`,
`make_payment`, `track_order`, `talk_to_agent`, ...; every intent with its description is in
`spaces/twi-speech/intents.yaml`). It is the text half of the twi-speech Space: speech ->
transcript -> intent.

A character n-gram linear classifier. The text is normalised (NFC, casefolded, tone marks and
punctuation removed, ɛ written e and ɔ written o, so either spelling scores the same) and split
into words; each word, as `<word>`, gives its character n-grams of length {features.min_n} to
{features.max_n} and itself as features. Sublinear TF-IDF, L2 normalised, feeds one linear
layer (no bias) and a softmax: multinomial logistic regression with L2 penalty {info.l2:g},
fitted in numpy (seed {info.seed}, {info.iterations} accelerated gradient steps). Serving needs
numpy, safetensors and the project's `shared` package (`intent_text.TextIntentClassifier.load`);
no scikit-learn or torch.

| file | contents |
|---|---|
| `{WEIGHTS_FILE}` | `weights` ({shape}) and `idf`, float32, {size / 1e3:.0f} kB |
| `{CONFIG_FILE}` | labels, n-gram settings, vocabulary, training settings |

## Training data

{info.examples} Twi utterances with English glosses, {fewest} or more per intent, written for
this project (`intents.yaml`): varied wording, politeness forms (Mesrɛ wo, Yɛsrɛ wo), word
order, item names (ntoma, mpaboa, fon, nsuo, ...), Twi numbers and the English loanwords
Ghanaian shoppers mix in (cart, order, MoMo). They are not recordings or transcripts of real
speakers.

## Evaluation

Measured by `training/train_text_intents.py` when these weights were written.

| set | texts | accuracy | macro-F1 |
|---|---|---|---|
{held_out_line}
{cv_line}

The held-out paraphrases were written by the same author as the training examples, so they
share its vocabulary and style; the cross-validation figure, where each intent loses a fifth of
its examples, is the more cautious estimate. Neither measures recognised speech.

Most confused held-out pairs:

| true | predicted | count |
|---|---|---|
{confused}

Every held-out mistake:

| text | true | predicted | confidence |
|---|---|---|---|
{errors}

## Limits

- Not trained or tested on ASR output of real speakers: recognition errors (split or merged
  words, wrong vowels beyond ɛ/ɔ, English words spelled phonetically) will cost accuracy that
  these figures do not show.
- Written Asante and Akuapem Twi only; Fante and other Akan varieties are not covered.
- Numbers are learnt as Twi words (mmienu, mmiɛnsa); digits in a transcript ("2") are only
  characters to it.
- Anything outside these intents is still mapped to one of them. The app acts only when the
  top probability reaches `min_confidence` ({catalog.min_confidence:g} in `intents.yaml`) and
  otherwise answers `fallback_reply` ("{catalog.fallback_reply}"). Empty text, or text with
  no known n-gram, gets the uniform distribution (1/{len(model.labels)} for every intent).

## Use

```python
from pathlib import Path
from intent_text import TextIntentClassifier

model = TextIntentClassifier.load(Path("models/text-intent"))
[prediction] = model.predict(["Fa ntoma yi gu me kɛntɛn mu"])
prediction.intent, prediction.confidence
```

## Reproduce

```
python spaces/twi-speech/training/train_text_intents.py --seed {info.seed} --l2 {info.l2:g}
```
"""


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intents", type=Path, default=INTENTS_PATH, help="intents file")
    parser.add_argument("--output", type=Path, default=MODEL_DIR, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0, help="training and fold seed")
    parser.add_argument("--l2", type=float, default=1e-4, help="L2 penalty")
    parser.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds on the examples (0: skip)"
    )
    args = parser.parse_args(argv)
    if args.folds == 1 or args.folds < 0:
        parser.error(f"--folds must be 0 or at least 2, got {args.folds}")
    if args.l2 <= 0:
        parser.error(f"--l2 must be positive, got {args.l2}")
    logging.basicConfig(level=logging.WARNING)
    try:
        catalog = load_intents(args.intents)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")

    examples = catalog.training_pairs()
    print(f"training on {len(examples)} examples of {len(catalog.intents)} intents ...", flush=True)
    start = time.perf_counter()
    model = TextIntentClassifier.train(examples, seed=args.seed, l2=args.l2)
    seconds = time.perf_counter() - start
    info = model.training
    assert info is not None
    print(
        f"trained in {seconds:.2f} s: {len(model.vocabulary)} n-grams, {info.iterations} steps, "
        f"final gradient {info.gradient:.1e}"
    )
    train = evaluate(model, examples)
    held_out = evaluate(model, catalog.held_out_pairs())
    print(format_report("training examples", train))
    print(format_report("held-out paraphrases", held_out))
    for text, t, p, c in held_out.errors:
        print(f"  {t} -> {p} ({c:.2f}): {text}")
    cv = None
    if args.folds:
        cv = cross_validate(examples, args.folds, seed=args.seed, l2=args.l2)
        print(format_report(f"{args.folds}-fold cross-validation", cv))

    model.save(args.output)
    card = model_card(catalog, model, held_out, cv, args.folds)
    (args.output / "README.md").write_text(card, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
