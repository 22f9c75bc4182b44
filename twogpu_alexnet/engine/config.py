"""Training configuration: typed dataclasses, loaded from TOML, overridden with ``--set key=value``.

A config is a handful of sections (``[model]``, ``[data]``, ``[train]``, ``[schedule]``, ``[speed]``,
``[checkpoint]``, ``[analysis]``), each a dataclass below whose defaults are the paper's recipe.
Every key is checked on load: an unknown key or a value of the wrong type or outside its choices is a
:class:`~twogpu_alexnet.errors.UserError` naming the key and what is allowed. Nothing here reads data
or touches a GPU, so a bad config fails before either happens.
"""
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli (a dependency there)
    import tomli as tomllib

from ..errors import UserError
from ..spec import PRESETS

# key -> allowed values, for the string keys that take one of a few words
CHOICES = {
    "model.mode": ("auto", "two-tower", "grouped"),
    "data.source": ("synthetic", "imagefolder", "store", "cifar10"),
    "data.color_noise": ("paper", "original", "none"),
    "data.cache": ("none", "gpu"),
    "data.decode": ("cpu", "gpu"),
    "train.nonfinite": ("stop", "skip"),
    "schedule.kind": ("plateau", "original", "step", "none"),
    "speed.amp": ("none", "bf16", "fp16"),
}


@dataclass
class ModelConfig:
    preset: str = "paper"  # a key of spec.PRESETS: paper | original | paper-onetower | paper-half |
    #                        original-half | cifar | cifar-onetower
    mode: str = "auto"  # two-tower (one tower per GPU) | grouped (one device) | auto (two-tower with >= 2 GPUs)
    devices: list[str] = field(default_factory=list)  # [] = automatic; two-tower: [tower 0, tower 1]; grouped: [device]
    num_classes: int = 0  # 0 = the number of classes in the data


@dataclass
class DataConfig:
    source: str = "imagefolder"  # synthetic | imagefolder | store | cifar10
    root: str = ""  # folder holding train/ and val/ (or a prepared store); unused for synthetic
    workers: int = -1  # loader processes per rank; -1 = cores - 2 (at least 1) on GPU runs, cores - 1 (1..4) on CPU
    color_noise: str = "paper"  # PCA colour augmentation: paper | original | none
    synthetic_images: int = 0  # synthetic source: training images (0 = the data package's default)
    synthetic_val_images: int = 0  # synthetic source: validation images (0 = the data package's default)
    crop_group: int = 0  # > 0: that many consecutive training images share one crop and reflection (2012 code: 32)
    cache: str = "none"  # gpu: decode the data once into GPU memory as uint8 and augment there (small data)
    decode: str = "cpu"  # gpu: a JPEG store's images are decoded in batches on the GPU (nvJPEG), not in workers


@dataclass
class TrainConfig:
    epochs: int = 90
    batch_size: int = 128  # global: split evenly across distributed ranks
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    nonfinite: str = "stop"  # a non-finite loss: stop (exit code 3) | skip the batch and count it
    max_steps_per_epoch: int = 0  # 0 = whole epochs; > 0 caps the training steps per epoch (smoke runs)
    log_every: int = 50  # steps between metrics.jsonl step lines / plain progress lines
    val_images: int = 0  # > 0: validate on a fixed subset of this many images, chosen with train.seed (0 = all)
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn.deterministic


@dataclass
class ScheduleConfig:
    kind: str = "plateau"  # plateau (the paper) | original (the 2012 code's epochs) | step (milestones) | none
    factor: float = 0.1  # plateau, step: lr multiplier at each drop
    patience: int = 2  # plateau: epochs without improvement before a drop
    threshold: float = 0.001  # plateau: an improvement is a drop of val top-1 error by more than this
    max_drops: int = 3  # plateau: at most this many drops
    milestones: list[int] = field(default_factory=lambda: [25, 51, 79])  # original: lr / 10 from these; step: x factor
    conv1_milestones: list[int] = field(default_factory=lambda: [67, 72])  # original: conv1's extra changes
    conv1_factors: list[float] = field(default_factory=lambda: [0.1, 0.0])  # original: conv1 x0.1 at 67, 0 at 72
    color_noise_off_epoch: int = 67  # original: colour noise off from this epoch on (0 = never)


