"""Export a trained early-exit model: edge as TFLite for vehicles, fog/cloud as .keras (+ TFLite).

Every written file is run back on caller-supplied real inputs and compared with the trained
Keras model before manifest.json is written, so a manifest only ever describes files that
were checked. TensorFlow and Keras are imported lazily: ``run_tflite`` and ``load_manifest``
need only numpy and ai_edge_litert, so a vehicle can use them without TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.model_config import PARTITIONS, ModelConfig

if TYPE_CHECKING:
    import keras

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLOAT32_TOLERANCE = 1e-4
QUANTIZE_VARIANTS: tuple[str, str] = ("float16", "int8")


class ExportError(RuntimeError):
    """The export could not be produced as asked."""


class ExportParityError(ExportError):
    """A float32 export disagrees with the trained Keras model by more than the tolerance."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of an exported file; outputs also carry their parity error."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.max_abs_diff is not None:
            d["max_abs_diff"] = self.max_abs_diff
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorInfo:
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d.get("max_abs_diff"))


@dataclass(frozen=True)
class ExportedFile:
    partition: str
    path: str  # relative to the export directory
    format: str  # "tflite" | "keras"
    variant: str  # "float32" | "float16" | "int8"
    sha256: str
    size_bytes: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parity_max_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "path": self.path,
            "format": self.format,
            "variant": self.variant,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parity_max_abs_diff": self.parity_max_abs_diff,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportedFile:
        return cls(
            partition=d["partition"],
            path=d["path"],
            format=d["format"],
            variant=d["variant"],
            sha256=d["sha256"],
            size_bytes=d["size_bytes"],
            inputs=tuple(TensorInfo.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in d["outputs"]),
            parity_max_abs_diff=d["parity_max_abs_diff"],
        )


@dataclass(frozen=True)
class SkippedExport:
    """A file that was not written (e.g. a partition that does not convert to TFLite builtins)."""

    partition: str
    format: str
    variant: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "format": self.format,
            "variant": self.variant,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ExportReport:
    """What export_partitions wrote; to_manifest() is exactly the manifest.json content."""

    out_dir: str
    config: ModelConfig
    metadata: dict[str, Any] | None
    files: tuple[ExportedFile, ...]
    skipped: tuple[SkippedExport, ...]
    format_version: int = FORMAT_VERSION

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "config": self.config.to_dict(),
            "metadata": self.metadata,
            "files": [f.to_dict() for f in self.files],
            "skipped": [s.to_dict() for s in self.skipped],
        }

    def file(self, partition: str, fmt: str, variant: str = "float32") -> ExportedFile:
        for f in self.files:
            if (f.partition, f.format, f.variant) == (partition, fmt, variant):
                return f
        raise KeyError(f"no exported file for partition={partition} {fmt} {variant}")

    def rows(self) -> list[tuple[str, ...]]:
        """Header row then one row per file / skipped file, all strings, for printing a table."""
        rows: list[tuple[str, ...]] = [
            ("partition", "file", "format", "variant", "bytes", "parity_max_abs_diff")
        ]
        for f in self.files:
            rows.append(
                (
                    f.partition,
                    f.path,
                    f.format,
                    f.variant,
                    str(f.size_bytes),
                    f"{f.parity_max_abs_diff:.3g}",
                )
            )
        for s in self.skipped:
            rows.append((s.partition, "-", s.format, s.variant, "-", f"skipped: {s.reason}"))
        return rows


def load_manifest(out_dir: str | Path) -> ExportReport:
    """Read manifest.json back into an ExportReport (numpy/TF-free)."""
    out_dir = Path(out_dir)
    d = json.loads((out_dir / MANIFEST).read_text())
    if d.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"format_version={d.get('format_version')!r}: expected {FORMAT_VERSION}")
    return ExportReport(
        out_dir=str(out_dir),
        config=ModelConfig.from_dict(d["config"]),
        metadata=d["metadata"],
        files=tuple(ExportedFile.from_dict(f) for f in d["files"]),
        skipped=tuple(
            SkippedExport(s["partition"], s["format"], s.get("variant", "float32"), s["reason"])
            for s in d["skipped"]
        ),
        format_version=d["format_version"],
    )


# --- running TFLite (numpy + ai_edge_litert only) -------------------------------------------


