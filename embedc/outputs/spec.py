"""What compressed outputs an artifact emits: the spec's ``[outputs]`` table
(or ``--output`` / ``--dims``) resolved against the model into a list of
``Head`` objects, one per extra graph output.

Naming: ``{source}_{format}`` at the model's width, ``{source}_{format}_{dims}``
truncated (Matryoshka); float32 heads exist only truncated
(``sentence_embedding_{dims}``): the full-width float output is the graph's own.
``source`` is ``pooler_output`` (pooled, unnormalized: what pplx-embed
quantizes natively, so its artifacts carry ``pooler_output_int8`` and
``pooler_output_binary`` like its own ONNX) when the model exports it, else
``sentence_embedding``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import SpecError

FORMATS = ("float32", "int8", "int8-tanh", "binary", "ubinary")
INT8_SCHEMES = ("calibrated", "tanh")
# binary / ubinary: the sign of each component ("sign"), or of its distance from the
# per-dimension mean of the calibration split ("centered": anisotropic models such as e5,
# whose components share a sign across most texts, keep far more ranking in their bits)
BINARY_SCHEMES = ("sign", "centered")
SENTENCE = "sentence_embedding"
POOLED = "pooler_output"

# Model types trained for compressed outputs (what their authors trained and publish).
# Anything else gets a warning in the report for tanh int8 and for Matryoshka dims.
TRAINED = {
    "bidirectional_pplx_qwen3": {"formats": {"int8-tanh", "binary", "ubinary"}, "matryoshka": True,
                                 "default": ("int8", "binary"), "int8_scheme": "tanh",
                                 "min_dims": 128},
}

# Retrieval: candidates retrieved with the compressed vectors, then rescored (HF guide).
DEFAULT_RESCORE_MULTIPLIER = 4


@dataclass(frozen=True)
class OutputsSpec:
    """``[outputs]``: formats (empty: the model's default, none for most models),
    dims (empty: the model's width), the int8 scheme (None: the model's own,
    else calibrated), the binary scheme (sign or centered), rescoring depth
    and gates (``{format: "metric>=x,..."}``)."""

    formats: tuple[str, ...] = ()
    dims: tuple[int, ...] = ()
    int8_scheme: str | None = None
    binary_scheme: str = "sign"
    rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER
    gates: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["formats"], d["dims"] = list(self.formats), list(self.dims)
        return d


@dataclass(frozen=True)
class Head:
    """One extra graph output."""

    name: str
    format: str           # float32 | int8 | binary | ubinary
    scheme: str | None    # int8: calibrated | tanh; binary/ubinary: None (sign) | centered
    dims: int
    width: int            # the model's embedding width
    source: str           # graph output it reads: sentence_embedding | pooler_output
    renormalize: bool     # L2-normalize after truncation (before quantization)

    @property
    def dtype(self) -> str:
        return {"float32": "float32", "int8": "int8", "binary": "int8", "ubinary": "uint8"}[self.format]

    @property
    def shape(self) -> list:
        return ["batch", self.dims // 8 if self.format == "ubinary" else self.dims]

    @property
    def bytes_per_vector(self) -> int:
        return {"float32": 4 * self.dims, "int8": self.dims, "binary": self.dims, "ubinary": self.dims // 8}[
            self.format]

    @property
    def calibrated(self) -> bool:
        return self.format == "int8" and self.scheme == "calibrated"

    @property
    def centered(self) -> bool:
        return self.format in ("binary", "ubinary") and self.scheme == "centered"

    @property
    def needs_calibration(self) -> bool:
        """Its constants (int8 ranges, binary centre) come from the calibration split."""
        return self.calibrated or self.centered

    def to_dict(self) -> dict:
        return {**asdict(self), "dtype": self.dtype, "shape": self.shape, "bytes_per_vector": self.bytes_per_vector}

    @classmethod
    def from_dict(cls, d: dict) -> Head:
        return cls(**{k: d[k] for k in ("name", "format", "scheme", "dims", "width", "source", "renormalize")})


def parse_formats(value) -> tuple[str, ...]:
    """``"float32,int8,ubinary"`` or a list -> validated tuple (order kept, duplicates removed)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        f = str(raw).strip().lower()
        if not f:
            continue
        if f not in FORMATS:
            raise SpecError(f"unknown output format {f!r}", f"use one or more of {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    return tuple(out)


def parse_dims(value) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple))
                                                            else [value])
    out: list[int] = []
    for raw in items:
        if isinstance(raw, str) and not raw.strip():
            continue
        try:
            d = int(str(raw).strip()) if not isinstance(raw, bool) else None
        except ValueError:
            d = None
        if d is None or d < 8:
            raise SpecError(f"output dims {raw!r} is not a whole number >= 8", "e.g. --dims 256 or dims = [256, 128]")
        if d not in out:
            out.append(d)
    return tuple(out)


