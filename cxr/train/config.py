"""TrainConfig: every knob of a training run, defaults = the original recipe (README, '`cxr-train`: the recipe').

A frozen dataclass with a docstring under each field; `__post_init__` raises ValueError for impossible values so a bad
command line fails before any image is read. `to_dict`/`from_dict` round-trip through config.json in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from cxr.runtime.preprocess import PreprocessConfig, dataclass_from_dict
from cxr.train.datasets import DATASET_KINDS, NIH_NEGATIVES, UNCERTAIN_POLICIES
from cxr.train.decision import MODES as DECISION_MODES
from cxr.train.errors import ConfigError

ARCHS = ("densenet121", "densenet_tiny")  # here, not in cxr.train.model, so --help needs no torch
OPTIMIZERS = ("adam", "adamw")
AMP_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")
"""Plus cuda:N (one GPU by index), see `is_device_choice`."""
_CUDA_INDEX = re.compile(r"cuda:(0|[1-9][0-9]{0,2})")
SEG_HEAD_MODES = ("auto", "on", "off")
DECISIONS = ("auto",) + DECISION_MODES
SOURCE_OPTIONS = ("name", "csv_path", "path_column", "label_column", "patient_column", "split_column",
                  "source_column", "positive_class", "negative_class", "uncertain", "frontal_only", "nih_negatives",
                  "mask_columns", "ctr_column")
"""What one --data source may set for itself (KIND:PATH;key=value;...); the rest comes from the top-level options."""
CACHE_MODES = ("auto", "on", "off")
AUG_DRAWS = ("joint", "independent")
THRESHOLD_METHODS = ("youden_j", "target_sensitivity")
CACHE_AUTO_LIMIT = 20_000  # cache_images="auto" keeps preprocessed images in memory below this many images

# What runs made before a field existed did; a saved config without the key gets this value (not the new default).
LEGACY_DEFAULTS = {"nih_negatives": "all", "seg_head": "off", "decision": "classifier"}

# Fields that may differ between the saved config and the one given to --resume (they do not change the result).
RESUMABLE_OVERRIDES = ("max_epochs", "num_workers", "bootstrap_n", "cache_images", "verify_images", "device",
                       "decision", "threshold_method", "target_sensitivity")
"""(decision and the threshold only act after the last epoch, so a finished run can be re-decided with --resume)"""


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults reproduce the recipe except where a field says otherwise."""

    # --- data ---
    dataset: str = "folder"
    """Dataset kind: folder (Cardiomegaly/ and Normal/ subfolders, optionally under train/val/test), csv, nih
    (Data_Entry_2017.csv), chexpert, phantom (the built-in synthetic set)."""
    data_root: str = ""
    """Directory holding the images (and the labels file for nih/chexpert/phantom)."""
    csv_path: str | None = None
    """Labels CSV (kind csv; optional override for nih/chexpert). Relative image paths resolve against data_root."""
    path_column: str = "path"
    """CSV column with the image path."""
    label_column: str = "cardiomegaly"
    """CSV column with the label (1/0, or class names positive_class/negative_class)."""
    patient_column: str = "patient_id"
    """CSV column with the patient id (used so that no patient lands in two splits)."""
    split_column: str = "split"
    """CSV column with a predefined split (train/val/test); absent means splits are assigned by patient."""
    source_column: str | None = None
    """CSV column naming each image's source dataset; test figures are also reported per source."""
    positive_class: str = "Cardiomegaly"
    """Folder/class name of positives."""
    negative_class: str = "Normal"
    """Folder/class name of negatives."""
    uncertain: str = "zeros"
    """CheXpert uncertain labels (-1): zeros, ones, or ignore (= drop: leave those images out)."""
    frontal_only: bool = False
    """CheXpert: keep frontal views only."""
    nih_negatives: str = "no_finding"
    """NIH ChestX-ray14 negatives: no_finding (the recipe's Normal class: images labelled 'No Finding'; images with
    other findings only are left out) or all (every image without Cardiomegaly)."""
    source_name: str | None = None
    """Name of the first --data source in splits, reports and the card (default: its kind); rows of a CSV with a
    source column keep that column's value."""
    extra_sources: tuple = ()
    """Further --data sources, each a dict of kind, data_root and any of the per-source options (name, csv_path,
    *_column, positive_class, negative_class, uncertain, frontal_only, nih_negatives, mask_columns, ctr_column);
    what a source leaves out comes from the top-level options. Splits are drawn by patient inside each source."""
    mask_columns: str | None = None
    """CSV columns naming the heart, left-lung and right-lung mask files, comma-separated (e.g.
    mask_heart,mask_left_lung,mask_right_lung); masks are 8-bit images thresholded at 128. Images without masks
    train the classifier only."""
    ctr_column: str | None = None
    """CSV column with a reference cardiothoracic ratio (e.g. ctr_mask); reported as the CTR error of the model."""
    balance_sources: bool = False
    """Draw training images so that each source is seen equally often per epoch (seeded, with replacement)."""
    balance_labels: bool = False
    """Draw training images so that inside each source positives and negatives are seen equally often (seeded, with
    replacement): a source's share of positives then says nothing about the label. Not with --pos-weight."""
    verify_images: bool = False
    """Decode every image while indexing and skip (and report) unreadable ones before training starts."""
    val_fraction: float = 0.15
    """Share of patients assigned to validation when the data has no predefined split."""
    test_fraction: float = 0.15
    """Share of patients assigned to test when the data has no predefined split (0 = no test split)."""
    max_train_images: int | None = None
    """Use at most this many training images (a seeded subset, for quick runs; NOT the recipe)."""
    max_eval_images: int | None = None
    """Use at most this many validation and test images each (quick runs; NOT the recipe)."""
    # --- model ---
    arch: str = "densenet121"
    """densenet121 (the recipe) or densenet_tiny (a small DenseNet for tests of mechanics only)."""
    dropout: float = 0.2
    """Dropout before the final Linear(1024, 1)."""
    init: str = "imagenet"
    """Initial weights: imagenet (torchvision's cache; fails clearly offline), random, or a PATH to a checkpoint or
    state dict."""
    image_size: int = 224
    """Model input side S (preprocessing resizes to S x S, see cxr.runtime.preprocess)."""
    seg_head: str = "auto"
    """Heart/lung segmentation decoder on the DenseNet blocks: auto (on when a source has --mask-columns), on, off.
    Its masks give the model's cardiothoracic ratio (the ONNX outputs ctr and masks)."""
    mask_loss_weight: float = 1.0
    """Weight of the mask loss (Dice + BCE, images with masks only) added to the classifier's BCE."""
    seg_lr: float | None = None
    """Learning rate of the decoder (default 10 x --lr: a fresh decoder underfits at the backbone's rate)."""
    seg_weight_decay: float = 0.0
    """Weight decay of the decoder."""
    decision: str = "auto"
    """Where the probability comes from: classifier, ctr (a logistic map of the measured ratio), fusion (logistic
    regression on both), or auto: the best validation AUROC (fusion judged by 5-fold cross-validation within
    validation). Fitted on the validation split; needs the segmentation head for ctr and fusion."""
    # --- optimization ---
    optimizer: str = "adam"
    """adam (weight decay as coupled L2, the recipe) or adamw (decoupled weight decay)."""
    lr: float = 1e-5
    """Learning rate (the recipe's fine-tuning rate; from random init use about 1e-4)."""
    weight_decay: float = 1e-2
    """Weight decay (L2 for adam, decoupled for adamw)."""
    batch_size: int = 32
    """Images per optimizer step (per process under torchrun)."""
    max_epochs: int = 30
    """Upper bound on epochs."""
    plateau_patience: int = 2
    """ReduceLROnPlateau patience (PyTorch semantics: the lr drops after patience+1 epochs without improvement)."""
    plateau_factor: float = 0.1
    """ReduceLROnPlateau factor (mode min, on validation loss)."""
    early_stopping_patience: int = 4
    """Stop after this many epochs without a lower validation loss; the best-validation-loss weights are kept."""
    ema_halflife: float = 0.0
    """Validate, select and export an exponential moving average of the weights whose half-life is this many epochs
    (0 = off, the recipe: the raw weights). The average is updated after every optimizer step, BatchNorm statistics
    included (torch.optim.swa_utils.AveragedModel); it smooths the epoch-to-epoch swings of small-data training."""
    rotation_degrees: float = 5.0
    """Train-time augmentation: random rotation uniformly within +/- this many degrees (0 = none)."""
    aug_scale: float = 0.0
    """Random zoom within +/- this fraction (0.1 = 0.9x to 1.1x), drawn apart for the two axes; image and masks move
    together (0 = none)."""
    aug_stretch: float = 0.0
    """Widens the vertical zoom by +/- this fraction, drawn apart from the horizontal one (0 = none): hospitals frame
    films with more or less neck and abdomen (training sources differ by a quarter in lung height over film height).
    The cardiothoracic ratio is unchanged, since both its extents are horizontal."""
    aug_translate: float = 0.0
    """Random shift within +/- this fraction of the side, image and masks together (0 = none)."""
    aug_brightness: float = 0.0
    """Random brightness change within +/- this fraction (applied with probability 0.5; 0 = none)."""
    aug_contrast: float = 0.0
    """Random contrast change within +/- this fraction (applied with probability 0.5; 0 = none)."""
    aug_gamma: float = 0.0
    """Random gamma within 1 +/- this (applied with probability 0.5; 0 = none)."""
    aug_blur: float = 0.0
    """Probability of a Gaussian blur (sigma 0.3-1.2 px at the model's size; 0 = none)."""
    aug_noise: float = 0.0
    """Gaussian noise std up to this fraction of full scale (applied with probability 0.5; 0 = none)."""
    aug_jpeg: int = 0
    """JPEG re-compression at quality between this and 95 (applied with probability 0.5; 0 = none)."""
    aug_sharpen: float = 0.0
    """Probability of an unsharp mask (sigma 1-3 px at the model's size, amount 0.3-1.0): the edge enhancement some
    hospitals' processing applies (0 = none)."""
    aug_clahe: float = 0.0
    """Probability of local contrast equalization (CLAHE, clip 1-4, 8x8 tiles): processed films whose local contrast
    differs from a plain scan (0 = none)."""
    aug_opacity: float = 0.0
    """Probability of a fluid-like opacity filling the base of one lung or both (effusion, basal consolidation), drawn
    inside the lung masks, which stay the anatomical lung; needs lung masks, films without them are left as they are
    (0 = none)."""
    aug_draws: str = "joint"
    """How each film's augmentations are drawn: 'joint' (every run so far: albumentations seeds each transform alike,
    so the image-only changes fall on the same films, about half getting all of them and half none) or
    'independent' (each change drawn apart, with the probability its option names). --aug-opacity is drawn apart in
    both."""
    pos_weight: float | str | None = None
    """BCE pos_weight: None (the recipe), 'auto' (n_negative / n_positive on the training split) or a number."""
    # --- operating point and evaluation ---
    threshold_method: str = "youden_j"
    """How the decision threshold is chosen on validation: youden_j or target_sensitivity."""
    target_sensitivity: float | None = None
    """With threshold_method target_sensitivity: the sensitivity to reach on validation, in (0, 1]."""
    bootstrap_n: int = 1000
    """Bootstrap resamples for the test AUROC 95% interval."""
    # --- execution ---
    seed: int = 0
    """Seeds splits, subsets, weights, shuffling and augmentation. Runs on CPU are deterministic given the seed."""
    split_seed: int | None = None
    """Seeds only the patients' split into train/val/test (and the --max-*-images subsets); unset: --seed. Runs that
    differ only in --seed then share their validation and test patients, so they measure training's own spread and
    can be validated together."""
    num_workers: int = 2
    """DataLoader worker processes (0 = load in the main process)."""
    amp: str = "auto"
    """Mixed precision: auto (on for CUDA only), on (CUDA required), off."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (GPU number N). A GPU that is not there is an error, never a silent CPU run; under
    torchrun each process takes the GPU of its LOCAL_RANK."""
    cache_images: str = "auto"
    """Keep preprocessed uint8 images in memory: auto (on below 20,000 images), on, off."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"{name}: {why}, got {getattr(self, name)!r}")

        if self.dataset not in DATASET_KINDS:
            bad("dataset", f"must be one of {DATASET_KINDS}")
        if self.arch not in ARCHS:
            bad("arch", f"must be one of {ARCHS}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {OPTIMIZERS}")
        if not is_device_choice(self.device):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.amp == "on" and self.device == "cpu":
            bad("amp", "on needs CUDA and --device is cpu (use --amp auto or off, or --device cuda)")
        for name, allowed in (("amp", AMP_MODES), ("cache_images", CACHE_MODES),
                              ("uncertain", UNCERTAIN_POLICIES), ("nih_negatives", NIH_NEGATIVES),
                              ("seg_head", SEG_HEAD_MODES), ("decision", DECISIONS), ("aug_draws", AUG_DRAWS)):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {allowed}")
        if not isinstance(self.init, str) or not self.init:
            bad("init", "must be imagenet, random or a path")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must lie in [0, 1)")
        if not self.lr > 0:
            bad("lr", "must be positive")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        for name in ("batch_size", "max_epochs", "plateau_patience", "early_stopping_patience", "bootstrap_n"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            bad("num_workers", "must be an integer >= 0")
        if not (isinstance(self.ema_halflife, (int, float)) and math.isfinite(self.ema_halflife)
                and self.ema_halflife >= 0):
            bad("ema_halflife", "must be 0 (off) or a number of epochs > 0")
        if not 0.0 < self.plateau_factor < 1.0:
            bad("plateau_factor", "must lie in (0, 1)")
        if not 0.0 <= self.rotation_degrees <= 180.0:
            bad("rotation_degrees", "must lie in [0, 180]")
        if not (0.0 < self.val_fraction < 1.0 and 0.0 <= self.test_fraction < 1.0
                and self.val_fraction + self.test_fraction < 1.0):
            raise ConfigError(f"val_fraction and test_fraction must be fractions leaving some training data, got "
                              f"{self.val_fraction!r} and {self.test_fraction!r}")
        for name in ("max_train_images", "max_eval_images"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                bad(name, "must be an integer >= 2 or None")
        if isinstance(self.pos_weight, str):
            if self.pos_weight != "auto":
                bad("pos_weight", "must be None, 'auto' or a positive number")
        elif self.pos_weight is not None and not (isinstance(self.pos_weight, (int, float)) and self.pos_weight > 0):
            bad("pos_weight", "must be None, 'auto' or a positive number")
        if self.balance_labels and self.pos_weight is not None:
            bad("pos_weight", "reweights the classes a second time: --balance-labels already draws positives and "
                "negatives equally often; give one of them")
        if self.threshold_method == "youden_j":
            if self.target_sensitivity is not None:
                bad("target_sensitivity", "is only used with threshold_method target_sensitivity")
        elif self.threshold_method == "target_sensitivity":
            if self.target_sensitivity is None or not 0.0 < self.target_sensitivity <= 1.0:
                bad("target_sensitivity", "must lie in (0, 1] with threshold_method target_sensitivity")
        else:
            bad("threshold_method", f"must be one of {THRESHOLD_METHODS}")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "must be an integer >= 0")
        if self.split_seed is not None and (not isinstance(self.split_seed, int) or self.split_seed < 0):
            bad("split_seed", "must be an integer >= 0 (or unset: --seed)")
        self._check_segmentation(bad)
        self._check_augmentation(bad)
        for source in self.sources():
            source.check()
        try:
            _ = self.preprocess  # validates image_size through PreprocessConfig
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check_segmentation(self, bad) -> None:
        if self.mask_columns is not None and len(parse_mask_columns(self.mask_columns)) != 3:
            bad("mask_columns", "must name 3 comma-separated columns (heart, left lung, right lung)")
        if not (isinstance(self.mask_loss_weight, (int, float)) and self.mask_loss_weight >= 0):
            bad("mask_loss_weight", "must be >= 0")
        if self.seg_lr is not None and not self.seg_lr > 0:
            bad("seg_lr", "must be positive")
        if self.seg_weight_decay < 0:
            bad("seg_weight_decay", "must be >= 0")
        if self.seg_head == "on" and not self.has_masks:
            bad("seg_head", "'on' needs masks: name them with --mask-columns")
        if self.decision in ("ctr", "fusion") and not self.use_seg_head:
            bad("decision", "ctr and fusion need the segmentation head (masks and --seg-head auto|on)")

    def _check_augmentation(self, bad) -> None:
        for name in ("aug_scale", "aug_stretch", "aug_translate", "aug_brightness", "aug_contrast", "aug_gamma",
                     "aug_noise"):
            if not (isinstance(getattr(self, name), (int, float)) and 0.0 <= getattr(self, name) < 1.0):
                bad(name, "must lie in [0, 1)")
        for name in ("aug_blur", "aug_sharpen", "aug_clahe", "aug_opacity"):
            if not (isinstance(getattr(self, name), (int, float)) and 0.0 <= getattr(self, name) <= 1.0):
                bad(name, "must be a probability in [0, 1]")
        if isinstance(self.aug_opacity, (int, float)) and 0 < self.aug_opacity <= 1 and not self.use_seg_head:
            bad("aug_opacity", "draws inside the lung masks: it needs masks (--mask-columns) and the segmentation head "
                "(--seg-head auto|on)")
        if not (isinstance(self.aug_jpeg, int) and (self.aug_jpeg == 0 or 1 <= self.aug_jpeg <= 95)):
            bad("aug_jpeg", "must be 0 (off) or a JPEG quality in 1..95")

    @property
    def augmentation(self) -> dict[str, float]:
        """The augmentation fields (recorded with the run; rotation_degrees included)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith("aug_") or f.name == "rotation_degrees"}

    def sources(self) -> list["SourceSpec"]:
        """Every --data source, the first from the top-level fields, each with its options resolved."""
        first = {k: getattr(self, k) for k in SOURCE_OPTIONS if k != "name"}
        first.update(kind=self.dataset, data_root=self.data_root, name=self.source_name or self.dataset)
        specs = [SourceSpec(**first)]
        for extra in self.extra_sources:
            if not isinstance(extra, Mapping) or "kind" not in extra or "data_root" not in extra:
                raise ConfigError(f"extra_sources: each source needs kind and data_root, got {extra!r}")
            unknown = sorted(set(extra) - set(SOURCE_OPTIONS) - {"kind", "data_root"})
            if unknown:
                raise ConfigError(f"--data {extra.get('kind')}:{extra.get('data_root')}: unknown option(s) {unknown}; "
                                  f"a source may set {', '.join(SOURCE_OPTIONS)}")
            base = {k: getattr(self, k) for k in SOURCE_OPTIONS if k not in ("name", "csv_path", "mask_columns",
                                                                            "ctr_column", "source_column")}
            specs.append(SourceSpec(**{**base, "name": extra["kind"], **extra}))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"--data sources need distinct names, got {names}; set one with ;name=NAME")
        return specs

    @property
    def has_masks(self) -> bool:
        return any(s.mask_columns for s in self.sources())

    @property
    def use_seg_head(self) -> bool:
        return self.seg_head == "on" or (self.seg_head == "auto" and self.has_masks)

    @property
    def decoder_lr(self) -> float:
        return self.seg_lr if self.seg_lr is not None else 10.0 * self.lr

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing contract for this run (only the size differs from the defaults)."""
        return PreprocessConfig(size=self.image_size)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["extra_sources"] = [dict(x) for x in self.extra_sources]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from config.json; unknown keys are an error naming them (a config from another cxr version).
        A key that an older cxr did not write takes the value that version used, not today's default."""
        merged = {**LEGACY_DEFAULTS, **data}
        merged["extra_sources"] = tuple(dict(x) for x in merged.get("extra_sources") or ())
        try:
            return dataclass_from_dict(cls, merged, "train config")
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:  # unknown or mistyped fields in config.json
            raise ConfigError(str(exc)) from None

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def cache_enabled(self, n_images: int) -> bool:
        """Whether to keep preprocessed images in memory for a dataset of `n_images`."""
        return self.cache_images == "on" or (self.cache_images == "auto" and n_images < CACHE_AUTO_LIMIT)