def _signature_runner(path: str | Path) -> tuple[Any, dict[str, Any]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ExportError(f"{path}: expected exactly one signature, found {sorted(signatures)}")
    key = next(iter(signatures))
    return interpreter.get_signature_runner(key), signatures[key]


def tflite_io(path: str | Path) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Signature inputs and outputs (sorted by name) of a .tflite file."""
    runner, _ = _signature_runner(path)

    def infos(details: dict[str, Any]) -> tuple[TensorInfo, ...]:
        return tuple(
            TensorInfo(name, tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name)
            for name, d in sorted(details.items())
        )

    return infos(runner.get_input_details()), infos(runner.get_output_details())


def run_tflite(
    path: str | Path, inputs: np.ndarray, output_names: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Run a single-input .tflite on every sample of ``inputs`` (batch 1 at a time).

    Outputs are looked up by signature key, never by tensor position: TFLite is free to
    reorder output tensors (and does), but export_partitions writes a signature whose output
    keys are the Keras output names. ``output_names`` (e.g. a manifest's outputs) fixes the
    order of the returned list; without it the keys are returned sorted.
    """
    runner, signature = _signature_runner(path)
    (input_name,) = signature["inputs"]
    names = list(output_names) if output_names is not None else sorted(signature["outputs"])
    unknown = sorted(set(names) - set(signature["outputs"]))
    if unknown:
        raise ExportError(f"output_names: {unknown} not in {path} ({signature['outputs']})")
    dtype = np.dtype(runner.get_input_details()[input_name]["dtype"])
    x = np.asarray(inputs, dtype=dtype)
    per_sample: list[list[np.ndarray]] = [[] for _ in names]
    for i in range(x.shape[0]):
        out = runner(**{input_name: x[i : i + 1]})
        for acc, name in zip(per_sample, names, strict=True):
            acc.append(np.array(out[name], copy=True))
    return [np.concatenate(acc, axis=0) for acc in per_sample]


# --- conversion ------------------------------------------------------------------------------


def to_tflite(model: keras.Model, variant: str) -> bytes:
    """Convert a batch-1 Keras partition to TFLite builtins via a SavedModel.

    The SavedModel endpoint calls the model with training=False and returns a dict keyed by
    the Keras output names, which become the TFLite signature output keys. A static batch
    dimension lets the converter lower the LSTM's TensorList loop to builtin WHILE ops.
    """
    import keras
    import tensorflow as tf

    names = list(model.output_names)

    def serve(x: Any) -> dict[str, Any]:
        out = model(x, training=False)
        out = out if isinstance(out, list | tuple) else [out]
        return dict(zip(names, out, strict=True))

    (inp,) = model.inputs
    spec = tf.TensorSpec(tuple(inp.shape), tf.float32, name=inp.name)
    with tempfile.TemporaryDirectory(prefix="evfl-export-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", serve, [spec])
        with contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if variant == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "int8":
            # Dynamic-range quantisation: int8 weights, float activations, no calibration data.
            # The converter leaves weight tensors under 1024 elements in float32.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:500]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _max_abs(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> list[float]:
    return [
        float(np.max(np.abs(np.asarray(g) - np.asarray(w)))) for g, w in zip(got, want, strict=True)
    ]


def _check_args(
    config: ModelConfig,
    sample_inputs: np.ndarray,
    quantize: tuple[str, ...],
    metadata: dict[str, Any] | None,
) -> np.ndarray:
    x = np.asarray(sample_inputs)
    if x.ndim != len(config.input_shape) + 1 or x.shape[1:] != config.input_shape or not len(x):
        raise ExportError(f"sample_inputs: shape {x.shape} is not (n >= 1, *{config.input_shape})")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ExportError("sample_inputs: must be finite numbers")
    bad = [q for q in quantize if q not in QUANTIZE_VARIANTS]
    if bad or len(set(quantize)) != len(quantize):
        raise ExportError(f"quantize={quantize!r}: allowed, without repeats: {QUANTIZE_VARIANTS}")
    if metadata is not None:
        try:
            json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ExportError(f"metadata: not JSON-serialisable ({exc})") from exc
    return x.astype(np.float32)


def export_partitions(
    model: keras.Model,
    config: ModelConfig,
    out_dir: str | Path,
    sample_inputs: np.ndarray,
    quantize: tuple[str, ...] = (),
    metadata: dict[str, Any] | None = None,
) -> ExportReport:
    """Write edge.tflite (+ quantised variants), fog/cloud .keras and .tflite, then manifest.json.

    Parity is measured against ``model`` (a build_model model) on ``sample_inputs``; fog and
    cloud files are fed the trained model's own hidden tensors. A float32 file further than
    1e-4 from Keras raises ExportParityError and no manifest is written. A fog/cloud or
    quantised TFLite conversion that fails is recorded in ``skipped``; edge.tflite is required.
    """
    import keras

    from models.partitioned import split

    x = _check_args(config, sample_inputs, tuple(quantize), metadata)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a stale manifest must not describe new files

    # Reference: the trained model's own partitions, each fed its predecessor's hidden tensor.
    refs: list[list[np.ndarray]] = []
    feed = [x]
    for index, name in enumerate(PARTITIONS):
        result = model.get_layer(name)(feed[-1], training=False)
        result = [np.asarray(r) for r in (result if isinstance(result, list | tuple) else [result])]
        refs.append(result)
        if index < len(PARTITIONS) - 1:
            feed.append(result[0])

    files: list[ExportedFile] = []
    skipped: list[SkippedExport] = []

    def record(
        index: int,
        path: Path,
        fmt: str,
        variant: str,
        io_infos: tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]],
        got: list[np.ndarray],
    ) -> None:
        diffs = _max_abs(got, refs[index])
        inputs, outputs = io_infos
        outputs = tuple(
            TensorInfo(t.name, t.shape, t.dtype, d) for t, d in zip(outputs, diffs, strict=True)
        )
        worst = max(diffs)
        if variant == "float32" and not worst <= FLOAT32_TOLERANCE:
            raise ExportParityError(
                f"{path.name}: max abs diff {worst:.3g} vs Keras exceeds {FLOAT32_TOLERANCE}"
            )
        files.append(
            ExportedFile(
                partition=PARTITIONS[index],
                path=path.name,
                format=fmt,
                variant=variant,
                sha256=_sha256(path),
                size_bytes=path.stat().st_size,
                inputs=inputs,
                outputs=outputs,
                parity_max_abs_diff=worst,
            )
        )

    tflite_parts = split(model, config, batch_size=1)
    keras_parts = split(model, config)
    for index, name in enumerate(PARTITIONS):
        part = tflite_parts[index]
        names = list(part.output_names)
        variants = ("float32", *quantize) if index == 0 else ("float32",)
        for variant in variants:
            path = out / (f"{name}.tflite" if variant == "float32" else f"{name}.{variant}.tflite")
            try:
                path.write_bytes(to_tflite(part, variant))
                got = run_tflite(path, feed[index], names)
            except Exception as exc:  # converter/interpreter errors have no common base class
                if index == 0 and variant == "float32":
                    raise ExportError(
                        f"{path.name}: edge conversion failed: {_first_line(exc)}"
                    ) from exc
                path.unlink(missing_ok=True)
                skipped.append(SkippedExport(name, "tflite", variant, _first_line(exc)))
                continue
            ins, outs = tflite_io(path)
            by_name = {t.name: t for t in outs}
            record(index, path, "tflite", variant, (ins, tuple(by_name[n] for n in names)), got)
        if index == 0:
            continue
        path = out / f"{name}.keras"
        keras_parts[index].save(path)
        loaded = keras.saving.load_model(path, compile=False)
        got = loaded(feed[index], training=False)
        got = [np.asarray(g) for g in (got if isinstance(got, list | tuple) else [got])]
        io_infos = (
            tuple(_keras_info(t) for t in loaded.inputs),
            tuple(
                _keras_info(t, n) for t, n in zip(loaded.outputs, loaded.output_names, strict=True)
            ),
        )
        record(index, path, "keras", "float32", io_infos, got)

    report = ExportReport(
        out_dir=str(out),
        config=config,
        metadata=metadata,
        files=tuple(files),
        skipped=tuple(skipped),
    )
    (out / MANIFEST).write_text(json.dumps(report.to_manifest(), indent=2) + "\n")
    return report