@dataclass
class SpeedConfig:
    amp: str = "none"  # autocast: none | bf16 | fp16 (fp16 adds a gradient scaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the forward pass
    cudnn_benchmark: bool = True


@dataclass
class CheckpointConfig:
    keep_last: int = 3  # epoch checkpoints kept besides last.pt and best.pt
    every: int = 1  # write an epoch checkpoint every this many epochs (the last epoch always)


@dataclass
class AnalysisConfig:
    color_stats: bool = True  # per-epoch colour score of each tower's conv1 kernels (metrics.jsonl)
    kernel_grid_epochs: list[int] = field(default_factory=lambda: [1, 10, 30, 60, 90])  # Figure-3 PNGs (+ the last)


@dataclass
class LogConfig:
    tensorboard: bool = False  # also write RUN/tensorboard/ (needs the [tensorboard] extra)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    log: LogConfig = field(default_factory=LogConfig)


# The demo that `twogpu-alexnet train` runs with no arguments (configs/demo.toml holds the same text).
DEMO_TOML = """\
# The built-in demo: `twogpu-alexnet train` with no arguments runs this.
# Synthetic 32x32 images (10 classes: 5 told apart by colour, 5 by orientation), the cifar preset
# (the paper's two-tower topology, scaled down), 2 epochs of 2560 images on whatever device there is:
# under a minute on a 2-core CPU, ending under 50% validation top-1 error (the README's Results).
# lr 0.001, not the paper's 0.01: on 0..255-scale inputs the cifar preset starts at a loss near 50
# and diverges at 0.01 with batch 64. channels_last is the one speed option that helps on a CPU.
[model]
preset = "cifar"
mode = "auto"

[data]
source = "synthetic"
workers = 0
color_noise = "paper"
synthetic_images = 2560
synthetic_val_images = 512

[train]
epochs = 2
batch_size = 64
lr = 0.001
log_every = 16

[schedule]
kind = "none"

[speed]
channels_last = true

[checkpoint]
keep_last = 2

[analysis]
kernel_grid_epochs = [1]
"""


def _sections(config_cls=Config) -> dict[str, type]:
    return {f.name: f.default_factory().__class__ for f in dataclasses.fields(config_cls)}


def allowed_keys() -> list[str]:
    """Every ``section.key`` a config accepts."""
    return [f"{s}.{f.name}" for s, cls in _sections().items() for f in dataclasses.fields(cls)]


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list[int]: "a list of integers", list[float]: "a list of numbers",
            list[str]: "a list of strings"}[tp]


def _coerce(key: str, tp, value):
    """``value`` as type ``tp`` or a UserError naming the key and the type it takes."""
    def bad():
        return UserError(f"{key} must be {_type_name(tp)}, got {value!r}")

    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if tp in (list[int], list[float], list[str]):
        if not isinstance(value, list):
            raise bad()
        item = tp.__args__[0]
        try:
            return [_coerce(key, item, v) for v in value]
        except UserError:
            raise bad() from None
    raise TypeError(f"unsupported config type {tp} for {key}")


def from_dict(data: dict, base: Config | None = None, origin: str = "config") -> Config:
    """A checked :class:`Config` from nested dicts (as TOML gives), on top of ``base`` (default: the paper's)."""
    return validate(_merge(data, base, origin))


def _merge(data: dict, base: Config | None, origin: str) -> Config:
    base = base if base is not None else Config()
    sections = _sections()
    config = Config(**{s: dataclasses.replace(getattr(base, s)) for s in sections})  # ``base`` stays as it was
    if not isinstance(data, dict):
        raise UserError(f"{origin} must be a TOML table of sections")
    for section, values in data.items():
        if section not in sections:
            raise UserError(f"unknown config section [{section}] in {origin}; allowed: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise UserError(f"[{section}] in {origin} must be a table of keys, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(sections[section])}
        target = getattr(config, section)
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in fields:
                raise UserError(f"unknown config key {name} in {origin}; [{section}] takes: {', '.join(fields)}")
            setattr(target, key, _coerce(name, fields[key].type, value))
    return config


