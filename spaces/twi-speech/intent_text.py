"""Text to intent for Twi voice commands: a character n-gram linear classifier in numpy.

normalize (NFC, case, tone marks, punctuation, ɛ/ɔ written e/o) -> features (character
n-grams of each word between boundary marks, and the word itself; sublinear TF-IDF, L2
normalised) -> forward (one linear layer, softmax) -> postprocess (top-k). Serving needs
numpy, safetensors and ``shared`` (errors, the model-folder check), no scikit-learn or torch;
:meth:`TextIntentClassifier.train` fits the same model by multinomial logistic regression with
L2, also in numpy, in about a second.

A transcript from speech recognition spells Twi inconsistently (ɛ or e, ɔ or o, tone marks or
none, ``w'akyi`` or ``wakyi``), so all of those are folded to one spelling before any feature
is counted: both spellings of a command get the same features and the same probabilities.
"""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from shared.errors import ModelLoadError
from shared.models import validate_model_dir

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "twi-text-intent/1"

# Letters that stand in for ɛ and ɔ in typed or recognised Twi: Greek epsilon, the Greek and
# Latin reversed c; their capitals are handled by casefold first.
_LOOKALIKES = str.maketrans({"ε": "ɛ", "ͻ": "ɔ", "ↄ": "ɔ"})
_OPEN_VOWELS = str.maketrans({"ɛ": "e", "ɔ": "o"})
# Apostrophes join an elision (w'akyi, m'ani) into one word, as ASR output often writes it.
_APOSTROPHES = re.compile(r"['’‘ʼ`´]")
_NOT_WORD = re.compile(r"[\W_]+")
# Most distinct words whose columns a model remembers (some MB at most).
_WORD_CACHE_SIZE = 20_000