def check(o: OutputsSpec) -> OutputsSpec:
    """Model-independent checks (spec time)."""
    parse_formats(o.formats)
    parse_dims(o.dims)
    if o.int8_scheme is not None and o.int8_scheme not in INT8_SCHEMES:
        raise SpecError(f"unknown int8 scheme {o.int8_scheme!r}", f"use one of {', '.join(INT8_SCHEMES)}")
    if o.binary_scheme not in BINARY_SCHEMES:
        raise SpecError(f"unknown binary scheme {o.binary_scheme!r}", f"use one of {', '.join(BINARY_SCHEMES)}")
    if o.int8_scheme == "tanh" and "int8" in o.formats and "int8-tanh" in o.formats:
        raise SpecError("outputs list int8 with int8_scheme = 'tanh' and int8-tanh: the same output twice",
                        "drop int8-tanh, or set int8_scheme = 'calibrated' to get both schemes")
    if isinstance(o.rescore_multiplier, bool) or not isinstance(o.rescore_multiplier, int) or o.rescore_multiplier < 1:
        raise SpecError(f"outputs.rescore_multiplier must be a whole number >= 1, got {o.rescore_multiplier!r}",
                        "e.g. rescore_multiplier = 4 (retrieve 4 x top-k, then rescore)")
    if "ubinary" in o.formats:
        bad = [d for d in o.dims if d % 8]
        if bad:
            raise SpecError(f"ubinary packs 8 dimensions per byte: dims {bad[0]} is not a multiple of 8",
                            "use dims divisible by 8 (e.g. 256, 128)")
    from .gates import parse_output_gates

    for fmt_key, text in (o.gates or {}).items():
        if fmt_key not in FORMATS and fmt_key != "*":
            raise SpecError(f"outputs.gates key {fmt_key!r} is not an output format", f"use {', '.join(FORMATS)}")
        parse_output_gates(text)
    return o


def from_table(data) -> OutputsSpec:
    """The spec file's ``[outputs]`` table."""
    if not isinstance(data, dict):
        raise SpecError("spec key 'outputs' must be a table", 'e.g. [outputs] formats = ["int8", "ubinary"]')
    known = {"formats", "dims", "int8_scheme", "binary_scheme", "rescore_multiplier", "gates"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown spec key 'outputs.{unknown[0]}'", f"valid keys: {', '.join(sorted(known))}")
    gates = data.get("gates", {})
    if not isinstance(gates, dict) or not all(isinstance(v, str) for v in gates.values()):
        raise SpecError("spec key 'outputs.gates' must map a format to a gate string",
                        'e.g. gates = {int8 = "rescored_top10>=0.95"}')
    return check(OutputsSpec(formats=parse_formats(data.get("formats", ())), dims=parse_dims(data.get("dims", ())),
                             int8_scheme=data.get("int8_scheme"), binary_scheme=data.get("binary_scheme", "sign"),
                             rescore_multiplier=data.get("rescore_multiplier", DEFAULT_RESCORE_MULTIPLIER),
                             gates=dict(gates)))


def plan_heads(o: OutputsSpec, *, model_type: str, width: int, graph_outputs) -> tuple[list[Head], list[str]]:
    """The heads this model's artifacts get, and the warnings (formats or
    dims the model was not trained for). Raises ``SpecError`` for dims wider
    than the model or ubinary dims not divisible by 8."""
    trained = TRAINED.get(model_type)
    formats = tuple(o.formats) or (trained["default"] if trained else ())
    if not formats:
        return [], []
    scheme = o.int8_scheme or (trained["int8_scheme"] if trained else "calibrated")
    dims_list = tuple(o.dims) or (width,)
    for d in dims_list:
        if d > width:
            raise SpecError(f"output dims {d} is larger than the model's embedding width {width}",
                            f"use dims <= {width}: Matryoshka truncation keeps the first dims")
    source = POOLED if POOLED in set(graph_outputs) else SENTENCE
    heads: list[Head] = []
    warnings: list[str] = []
    for d in dims_list:
        for f in formats:
            if f == "float32":
                if d == width:
                    continue  # the graph's own sentence_embedding
                heads.append(Head(f"{SENTENCE}_{d}", "float32", None, d, width, SENTENCE, True))
                continue
            if f == "ubinary" and d % 8:
                raise SpecError(f"ubinary packs 8 dimensions per byte: dims {d} is not a multiple of 8",
                                "use dims divisible by 8")
            centered = f in ("binary", "ubinary") and o.binary_scheme == "centered"
            fmt, sch, suffix = f, ("centered" if centered else None), (f"{f}_centered" if centered else f)
            if f in ("int8", "int8-tanh"):
                fmt, sch = "int8", ("tanh" if f == "int8-tanh" else scheme)
                suffix = "int8_tanh" if f == "int8-tanh" else "int8"
            name = f"{source}_{suffix}" + ("" if d == width else f"_{d}")
            heads.append(Head(name, fmt, sch, d, width, source, source == SENTENCE and d < width))
    seen = set()
    for h in heads:
        if h.name in seen:
            raise SpecError(f"output {h.name} is planned twice", "list each format once")
        seen.add(h.name)
    trained_formats = trained["formats"] if trained else set()
    if any(h.format == "int8" and h.scheme == "tanh" for h in heads) and "int8-tanh" not in trained_formats:
        warnings.append(f"int8 tanh scheme on a {model_type} model, which was not trained for it "
                        "(round(127*tanh(x)) assumes the model's output scale; calibrated int8 is the post-hoc "
                        "scheme): see the compressed-output parity before serving it")
    if any(d < width for d in dims_list) and not (trained and trained["matryoshka"]):
        warnings.append(f"dims {', '.join(str(d) for d in dims_list if d < width)} truncate a {model_type} model "
                        f"of width {width} that was not trained for Matryoshka truncation: see the retrieval "
                        "numbers before serving it")
    if trained and trained.get("matryoshka"):
        small = [d for d in dims_list if d < min(trained.get("min_dims", 0), width)]
        if small:
            warnings.append(f"dims {small} are below the {trained['min_dims']} the model was trained for")
    return heads, warnings