def _keras_info(tensor: Any, name: str | None = None) -> TensorInfo:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    return TensorInfo(name or tensor.name, shape, np.dtype(tensor.dtype).name)


def serving_partitions(
    config: ModelConfig,
    weights: Sequence[np.ndarray],
    partitions: Sequence[str] = ("fog", "cloud"),
    parity_samples: int = 8,
    seed: int = 0,
) -> dict[str, bytes]:
    """Float32 TFLite bytes of some partitions of a global version, for serving in memory.

    A station serves the fog partition (and the cloud the cloud partition) of every version it
    is announced; converting once (under a second) buys ~100× faster single requests than Keras.
    Parity is checked on seeded standard-normal model inputs (features are standardised)
    pushed through the chain; a drift beyond 1e-4 raises ExportParityError.
    """
    from models.partitioned import build_model, set_weights, split
    from models.tflite_runner import TfliteRunner

    unknown = sorted(set(partitions) - set(PARTITIONS))
    if unknown:
        raise ExportError(f"partitions: {unknown} unknown; choose from {PARTITIONS}")
    model = build_model(config)
    set_weights(model, weights)
    parts = split(model, config, batch_size=1)
    x = np.random.default_rng(seed).standard_normal(
        (parity_samples, *config.input_shape), dtype=np.float32
    )
    out: dict[str, bytes] = {}
    feed = x
    for index, name in enumerate(PARTITIONS):
        part = parts[index]
        refs = part.predict(feed, batch_size=1, verbose=0)
        refs = refs if isinstance(refs, list | tuple) else [refs]
        if name in partitions:
            data = to_tflite(part, "float32")
            runner = TfliteRunner(data, workers=1)
            for i in range(parity_samples):
                got = runner.run(feed[i : i + 1])
                for out_name, ref in zip(part.output_names, refs, strict=True):
                    diff = float(np.max(np.abs(got[out_name] - np.asarray(ref)[i : i + 1])))
                    if not diff <= FLOAT32_TOLERANCE:
                        raise ExportParityError(
                            f"{name}.tflite: output {out_name} drifts {diff:.3g} from Keras"
                        )
            out[name] = data
        feed = np.asarray(refs[0])
    return out