def normalize_twi(text: str, *, fold_open_vowels: bool = True) -> str:
    """One spelling for the ways a Twi command can be written.

    Casefolds, drops tone and other combining marks (``à``, ``ɛ̀``, ``õ`` lose the mark), maps
    look-alike letters to ɛ and ɔ, joins elisions (``w'akyi`` -> ``wakyi``), turns every other
    non-letter and non-digit into a space and collapses spaces.

    Args:
        text: Any text.
        fold_open_vowels: Also write ɛ as e and ɔ as o.

    Returns:
        Lowercase words separated by single spaces; ``""`` when nothing is left.
    """
    decomposed = unicodedata.normalize("NFD", text.casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    bare = unicodedata.normalize("NFC", bare).translate(_LOOKALIKES)
    if fold_open_vowels:
        bare = bare.translate(_OPEN_VOWELS)
    bare = _APOSTROPHES.sub("", bare)
    return " ".join(_NOT_WORD.sub(" ", bare).split())


@dataclass(frozen=True)
class FeatureSettings:
    """Which features a text becomes; saved with the model, so serving counts the same ones."""

    # Shortest character n-gram, counted inside "<word>".
    min_n: int = 1
    # Longest character n-gram.
    max_n: int = 4
    # Also one feature per whole word.
    words: bool = True
    # Also one feature per run of this many consecutive words (2: word pairs); 1 for none.
    word_ngrams: int = 1
    # Write ɛ as e and ɔ as o before counting (see normalize_twi).
    fold_open_vowels: bool = True
    # An n-gram joins the vocabulary when this many training texts have it.
    min_df: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {self.min_n} and {self.max_n}")
        if self.word_ngrams < 1:
            raise ValueError(f"word_ngrams must be at least 1, got {self.word_ngrams}")
        if self.min_df < 1:
            raise ValueError(f"min_df must be at least 1, got {self.min_df}")


def text_features(text: str, settings: FeatureSettings) -> Counter[str]:
    """The n-grams of ``text`` and how often each occurs (before the vocabulary is applied).

    Each word is padded as ``<word>``; the padding marks the word's start and end, so ``<fon>``
    (the word) and ``fon`` (inside ``afoforo``) are different features.
    """
    words = normalize_twi(text, fold_open_vowels=settings.fold_open_vowels).split()
    grams = Counter(_phrases(words, settings))
    for word in words:
        grams.update(_word_grams(word, settings))
    return grams


def _word_grams(word: str, settings: FeatureSettings) -> list[str]:
    """The character n-grams of one normalised word (and the word itself), with repeats."""
    padded = f"<{word}>"
    grams = [padded] if settings.words else []
    for n in range(settings.min_n, settings.max_n + 1):
        grams += [padded[i : i + n] for i in range(len(padded) - n + 1)]
    return [gram for gram in grams if gram not in ("<", ">")]


def _phrases(words: Sequence[str], settings: FeatureSettings) -> list[str]:
    """Runs of 2 to ``word_ngrams`` words, joined by spaces (which no character n-gram holds)."""
    return [
        " ".join(words[i : i + n])
        for n in range(2, settings.word_ngrams + 1)
        for i in range(len(words) - n + 1)
    ]


@dataclass(frozen=True, eq=False)
class Features:
    """The TF-IDF features of a batch of texts, stored sparse: a text has a few dozen of the
    thousands of n-grams. Compute with the stored values only; :meth:`dense` for the matrix."""

    # Number of texts.
    batch: int
    # Number of features (the vocabulary's size).
    width: int
    # Text of each stored value, ascending, ``(nnz,)`` int64.
    rows: np.ndarray
    # Feature of each stored value, ``(nnz,)`` int64.
    columns: np.ndarray
    # The values, ``(nnz,)`` float32; each text's are of unit length.
    values: np.ndarray

    def dense(self) -> np.ndarray:
        """The features as a ``(batch, width)`` float32 matrix."""
        x = np.zeros((self.batch, self.width), dtype=np.float32)
        x[self.rows, self.columns] = self.values
        return x


@dataclass(frozen=True)
class IntentPrediction:
    """The classifier's answer for one text."""

    # The most probable intent.
    intent: str
    # Its probability, in [0, 1].
    confidence: float
    # The top_k intents, most probable first: (intent, probability, index in labels).
    top: tuple[tuple[str, float, int], ...]
    # The text as the classifier saw it, after normalize_twi.
    text: str
    # Every intent's probability, in the order of labels.
    scores: tuple[float, ...] = field(repr=False)
    # The model's intents, in their index order.
    labels: tuple[str, ...] = field(repr=False)

    def probabilities(self) -> np.ndarray:
        """Every intent's probability, ``(n_labels,)`` float32, in the order of ``labels``."""
        return np.asarray(self.scores, dtype=np.float32)

    def to_json(self) -> dict[str, Any]:
        """The JSON object an endpoint returns (without the full probability vector)."""
        top = [{"intent": name, "confidence": p, "index": i} for name, p, i in self.top]
        return {"intent": self.intent, "confidence": self.confidence, "top": top, "text": self.text}


@dataclass(frozen=True)
class TrainingInfo:
    """How a model was fitted; saved in ``config.json``."""

    # Seed of the starting point (the objective is convex: it moves the path, not the optimum).
    seed: int
    # L2 penalty: loss = mean cross-entropy + l2 / 2 * ||W||^2.
    l2: float
    # Number of training texts.
    examples: int
    # Gradient steps taken.
    iterations: int
    # Norm of the gradient at the end.
    gradient: float


class TextIntentClassifier:
    """Twi text to intent probabilities: n-gram TF-IDF features into one linear layer.

    There is no bias term: a text with no known n-gram (empty, or in another script) gets all
    zero features and so the uniform distribution, 1 / n_labels for every intent, which any
    sensible ``min_confidence`` turns into the fallback reply.

    Args:
        labels: The intents, in index order.
        vocabulary: The n-grams, in feature order.
        idf: Inverse document frequency of each n-gram, ``(n_features,)``.
        weights: ``(n_features, n_labels)``.
        settings: The feature settings the model was trained with.
        training: How it was trained, when known.
    """

    def __init__(
        self,
        labels: Sequence[str],
        vocabulary: Sequence[str],
        idf: np.ndarray,
        weights: np.ndarray,
        settings: FeatureSettings,
        training: TrainingInfo | None = None,
    ) -> None:
        self.labels = tuple(labels)
        self.vocabulary = tuple(vocabulary)
        self.index = {gram: i for i, gram in enumerate(self.vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.settings = settings
        self.training = training
        # Normalised word -> its n-grams' columns: most words of a command recur, and looking
        # them up is most of the work of featurizing. Filled as words come (a dict write is
        # atomic, so threads sharing the model are safe); capped at _WORD_CACHE_SIZE words.
        self._word_columns: dict[str, tuple[int, ...]] = {}
        expected = (len(self.vocabulary), len(self.labels))
        if self.idf.shape != expected[:1] or self.weights.shape != expected:
            raise ValueError(
                f"{expected[0]} n-grams and {expected[1]} labels need idf of shape "
                f"{expected[:1]} and weights of shape {expected}; got {self.idf.shape} and "
                f"{self.weights.shape}"
            )

    # -- training ----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        examples: Sequence[tuple[str, str]],
        *,
        seed: int = 0,
        l2: float = 1e-4,
        features: FeatureSettings | None = None,
        max_iter: int = 3000,
        tol: float = 1e-8,
    ) -> TextIntentClassifier:
        """Fit the classifier on (text, intent) pairs.

        Multinomial logistic regression with an L2 penalty, minimised by Nesterov's
        accelerated gradient with the step and momentum of its smoothness and strong
        convexity constants; the optimum is unique, so every seed reaches the same weights
        to within ``tol``.

        Args:
            examples: (text, intent) pairs; the intents' order of first appearance is the
                label order.
            seed: Seed of the random starting point.
            l2: L2 penalty on the weights; larger is smoother and less confident.
            features: The features to count; ``FeatureSettings()`` when None.
            max_iter: Most gradient steps.
            tol: Stop when the gradient's norm is at most this.

        Returns:
            The trained classifier.

        Raises:
            ValueError: no examples, a single intent, or a text with no features.
        """
        settings = features or FeatureSettings()
        labels = list(dict.fromkeys(label for _, label in examples))
        if len(labels) < 2:
            raise ValueError(f"training needs examples of at least 2 intents, got {labels}")
        counts = [text_features(text, settings) for text, _ in examples]
        empty = [text for (text, _), grams in zip(examples, counts, strict=True) if not grams]
        if empty:
            raise ValueError(f"training texts without any letter or digit: {empty[:5]}")
        df = Counter(gram for grams in counts for gram in grams)  # texts that have each n-gram
        vocabulary = sorted(gram for gram, n in df.items() if n >= settings.min_df)
        n = len(examples)
        document_frequency = np.array([df[gram] for gram in vocabulary], dtype=np.float64)
        idf = np.log((1 + n) / (1 + document_frequency)) + 1.0  # smoothed, as scikit-learn's
        # A model without weights yet, to featurize the examples exactly as serving will.
        model = cls(labels, vocabulary, idf, np.zeros((len(vocabulary), len(labels))), settings)
        x = model.featurize([text for text, _ in examples]).dense().astype(np.float64)
        y = np.zeros((n, len(labels)))  # (n, n_labels), one-hot
        y[np.arange(n), [labels.index(label) for _, label in examples]] = 1.0
        weights, iterations, gradient = _fit_softmax(x, y, l2, seed, max_iter, tol)
        if gradient > tol:
            logger.warning(
                "stopped after %d steps with gradient %.2g > %g", max_iter, gradient, tol
            )
        info = TrainingInfo(seed, l2, n, iterations, gradient)
        return cls(labels, vocabulary, idf, weights, settings, info)

    # -- serving -----------------------------------------------------------------------------

    def normalize(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model reads them (:func:`normalize_twi` with its settings).

        Raises:
            TypeError: ``texts`` is one string rather than a sequence of them.
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        fold = self.settings.fold_open_vowels
        return [normalize_twi(text, fold_open_vowels=fold) for text in texts]

    def featurize(self, texts: Sequence[str], *, normalized: bool = False) -> Features:
        """Sublinear TF-IDF features of ``texts``, each row of unit length (or empty, for a text
        without any known n-gram).

        Args:
            texts: The texts.
            normalized: The texts are already :meth:`normalize` output.
        """
        rows: list[int] = []
        columns: list[int] = []
        for row, text in enumerate(texts if normalized else self.normalize(texts)):
            words = text.split()
            found = [column for word in words for column in self._columns(word)]
            found += [self.index[p] for p in _phrases(words, self.settings) if p in self.index]
            rows += [row] * len(found)
            columns += found
        width = len(self.vocabulary)
        cells = np.asarray(rows, dtype=np.int64) * width + np.asarray(columns, dtype=np.int64)
        # Sorted by text, then column; counts: how often each text has each n-gram.
        cells, counts = np.unique(cells, return_counts=True)
        row_of, column_of = np.divmod(cells, width)
        values = ((1.0 + np.log(counts)) * self.idf[column_of]).astype(np.float32)
        norms = np.sqrt(np.bincount(row_of, weights=values**2, minlength=len(texts)))
        values /= norms[row_of].astype(np.float32)
        return Features(len(texts), width, row_of, column_of, values)

    def forward(self, features: Features) -> np.ndarray:
        """Intent probabilities, ``(batch, n_labels)`` float32, rows summing to 1."""
        logits = np.zeros((features.batch, len(self.labels)), dtype=np.float32)
        if features.values.size:
            # Only a text's own n-grams count: their weight rows, scaled and summed per text.
            weighted = self.weights[features.columns] * features.values[:, None]  # (nnz, labels)
            rows = features.rows  # ascending: each text's values are contiguous
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            logits[rows[starts]] = np.add.reduceat(weighted, starts, axis=0)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Intent probabilities of ``texts``, ``(batch, n_labels)`` float32, rows summing to 1."""
        return self.forward(self.featurize(texts))

    def predict(self, texts: Sequence[str], top_k: int = 5) -> list[IntentPrediction]:
        """The most probable intents of each text.

        Args:
            texts: Transcripts or typed commands; empty text is allowed (uniform answer).
            top_k: How many intents ``top`` lists, at most the number of labels.

        Returns:
            One prediction per text, in order.

        Raises:
            ValueError: ``top_k`` below 1.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, len(self.labels))
        normalized = self.normalize(texts)
        probabilities = self.forward(self.featurize(normalized, normalized=True))
        # A stable sort keeps ties (the uniform answer) in label order.
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k].tolist()
        predictions = []
        for text, row, best in zip(normalized, probabilities.tolist(), order, strict=True):
            scores = tuple(row)
            top = tuple((self.labels[i], scores[i], i) for i in best)
            predictions.append(
                IntentPrediction(
                    intent=top[0][0],
                    confidence=top[0][1],
                    top=top,
                    text=text,
                    scores=scores,
                    labels=self.labels,
                )
            )
        return predictions

    # -- files -------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write ``model.safetensors`` (idf, weights) and ``config.json`` (labels, n-gram
        settings, vocabulary, training) into ``folder``, creating it."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {"idf": self.idf, "weights": self.weights},
            str(folder / WEIGHTS_FILE),
            metadata={"format": FORMAT},
        )
        config = {
            "format": FORMAT,
            "labels": list(self.labels),
            "features": asdict(self.settings),
            "training": asdict(self.training) if self.training else None,
            "vocabulary": list(self.vocabulary),
        }
        text = json.dumps(config, ensure_ascii=False, indent=1)
        (folder / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TextIntentClassifier:
        """Load a classifier that :meth:`save` wrote.

        Raises:
            ModelLoadError: a missing file, a Git LFS pointer instead of the weights, or files
                of another format or shape; the message names the file.
        """
        validate_model_dir(folder, required=[WEIGHTS_FILE, CONFIG_FILE])
        config_path = folder / CONFIG_FILE
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            if config.get("format") != FORMAT:
                raise ValueError(f"format is {config.get('format')!r}, not {FORMAT!r}")
            settings = FeatureSettings(**config["features"])
            training = TrainingInfo(**config["training"]) if config.get("training") else None
            labels, vocabulary = config["labels"], config["vocabulary"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{config_path} is not a text-intent config: {e}") from e
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
            return cls(labels, vocabulary, tensors["idf"], tensors["weights"], settings, training)
        except (OSError, ValueError, KeyError) as e:  # safetensors raises its own ValueErrors
            raise ModelLoadError(f"{folder / WEIGHTS_FILE} does not fit {config_path}: {e}") from e

    # -- internals ---------------------------------------------------------------------------

    def _columns(self, word: str) -> tuple[int, ...]:
        """The vocabulary columns of a normalised word's n-grams, with repeats."""
        columns = self._word_columns.get(word)
        if columns is None:
            grams = _word_grams(word, self.settings)
            columns = tuple(self.index[gram] for gram in grams if gram in self.index)
            if len(self._word_columns) < _WORD_CACHE_SIZE:
                self._word_columns[word] = columns
        return columns


def _fit_softmax(
    x: np.ndarray, y: np.ndarray, l2: float, seed: int, max_iter: int, tol: float
) -> tuple[np.ndarray, int, float]:
    """Minimise mean cross-entropy(softmax(x @ w), y) + l2 / 2 * ||w||^2.

    Gradient steps from ``w = x.T @ a`` keep ``w`` of that form (the gradient is
    ``x.T @ (p - y) / n + l2 * w``), so the iteration runs on ``a``, ``(n, n_labels)``, with the
    Gram matrix ``x @ x.T``: n^2 work per step instead of n * n_features, the same iterates.

    Returns:
        ``w`` ``(n_features, n_labels)``, the steps taken, the final gradient norm.
    """
    n = x.shape[0]
    gram = x @ x.T  # (n, n)
    # Smoothness: the softmax Hessian is at most 1/2 * x.T x / n, plus l2; strong convexity: l2.
    smooth = 0.5 * _largest_eigenvalue_bound(gram) / n + l2
    momentum = (math.sqrt(smooth) - math.sqrt(l2)) / (math.sqrt(smooth) + math.sqrt(l2))
    a = np.random.default_rng(seed).normal(0.0, 0.01, size=y.shape)  # (n, n_labels)
    previous = a
    gradient = math.inf
    for step in range(1, max_iter + 1):
        look = a + momentum * (a - previous)
        logits = gram @ look  # (n, n_labels) = x @ w
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        direction = (p - y) / n + l2 * look  # the gradient is x.T @ direction
        previous, a = a, look - direction / smooth
        if step % 10 == 0 or step == max_iter:
            # ||x.T @ direction|| without the (n_features, n_labels) product.
            gradient = math.sqrt(max(float(np.sum(direction * (gram @ direction))), 0.0))
            if gradient <= tol:
                break
    return x.T @ a, step, gradient


def _largest_eigenvalue_bound(gram: np.ndarray, iterations: int = 30) -> float:
    """An upper bound on the largest eigenvalue of a Gram matrix of non-negative features.

    Its entries are non-negative and its diagonal positive, so power iteration from ones stays
    positive, and for a positive ``v`` the largest ``(gram @ v)_i / v_i`` bounds the largest
    eigenvalue from above (Collatz-Wielandt), tighter as ``v`` converges; no ``eigvalsh``.
    """
    v = np.ones(gram.shape[0])
    for _ in range(iterations):
        v = gram @ v
        v /= v.max()
    return float(np.max(gram @ v / v))