# Upper bounds of the whole-number keys, checked before anything is allocated (a few zeros too many are one
# sentence, not a MemoryError or an overflow deep in torch): key -> (largest value, why). Keys not listed
# here are bounded by INT_LIMIT.
INT_LIMIT = 2**31 - 1
LIMITS = {
    "model.num_classes": (100_000, "fc8 alone would need 4096 x that many weights; ImageNet-21k has 21,841"),
    "data.synthetic_images": (10_000_000, "the synthetic set is generated in memory"),
    "data.synthetic_val_images": (10_000_000, "the synthetic set is generated in memory"),
    "data.workers": (256, "one process each"),
    "data.crop_group": (65_536, "images sharing one crop"),
    "train.seed": (2**32 - 1, "the seeds numpy and torch take"),
    "train.batch_size": (65_536, "images per step"),
    "train.epochs": (100_000, "the paper trains 90"),
    "checkpoint.keep_last": (100_000, "files kept"),
}


def _check_limits(config: Config) -> None:
    for section, cls in _sections().items():
        for f in dataclasses.fields(cls):
            if f.type not in (int, list[int]):
                continue
            key = f"{section}.{f.name}"
            limit, why = LIMITS.get(key, (INT_LIMIT, ""))
            value = getattr(getattr(config, section), f.name)
            for v in (value if isinstance(value, list) else [value]):
                if v > limit:
                    reason = f" ({why})" if why else ""
                    raise UserError(f"{key} is {v}, above the largest value this program takes, {limit:,}{reason}; "
                                    "set a smaller value")
                if v < -INT_LIMIT:
                    raise UserError(f"{key} is {v}, far below anything it takes; set a value of 0 or more")


def validate(config: Config) -> Config:
    """Check choices and ranges; raises UserError naming the first bad key."""
    _check_limits(config)
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    m, d, t, s, c = config.model, config.data, config.train, config.schedule, config.checkpoint
    for key, text in [("data.root", d.root), ("model.preset", m.preset)] + [("model.devices", x) for x in m.devices]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a path argument with bytes that are not UTF-8 (surrogate escapes)
            raise UserError(f"{key} holds bytes that are not UTF-8 text, which config.toml cannot store: {text!r}; "
                            "rename the file or folder") from None
    if m.preset not in PRESETS:
        raise UserError(f"model.preset must be one of {', '.join(PRESETS)}; got {m.preset!r}")
    want = {"two-tower": 2, "grouped": 1}.get(m.mode)
    if m.devices and want is not None and len(m.devices) != want:
        raise UserError(f"model.devices must list {want} device(s) for mode {m.mode}, got {m.devices}")
    if m.devices and m.mode == "auto":
        raise UserError("model.devices needs model.mode two-tower (2 devices) or grouped (1 device), not auto")
    positive = {"train.epochs": t.epochs, "train.batch_size": t.batch_size, "train.log_every": t.log_every,
                "checkpoint.every": c.every}
    if m.num_classes == 1:
        raise UserError("model.num_classes must be 0 (follow the data) or at least 2, got 1; "
                        "a classifier needs two classes or more")
    if t.seed < 0:
        raise UserError(f"train.seed must be 0 .. {2**32 - 1}, got {t.seed}")
    if any(e < 1 for e in config.analysis.kernel_grid_epochs):
        raise UserError(f"analysis.kernel_grid_epochs lists epochs from 1, got {config.analysis.kernel_grid_epochs}")
    if d.workers < -1:
        raise UserError(f"data.workers must be -1 (automatic) or 0 or more, got {d.workers}")
    non_negative = {"model.num_classes": m.num_classes,
                    "data.synthetic_images": d.synthetic_images, "data.synthetic_val_images": d.synthetic_val_images,
                    "data.crop_group": d.crop_group,
                    "train.max_steps_per_epoch": t.max_steps_per_epoch, "train.val_images": t.val_images,
                    "schedule.patience": s.patience,
                    "schedule.max_drops": s.max_drops, "checkpoint.keep_last": c.keep_last,
                    "schedule.color_noise_off_epoch": s.color_noise_off_epoch}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be at least 1, got {value}")
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"{key} must be 0 or more, got {value}")
    for key, value in {"train.lr": t.lr, "train.momentum": t.momentum, "train.weight_decay": t.weight_decay,
                       "schedule.factor": s.factor, "schedule.threshold": s.threshold}.items():
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{key} must be a finite number >= 0, got {value}")
    if t.lr == 0:
        raise UserError("train.lr must be greater than 0")
    if not 0 < s.factor < 1:
        raise UserError(f"schedule.factor must be between 0 and 1 (the lr is multiplied by it at each drop), "
                        f"got {s.factor:g}; the paper's is 0.1")
    for key, values in {"schedule.milestones": s.milestones, "schedule.conv1_milestones": s.conv1_milestones}.items():
        if values != sorted(values) or any(v < 1 for v in values):
            raise UserError(f"{key} must list epochs (from 1) in increasing order, got {values}")
    if any(f < 0 for f in s.conv1_factors):
        raise UserError(f"schedule.conv1_factors must be 0 or more, got {s.conv1_factors}")
    if len(s.conv1_milestones) != len(s.conv1_factors):
        raise UserError("schedule.conv1_milestones and schedule.conv1_factors must have the same length")
    if d.source in ("imagefolder", "store", "cifar10") and not d.root:
        raise UserError(f"data.root is empty but data.source is {d.source}; pass --set data.root=DIR "
                        "(a folder holding train/ and val/)")
    return config