def parse_mask_columns(text: str | None) -> tuple[str, ...]:
    """'a,b,c' -> ('a', 'b', 'c'); None or '' -> ()."""
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


@dataclass(frozen=True)
class SourceSpec:
    """One --data source with every option resolved (see TrainConfig.sources)."""

    kind: str
    data_root: str
    name: str
    csv_path: str | None = None
    path_column: str = "path"
    label_column: str = "cardiomegaly"
    patient_column: str = "patient_id"
    split_column: str = "split"
    source_column: str | None = None
    positive_class: str = "Cardiomegaly"
    negative_class: str = "Normal"
    uncertain: str = "zeros"
    frontal_only: bool = False
    nih_negatives: str = "no_finding"
    mask_columns: str | None = None
    ctr_column: str | None = None

    def load(self, **overrides: Any):
        """This source's DatasetIndex: cxr.train.datasets.load_dataset with every option of the spec, `overrides`
        replacing any of them (e.g. verify_images, or split_column for an external test that draws no split)."""
        from cxr.train.datasets import load_dataset

        options: dict[str, Any] = dict(
            csv_path=self.csv_path, path_column=self.path_column, label_column=self.label_column,
            patient_column=self.patient_column, split_column=self.split_column, source_column=self.source_column,
            positive_class=self.positive_class, negative_class=self.negative_class, uncertain=self.uncertain,
            frontal_only=self.frontal_only, nih_negatives=self.nih_negatives,
            mask_columns=parse_mask_columns(self.mask_columns), ctr_column=self.ctr_column)
        return load_dataset(self.kind, self.data_root, **{**options, **overrides})

    def check(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ConfigError(f"source {self.name!r}: kind must be one of {DATASET_KINDS}, got {self.kind!r}")
        if not self.name or any(c in self.name for c in ",;:/\\") or not self.name.isprintable():
            raise ConfigError(f"source name {self.name!r}: use letters, digits, '-' or '_'")
        if self.mask_columns and len(parse_mask_columns(self.mask_columns)) != 3:
            raise ConfigError(f"source {self.name!r}: mask_columns must name 3 columns, got {self.mask_columns!r}")
        if self.mask_columns and self.kind not in ("csv", "phantom"):
            raise ConfigError(f"source {self.name!r}: masks come from CSV columns; kind {self.kind!r} has none")


def is_device_choice(value: object) -> bool:
    """auto, cpu, cuda or cuda:N."""
    return isinstance(value, str) and (value in DEVICES or _CUDA_INDEX.fullmatch(value) is not None)


def parse_source(spec: str) -> dict[str, Any]:
    """'KIND:PATH[;key=value...]' -> {'kind', 'data_root', key: value}; ConfigError naming what is wrong."""
    head, *options = spec.split(";")
    kind, sep, root = head.partition(":")
    if not sep or kind not in DATASET_KINDS or not root:
        raise ConfigError(f"expected KIND:PATH[;key=value...] with KIND one of {', '.join(DATASET_KINDS)}, "
                          f"got {spec!r}")
    out: dict[str, Any] = {"kind": kind, "data_root": root}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip().replace("-", "_")
        if key == "csv":
            key = "csv_path"
        if not eq or key not in SOURCE_OPTIONS:
            raise ConfigError(f"--data {head}: {option!r} is not key=value with key one of "
                              f"{', '.join(('csv',) + SOURCE_OPTIONS[1:] + ('name',))}")
        out[key] = (value.strip().lower() in ("1", "true", "yes")) if key == "frontal_only" else value.strip()
    return out
