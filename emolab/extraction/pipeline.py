"""The extraction pipeline: data -> model -> activations -> vectors -> layer choice -> bundle.

The vectors come from one of ``methods.METHODS`` (``ExtractConfig.method``):

* ``meandiff`` (the default): ``v[e, L] = mean(acts of e) - mean(acts of the other emotions)`` over
  GoEmotions texts, pooled at the ``last`` token or the ``mean`` over the text's content tokens
  (``positions``; the first token and any other attention sink are left out: ``capture.pooling_weights``);
* ``contrastive``: contrastive prompts (``prompts``): persona instruction vs neutral instruction,
  same user turn and answer, pooled over the answer; mean paired difference, or its first
  principal axis (``pca``); ``against="others"`` turns emotion-vs-neutral into emotion-vs-rest;
* ``learned``: the mean-difference vectors as a start, moved by gradient descent so that the push
  makes replies read as the emotion (``learned``; ``ExtractConfig.learn``).

``project_out_shared`` removes the direction all emotions share (contrastive against neutral: the
"emotional persona" part; mean differences of balanced classes sum to zero and share none). Whatever the method,
the GoEmotions texts are captured at the last token: a one-vs-rest logistic probe per (layer,
emotion), trained on the training activations and scored by ROC-AUC on the held-out split
(``probe``), ranks the searched layers (the best run of ``window`` consecutive layers is kept), and
their mean norm is the bundle's ``residual_norm``. Which layers and alphas *steer* best is measured
afterwards by ``emolab.evaluate.tune``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emolab.core.bundle import CAPTURE_CONVENTION, CONVENTION_NOTE, INJECT_CONVENTION, EmotionBundle
from emolab.core.circumplex import NRC_VAD, derive
from emolab.core.emotions import DEFAULT_EMOTIONS, parse_emotions
from emolab.core.layers import choose_window, parse_layers
from emolab.core.models import check_model_cache, decoder_layers, load_model, pad_token_id
from emolab.core.readout import READOUT_KEY, unit_directions
from emolab.core.tracked import refuse_tracked
from emolab.extraction.capture import SINK_RATIO, collect_activations, collect_span_activations
from emolab.extraction.data import build_dataset, group_texts, load_records, origin
from emolab.extraction.errors import ExtractError
from emolab.extraction.learn_settings import LearnSettings, check_window
from emolab.extraction.methods import (
    METHODS,
    POSITIONS,
    contrast_against_others,
    meandiff_vectors,
    remove_shared_direction,
)
from emolab.extraction.probe import probe_auc
from emolab.extraction.projections import reference_from_texts

__all__ = ["ExtractConfig", "extract"]


@dataclass
class ExtractConfig:
    model: str = "Qwen/Qwen3-8B"
    emotions: tuple[str, ...] = DEFAULT_EMOTIONS
    layers: str = "mid"
    window: int = 3
    batch_size: int = 16
    max_length: int = 128
    dtype: str = "auto"
    device: str = "auto"
    test_size: float = 0.2
    seed: int = 42
    data: str = "auto"
    label_map: str | None = None  # a YAML/JSON file mapping a dataset of your own onto the emotions (labelled)
    max_per_class: int | None = None
    output: str | None = None
    save_full_sweep: bool = True
    progress: bool = True
    method: str = "meandiff"  # meandiff | contrastive | learned
    positions: str | None = None  # last | mean; None: last for meandiff and learned, mean for contrastive
    pca: bool = False  # contrastive: first principal axis of the paired differences
    against: str = "neutral"  # contrastive: neutral | others (emotion vs the other personas)
    project_out_shared: bool = False
    labels: str = "group"  # group | core (emolab.extraction.data.LABEL_SETS; build_dataset checks it)
    contrastive_turns: int | None = None  # None: every user turn of prompts_extract.txt
    learn: LearnSettings = field(default_factory=LearnSettings)  # learned: how the directions are fitted

    def recipe(self) -> dict:
        """What the vectors are, as recorded in a bundle's metadata (``method``, ``positions``, ...)."""
        if self.method not in METHODS:
            raise ExtractError(f"unknown method {self.method!r}; choose from {list(METHODS)}", setting="method")
        positions = self.positions or ("mean" if self.method == "contrastive" else "last")
        if positions not in POSITIONS:
            raise ExtractError(f"unknown positions {positions!r}; choose from {list(POSITIONS)}", setting="positions")
        if self.method != "contrastive" and (self.pca or self.against != "neutral"):
            raise ExtractError("principal axes and the contrast against other personas belong to the contrastive "
                               "method", setting="pca" if self.pca else "against")
        if self.method == "meandiff" and self.project_out_shared:
            raise ExtractError("mean-difference vectors of balanced classes sum to zero, so they share no direction "
                               "to remove", setting="project_out_shared")
        if self.method == "learned" and self.project_out_shared:
            raise ExtractError("learned directions are fitted as they are steered; projecting them afterwards would "
                               "undo the fit", setting="project_out_shared")
        if self.against not in ("neutral", "others"):
            raise ExtractError(f"unknown contrast {self.against!r}; choose from ['neutral', 'others']",
                               setting="against")
        recipe = {"method": self.method, "positions": positions, "project_out_shared": self.project_out_shared,
                  "labels": self.labels}
        if self.method == "contrastive":
            recipe.update(pca=self.pca, against=self.against)
        if positions == "mean":  # which positions a mean pools over changes the vectors, so it is recorded
            sinks = f"attention sinks (norm over {SINK_RATIO:g}x the span's median)"
            recipe["mean_skips"] = sinks if self.method == "contrastive" else f"the first token and {sinks}"
        if self.method == "learned":
            self.learn.check()
            recipe["learned"] = self.learn.as_dict()
        return recipe


