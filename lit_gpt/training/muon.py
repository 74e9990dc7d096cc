"""Muon for the Blocks' matrices and AdamW for everything else, as one optimizer object (so Fabric's
setup_optimizers, fabric.save / fabric.load, state_dict and load_state_dict see a single optimizer).

Muon's update is torch.optim.Muon's (torch >= 2.9): momentum, Nesterov, Newton-Schulz orthogonalization, the
adjust_lr_fn scaling, decoupled weight decay. Two things torch.optim.Muon does not do are added here:

- Fused matrices are orthogonalized block by block: qkv as its q, k and v rows, gate_up as its gate and up rows,
  each with the lr adjustment of its own shape, exactly as if they were separate Linear layers (Muon is defined on
  one linear map; orthogonalizing [q; k; v] together would couple the three maps' singular values).
- Sharded (FSDP2 DTensor) matrices: the momentum buffer stays sharded like the parameter; each step gathers the
  whole momentum-mixed update of one matrix (an all-gather of one matrix at a time), every rank orthogonalizes it
  identically and keeps its own rows. The result equals the one-process update (tested, 2 processes vs 1); the
  price is that every rank computes every matrix's orthogonalization.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


def _is_dtensor(t: torch.Tensor) -> bool:  # by name: one-device runs need not import torch.distributed
    return type(t).__name__ == "DTensor"


class MuonAdamW(torch.optim.AdamW):
    """AdamW on the param groups without a "muon" key; torch.optim.Muon's update on those with "muon": True (their
    "row_splits": the row counts of the fused blocks, orthogonalized separately; None: the whole matrix)."""

    def __init__(self, adamw_groups: list[dict], muon_groups: list[dict], *, lr: float, muon_lr: float,
                 muon_weight_decay: float, muon_momentum: float, adjust_lr_fn: str, **adamw_kwargs: Any) -> None:
        # torch.optim.Muon checks the matrices (2-D only) and fills in its own defaults (ns_steps, coefficients, ...)
        muon = torch.optim.Muon(muon_groups, lr=muon_lr, weight_decay=muon_weight_decay, momentum=muon_momentum,
                                adjust_lr_fn=adjust_lr_fn)
        self._muon_keys = tuple(k for k in muon.defaults if k not in ("lr", "weight_decay", "momentum"))
        super().__init__(adamw_groups + [{**g, "muon": True} for g in muon.param_groups], lr=lr, **adamw_kwargs)
        self._scratch: dict[tuple, tuple[torch.Tensor, torch.optim.Muon]] = {}

    def __setstate__(self, state: dict) -> None:
        # load_state_dict ends here: AdamW's checks expect its own state ("step") in every group it sees
        groups = state["param_groups"]
        super().__setstate__({**state, "param_groups": [g for g in groups if not g.get("muon")]})
        self.param_groups = groups

    @torch.no_grad()
    def step(self, closure=None):
        groups = self.param_groups
        self.param_groups = [g for g in groups if not g.get("muon")]  # AdamW's step sees only its own groups
        try:
            loss = super().step(closure)
        finally:
            self.param_groups = groups
        for group in groups:
            if group.get("muon"):
                for p in group["params"]:
                    if p.grad is not None:
                        self._muon_update(p, group)
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)  # sharded like the gradient under FSDP
        buf, momentum = state["momentum_buffer"], group["momentum"]
        buf.lerp_(p.grad, 1 - momentum)  # elementwise: the same on a shard as on the whole matrix
        update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
        full = update.full_tensor() if _is_dtensor(update) else update
        blocks = full.split(group["row_splits"]) if group["row_splits"] else (full,)
        delta = torch.cat([self._orthogonal_step(b, group) for b in blocks])
        if _is_dtensor(p):  # every rank computed the whole matrix's update: keep this rank's rows
            from torch.distributed.tensor import distribute_tensor

            delta = distribute_tensor(delta, p.device_mesh, p.placements, src_data_rank=None)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(delta)

    def _orthogonal_step(self, update: torch.Tensor, group: dict) -> torch.Tensor:
        """-adjusted_lr x orthogonalize(update), computed by torch.optim.Muon itself through its public API: one
        step without momentum or weight decay, on a zero matrix whose gradient is `update`."""
        key = (tuple(update.shape), update.dtype, update.device)
        if key not in self._scratch:
            scratch = torch.zeros_like(update)
            self._scratch[key] = scratch, torch.optim.Muon([scratch], momentum=0.0, weight_decay=0.0)
        scratch, muon = self._scratch[key]
        # keys a checkpoint of another torch version may lack keep this version's defaults
        muon.param_groups[0].update({k: group[k] for k in self._muon_keys if k in group}, lr=group["lr"])
        muon.state.clear()
        scratch.zero_()
        scratch.grad = update
        muon.step()
        scratch.grad = None
        return scratch.clone()


def muon_param_groups(model: torch.nn.Module) -> tuple[list[tuple[str, torch.Tensor]], list[dict]]:
    """Splits the parameters: the Blocks' 2-D matrices go to Muon (grouped by how their rows split into fused
    blocks), the rest (embedding, lm_head, norms) is returned as (name, parameter) pairs for AdamW."""
    config = model.config
    hs = config.head_size
    splits: dict[str, Optional[list[int]]] = {
        "attn.qkv.weight": [config.n_head * hs, config.n_query_groups * hs, config.n_query_groups * hs],
        "mlp.gate_up.weight": [config.intermediate_size, config.intermediate_size],
    }
    by_split: dict[Optional[tuple], list[torch.Tensor]] = {}
    rest = []
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.ndim == 2:
            row_splits = next((s for suffix, s in splits.items() if name.endswith(suffix)), None)
            by_split.setdefault(tuple(row_splits) if row_splits else None, []).append(p)
        else:
            rest.append((name, p))
    groups = [{"params": ps, "row_splits": list(s) if s else None} for s, ps in by_split.items()]
    return rest, groups
