"""Stack examples into right-padded tensors."""

from __future__ import annotations

import torch

from anydistill.data.tokenize import Example


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example.

    Returns input_ids [B, T] long, attention_mask [B, T] long (1 on real tokens) and
    loss_mask [B, T] bool (False on padding); plus route [B] long when every example names
    its teacher (`route_by`).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(ex["input_ids"]) for ex in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    loss_mask = torch.zeros((batch, width), dtype=torch.bool)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        input_ids[row, :n] = torch.tensor(ex["input_ids"], dtype=torch.long)
        attention[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(ex["loss_mask"], dtype=torch.bool)
    batch_dict = {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask}
    if all("route" in ex for ex in examples):
        batch_dict["route"] = torch.tensor([ex["route"] for ex in examples], dtype=torch.long)
    return batch_dict
