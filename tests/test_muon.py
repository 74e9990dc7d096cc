"""--optimizer muon in one process: MuonAdamW's update is torch.optim.Muon's on each q/k/v and gate/up block and
on the other Block matrices, AdamW's on the rest. Training runs (resume, FSDP vs one process) are in test_trainer.py
and test_train_multiprocess.py."""

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.training import TrainArgs
from lit_gpt.training.optim import make_optimizer, set_learning_rates


def test_groups_split_fused_matrices_and_leave_the_rest_to_adamw():
    model = GPT(Config.from_name("tiny"))  # 4 heads of 8, 2 kv groups, intermediate 88
    opt = make_optimizer(model, TrainArgs(optimizer="muon"), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {tuple(g["row_splits"] or ()): sorted(names[id(p)].split(".", 2)[2] for p in g["params"])
            for g in opt.param_groups if g.get("muon")}
    assert muon == {(32, 16, 16): ["attn.qkv.weight"] * 2, (88, 88): ["mlp.gate_up.weight"] * 2,
                    (): ["attn.proj.weight", "attn.proj.weight", "mlp.down.weight", "mlp.down.weight"]}
    adamw = sorted(names[id(p)] for g in opt.param_groups if not g.get("muon") for p in g["params"])
    assert adamw == ["blocks.0.attn_norm.weight", "blocks.0.mlp_norm.weight", "blocks.1.attn_norm.weight",
                     "blocks.1.mlp_norm.weight", "embed.weight", "lm_head.weight", "norm.weight"]
    assert all(g["adjust_lr_fn"] == "match_rms_adamw" and g["momentum"] == 0.95 for g in opt.param_groups
               if g.get("muon"))


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_update_equals_torch_muon_per_block_and_adamw(adjust):
    """Three steps of random gradients: every Muon block equals torch.optim.Muon run on that block alone (as if
    q, k, v, gate and up were separate matrices), every other parameter equals plain AdamW; the Muon groups get
    muon_lr scaled by the same schedule factor as AdamW's lr."""
    torch.manual_seed(0)
    model = GPT(Config.from_name("tiny"))
    args = TrainArgs(optimizer="muon", learning_rate=1e-2, min_lr=1e-3, muon_lr=3e-2, muon_weight_decay=0.05,
                     warmup_steps=2, muon_adjust_lr=adjust)
    opt = make_optimizer(model, args, torch.device("cpu"))
    splits = {id(p): g["row_splits"] for g in opt.param_groups if g.get("muon") for p in g["params"]}
    reference = copy.deepcopy(model)
    blocks, rest = {}, []
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        if id(p) in splits:  # separate leaf tensors, one per fused block
            blocks[name] = [b.clone().requires_grad_() for b in ref.detach().split(splits[id(p)] or [len(ref)])]
        else:
            rest.append((name, ref))
    ref_muon = torch.optim.Muon([b for bs in blocks.values() for b in bs], lr=3e-2, weight_decay=0.05,
                                adjust_lr_fn=adjust)
    ref_adamw = torch.optim.AdamW([{"params": [p for n, p in rest if p.ndim == 2 and not n.startswith("embed.")],
                                    "weight_decay": 0.1},
                                   {"params": [p for n, p in rest if p.ndim < 2 or n.startswith("embed.")],
                                    "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95))
    for step in range(3):
        lr = set_learning_rates(opt, step, args, max_steps=3)
        for g in ref_adamw.param_groups:
            g["lr"] = lr
        ref_muon.param_groups[0]["lr"] = lr * 3
        for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
            p.grad = torch.randn_like(p)
            if name in blocks:
                for b, g in zip(blocks[name], p.grad.split([len(b) for b in blocks[name]])):
                    b.grad = g.clone()
            else:
                ref.grad = p.grad.clone()
        opt.step()
        ref_muon.step()
        ref_adamw.step()
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        expected = torch.cat([b.detach() for b in blocks[name]]) if name in blocks else ref.detach()
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=name)


def _fsdp_rank(rank: int, port: int) -> None:
    """One of 2 gloo processes: the tiny model under FSDP2 (every matrix sharded by rows) and an unsharded copy,
    three steps of the same random gradients each: the gathered parameters and momentum buffers must equal the
    unsharded ones bit for bit (the orthogonalization sees the same whole matrix; the rest is elementwise)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    args = TrainArgs(optimizer="muon", learning_rate=1e-2, min_lr=1e-3, muon_lr=3e-2, warmup_steps=2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same model and gradients on both ranks
        model = GPT(Config.from_name("tiny"))
        reference = copy.deepcopy(model)
        grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(3)]
        mesh = init_device_mesh("cpu", (2,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt, ref_opt = (make_optimizer(m, args, torch.device("cpu")) for m in (model, reference))
        for step, step_grads in enumerate(grads):
            for o in (opt, ref_opt):
                set_learning_rates(o, step, args, max_steps=3)
            for p, ref, g in zip(model.parameters(), reference.parameters(), step_grads):
                p.grad = distribute_tensor(g, mesh, p.placements, src_data_rank=None)
                ref.grad = g.clone()
            opt.step()
            ref_opt.step()
        for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
            assert torch.equal(p.full_tensor(), ref), name
            buf = opt.state[p].get("momentum_buffer")
            assert buf is None or torch.equal(buf.full_tensor(), ref_opt.state[ref]["momentum_buffer"]), name
        assert sum("momentum_buffer" in s for s in opt.state.values()) == 8  # 4 matrices x 2 blocks
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_sharded_update_equals_the_unsharded_one_bit_for_bit():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", f"import test_muon; test_muon._fsdp_rank({rank}, {port})"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)


def test_a_muon_trained_model_exports_and_loads_in_transformers_like_any_other(tmp_path):
    """The optimizer changes nothing about the model's format: a Muon run's checkpoint converts to an HF folder whose
    LlamaForCausalLM logits equal lit_gpt's."""
    from transformers import LlamaForCausalLM

    from lit_gpt.checkpoint import find_config, load_model, load_model_state
    from lit_gpt.convert import save_hf_folder
    from lit_gpt.training import cli
    from test_trainer import tiny_args, write_random_chunks

    data = write_random_chunks(tmp_path / "data", "train", 20_000)
    cli(TrainArgs(), tiny_args(data, tmp_path / "run", "--optimizer", "muon", "--max_steps", "3"))
    save_hf_folder(load_model_state(tmp_path / "run"), find_config(tmp_path / "run"), tmp_path / "hf")
    ids = torch.arange(0, 512, 41).reshape(1, -1)
    with torch.no_grad():
        expected = load_model(tmp_path / "run")(ids)
        got = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
