"""Train toyworld's small Llama on CPU: deterministic for a seed on a given torch version and thread count.

`just toyworld-train` regenerates the checkpoint shipped in `steerheal/toyworld/toyworld-lm/` and its
`training.json` (config, loss, tokens, time, fingerprint, weights digest).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from steerheal.files import atomic_write_json, provenance
from steerheal.lm.fingerprint import fingerprint
from steerheal.lm.texts import Encoded, left_pad
from steerheal.lm.tiny import seeded_model
from steerheal.log import logger, progress_disabled
from steerheal.toyworld.load import CHECKPOINT_NAME, checkpoint_dir
from steerheal.toyworld.tokenizer import CONTEXT, build_tokenizer
from steerheal.toyworld.world import Dialogue, heldout_dialogues, training_dialogues


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    n_dialogues: int = 40_000
    epochs: int = 1
    hidden_size: int = 128
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 512
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    threads: int = 2
    n_heldout: int = 500


def _encode(tok: PreTrainedTokenizerFast, dialogues: list[Dialogue]) -> list[Encoded]:
    special = set(tok.all_special_ids)
    out = []
    for d in dialogues:
        ids = tok.apply_chat_template(d.messages(), tokenize=True)
        out.append(Encoded(tuple(ids), len(ids), tuple(i not in special for i in ids)))
    return out


def _loss(model: PreTrainedModel, items: list[Encoded], pad_id: int) -> torch.Tensor:
    batch = left_pad(items, pad_id)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    return model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        labels=labels,
    ).loss


def build_model(config: TrainConfig, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import LlamaConfig

    llama = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return seeded_model(llama, config.seed, CHECKPOINT_NAME, tok.pad_token_id)


def train(
    config: TrainConfig = TrainConfig(), out: str | Path | None = None, progress: bool | None = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict[str, Any]]:
    """Train from scratch; with `out`, save model, tokenizer and training.json there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, out, progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    config: TrainConfig, out: str | Path | None, progress: bool | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict[str, Any]]:
    tok = build_tokenizer()
    model = build_model(config, tok)
    data = _encode(tok, training_dialogues(config.n_dialogues, config.seed))
    heldout = _encode(tok, heldout_dialogues(config.n_heldout, config.seed))
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc="toyworld train", disable=progress_disabled(progress))
    for _ in range(config.epochs):
        permutation = torch.randperm(len(data), generator=order).tolist()
        for first in range(0, len(data), config.batch_size):
            items = [data[i] for i in permutation[first : first + config.batch_size]]
            loss = _loss(model, items, tok.pad_token_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            tokens += sum(len(e.ids) for e in items)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        heldout_loss = sum(
            _loss(model, heldout[i : i + 100], tok.pad_token_id).item() * len(heldout[i : i + 100])
            for i in range(0, len(heldout), 100)
        ) / len(heldout)
    report = {
        "config": asdict(config),
        "steps": total,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds),
        "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "heldout_loss": round(heldout_loss, 4),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        **provenance(),
    }
    logger.info(
        f"toyworld: {total} steps, {tokens} tokens in {seconds:.0f} s; train loss {report['final_train_loss']}, "
        f"held-out loss {report['heldout_loss']}"
    )
    if out is not None:
        save(model, tok, report, Path(out))
    return model, tok, report


def weights_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: PreTrainedModel, tok: PreTrainedTokenizerFast, report: dict[str, Any], out: Path) -> None:
    """The checkpoint as plain files (no pickle); training.json last, with the fingerprint to check against."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    report = {
        **report,
        "fingerprint": fingerprint(model).to_dict(),
        "weights_sha256": weights_digest(out / "model.safetensors"),
    }
    atomic_write_json(out / "training.json", report)


def main() -> None:
    import tyro

    args = tyro.cli(TrainConfig)
    train(args, out=checkpoint_dir())


if __name__ == "__main__":
    main()