def _versions() -> dict[str, str]:
    import sklearn
    import torch
    import transformers

    from emolab import __version__

    return {
        "emolab": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "sklearn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version(),
    }


def _contrast_note(recipe: dict) -> str:
    if recipe["method"] == "meandiff":
        return "each emotion against the mean of all other selected emotions (train split)"
    if recipe["method"] == "learned":
        return ("mean-difference start (train split), fitted so the pushed model prefers the emotion's texts "
                f"({recipe['learned']['split']} split) over other emotions' and neutral texts as replies")
    side = "the other emotions' personas" if recipe["against"] == "others" else "the parallel neutral persona"
    return f"each emotion's persona against {side}, same user turn and answer (contrastive prompts)"


def _method_vectors(config: ExtractConfig, recipe: dict, model, tokenizer, dataset, search: list[int],
                    train_acts: np.ndarray, train_mean: np.ndarray | None, residual_norm: np.ndarray,
                    answers: dict[str, list[str]] | None = None, learn_layers: list[int] | None = None) -> np.ndarray:
    """The method's vectors ``[n_emotions, len(search), hidden]`` (``train_acts``: last-token GoEmotions;
    ``train_mean``: their mean over each text's tokens, for ``positions="mean"``)."""
    n = len(dataset.emotions)
    if recipe["method"] == "contrastive":
        from emolab.extraction.prompts import contrastive_prompt_vectors

        vectors, info = contrastive_prompt_vectors(
            model, tokenizer, list(dataset.emotions), search, n_turns=config.contrastive_turns,
            positions=recipe["positions"], pca=recipe["pca"], batch_size=config.batch_size)
        recipe["contrastive_prompts"] = info
        if recipe["against"] == "others":
            vectors = contrast_against_others(vectors)
    else:
        # train_mean is captured exactly when the recipe pools over the text's tokens
        vectors = meandiff_vectors(train_acts if train_mean is None else train_mean, dataset.train_labels, n)
    if recipe["method"] == "learned":
        vectors = _learned(config, recipe, model, tokenizer, list(dataset.emotions), answers or {}, search,
                           learn_layers or [], vectors, residual_norm)
    if recipe["project_out_shared"]:
        vectors = remove_shared_direction(vectors)
    return vectors


