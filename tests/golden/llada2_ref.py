#!/usr/bin/env python3
"""Golden reference: the LLaDA2 MoE forward pass (`model_type = "llada2_moe"`) in float64 NumPy.

An independent, deliberately slow and plain implementation of shared/reference/llada2.md section 1, used by the
tests to produce "golden logits" for the Rust/libtorch engine (compared at 1e-4). It needs only Python 3 and NumPy.

    python3 tests/golden/llada2_ref.py --model DIR --ids 1,2,3 --block-length B --out logits.json \
        [--attention block-causal|hf-additive]
    python3 tests/golden/llada2_ref.py --selftest

DIR holds config.json and model.safetensors (or shards listed in model.safetensors.index.json), F32/F16/BF16.
The output is {"logits": [[...vocab floats...] per input position]}: batch 1, position i predicts token i (no shift).

Attention modes:
  block-causal  the true mask: a query in block floor(q/B) sees keys in blocks <= its own (training, dInfer, SGLang).
  hf-additive   what the HF remote code's 2.1 `generate` really does: +1.0 added to the scores of allowed keys,
                +0.0 to the others, no key excluded.
Everything is computed in float64 whatever the stored dtype, so this is the exact function the engine approximates.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# Checkpoint reading: safetensors parsed by hand.

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors_header(path):
    """Returns (tensor table, absolute offset of the data section). The table maps name -> {dtype, shape, offsets}."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensor(path, info, data_start):
    dtype = info["dtype"]
    if dtype not in _DTYPES:
        raise ValueError(f"{path}: unsupported dtype {dtype}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        raw = f.read(end - begin)
    a = np.frombuffer(raw, dtype=_DTYPES[dtype])
    if a.size != math.prod(shape):
        raise ValueError(f"{path}: {a.size} elements stored for shape {shape}")
    if dtype == "BF16":  # bf16 is the top half of an f32
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float64).reshape(shape)


class Checkpoint:
    """Tensors by checkpoint name, read on demand as float64."""

    def __init__(self, model_dir):
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.where = {}  # name -> (path, info, data_start)
        for fname in files:
            path = os.path.join(model_dir, fname)
            header, start = read_safetensors_header(path)
            for name, info in header.items():
                self.where[name] = (path, info, start)

    def has(self, name):
        return name in self.where

    def get(self, name, shape=None):
        if name not in self.where:
            raise ValueError(f"tensor {name} missing from the checkpoint")
        t = read_tensor(*self.where[name])
        if shape is not None and t.shape != tuple(shape):
            raise ValueError(f"tensor {name} has shape {t.shape}, config implies {tuple(shape)}")
        return t


