"""The toy world (renderer, held-out set), its judge and edit metrics, the tokenizer and the pure-torch model parts.

No ComfyUI here: toyworld must stay importable without it (checked in a subprocess).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toyworld import judge as J
from toyworld import model as M
from toyworld import text as T
from toyworld import world as W


@pytest.fixture(scope="module")
def batch() -> W.Batch:
    return W.random_batch(600, 7)


# ---------------------------------------------------------------- renderer


def test_renderer_is_seeded() -> None:
    a, b, c = W.random_batch(64, 3), W.random_batch(64, 3), W.random_batch(64, 4)
    assert torch.equal(a.images, b.images) and torch.equal(a.soft, b.soft) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(W.random_batch(64, g).images, a.images)
    assert not torch.equal(W.random_batch(64, g).images, a.images)  # the generator advances


def test_images_are_the_masked_blend_of_two_palette_colours(batch: W.Batch) -> None:
    s = batch.scene
    assert batch.images.shape == (600, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    assert torch.equal(batch.hard, batch.soft >= 0.5)
    fg, bg = W.PALETTE[s.fg].view(-1, 3, 1), W.PALETTE[s.bg].view(-1, 3, 1)
    img = batch.images.flatten(2)
    soft = batch.soft.flatten(2)
    full, empty = soft == 1, soft == 0
    assert torch.equal(torch.where(full, img, fg.expand_as(img)), fg.expand_as(img))  # fully covered = shape colour
    assert torch.equal(torch.where(empty, img, bg.expand_as(img)), bg.expand_as(img))  # uncovered = background
    m = batch.soft[:, 0]
    border = torch.cat([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], 1)
    assert border.max() == 0  # the object never touches the frame
    assert (full.flatten(1).sum(1) > 0).all() and (empty.flatten(1).sum(1) > 0).all()


def test_mask_area_and_centroid_match_the_geometry(batch: W.Batch) -> None:
    """4x4 supersampling quantises edges to 1/4 px: areas within 7 % (small squares), centroids within 0.15 px."""
    s = batch.scene
    exact = torch.where(s.shape == 0, math.pi * s.size ** 2,
                        torch.where(s.shape == 1, (2 * W.SQUARE_K * s.size) ** 2,
                                    0.75 * math.sqrt(3) * (W.TRIANGLE_K * s.size) ** 2))
    m = batch.soft[:, 0]
    area = m.sum((1, 2))
    assert ((area / exact - 1).abs() < 0.07).all()
    c = torch.arange(32.0) + 0.5
    cx = (m * c.view(1, 1, 32)).sum((1, 2)) / area
    cy = (m * c.view(1, 32, 1)).sum((1, 2)) / area
    assert (cx - s.cx).abs().max() < 0.15 and (cy - s.cy).abs().max() < 0.15
    assert s.size.min() >= W.SIZE_RANGE[0] and s.size.max() <= W.SIZE_RANGE[1]


def test_captions_match_attributes(batch: W.Batch) -> None:
    s = batch.scene
    assert (s.fg != s.bg).all()
    assert set(s.shape.tolist()) == {0, 1, 2} and set(s.fg.tolist()) == set(range(8)) == set(s.bg.tolist())
    for cap, sh, f, b in zip(batch.captions, s.shape, s.fg, s.bg, strict=True):
        assert cap == f"a {W.COLOURS[f]} {W.SHAPES[sh]} on a {W.COLOURS[b]} background"
        assert W.parse_caption(cap) == (int(sh), int(f), int(b))
    scenes = W.scenes_for(["a red circle on a green background", "a white triangle on a black background"], 0)
    assert scenes.captions == ["a red circle on a green background", "a white triangle on a black background"]
    with pytest.raises(ValueError, match="colour must differ"):
        W.scenes_for(["a red circle on a red background"], 0)
    with pytest.raises(ValueError, match="not a toy caption"):
        W.parse_caption("a red hexagon on a green background")


def test_held_out_set_is_fixed_and_balanced() -> None:
    a, b = W.held_out(), W.held_out()
    assert len(a) == 48 and torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(W.held_out(seed=1).images, a.images)  # positions and sizes come from the seed
    s = a.scene
    assert torch.bincount(s.shape, minlength=3).tolist() == [16] * 3
    assert torch.bincount(s.fg, minlength=8).tolist() == [6] * 8
    assert torch.bincount(s.bg, minlength=8).tolist() == [6] * 8
    assert (s.fg != s.bg).all() and len(set(a.captions)) == 48
    assert W.held_out(96).captions[:48] == a.captions  # a larger set extends the same captions


# ---------------------------------------------------------------- judge


def test_judge_reads_clean_renders_exactly(batch: W.Batch) -> None:
    j = J.judge(batch.images)
    acc = J.agreement(j, batch.scene)
    assert all(bool(v.all()) for v in acc.values())
    assert torch.equal(j.mask, batch.hard)
    assert (J.shape_iou(batch.images, batch.hard) == 1).all()
    assert J.accuracy(W.held_out().images, W.held_out().scene) == {"shape": 1.0, "fg": 1.0, "bg": 1.0, "all": 1.0}


def test_judge_under_noise(batch: W.Batch) -> None:
    g = torch.Generator().manual_seed(0)
    noisy = batch.images + 0.1 * torch.randn(batch.images.shape, generator=g)
    acc = J.accuracy(noisy, batch.scene)
    assert acc["fg"] >= 0.99 and acc["bg"] >= 0.99 and acc["shape"] >= 0.95 and acc["all"] >= 0.95
    assert J.shape_iou(noisy, batch.hard).mean() > 0.9


def test_judge_notices_wrong_attributes(batch: W.Batch) -> None:
    s = batch.scene
    wrong = W.Scene(shape=(s.shape + 1) % 3, fg=s.bg, bg=s.fg, size=s.size, cx=s.cx, cy=s.cy)
    acc = J.agreement(J.judge(batch.images), wrong)
    assert not acc["shape"].any() and not acc["fg"].any() and not acc["bg"].any()
    blank = W.PALETTE[2].view(1, 3, 1, 1).expand(4, 3, 32, 32)
    j = J.judge(blank)
    assert (j.shape == -1).all() and (j.fg == -1).all() and (j.bg == 2).all() and not j.mask.any()


def test_edit_metrics(batch: W.Batch) -> None:
    src = batch.scene
    target = (src.fg + 1) % 8
    target = torch.where(target == src.bg, (target + 1) % 8, target)
    edited = W.render(W.Scene(src.shape, target, src.bg, src.size, src.cx, src.cy)).images
    ok = J.colour_edit(edited, batch.hard, target)
    assert ok["success"].all() and ok["dist"].max() < 1e-5
    assert not J.colour_edit(batch.images, batch.hard, target)["success"].any()
    assert (J.psnr_outside(edited, batch.images, batch.hard) > 100).all()  # untouched background
    assert (J.psnr(edited, batch.images) < 40).all()  # ... but the object changed
    g = torch.Generator().manual_seed(1)
    noisy_bg = edited + 0.1 * torch.randn(edited.shape, generator=g) * (~J.dilate(batch.hard, 1)).float()
    p = J.psnr_outside(noisy_bg, batch.images, batch.hard)
    assert (p - 10 * math.log10(4 / 0.01)).abs().max() < 1.0  # sigma 0.1 on a peak-to-peak of 2: 26 dB
    m = batch.hard
    assert (J.erode(m, 1) <= m).all() and (J.dilate(m, 1) >= m).all() and (J.dilate(J.erode(m, 1), 1) <= m).all()
    assert (J.iou(m, m) == 1).all() and (J.iou(m, ~m) == 0).all()


# ---------------------------------------------------------------- text


def test_encoding_is_clip_like() -> None:
    ids = T.tokenize("a red circle on a green background")
    assert ids == [1, 3, 6, 14, 4, 3, 7, 5, 2] + [0] * 7  # as in the prototype's notes
    assert list(T.EMPTY) == [T.BOS, T.EOS] + [T.PAD] * 14 and T.tokenize("") == list(T.EMPTY)
    assert T.tokenize("A Red circle, on a green background.") == ids  # case and punctuation are ignored
    assert T.encode_batch(["a red circle on a green background", ""]).tolist() == [ids, list(T.EMPTY)]
    assert len(T.VOCAB) == 17 and T.VOCAB[:3] == ("<pad>", "<bos>", "<eos>")
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        T.tokenize("a red dog")
    with pytest.raises(ValueError, match="at most 14"):
        T.tokenize(" ".join(["a"] * 15))


def test_word_positions() -> None:
    p = "a red circle on a green background"
    ids = T.tokenize(p)
    for word in p.split():
        pos = T.word_positions(p, word)
        assert pos and all(ids[i] == T.WORD_IDS[word] for i in pos)
    assert T.word_positions(p, "a") == [1, 5] and T.word_positions(p, "Red") == [2]
    assert T.word_positions(p, "blue") == []
    long = " ".join(["a"] * 14 + ["red"])
    assert T.word_positions(long, "red") == [16 + 1]  # second section, after its <bos>
    with pytest.raises(ValueError, match="not in the toy vocabulary"):
        T.word_positions(p, "dog")


def test_tokenizer_for_comfy_clip() -> None:
    tok = T.ToyTokenizer(embedding_directory=None, tokenizer_data={})
    out = tok.tokenize_with_weights("a (red:1.5) circle on a ((green)) background")
    assert list(out) == ["toy"] and len(out["toy"]) == 1 and len(out["toy"][0]) == 16
    weights = [w for _, w in out["toy"][0]]
    assert weights[2] == 1.5 and weights[6] == pytest.approx(1.21) and weights[3] == 1.0
    with_ids = tok.tokenize_with_weights("a red circle", return_word_ids=True)["toy"][0]
    assert [w for _, _, w in with_ids[:5]] == [0, 1, 2, 3, 0]
    two = tok.tokenize_with_weights(" ".join(["a"] * 20))["toy"]
    assert len(two) == 2 and all(len(s) == 16 for s in two)
    assert tok.untokenize(out["toy"][0][:3]) == [((1, 1.0), "<bos>"), ((3, 1.0), "a"), ((6, 1.5), "red")]
    assert tok.state_dict() == {}


def test_text_encoder_is_causal_and_weights_interpolate_to_empty() -> None:
    torch.manual_seed(0)
    enc = M.TextEncoder().eval()
    with torch.no_grad():
        red = enc(T.encode_batch(["a red circle on a green background"]))
        blue = enc(T.encode_batch(["a red circle on a blue background"]))
        blue_circle = enc(T.encode_batch(["a blue circle on a green background"]))
        assert red.shape == (1, 16, M.CONTEXT_DIM)
        assert torch.equal(red[:, :6], blue[:, :6]) and not torch.allclose(red[:, 6:], blue[:, 6:])
        assert not torch.allclose(red[:, 3], blue_circle[:, 3])  # the noun carries its adjective
        tok = T.ToyTokenizer()
        cond, pooled = T.encode_token_weights(enc, tok.tokenize_with_weights("a red circle on a green background"))
        assert torch.allclose(cond, red) and torch.allclose(pooled, red[:, 8])  # pooled = state at <eos>
        w = tok.tokenize_with_weights("a (red:0) circle on a (green:2) background")
        cond_w, _ = T.encode_token_weights(enc, w)
        empty = enc.empty()
        assert torch.allclose(cond_w[:, 2], empty[:, 2], atol=1e-6)
        assert torch.allclose(cond_w[:, 6], empty[:, 6] + 2 * (red[:, 6] - empty[:, 6]), atol=1e-5)
        assert torch.allclose(cond_w[:, 3], red[:, 3])
        assert T.encode_token_weights(enc, tok.tokenize_with_weights(" ".join(["a"] * 20)))[0].shape == (1, 32, 64)


# ---------------------------------------------------------------- model (pure-torch parts)


def test_schedule_is_comfyui_sd1() -> None:
    abar = M.alphas_cumprod()
    sigmas = ((1 - abar) / abar).sqrt()
    assert abar.shape == (1000,) and (abar[1:] < abar[:-1]).all()
    assert float(sigmas[0]) == pytest.approx(0.0292, abs=1e-4) and float(sigmas[-1]) == pytest.approx(14.61, abs=0.01)


def test_ddim_sampler_recovers_a_point_mass() -> None:
    """With the exact eps of a single data point, deterministic DDIM must land on that point (any CFG)."""
    target = W.held_out(4).images.double()
    abar = M.alphas_cumprod()

    class Oracle(torch.nn.Module):
        def forward(self, x, t, context=None, transformer_options=None):
            a = abar[t.long()].view(-1, 1, 1, 1)
            x0 = target.repeat(x.shape[0] // target.shape[0], 1, 1, 1)
            return (x.double() - a.sqrt() * x0) / (1 - a).sqrt()

    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ctx = torch.zeros(4, 16, 64, dtype=torch.float64)
    for cfg in (1.0, 4.0):
        out = M.ddim_sample(Oracle(), ctx, ctx[:1], noise, steps=10, cfg=cfg)
        assert torch.allclose(out, target, atol=1e-9)


def test_export_layout() -> None:
    unet = torch.nn.Conv2d(3, 3, 1)  # stands in for the UNet: only the key layout is checked here
    enc = M.TextEncoder()
    sd = M.export_state_dict(unet, enc)
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert sd[M.VAE_KEY] == 1 and "model.diffusion_model.weight" in sd
    assert "cond_stage_model.toy.token_embedding.weight" in sd
    meta = M.export_metadata({"note": {"a": 1}}, enc)
    assert meta["format"] == M.FORMAT and all(isinstance(v, str) for v in meta.values())
    enc2 = M.load_text_encoder(sd, meta)
    ids = T.encode_batch(["a red circle on a green background"])
    with torch.no_grad():
        assert torch.allclose(enc2(ids), enc(ids), atol=2e-2)  # fp16 round trip
    assert M.UNET_CONFIG["disable_self_attentions"] == [True, False, False]


def assert_no_comfyui_after(code: str) -> None:
    """Run ``code`` in a fresh interpreter at the repo root; fail if it left a ComfyUI module imported."""
    check = ("\nbad = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('comfy', 'comfy_api', 'nodes', 'folder_paths'))\nprint(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code + check], capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stdout + r.stderr


def test_toyworld_does_not_import_comfyui() -> None:
    assert_no_comfyui_after("import toyworld")


def test_toy_checkpoint_is_read_and_checked_without_comfyui(tmp_path):
    """The shipped export reads back (configs, groups, both state dicts); a foreign file is refused by name."""
    import safetensors.torch

    from toyworld import checkpoint

    shipped = checkpoint.read(Path(__file__).resolve().parents[2] / "models" / "toy_model.safetensors")
    assert shipped.norm_groups == 8 and shipped.unet and shipped.text and shipped.unet_config
    foreign = tmp_path / "sd.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(checkpoint.ToyFileError, match=r"^is not an Exact Inversion toy model \(format 'pt'"):
        checkpoint.read(foreign)


def test_unit_layer_never_imports_comfyui() -> None:
    """CI runs this layer on one host only (.ci/run): that holds while no unit test module pulls ComfyUI in."""
    assert_no_comfyui_after("import importlib, pathlib\n"
                            "sys.path[:0] = ['.', 'tests/unit']\n"
                            "for path in sorted(pathlib.Path('tests/unit').glob('*.py')):\n"
                            "    importlib.import_module(path.stem)")
