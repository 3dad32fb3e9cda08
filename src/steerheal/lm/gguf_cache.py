"""A GGUF, de-quantised once into a complete float32 model folder, so later loads take seconds.

transformers de-quantises a GGUF in Python (~30 s for SmolLM2, ~80 s for Gemma-3-270M on 2 cores) and
refuses to combine it with bitsandbytes; a plain folder (float32 safetensors, the corrected tokenizer,
config, generation config) loads in about a second, plain or in 4-bit. The folder is keyed by the GGUF's
sha256, the transformers version (its GGUF loader made the weights and config) and `CACHE_FORMAT` (bump it
when what steerheal writes here changes); it is built in a temporary folder and renamed into place, and it
counts as complete only with `steerheal_source.json`, written last.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from steerheal.errors import SteerhealError
from steerheal.lm.gguf import cache_root, read_metadata, sha256_cached
from steerheal.lm.gguf_tokenizer import gguf_tokenizer
from steerheal.lm.registry import by_sha256
from steerheal.log import logger

CACHE_FORMAT = 1
SOURCE_FILE = "steerheal_source.json"
# written into config.json, read by lm.fingerprint: the identity and the GGUF it came from
CONFIG_KEYS = ("steerheal_identity", "steerheal_gguf_file", "steerheal_gguf_sha256", "steerheal_gguf_quant")


def quant_type(meta: dict[str, Any]) -> str:
    """The GGUF's `general.file_type` as llama.cpp names it (Q4_1, Q4_K_M, ...)."""
    from gguf import LlamaFileType

    raw = meta.get("general.file_type")
    try:
        return LlamaFileType(int(raw)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return "unknown"


def folder_for(digest: str, identity: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    import transformers

    return cache_root(cache_dir) / "hf" / f"{identity}-{digest[:16]}-tf{transformers.__version__}-f{CACHE_FORMAT}"


def materialise(gguf_path: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of `gguf_path`, built (atomically) if it is not there yet."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise SteerhealError(f"could not load model {str(gguf_path)!r}: that .gguf file does not exist")
    digest = sha256_cached(gguf_path, cache_dir)
    registered = by_sha256(digest)
    identity = registered.identity if registered else gguf_path.name.removesuffix(".gguf")
    final = folder_for(digest, identity.rsplit("/", 1)[-1], cache_dir)
    if (final / SOURCE_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"de-quantising {gguf_path.name} into {final} (once; about a minute on a small CPU)")
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".build-"))
    try:
        _build(gguf_path, digest, identity, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache may be shared
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / SOURCE_FILE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process built it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _build(gguf_path: Path, digest: str, identity: str, out: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    start = time.perf_counter()
    meta = read_metadata(gguf_path)
    registered = by_sha256(digest)
    tok = gguf_tokenizer(meta, pad_token=registered.pad_token if registered else None)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, low_cpu_mem_usage=True
        )
    except (OSError, ValueError, ImportError, RuntimeError) as err:
        raise SteerhealError(
            f"could not de-quantise {gguf_path}: transformers' GGUF loader failed ({err}); it needs the `gguf` "
            "package and supports the architectures transformers lists for GGUF"
        ) from err
    dequantise_s = time.perf_counter() - start
    config = model.config
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    quant = quant_type(meta)
    for key, value in zip(CONFIG_KEYS, (identity, gguf_path.name, digest, quant), strict=True):
        setattr(config, key, value)
    extra = [tok.convert_tokens_to_ids(t) for t in (registered.extra_eos if registered else ())]
    eos = [tok.eos_token_id, *extra]
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    source = {
        "identity": identity,
        "gguf_file": gguf_path.name,
        "gguf_sha256": digest,
        "gguf_quant": quant,
        "gguf_general_name": meta.get("general.name"),
        "gguf_architecture": meta.get("general.architecture"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "cache_format": CACHE_FORMAT,
        "model_type": config.model_type,
        "has_chat_template": bool(meta.get("tokenizer.chat_template")),
        "dequantise_s": round(dequantise_s, 2),
        "total_s": round(time.perf_counter() - start, 2),
    }
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