def parse_override(text: str) -> tuple[str, str, object]:
    """``"train.lr=0.1"`` -> ("train", "lr", 0.1): the value in TOML syntax, else the plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        raise UserError(f"--set takes section.key=value (for example train.epochs=10), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    section, name = key.split(".")
    return section, name, value


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """``config`` with each ``section.key=value`` applied in order (later ones win); not yet validated."""
    data: dict[str, dict] = {}
    sections = _sections()
    for text in overrides:
        section, name, value = parse_override(text)
        cls = sections.get(section)
        if cls is not None:
            types = {f.name: f.type for f in dataclasses.fields(cls)}
            if types.get(name) is str and not isinstance(value, str):
                value = text.partition("=")[2].strip()  # data.root=2012 is the string "2012"
        data.setdefault(section, {})[name] = value
    return _merge(data, config, "--set")


def parse_toml(text: str, origin: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{origin} is not valid TOML ({exc}); fix the file and run again") from None


def read_text(path: Path) -> str:
    """The UTF-8 text of a config file (TOML files are UTF-8); UserError when it cannot be read as such."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8 and run again") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path} ({exc.strerror or exc}); check its permissions") from None


def load_config(path: "str | os.PathLike | None" = None, overrides: list[str] = ()) -> Config:
    """The config in TOML file ``path`` (None: the built-in demo) with ``overrides`` applied."""
    if path is None:
        config = _merge(parse_toml(DEMO_TOML, "the demo config"), None, "the demo config")
    else:
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise UserError(f"config file {path} {what}; pass --config with one of the files in configs/")
        config = _merge(parse_toml(read_text(path), str(path)), None, str(path))
    return validate(apply_overrides(config, list(overrides)))


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(ch in text for ch in ".en") else text + ".0"
    if isinstance(value, str):
        return '"' + "".join(_toml_char(ch) for ch in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_char(ch: str) -> str:
    """One character of a TOML basic string: escapes for quotes, backslashes and control characters
    (TOML allows only the tab raw), and for non-ASCII, so the file reads back the same in any locale."""
    if ch in _TOML_ESCAPES:
        return _TOML_ESCAPES[ch]
    code = ord(ch)
    if code < 0x20 or code >= 0x7F:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return ch


def to_toml(config: Config) -> str:
    """The resolved config as TOML text that :func:`load_config` reads back to an equal config."""
    lines = []
    for section, values in to_dict(config).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)
