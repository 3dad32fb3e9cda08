"""Quiet as a library, informative as a program: INFO only after `sh.verbose()`, warnings always, and no
bitsandbytes kernel advice on the CLI's output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
from loguru import logger

import steerheal as sh
from conftest import tiny
from steerheal.log import quiet_bitsandbytes


@pytest.fixture
def records():
    """Every loguru record (any level), without turning steerheal verbose."""
    seen: list[tuple[str, str]] = []
    handle = logger.add(lambda m: seen.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    yield seen
    logger.remove(handle)


def test_library_calls_log_nothing_but_warnings(records, tmp_path):
    model, tok = tiny("llama")
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"Tell me about {w}."}], tokenize=False, add_generation_prompt=True
        )
        for w in ("rain", "maps", "bread", "tea")
    ]
    pos, neg = sh.persona_contrast(tok, "You are joyful.", "You are gloomy.", ["Hi.", "Tell me a story."])
    v = sh.Vector.train(model, tok, pos, neg, position="prompt_end")
    v.calibrate(model, tok, prompts, target_kl=0.5, n_tokens=4, liveness_samples=2)
    sh.make_pairs(model, tok, v, prompts, sampling=sh.SamplingConfig(max_new_tokens=4), filters=sh.FilterConfig())
    assert records == []
    # a warning still shows: a vector made on another model
    other, _ = tiny("llama", seed=1)
    other.config._name_or_path = "another-model"
    v.fingerprint = sh.fingerprint(other)
    sh.Vector.load(v.save(tmp_path / "v"), model=model)
    assert [level for level, _ in records] == ["WARNING"]


def test_verbose_turns_info_on_and_off(records):
    model, _ = tiny("llama")
    sh.verbose()
    try:
        sh.GatedLoRA.attach(model.__class__(model.config), r=2)
    finally:
        sh.verbose(False)
    assert any(level == "INFO" and "GatedLoRA attached" in message for level, message in records)
    count = len(records)
    sh.GatedLoRA.attach(model.__class__(model.config), r=2)
    assert len(records) == count
    with pytest.raises(ValueError, match="use True, False or 'debug'"):
        sh.verbose("loud")


def test_quiet_bitsandbytes_raises_and_restores_the_library_logger(caplog):
    library = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING), quiet_bitsandbytes():
        library.warning("Failed to load CPU gemm_4bit_forward from kernels-community")
    assert "gemm_4bit_forward" not in caplog.text
    with caplog.at_level(logging.WARNING):
        library.warning("a later bitsandbytes warning")
    assert "a later bitsandbytes warning" in caplog.text


# bitsandbytes warns only where it finds AVX512-BF16: pretend it did, so the test means the same on every CPU
# (the 4-bit kernels it then registers are never called here: fast-dev-run's tiny model is not quantised)
_AS_IF_AVX512_BF16 = textwrap.dedent(
    """
    import importlib.abc, sys

    class AsIfAvx512Bf16(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "bitsandbytes.backends.cpu.ops":
                import bitsandbytes.functional as functional
                functional.has_avx512bf16 = lambda: True
            return None

    sys.meta_path.insert(0, AsIfAvx512Bf16())
    """
)


def test_cli_output_has_no_bitsandbytes_kernel_advice(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "BEARTYPE": "0"}
    control = subprocess.run(
        [sys.executable, "-c", _AS_IF_AVX512_BF16 + "import bitsandbytes"], capture_output=True, text=True, env=env
    )
    if "gemm_4bit_forward" not in control.stdout + control.stderr:
        pytest.skip("this bitsandbytes does not warn about its CPU kernel: nothing to silence")
    run = [
        "from steerheal.cli import main",
        "main(['run', '--preset', 'fast-dev-run', '--model', 'tiny:llama', '--stop.max-rounds', '1',"
        f" '--runs-dir', {str(tmp_path)!r}])",
    ]
    out = subprocess.run(
        [sys.executable, "-c", _AS_IF_AVX512_BF16 + "\n".join(run)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gemm_4bit_forward" not in out.stdout + out.stderr
    assert "round 0:" in out.stderr and "INFO" in out.stderr  # the program still says what it does
