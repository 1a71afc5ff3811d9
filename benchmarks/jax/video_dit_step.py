"""The training step of configs/bench/video-4m.toml in compiled JAX: the
reference for issue 18's CPU step-time table (orrery's `bench step` on the
same config, same cores, in the same run).

The same model as orrery's DiT for that config: 8 frames of 32x32x3 at
patch 4 (512 tokens per clip), hidden 192, depth 6, 6 heads, GELU MLP x4,
learned position tables (temporal + spatial), a timestep MLP on 128
sinusoidal features per frame plus a discrete action embedding (5 actions
and a null one) as each frame's condition, adaLN-Zero blocks with
frame-causal attention, an adaLN final layer; rectified-flow velocity loss
with a logit-normal noise level per frame; AdamW with global-norm
clipping. 4,168,560 parameters, as orrery counts. Batch 8.

Usage: python3 benchmarks/jax/video_dit_step.py [--steps 10] [--warmup 2]
Prints the parameter count and the median step time in seconds.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

T, H, W, C, P = 8, 32, 32, 3, 4
D, DEPTH, HEADS, MLP = 192, 6, 6, 4
ACTIONS, FREQ = 5, 128
S = (H // P) * (W // P)  # tokens per frame
N = T * S  # tokens per clip
PD = C * P * P  # values per patch


def dense(key, d_in, d_out, zero=False):
    if zero:
        return {"w": jnp.zeros((d_in, d_out)), "b": jnp.zeros((d_out,))}
    lim = np.sqrt(6.0 / (d_in + d_out))
    return {"w": jax.random.uniform(key, (d_in, d_out), minval=-lim, maxval=lim), "b": jnp.zeros((d_out,))}


def init(key):
    ks = iter(jax.random.split(key, 64))
    p = {
        "patch": dense(next(ks), PD, D),
        "pos_t": jax.random.normal(next(ks), (T, D)) * 0.02,
        "pos_s": jax.random.normal(next(ks), (S, D)) * 0.02,
        "t1": dense(next(ks), FREQ, D),
        "t2": dense(next(ks), D, D),
        "act": jax.random.normal(next(ks), (ACTIONS + 1, D)) * 0.02,
        "final_ada": dense(next(ks), D, 2 * D, zero=True),
        "final": dense(next(ks), D, PD, zero=True),
        "blocks": [],
    }
    for _ in range(DEPTH):
        p["blocks"].append({
            "qkv": dense(next(ks), D, 3 * D),
            "proj": dense(next(ks), D, D),
            "fc1": dense(next(ks), D, MLP * D),
            "fc2": dense(next(ks), MLP * D, D),
            "ada": dense(next(ks), D, 6 * D, zero=True),
        })
    return p


def lin(p, x):
    return x @ p["w"] + p["b"]


def layer_norm(x):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / jnp.sqrt(v + 1e-6)


def timestep_features(t):  # [b, t] -> [b, t, FREQ]
    half = FREQ // 2
    freqs = jnp.exp(-jnp.log(10000.0) * jnp.arange(half) / half)
    args = t[..., None] * 1000.0 * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)


MASK = (np.arange(N)[None, :] // S) > (np.arange(N)[:, None] // S)  # key frame later: hidden


def block(p, x, c):  # x: [b, n, d], c: [b, t, d]
    b = x.shape[0]
    m = lin(p["ada"], jax.nn.silu(c))  # [b, t, 6d]
    m = jnp.repeat(m, S, axis=1)  # per token
    sh1, sc1, g1, sh2, sc2, g2 = jnp.split(m, 6, -1)
    h = layer_norm(x) * (1 + sc1) + sh1
    qkv = lin(p["qkv"], h).reshape(b, N, 3, HEADS, D // HEADS).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = q @ k.swapaxes(-1, -2) / np.sqrt(D // HEADS)
    logits = jnp.where(MASK, -jnp.inf, logits)
    a = jax.nn.softmax(logits, -1) @ v  # [b, k, n, e]
    x = x + g1 * lin(p["proj"], a.transpose(0, 2, 1, 3).reshape(b, N, D))
    h = layer_norm(x) * (1 + sc2) + sh2
    return x + g2 * lin(p["fc2"], jax.nn.gelu(lin(p["fc1"], h), approximate=True))


def forward(p, x_t, t, actions):  # x_t: [b, T, C, H, W]
    b = x_t.shape[0]
    patches = x_t.reshape(b, T, C, H // P, P, W // P, P).transpose(0, 1, 3, 5, 2, 4, 6).reshape(b, T, S, PD)
    x = lin(p["patch"], patches) + p["pos_t"][None, :, None] + p["pos_s"][None, None]
    c = lin(p["t2"], jax.nn.silu(lin(p["t1"], timestep_features(t)))) + p["act"][actions]
    x = x.reshape(b, N, D)
    for bp in p["blocks"]:
        x = block(bp, x, c)
    sh, sc = jnp.split(jnp.repeat(lin(p["final_ada"], jax.nn.silu(c)), S, axis=1), 2, -1)
    out = lin(p["final"], layer_norm(x) * (1 + sc) + sh)  # [b, n, PD]
    return out.reshape(b, T, H // P, W // P, C, P, P).transpose(0, 1, 4, 2, 5, 3, 6).reshape(b, T, C, H, W)


def loss_fn(p, x0, eps, t, actions):
    tt = t[:, :, None, None, None]
    x_t = (1 - tt) * x0 + tt * eps  # rectified flow
    v = forward(p, x_t, t, actions)
    return jnp.mean((v - (eps - x0)) ** 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    params = init(jax.random.PRNGKey(0))
    count = sum(x.size for x in jax.tree_util.tree_leaves(params))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.99, weight_decay=0.0))
    state = opt.init(params)

    @jax.jit
    def step(params, state, x0, eps, t, actions):
        loss, grads = jax.value_and_grad(loss_fn)(params, x0, eps, t, actions)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(0)
    times = []
    for i in range(args.warmup + args.steps):
        x0 = jnp.asarray(rng.standard_normal((args.batch, T, C, H, W)), jnp.float32)
        eps = jnp.asarray(rng.standard_normal((args.batch, T, C, H, W)), jnp.float32)
        t = jnp.asarray(1 / (1 + np.exp(-rng.standard_normal((args.batch, T)))), jnp.float32)
        actions = jnp.asarray(rng.integers(0, ACTIONS, (args.batch, T)))
        t0 = time.perf_counter()
        params, state, loss = step(params, state, x0, eps, t, actions)
        loss.block_until_ready()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    print(f"params {count}, batch {args.batch}, {N} tokens per clip, devices {jax.devices()}")
    print(f"median step {times[len(times) // 2]:.4f} s (min {times[0]:.4f}, {len(times)} steps)")


if __name__ == "__main__":
    main()
