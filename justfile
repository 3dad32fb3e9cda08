# steerheal tasks. `python3 dev.py <recipe>` sets up ./.venv and runs a recipe; inside the venv, `just <recipe>`.
set positional-arguments
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# list the recipes
default:
    @just --list

# the main job: `just run` (the loop on embedded toyworld) or `just run --model <HF id or local path>`
run *ARGS:
    steerheal run "$@"

# the whole loop on a tiny random model of every supported architecture, shape-checked, in one process
fast-dev-run *ARGS:
    BEARTYPE=1 steerheal run --preset fast-dev-run --overwrite "$@"

# the whole test suite, shape-checked (BEARTYPE=1), two pytest-xdist workers of one torch thread each (`just test -n 0`
# for one process); lists the 20 slowest tests
test *ARGS:
    BEARTYPE=1 python -m pytest -n 2 --durations=20 "$@"

# regenerate RUN's report and screenshot report.html as a person sees it (headless Chromium from the OS packages,
# --no-sandbox as root) into RUN/report.png: `just report-screenshot runs/toyworld [WIDTH] [HEIGHT]`
report-screenshot RUN WIDTH="1400" HEIGHT="2200":
    #!/usr/bin/env bash
    set -euo pipefail
    steerheal report "$1" > /dev/null
    browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
    if [ -z "$browser" ]; then echo "no Chromium found: install the OS package (apt-get install chromium)" >&2; exit 2; fi
    sandbox=(); if [ "$(id -u)" = 0 ]; then sandbox=(--no-sandbox); fi
    profile="$(mktemp -d)"; trap 'rm -rf "$profile"' EXIT
    out="$(cd "$1" && pwd)/report.png"
    "$browser" --headless "${sandbox[@]}" --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" --screenshot="$out" \
        --window-size="$2,$3" "file://$(cd "$1" && pwd)/report.html" 2> /dev/null
    echo "$out"

# lint and format check
lint:
    ruff check src tests bench dev.py
    ruff format --check src tests bench dev.py

# format in place
fmt:
    ruff format src tests bench dev.py
    ruff check --fix src tests bench dev.py

# Vector.train vs steering-vectors' train_steering_vector (median of 5); paste into docs/benchmarks.md
bench-extract:
    python bench/extract.py

# the same on SmolLM2-135M-Instruct at Vector.train's default layers (docs/benchmarks.md)
bench-extract-smollm2:
    python bench/extract.py --smollm2

# safeguarded dose search vs plain bisection: KL evaluations and time (docs/benchmarks.md)
bench-calibrate:
    python bench/calibrate.py

# GatedLoRA: student forward with 1/4/8 folded rounds (uncollapsed, cat, svd) vs baked; export/bake exactness
bench-adapter *ARGS:
    python bench/adapter.py "$@"

# the barrier's memory (bounded vs naive, vocab 262144) and a heal step vs a plain SFT step (docs/benchmarks.md)
bench-heal:
    python bench/heal.py

# a heal step vs a plain SFT step on SmolLM2-135M-Instruct (and flush_denormal), the barrier's memory on
# Gemma-3-270M's 262,144-token head (docs/benchmarks.md); --speed or --memory for one of them
bench-heal-real *ARGS:
    python bench/heal_real.py "$@"

# sampling on SmolLM2 with transformers' repeat_kv vs SDPA's enable_gqa (docs/benchmarks.md)
bench-sampling-gqa:
    python bench/sampling_gqa.py

# sampling on SmolLM2 at batch 16, 32 and 64 (2 threads): time and whether the sampled ids change
bench-sampling-batch:
    python bench/sampling_batch.py

# lr x tau x n_pairs for the smollm2 preset, round 0 each, through the loop's code (docs/smollm2.md; ~1 h at 1 thread)
sweep-smollm2 *ARGS:
    python bench/sweep_smollm2.py "$@"

# the method on toyworld: 3 rounds x 3 seeds, and the ablation against plain SFT (docs/results.md; ~15 min)
bench-toyworld:
    python bench/toyworld_method.py

# 1 vs 2 processes (torchrun, gloo on CPU) for a reduced toyworld round; --smollm2 adds SmolLM2-135M (docs/benchmarks.md)
bench-scale *ARGS:
    python bench/scale.py {{ARGS}}

# reachable KL(steered‖base) of tiny random models against their initializer range (docs/tiny-models.md)
tiny-init-sweep:
    python bench/tiny_init.py

# train toyworld's LM from scratch into src/steerheal/toyworld/toyworld-lm (about 5 minutes on 2 cores)
toyworld-train *ARGS:
    python -m steerheal.toyworld.train "$@"

# measure what the shipped toyworld model shows and write docs/toyworld.md
toyworld-report *ARGS:
    python bench/toyworld_report.py "$@"

# Readout over K=8 and 24 concepts vs K steering-vectors extractions, and the monitor's overhead (docs/benchmarks.md)
bench-readout *ARGS:
    python bench/readout.py "$@"

# readouts of corpus/emotions on all-MiniLM-L6-v2 and of toyworld's moods, per method (docs/readouts.md)
readout-report *ARGS:
    python bench/readout_report.py "$@"

# the coherence filters on SmolLM2: pairs kept at alpha 1 (cut vs dropped), babble dropped, lengths (docs/loop.md)
bench-filters-real:
    python bench/filters_real.py

# copy a finished run's report.md and figures into docs/NAME.md (real-model figures come from their run)
run-doc RUN NAME *COMMAND:
    python bench/run_doc.py "$@"
