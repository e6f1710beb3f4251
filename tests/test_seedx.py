"""The SEED-X road: pooling, the resampler, the de-tokenizer's conditioning path, the LLM's query tokens,
the shipped weights and their loading."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from bagel_lite import micro
from bagel_lite.loading.checkpoint import CheckpointError
from bagel_lite.micro.evaluate import held_out_prompts
from bagel_lite.micro.world import Scene, caption, render
from bagel_lite.model.patchify import patchify, position_ids
from bagel_lite.seedx import CHECKPOINT, N_CHOICES, load
from bagel_lite.seedx.detokenizer import (
    Denoiser,
    DenoiserConfig,
    DeTokenizer,
    SamplerSettings,
    flow_matching_loss,
    sample,
    to_tokens,
)
from bagel_lite.seedx.evaluate import CaptionFloor, held_out_scenes, reconstruction_scores, regression_scores
from bagel_lite.seedx.llm import QueryRegressor, residual_stream
from bagel_lite.seedx.resampler import Resampler
from bagel_lite.seedx.road import BASE
from bagel_lite.seedx.visual_tokenizer import check_n, pool, vit_grid

SHIPPED_LIMIT = 10 * 1024 * 1024
SMALL = DenoiserConfig(width=32, depth=2, heads=2, context_dim=32)


@pytest.fixture(scope="module")
def pipe():
    return micro.load(BASE)


@pytest.fixture(scope="module")
def seedx(pipe):
    return load(pipe=pipe)


# --- the visual tokenizer ---------------------------------------------------------------------------------

def test_pooling_shapes_and_values():
    grid = torch.randn(3, 8, 8, 5)
    for n in N_CHOICES:
        assert pool(grid, n).shape == (3, n, 5)
    assert torch.equal(pool(grid, 64), grid.reshape(3, 64, 5))  # N = 64: the grid itself, row-major
    assert torch.allclose(pool(grid, 1)[:, 0], grid.mean((1, 2)), atol=1e-6)
    # N = 16: cell (r, c) averages the 2x2 window at rows 2r..2r+1, columns 2c..2c+1
    assert torch.allclose(pool(grid, 16)[:, 1 * 4 + 2], grid[:, 2:4, 4:6].mean((1, 2)), atol=1e-6)
    for bad in (0, 2, 8, 9, 128):
        with pytest.raises(ValueError, match="cannot be pooled"):
            check_n(bad)


def test_stitched_grid_contains_the_plain_vit_grid(pipe):
    pixels = torch.stack([pipe.vit_transform(render(Scene("circle", "red", "left", "large")))])
    grid = vit_grid(pipe.model, pixels)  # (1, 8, 8, 64)
    assert grid.shape == (1, 8, 8, pipe.model.config.vit.hidden_size)
    plain = pipe.model.vit_model(patchify(pixels[0], 16), position_ids(64, 64, 16, 4), [16]).view(4, 4, -1)
    assert torch.allclose(grid[0, 0::2, 0::2], plain, atol=1e-5)  # unshifted cells = the ViT's own patches
    assert not torch.allclose(grid[0, 1::2, 1::2], plain, atol=1e-2)  # shifted cells see other windows
    with pytest.raises(ValueError, match="64x64"):
        vit_grid(pipe.model, torch.zeros(1, 3, 32, 32))


# --- the resampler ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,feedforward", [(1, False), (4, True)])
def test_resampler_maps_any_number_of_inputs_to_its_queries(depth, feedforward):
    r = Resampler(in_dim=12, out_dim=7, num_queries=5, width=16, depth=depth, heads=4, feedforward=feedforward)
    for m in (1, 3, 64):
        assert r(torch.randn(2, m, 12)).shape == (2, 5, 7)
    x = torch.randn(2, 9, 12)
    # cross-attention without positions reads the inputs as a set: shuffling them changes nothing
    assert torch.allclose(r(x), r(x[:, torch.randperm(9)]), atol=1e-5)
    r(x).sum().backward()
    assert r.queries.grad is not None and r.queries.grad.abs().sum() > 0


# --- the de-tokenizer -------------------------------------------------------------------------------------

def test_detokenizer_reads_embeddings_only_through_cross_attention():
    torch.manual_seed(0)
    dt = DeTokenizer(SMALL, vit_dim=6, num_queries=4, resampler_depth=1)
    x, t = torch.randn(2, 16, 64), torch.tensor([0.3, 0.8])
    a, b = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    assert dt(x, t, a).shape == (2, 16, 64)
    assert not torch.allclose(dt(x, t, a), dt(x, t, b))  # the condition matters ...
    with torch.no_grad():
        for block in dt.denoiser.blocks:
            block.attn2.to_v.weight.zero_()
    assert torch.allclose(dt(x, t, a), dt(x, t, b), atol=1e-6)  # ... and arrives only through attn2's values


def test_kv_mode_trains_the_resampler_and_cross_attention_keys_and_values_only():
    dt = DeTokenizer(SMALL, vit_dim=6, num_queries=4)
    params = dt.trainable("kv")
    names = {k for k, p in dt.named_parameters() if p.requires_grad}
    assert names and all(k.startswith("resampler.") or ".attn2.to_k." in k or ".attn2.to_v." in k for k in names)
    assert any(".attn2.to_k." in k for k in names) and any(".attn2.to_v." in k for k in names)
    loss = flow_matching_loss(lambda x_t, t: dt(x_t, t, torch.randn(3, 4, 6)), torch.randn(3, 16, 64),
                              torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in params)
    assert dt.denoiser.blocks[0].attn1.to_q.weight.grad is None and dt.denoiser.latent_in.weight.grad is None
    full = {k for k, p in dt.named_parameters() if p in set(dt.trainable("full"))}
    assert names < full and not any("pos_embed" in k for k in full)
    with pytest.raises(ValueError, match="mode 'lora' is unknown"):
        dt.trainable("lora")


def test_guided_sampling_batches_both_branches_like_two_separate_calls():
    torch.manual_seed(1)
    dt = DeTokenizer(SMALL, vit_dim=6, num_queries=4).eval()
    cond, negative = torch.randn(2, 3, 6), torch.randn(1, 3, 6)
    noise = torch.randn(2, 16, 64)
    settings = SamplerSettings(num_timesteps=4, cfg_scale=2.5)
    batched = sample(dt, cond, negative, (2, 16, 64), settings=settings, init_noise=noise)
    x = noise.clone()  # the same Euler steps written out one branch at a time
    ts = [1.0, 2 / 3, 1 / 3, 0.0]
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            tt = torch.full((2,), t)
            v_c, v_n = dt(x, tt, cond), dt(x, tt, negative.expand(2, -1, -1))
            x = x - (v_n + 2.5 * (v_c - v_n)) * (t - t_next)
    assert torch.allclose(batched, x, atol=1e-5)
    same = sample(dt, cond[:1], cond[:1], (1, 16, 64), settings=SamplerSettings(num_timesteps=4, cfg_scale=7.0),
                  init_noise=noise[:1])
    off = sample(dt, cond[:1], cond[:1], (1, 16, 64), settings=SamplerSettings(num_timesteps=4, cfg_scale=1.0),
                 init_noise=noise[:1])
    assert torch.allclose(same, off, atol=1e-5)  # guiding against the condition itself is no guidance


@pytest.mark.parametrize("kwargs,match", [({"num_timesteps": 1}, "num_timesteps"),
                                          ({"cfg_scale": -1.0}, "cfg_scale"),
                                          ({"timestep_shift": 0.0}, "timestep_shift")])
def test_sampler_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerSettings(**kwargs)


# --- the LLM side -----------------------------------------------------------------------------------------

def test_lora_starts_as_the_frozen_llm_and_trains_only_its_own_parts(pipe):
    reg = QueryRegressor(pipe.model, pipe.tokenizer, pipe.special, n=4, out_dim=64)
    ids = torch.tensor([[pipe.special.bos, *pipe.tokenizer.encode("a red circle"), pipe.special.eos]])
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        before = residual_stream(pipe.model, pipe.model.embed_text(ids), pos, None)
        after = residual_stream(reg.llm, reg.llm.embed_text(ids), pos, None)
    assert torch.allclose(before, after, atol=1e-5)  # LoRA's B starts at zero
    keys = set(reg.trainable_state_dict())
    assert "queries" in keys and any(k.startswith("head.") for k in keys)
    assert all(k in ("queries",) or k.startswith("head.") or "lora_" in k or "norm" in k for k in keys)
    assert not any("_moe_gen" in k or "embed_tokens" in k for k in keys)
    original = pipe.model.language_model.model.layers[0].self_attn.q_proj
    assert not hasattr(original, "lora_A")  # LoRA went into a copy


def test_left_padding_does_not_change_a_captions_embeddings(pipe):
    torch.manual_seed(0)
    reg = QueryRegressor(pipe.model, pipe.tokenizer, pipe.special, n=4, out_dim=64).eval()
    with torch.no_grad():
        for p in reg.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # not the zero-initialised LoRA
        alone, _ = reg(["a red circle on the left"])
        batched, _ = reg(["a red circle on the left", "a large purple triangle at the bottom"])
    assert alone.shape == (1, 4, 64)
    assert torch.allclose(alone[0], batched[0], atol=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        reg(["  "])


# --- shipped weights --------------------------------------------------------------------------------------

def test_shipped_folder_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in CHECKPOINT.iterdir()}
    assert sum(files.values()) <= SHIPPED_LIMIT, files
    for n in N_CHOICES:
        assert f"detokenizer_n{n}.safetensors" in files and f"regressor_n{n}.safetensors" in files
    config = json.loads((CHECKPOINT / "config.json").read_text())
    metrics = json.loads((CHECKPOINT / "metrics.json").read_text())
    assert f"detokenizer_n{config['compare_n']}_full.safetensors" in files
    assert f"regressor_n{config['compare_n']}_deep.safetensors" in files
    assert set(metrics) >= {"reconstruction", "regression", "t2i", "t2i_from_floor", "heads", "fine_tuning", "seconds"}
    assert set(metrics["reconstruction"]) == set(metrics["regression"]) == {str(n) for n in N_CHOICES}


def test_shipped_weights_load_and_reproduce_the_recorded_regression(seedx):
    recorded = json.loads((seedx.folder / "metrics.json").read_text())["regression"]
    scenes = held_out_scenes(seedx)
    assert len(scenes) == seedx.settings["test_scenes"]
    floor = CaptionFloor(seedx)
    for n in N_CHOICES:
        assert seedx.detokenizer(n) is seedx.detokenizer(n)  # loaded once
        scores = regression_scores(seedx, scenes, n, floor=floor)
        assert scores["rel_mse"] == pytest.approx(recorded[str(n)]["rel_mse"], abs=2e-3), n
        assert scores["floor"] == pytest.approx(recorded[str(n)]["floor"], abs=2e-3), n


def test_shipped_detokenizer_reconstructs_held_out_scenes(seedx):
    scenes = held_out_scenes(seedx)[:24]
    coarse, fine = reconstruction_scores(seedx, scenes, 1), reconstruction_scores(seedx, scenes, 16)
    assert fine["color"] >= 0.75 and fine["position"] >= 0.85, fine
    assert fine["mae"] < coarse["mae"], (coarse, fine)


def test_the_road_draws_reproducibly_and_rejects_bad_input(seedx):
    text = caption(held_out_prompts(1)[0])
    a, b = seedx.generate([text], 16, seed=3)[0], seedx.generate([text], 16, seed=3)[0]
    assert a.size == (64, 64) and a.tobytes() == b.tobytes()
    assert seedx.generate([text], 16, seed=4)[0].tobytes() != a.tobytes()
    with pytest.raises(ValueError, match="cannot be pooled"):
        seedx.reconstruct([render(Scene("circle", "red", "left", "large"))], 3)
    with pytest.raises(TypeError, match="PIL image"):
        seedx.reconstruct(["not an image"], 16)
    with pytest.raises(ValueError, match="non-empty"):
        seedx.generate([""], 16)
    with pytest.raises(ValueError, match="N = 16 only"):
        seedx.detokenizer(4, "full")
    with pytest.raises(ValueError, match="head 'mlp' is unknown"):
        seedx.regressor(16, "mlp")
    with pytest.raises(ValueError, match=r"\(batch, 16, 64\)"):
        seedx.draw(torch.zeros(1, 4, 64), 16)
    with pytest.raises(ValueError, match="num_timesteps"):
        seedx.generate([text], 16, num_timesteps=1)


def test_missing_or_mismatched_files_are_named(tmp_path, pipe):
    folder = tmp_path / "seedx"
    shutil.copytree(CHECKPOINT, folder)
    (folder / "regressor_n4.safetensors").unlink()
    road = load(folder, pipe=pipe)
    with pytest.raises(CheckpointError, match="regressor_n4.safetensors is missing.*ablate"):
        road.regressor(4)
    shutil.copy(folder / "regressor_n1.safetensors", folder / "regressor_n4.safetensors")
    with pytest.raises(CheckpointError, match="regressor_n4.safetensors.*shape"):
        load(folder, pipe=pipe).regressor(4)
    shutil.copy(folder / "detokenizer_n16_full.safetensors", folder / "detokenizer_n16.safetensors")
    with pytest.raises(CheckpointError, match="does not match the model"):
        load(folder, pipe=pipe).detokenizer(16)
    with pytest.raises(CheckpointError, match="config.json missing"):
        load(tmp_path / "nowhere", pipe=pipe)


def test_a_short_adaptation_lowers_the_detokenizer_loss(pipe):
    from bagel_lite.seedx.train import DENOISER, RESAMPLER, AblationSettings, Tables, adapt_detokenizer, visual_stats

    rng = random.Random(0)
    scenes = [Scene(rng.choice(["circle", "square"]), rng.choice(["red", "blue"]), rng.choice(["left", "right"]),
                    "large") for _ in range(32)]
    pixels = torch.stack([pipe.vit_transform(render(s)) for s in scenes])
    with torch.no_grad():
        tables = Tables(scenes, list(range(32)), [], pixels, to_tokens(pipe.ae.encode(pixels, sample=False)),
                        vit_grid(pipe.model, pixels), vit_grid(pipe.model, torch.zeros(1, 3, 64, 64)))
    stats = visual_stats(tables)
    embeddings = (pool(tables.grid, 4) - stats["n4.mean"]) / stats["n4.std"]
    torch.manual_seed(0)
    base = Denoiser(DENOISER)
    untrained = DeTokenizer(DENOISER, 64, **RESAMPLER)
    untrained.denoiser.load_state_dict(base.state_dict())

    def loss(dt):
        with torch.no_grad():
            return flow_matching_loss(lambda x_t, t: dt(x_t, t, embeddings), tables.tokens,
                                      torch.Generator().manual_seed(9)).item()

    trained = adapt_detokenizer(base, tables, stats, 4, "kv", s=AblationSettings(detok_steps=30, batch=16, warmup=5),
                                log=lambda line: None)
    assert loss(trained) < 0.9 * loss(untrained)
    assert torch.equal(trained.denoiser.latent_in.weight, base.latent_in.weight)  # "kv" left the rest alone