def load_config(model_dir):
    """config.json with the LLaDA2MoeConfig defaults filled in (a null field counts as absent)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = {k: v for k, v in json.load(f).items() if v is not None}
    c = dict(raw)
    # transformers-5 files (LLaDA2.2) carry the RoPE fields in rope_parameters, preferred over the top level.
    rp = raw.get("rope_parameters") or {}
    if rp.get("rope_type", "default") != "default":
        raise ValueError("only rope_parameters.rope_type 'default' is supported by this reference")
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rp:
            c[key] = rp[key]
    if ("expert_capacity" in raw) != ("block_size" in raw):
        raise ValueError("block routing needs both expert_capacity and block_size")
    c.setdefault("use_qk_norm", True)
    c.setdefault("partial_rotary_factor", 0.5)
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    if not c.get("num_key_value_heads"):  # absent or 0: plain multi-head attention
        c["num_key_value_heads"] = c["num_attention_heads"]
    for key, default in [("rope_theta", 10000.0), ("rms_norm_eps", 1e-5), ("first_k_dense_replace", 0),
                         ("num_shared_experts", 0), ("n_group", 8), ("topk_group", 4),
                         ("routed_scaling_factor", 2.5), ("use_bias", True), ("use_qkv_bias", False),
                         ("tie_word_embeddings", False)]:
        c.setdefault(key, default)
    if raw.get("rope_scaling"):
        raise ValueError("rope_scaling is not supported by this reference")
    if c["num_attention_heads"] % c["num_key_value_heads"]:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if c.get("num_experts") and c["n_group"] > 1 and c["num_experts"] % c["n_group"]:
        raise ValueError("num_experts must be a multiple of n_group")
    return c


# ----------------------------------------------------------------------------------------------------------------
# The pieces of the model.

def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def sigmoid(x):
    with np.errstate(over="ignore"):  # exp overflow for very negative x gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def rope(x, positions, rotary_dim, theta):
    """Partial NeoX RoPE on x [L, heads, head_dim]: rotate_half on dims [0, rotary_dim), the rest pass through.

    Angles are exact here (float64). The HF code computes inv_freq and the angles in float32: on tiny checkpoints
    that moves logits by ~1e-9, but the angle error grows with the position (~1e-3 rad near 32k)."""
    inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # [L, rotary_dim/2]
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]  # [L, 1, rotary_dim]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * np.cos(emb) + rotated_half * np.sin(emb), rest], axis=-1)


def block_causal_mask(length, block_length):
    """allowed[q, k]: key k is in the same block as query q or an earlier one (blocks cut from position 0)."""
    block = np.arange(length) // block_length
    return block[None, :] <= block[:, None]


def attention(x, p, cfg, allowed, mode):
    """Self-attention of x [L, hidden]; p holds this layer's attention tensors."""
    L = x.shape[0]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    qkv = x @ p["qkv"].T
    if "qkv_bias" in p:
        qkv = qkv + p["qkv_bias"]
    qkv = qkv.reshape(L, nh + 2 * nkv, hd)  # split by heads, not by thirds of the width
    q, k, v = qkv[:, :nh], qkv[:, nh:nh + nkv], qkv[:, nh + nkv:]
    if cfg["use_qk_norm"]:
        q = rms_norm(q, p["q_norm"], cfg["rms_norm_eps"])
        k = rms_norm(k, p["k_norm"], cfg["rms_norm_eps"])
    rotary_dim = int(hd * cfg["partial_rotary_factor"])
    q = rope(q, np.arange(L), rotary_dim, cfg["rope_theta"])
    k = rope(k, np.arange(L), rotary_dim, cfg["rope_theta"])
    out = np.empty((L, nh, hd))
    for h in range(nh):
        g = h // (nh // nkv)  # GQA: consecutive query heads share one KV head
        scores = (q[:, h] @ k[:, g].T) * hd ** -0.5  # [L query, L key]
        if mode == "block-causal":
            scores = np.where(allowed, scores, -np.inf)
        else:  # hf-additive: the 0/1 pattern is added, nothing is excluded
            scores = scores + allowed.astype(np.float64)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out[:, h] = probs @ v[:, g]
    y = out.reshape(L, nh * hd) @ p["dense"].T
    if "dense_bias" in p:
        y = y + p["dense_bias"]
    return y