def _capture_last_and_mean(config: ExtractConfig, model, tokenizer, texts: list[str],
                           search: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Last-token and mean-over-tokens states of ``texts``, both from one forward per batch: the probe and
    the residual norms read the first, ``positions="mean"`` vectors the second."""
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=config.max_length)["input_ids"]
    pad = pad_token_id(tokenizer)
    # The first token is left out of the mean: its state is an attention sink whose norm is ~100x the
    # others' in mid layers (SmolLM2: 24000 vs 150 at layer 12), so it would decide the direction.
    spans = [(1 if len(row) > 1 else 0, len(row)) for row in ids]
    pooled = collect_span_activations(model, ids, spans, search, pad_id=pad, batch_size=config.batch_size,
                                      progress=config.progress, desc="capture train")
    return pooled["last"], pooled["mean"]


def learn_window(layers: str | None, search: list[int], num_layers: int) -> list[int]:
    """The layers pushed while learning: the selector's, which must lie in the search, else the middle half
    of the search (where mean-difference vectors steer best on SmolLM2)."""
    if layers is None:
        return search[len(search) // 4:len(search) - len(search) // 4] or search
    window = parse_layers(layers, num_layers)
    check_window(window, search)  # before the capture, not after it
    return window


def _answer_texts(config: ExtractConfig, recipe: dict, emotions: list[str], source: str) -> dict[str, list[str]]:
    """The learned method's answer texts: each emotion's (and neutral) texts of the ``learn.split`` split,
    read from where the training texts came from (``source``, ``load_records``' answer)."""
    split = config.learn.split
    records, _ = load_records(origin(source), (split,), config.label_map)
    texts, _ = group_texts(records, emotions, recipe["labels"], neutral=True)
    empty = [name for name in emotions if not texts[name]]  # neutral texts are welcome, not required
    if empty:
        raise ExtractError(f"learned: the {split} split has no single-label texts of {empty}", setting="learn_split")
    return texts


def _learned(config: ExtractConfig, recipe: dict, model, tokenizer, emotions: list[str], answers: dict[str, list[str]],
             search: list[int], window: list[int], start: np.ndarray, residual_norm: np.ndarray) -> np.ndarray:
    from emolab.extraction.learned import learned_vectors
    from emolab.extraction.prompts import read_prompts

    settings = config.learn
    say = print if config.progress else None
    vectors, info = learned_vectors(model, tokenizer, emotions, answers, read_prompts("extract"), search, start,
                                    residual_norm, window, settings, seed=config.seed, progress=say)
    recipe["learned"] = {**recipe["learned"], **info}
    return vectors


def extract(config: ExtractConfig, model=None, tokenizer=None) -> EmotionBundle:
    """Run the whole extraction; save the bundle to ``config.output`` when set and return it."""
    timings: dict[str, float] = {}
    recipe = config.recipe()
    if config.output:
        refuse_tracked(config.output)  # a committed bundle changes only by a deliberate copy
    if model is None:  # a hub model online: its download cache must be writable, known before the data loads
        check_model_cache(config.model)
    t0 = time.perf_counter()
    emotions = parse_emotions(list(config.emotions))
    records, source = load_records(config.data, label_map=config.label_map)
    dataset = build_dataset(
        records, emotions, max_per_class=config.max_per_class, test_size=config.test_size, seed=config.seed,
        source=source, labels=recipe["labels"],
    )
    # The learned method's answer texts, read now so that a missing split fails before the model loads.
    answers = _answer_texts(config, recipe, emotions, source) if recipe["method"] == "learned" else None
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if model is None:
        try:
            model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
        except OSError as exc:  # not a folder, not in the hub cache while offline, unreachable hub, ...
            raise ExtractError(f"cannot load the model {config.model!r} ({exc})", setting="model") from None
    timings["load_model_s"] = time.perf_counter() - t0
    num_layers = len(decoder_layers(model))
    search = parse_layers(config.layers, num_layers)
    if config.window > len(search):
        raise ExtractError(f"a window of {config.window} layers is wider than the {len(search)} searched layers",
                           setting="window")
    # The learned method's window, resolved now so that a bad one fails before the captures.
    learn_layers = learn_window(config.learn.layers, search, num_layers) if recipe["method"] == "learned" else None

    t0 = time.perf_counter()
    kwargs = dict(batch_size=config.batch_size, max_length=config.max_length, progress=config.progress)
    train_mean = None
    if recipe["positions"] == "mean" and recipe["method"] != "contrastive":
        train_acts, train_mean = _capture_last_and_mean(config, model, tokenizer, dataset.train_texts, search)
    else:
        train_acts = collect_activations(model, tokenizer, dataset.train_texts, search, desc="capture train",
                                         **kwargs)
    val_acts = collect_activations(model, tokenizer, dataset.val_texts, search, desc="capture val", **kwargs)
    timings["capture_s"] = time.perf_counter() - t0
    n_texts = len(dataset.train_texts) + len(dataset.val_texts)
    timings["capture_texts_per_s"] = n_texts / max(timings["capture_s"], 1e-9)

    # Typical size of the residual stream, for alphas on a scale comparable across layers/emotions.
    residual_norm = np.linalg.norm(train_acts, axis=2).mean(axis=0)
    t0 = time.perf_counter()
    vectors = _method_vectors(config, recipe, model, tokenizer, dataset, search, train_acts, train_mean, residual_norm,
                              answers, learn_layers)
    timings["vectors_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    auc = probe_auc(train_acts, dataset.train_labels, val_acts, dataset.val_labels, len(emotions), seed=config.seed)
    timings["probe_s"] = time.perf_counter() - t0
    chosen, chosen_auc = choose_window(search, auc.mean(axis=1), config.window)
    rows = [search.index(layer) for layer in chosen]

    dtype_name = str(next(model.parameters()).dtype).replace("torch.", "")
    metadata = {
        "model": config.model,
        "emotions": emotions,
        "num_layers": num_layers,
        "hidden": int(train_acts.shape[-1]),
        "layers": config.layers,  # the selector as given (mid, 4,20,32, ...); search_layers is what it meant
        "search_layers": search,
        "chosen_layers": chosen,
        "best_start_idx_in_search": search.index(chosen[0]),
        "window": config.window,
        "auc_matrix": np.round(auc, 6).tolist(),
        "mean_auc_per_layer": np.round(auc.mean(axis=1), 6).tolist(),
        "chosen_mean_auc": round(chosen_auc, 6),
        "mean_micro_auc_chosen": round(chosen_auc, 6),  # the reference tool's name for the same number
        "n_train": len(dataset.train_texts),
        "n_val": len(dataset.val_texts),
        "counts_train": dataset.counts_train,
        "counts_val": dataset.counts_val,
        "counts_available": dataset.counts_available,
        "dropped": dataset.dropped,
        "data_source": dataset.source,
        **({"label_map": str(Path(config.label_map).resolve())} if config.label_map else {}),
        "max_per_class": config.max_per_class,
        "test_size": config.test_size,
        "max_length": config.max_length,
        "batch_size": config.batch_size,
        "convention_capture": CAPTURE_CONVENTION,
        "convention_inject": INJECT_CONVENTION,
        "convention": CONVENTION_NOTE,
        **recipe,
        "contrast": _contrast_note(recipe),
        "normalization": "none",
        "residual_norm": np.round(residual_norm, 4).tolist(),
        "seed": config.seed,
        "dtype": dtype_name,
        "device": str(next(model.parameters()).device),
        "versions": _versions(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "extractor_version": f"emolab {_versions()['emolab']}",
    }
    bundle = EmotionBundle(
        emotions=emotions,
        chosen_layers=chosen,
        vectors={e: vectors[i, rows] for i, e in enumerate(emotions)},
        metadata=metadata,
        full_sweep={e: vectors[i] for i, e in enumerate(emotions)},
    )
    # The readout's reference: every held-out token's projection on each direction (emolab.core.readout).
    t0 = time.perf_counter()
    reference = reference_from_texts(model, tokenizer, dataset.val_texts, chosen, unit_directions(bundle),
                                     source=f"the held-out {dataset.source} texts, every content token",
                                     batch_size=config.batch_size, max_length=config.max_length)
    bundle.metadata[READOUT_KEY] = reference.to_metadata()
    bundle.metadata["timings"]["readout_reference_s"] = round(time.perf_counter() - t0, 3)
    if sum(e in NRC_VAD for e in emotions) >= 3:  # valence and arousal, steerable by name (core.circumplex)
        bundle = derive(bundle)
    if config.output:
        bundle.save(Path(config.output), save_full_sweep=config.save_full_sweep)
    return bundle
