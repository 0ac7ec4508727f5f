"""Token rows -> model inputs, and the loss: summed cross-entropy over the trained (response) tokens, divided by
the trained-token count of the whole global batch, so N processes give the gradient of one process's batch."""

from __future__ import annotations

from typing import Any

import torch

from lora_train.llm.render import IGNORE, TokenRow


def collate(rows: list[TokenRow], pad_id: int, packed: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded tensors. Unpacked rows get an attention mask; packed rows get no mask but position ids that
    restart per example (padding forms its own block), from which transformers builds per-example causal masks."""
    width = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        length = len(row.input_ids)
        ids[index, :length] = torch.tensor(row.input_ids)
        labels[index, :length] = torch.tensor(row.labels)
        positions[index, :length] = torch.tensor(row.position_ids)
        positions[index, length:] = torch.arange(width - length)
        mask[index, :length] = 1
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if not packed:
        batch["attention_mask"] = mask
    return {key: value.to(device) for key, value in batch.items()}


def summed_token_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy summed over the tokens whose label is not IGNORE (next-token prediction: logits at t, label
    at t + 1), computed in fp32."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def trained_tokens(rows: list[TokenRow]) -> int:
    return sum(row.trained_tokens for row in rows)