def mlp(x, gate, up, down):
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def moe_route(logits, expert_bias, top_k, n_group, topk_group, scaling):
    """Router for tokens' logits [T, E] -> (expert ids [T, top_k], weights [T, top_k]).

    Selection uses the biased scores s' = sigmoid + bias, group-limited; the weights use the unbiased sigmoid."""
    T, E = logits.shape
    s = sigmoid(logits)
    sel = s + expert_bias
    if n_group > 1:
        per_group = sel.reshape(T, n_group, E // n_group)
        group_score = np.sort(per_group, axis=-1)[..., -2:].sum(axis=-1)  # sum of the top-2 in each group
        kept = np.argsort(-group_score, axis=-1, kind="stable")[:, :topk_group]
        keep = np.zeros((T, n_group), dtype=bool)
        np.put_along_axis(keep, kept, True, axis=-1)
        sel = np.where(np.repeat(keep, E // n_group, axis=-1), sel, -np.inf)  # -inf, not 0: the bias can be < 0
    idx = np.argsort(-sel, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(s, idx, axis=-1)
    if top_k > 1:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
    return idx, w * scaling


def moe_route_blocks(logits, expert_bias, top_k, capacity, block_size, scaling):
    """LLaDA2.2 block routing (llada2.2.md section 2.1) for one sequence's logits [T, E], group by group.

    Rows [g, g + block_size) form a group (the last one may be short). The group's pool is the `capacity` experts
    with the largest max over its rows of s' = sigmoid + bias; each row takes its top_k pool experts by its own s'.
    Weights: unbiased sigmoid over (sum + 1e-20) times scaling (no division for top_k = 1). Ties go to the lower
    expert id (stable sorts). n_group / topk_group play no part."""
    T, E = logits.shape
    s = sigmoid(logits)
    sel = s + expert_bias
    idx = np.zeros((T, top_k), dtype=np.int64)
    for g in range(0, T, block_size):
        rows = range(g, min(g + block_size, T))
        pool = np.argsort(-sel[g:g + block_size].max(axis=0), kind="stable")[:capacity]
        for t in rows:
            masked = np.full(E, -np.inf)
            masked[pool] = sel[t, pool]
            idx[t] = np.argsort(-masked, kind="stable")[:top_k]
    w = np.take_along_axis(s, idx, axis=-1)
    if top_k > 1:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
    return idx, w * scaling


def moe(x, p, cfg):
    if "expert_capacity" in cfg:
        idx, w = moe_route_blocks(x @ p["gate"].T, p["expert_bias"], cfg["num_experts_per_tok"],
                                  cfg["expert_capacity"], cfg["block_size"], cfg["routed_scaling_factor"])
    else:
        idx, w = moe_route(x @ p["gate"].T, p["expert_bias"], cfg["num_experts_per_tok"], cfg["n_group"],
                           cfg["topk_group"], cfg["routed_scaling_factor"])
    out = np.zeros_like(x)
    for e in np.unique(idx):
        tok, slot = np.nonzero(idx == e)
        out[tok] += w[tok, slot][:, None] * mlp(x[tok], *p["experts"](e))
    if "shared" in p:
        out += mlp(x, *p["shared"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# The model.

def layer_params(ckpt, cfg, i):
    """This layer's tensors, shape-checked against the config. Experts are loaded lazily, per expert."""
    H, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    pre = f"model.layers.{i}."
    a = {"qkv": ckpt.get(pre + "attention.query_key_value.weight", [(nh + 2 * nkv) * hd, H]),
         "dense": ckpt.get(pre + "attention.dense.weight", [H, nh * hd])}
    if cfg["use_qkv_bias"]:
        a["qkv_bias"] = ckpt.get(pre + "attention.query_key_value.bias", [(nh + 2 * nkv) * hd])
    if cfg["use_bias"]:
        a["dense_bias"] = ckpt.get(pre + "attention.dense.bias", [H])
    if cfg["use_qk_norm"]:
        a["q_norm"] = ckpt.get(pre + "attention.query_layernorm.weight", [hd])
        a["k_norm"] = ckpt.get(pre + "attention.key_layernorm.weight", [hd])
    p = {"in_norm": ckpt.get(pre + "input_layernorm.weight", [H]),
         "post_norm": ckpt.get(pre + "post_attention_layernorm.weight", [H]), "attn": a}
    m = pre + "mlp."
    if i < cfg["first_k_dense_replace"]:
        I = cfg["intermediate_size"]
        p["dense_mlp"] = (ckpt.get(m + "gate_proj.weight", [I, H]), ckpt.get(m + "up_proj.weight", [I, H]),
                          ckpt.get(m + "down_proj.weight", [H, I]))
        return p
    E, I = cfg["num_experts"], cfg["moe_intermediate_size"]
    moe_p = {"gate": ckpt.get(m + "gate.weight", [E, H]),
             # HF registers the bias as a zero buffer, so a checkpoint without it routes with zeros
             "expert_bias": ckpt.get(m + "gate.expert_bias", [E]) if ckpt.has(m + "gate.expert_bias")
             else np.zeros(E)}
    if ckpt.has(m + "experts.gate_proj"):  # fused training layout: [E, I, H], [E, I, H], [E, H, I]
        fused = [ckpt.get(m + "experts.gate_proj", [E, I, H]), ckpt.get(m + "experts.up_proj", [E, I, H]),
                 ckpt.get(m + "experts.down_proj", [E, H, I])]
        moe_p["experts"] = lambda e: tuple(t[e] for t in fused)
    else:
        moe_p["experts"] = lambda e: (ckpt.get(f"{m}experts.{e}.gate_proj.weight", [I, H]),
                                      ckpt.get(f"{m}experts.{e}.up_proj.weight", [I, H]),
                                      ckpt.get(f"{m}experts.{e}.down_proj.weight", [H, I]))
    if cfg["num_shared_experts"] > 0:
        S = I * cfg["num_shared_experts"]
        moe_p["shared"] = (ckpt.get(m + "shared_experts.gate_proj.weight", [S, H]),
                           ckpt.get(m + "shared_experts.up_proj.weight", [S, H]),
                           ckpt.get(m + "shared_experts.down_proj.weight", [H, S]))
    p["moe"] = moe_p
    return p


def forward(ckpt, cfg, ids, block_length, mode="block-causal"):
    """Logits [L, vocab] (float64) for the token ids, batch 1."""
    V, H, eps = cfg["vocab_size"], cfg["hidden_size"], cfg["rms_norm_eps"]
    embed = ckpt.get("model.word_embeddings.weight", [V, H])
    if any(not 0 <= t < V for t in ids):
        raise ValueError(f"token ids must lie in [0, {V})")
    x = embed[np.asarray(ids)]
    allowed = block_causal_mask(len(ids), block_length)
    for i in range(cfg["num_hidden_layers"]):
        p = layer_params(ckpt, cfg, i)
        x = x + attention(rms_norm(x, p["in_norm"], eps), p["attn"], cfg, allowed, mode)
        h = rms_norm(x, p["post_norm"], eps)
        x = x + (mlp(h, *p["dense_mlp"]) if "dense_mlp" in p else moe(h, p["moe"], cfg))
    x = rms_norm(x, ckpt.get("model.norm.weight", [H]), eps)
    head = embed if cfg["tie_word_embeddings"] else ckpt.get("lm_head.weight", [V, H])
    return x @ head.T


# ----------------------------------------------------------------------------------------------------------------
# Self-test: small hand-checked cases.

def selftest():
    failures = []

    def check(name, ok):
        print(("ok    " if ok else "FAIL  ") + name)
        if not ok:
            failures.append(name)

    # rms_norm: [3, 4] has mean square 12.5.
    r = rms_norm(np.array([3.0, 4.0]), np.array([1.0, 2.0]), 0.0)
    check("rms_norm by hand", np.allclose(r, [3 / math.sqrt(12.5), 8 / math.sqrt(12.5)], rtol=1e-15))
    check("rms_norm eps", np.allclose(rms_norm(np.zeros(4), np.ones(4), 1e-5), 0.0))

    # rope: head_dim 4, rotary_dim 2, so inv_freq = [1]: (a, b) turns by the angle p, (c, d) passes through.
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]] * 3)  # [L=3, 1 head, 4]
    y = rope(x, np.arange(3), 2, 10000.0)
    check("rope position 0 is identity", np.array_equal(y[0], x[0]))
    check("rope tail beyond rotary_dim unchanged", np.array_equal(y[:, :, 2:], x[:, :, 2:]))
    c1, s1 = math.cos(1.0), math.sin(1.0)
    check("rope position 1 by hand", np.allclose(y[1, 0, :2], [1 * c1 - 2 * s1, 2 * c1 + 1 * s1], rtol=1e-15))
    x = np.random.default_rng(0).normal(size=(5, 2, 8))
    z = rope(x, np.arange(5), 4, 100.0)  # rotary_dim 4 of 8: dims (0, 2) and (1, 3) turn together
    check("rope turns dims i and i + rotary_dim/2 together", np.allclose(
        z[..., 0] ** 2 + z[..., 2] ** 2, x[..., 0] ** 2 + x[..., 2] ** 2) and np.array_equal(z[..., 4:], x[..., 4:]))

    # block-causal mask, L=5, B=2: blocks {0,1} {2,3} {4}.
    want = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=bool)
    check("block-causal mask pattern", np.array_equal(block_causal_mask(5, 2), want))

    # Routing, one group, top-2. logits [2, 1, 0, -1]: s = sigmoid(...) descending.
    lg = np.array([[2.0, 1.0, 0.0, -1.0]])
    s = sigmoid(lg[0])
    idx, w = moe_route(lg, np.zeros(4), 2, 1, 1, 2.5)
    check("route: top-2 without bias", idx.tolist() == [[0, 1]]
          and np.allclose(w, [[2.5 * s[0] / (s[0] + s[1]), 2.5 * s[1] / (s[0] + s[1])]]))
    idx_b, w_b = moe_route(lg, np.array([-0.1, 0.0, 0.0, 0.0]), 2, 1, 1, 2.5)  # reorders, same set
    check("route: small negative bias keeps the set and the weights", sorted(idx_b[0]) == [0, 1]
          and np.allclose(w_b[0][np.argsort(idx_b[0])], w[0]))
    idx_c, w_c = moe_route(lg, np.array([-1.0, 0.0, 0.0, 0.0]), 2, 1, 1, 2.5)
    check("route: large negative bias drops expert 0, weights from the unbiased scores", idx_c.tolist() == [[1, 2]]
          and np.allclose(w_c, [[2.5 * s[1] / (s[1] + s[2]), 2.5 * s[2] / (s[1] + s[2])]]))
    idx_1, w_1 = moe_route(lg, np.zeros(4), 1, 1, 1, 2.5)
    check("route: top-1 is not renormalised", idx_1.tolist() == [[0]] and np.allclose(w_1, [[2.5 * s[0]]]))

    # Groups: 8 experts in 2 groups of 4, keep 1 group, top-2. Group 0 has the single best expert (s'~0.993) but
    # its top-2 sum (~1.0) loses to group 1's (0.731 + 0.731), so expert 0 must never be chosen.
    lg = np.array([[5.0, -5.0, -5.0, -5.0, 1.0, 1.0, -5.0, -5.0]])
    idx, w = moe_route(lg, np.zeros(8), 2, 2, 1, 2.5)
    check("route: the dropped group's best expert is not chosen", idx.tolist() == [[4, 5]]
          and np.allclose(w, [[1.25, 1.25]]))
    idx, _ = moe_route(lg, np.zeros(8), 2, 1, 1, 2.5)
    check("route: without groups expert 0 wins", idx[0, 0] == 0)
    # All kept scores negative (bias -0.8 on group 1, -1 on group 0): masking with 0 instead of -inf would pick
    # the dropped group's experts.
    lg = np.array([[5.0, -5.0, -5.0, -5.0, 0.0, 0.0, -5.0, -5.0]])
    bias = np.array([-1.0] * 4 + [-0.8] * 4)
    idx, w = moe_route(lg, bias, 2, 2, 1, 2.5)
    check("route: dropped experts are -inf, not 0", idx.tolist() == [[4, 5]] and np.allclose(w, [[1.25, 1.25]]))

    # Block routing, 6 experts, pool 3, groups of 2 (the hand-checked case of engine/src/moe.rs). Group 0 = rows
    # 0-1 has column max [0.9, 0.8, 0.2, 0.3, 0.4, 0.5], pool {0, 1, 5}; row 1 then ties 0 and 5 at 0.1 and takes
    # the lower id. Row 2 is a short group alone: pool {4, 2, 5}.
    s = np.array([[0.9, 0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.8, 0.2, 0.3, 0.35, 0.1], [0.3, 0.2, 0.6, 0.1, 0.7, 0.4]])
    lg = np.log(s / (1 - s))
    idx, w = moe_route_blocks(lg, np.zeros(6), 2, 3, 2, 2.5)
    check("block route: pool per group, top-2 inside it, ties to the lower id", idx.tolist() == [[0, 5], [1, 0], [4, 2]]
          and np.allclose(w, [[0.9 / 1.4 * 2.5, 0.5 / 1.4 * 2.5], [0.8 / 0.9 * 2.5, 0.1 / 0.9 * 2.5],
                              [0.7 / 1.3 * 2.5, 0.6 / 1.3 * 2.5]]))
    idx, w = moe_route_blocks(lg[2:], np.array([0, 0, 0, 0, -1.0, 0]), 2, 3, 2, 2.5)
    check("block route: the bias selects, the weights stay unbiased", idx.tolist() == [[2, 5]] and np.allclose(w, [[1.5, 1.0]]))

    print(f"{len(failures)} failed" if failures else "selftest passed")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint directory (config.json + safetensors)")
    ap.add_argument("--ids", help="comma-separated token ids")
    ap.add_argument("--block-length", type=int, help="diffusion block length B (block-causal attention)")
    ap.add_argument("--out", help="output JSON file")
    ap.add_argument("--attention", choices=["block-causal", "hf-additive"], default="block-causal")
    ap.add_argument("--selftest", action="store_true", help="run the hand-checked unit checks and exit")
    args = ap.parse_args()
    if args.selftest:
        sys.exit(selftest())
    if not (args.model and args.ids and args.block_length and args.out):
        ap.error("--model, --ids, --block-length and --out are required")
    if args.block_length <= 0:
        ap.error("--block-length must be positive")
    ids = [int(t) for t in args.ids.split(",") if t.strip()]
    try:
        logits = forward(Checkpoint(args.model), load_config(args.model), ids, args.block_length, args.attention)
    except (OSError, ValueError) as e:
        sys.exit(f"llada2_ref: {e}")
    with open(args.out, "w") as f:
        json.dump({"logits": logits.tolist()}, f)


if __name__ == "__main__":
    main()
