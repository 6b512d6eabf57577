"""Train the embedded toy text-to-image model (toyworld) from scratch; seeded, resumable, evaluated by the judge.

    scripts/py scripts/train_toy.py --out runs/toy --steps 1305 --export models/toy_model.safetensors  # the shipped run
    scripts/py scripts/train_toy.py --out runs/toy --steps 1305 ...      # again: resumes from runs/toy/ckpt.safetensors
    scripts/py scripts/train_toy.py --evaluate models/toy_model.safetensors   # judge an exported model

The recipe (a small text-to-image UNet trained from scratch on the toy world) in one phase: batch 64, AdamW lr 8e-4 with
100 warm-up steps, gradient clipping 1, EMA 0.995, 10 % caption dropout, and from the first step offset
noise 0.1 plus 25 % of samples at t in [600, 999] (without them the model reads the background colour
from the SD schedule's signal leak instead of from the text). The UNet's GroupNorms have 8 groups
(``--norm-groups``; ComfyUI's default 32 is one channel per group at 32 channels, which erases every
channel's image mean, and with it the text's say over the background colour: a 1316-step run with 32
groups stayed at chance on the background, and on the x0 image mean at t = 999 text and empty prompt
predicted the same thing).

All randomness of the data (scenes, dropout, timesteps, noise) comes from one CPU generator that is
checkpointed, so a resumed run continues exactly where it stopped (bit-identical on the same machine
and thread count). ``--steps`` is the total step target; ``--minutes`` bounds this invocation's wall time.
Every ``--ckpt-every`` steps (and on Ctrl-C or SIGTERM) ``<out>/ckpt.safetensors`` is written atomically; every
``--eval-every`` steps the EMA model samples the 48 held-out captions (20-step DDIM, CFG 4) and the judge
scores them. At the end the EMA weights are exported as fp16 safetensors with ComfyUI key names
(``model.diffusion_model.*``, ``cond_stage_model.toy.*``) plus a JSON sidecar, and the exported file is
evaluated again, so the reported numbers are those of the shipped weights.

Runs through ``scripts/py`` (it puts ComfyUI's tree and the torchvision stand-in on the path). ComfyUI is
used only for its ``UNetModel`` class, built with plain torch layers (ComfyUI's default ops skip weight
init) and PyTorch SDPA attention (ComfyUI's CPU default, sub-quadratic attention, is several times slower).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from toyworld import judge as J  # noqa: E402
from toyworld import model as M  # noqa: E402
from toyworld import text as T  # noqa: E402
from toyworld import world as W  # noqa: E402

RECIPE_KEYS = ("seed", "batch", "lr", "warmup", "weight_decay", "clip", "ema", "drop", "offset_noise",
               "high_t_frac", "high_t_min", "text_layers", "norm_groups")

RECIPE_ADDED = {"norm_groups": 32}  # recipe keys added later, with the value older checkpoints were trained with


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "toy", help="run folder (checkpoint, logs, export)")
    p.add_argument("--steps", type=int, default=1305, help="total steps to reach (1305: the shipped model)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this invocation")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--drop", type=float, default=0.1, help="caption dropout (empty prompt) for CFG")
    p.add_argument("--offset-noise", type=float, default=0.1)
    p.add_argument("--high-t-frac", type=float, default=0.25, help="fraction of samples drawn from t >= high-t-min")
    p.add_argument("--high-t-min", type=int, default=600)
    p.add_argument("--text-layers", type=int, default=M.TEXT_LAYERS)
    p.add_argument("--norm-groups", type=int, default=M.NORM_GROUPS, help="GroupNorm groups in the UNet")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250, help="0: only at the end")
    p.add_argument("--eval-n", type=int, default=48)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-cfg", type=float, nargs="+", default=[4.0], help="CFG scales to judge (first = default)")
    p.add_argument("--eval-seed", type=int, default=1234, help="seed of the evaluation noise")
    p.add_argument("--export", type=Path, default=None, help="default <out>/toy_model.safetensors")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--evaluate", type=Path, default=None, help="only judge this exported .safetensors and exit")
    args = p.parse_args(argv)
    if args.eval_n < 1 or args.batch < 1 or args.steps < 0:
        p.error("--eval-n and --batch must be >= 1, --steps >= 0")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def boot_comfy(device: torch.device) -> None:
    """Make ComfyUI's UNetModel importable: its tree on the path, CPU mode on CPU-only torch, SDPA attention.

    Must run before anything imports ``comfy.model_management`` (the flags are read at import).
    """
    cdir = os.environ.get("COMFYUI_DIR")
    if not cdir or not (Path(cdir) / "comfy").is_dir():
        raise SystemExit("ComfyUI not found: run this through scripts/py (it sets COMFYUI_DIR)")
    for p in (os.environ.get("COMFYUI_STUBS"), cdir):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    if "comfy.ldm.modules.attention" in sys.modules:
        print("warning: ComfyUI attention already imported; attention flags may not apply", flush=True)
    from comfy.cli_args import args

    if device.type == "cpu" or not torch.cuda.is_available():
        args.cpu = True
    args.use_pytorch_cross_attention = True


class EMA:
    """Exponential moving average of a module's parameters and buffers (decay warmed up as (1+n)/(10+n))."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.module.state_dict().values(), module.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.lerp_(p, 1 - d)
            else:
                e.copy_(p)


def lr_at(step: int, args: argparse.Namespace) -> float:
    return args.lr * min(1.0, (step + 1) / max(1, args.warmup))


def training_batch(gen: torch.Generator, args: argparse.Namespace, abar: torch.Tensor) -> dict[str, torch.Tensor]:
    """One batch on the CPU, every random number from ``gen`` (so checkpoint + generator state = exact resume)."""
    b = W.random_batch(args.batch, gen)
    ids = T.encode_batch(b.captions)
    drop = torch.rand(args.batch, generator=gen) < args.drop
    ids[drop] = torch.tensor(T.EMPTY)
    t = torch.randint(0, M.NUM_TIMESTEPS, (args.batch,), generator=gen)
    high = torch.rand(args.batch, generator=gen) < args.high_t_frac
    t_high = torch.randint(args.high_t_min, M.NUM_TIMESTEPS, (args.batch,), generator=gen)
    t = torch.where(high, t_high, t)
    noise = torch.randn(b.images.shape, generator=gen)
    noise = noise + args.offset_noise * torch.randn(args.batch, 3, 1, 1, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    x = a.sqrt() * b.images + (1 - a).sqrt() * noise
    return {"x": x, "t": t.float(), "ids": ids, "noise": noise}


@torch.no_grad()
def evaluate(unet: torch.nn.Module, text: M.TextEncoder, device: torch.device, args: argparse.Namespace,
             out_png: Path | None = None) -> dict[str, Any]:
    """Judge DDIM samples of the held-out captions at each CFG scale in ``--eval-cfg``."""
    unet.eval()
    text.eval()
    held = W.held_out(args.eval_n)
    ctx = text(T.encode_batch(held.captions).to(device))
    uncond = text.empty(1)
    gen = torch.Generator().manual_seed(args.eval_seed)
    noise = torch.randn(held.images.shape, generator=gen).to(device)
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    for k, cfg in enumerate(args.eval_cfg):
        x = M.ddim_sample(unet, ctx, uncond, noise, steps=args.eval_steps, cfg=cfg).float().cpu()
        res[f"cfg{cfg:g}"] = {k2: round(v, 4) for k2, v in J.accuracy(x, held.scene).items()}
        if k == 0 and out_png is not None:
            save_grid(x, out_png)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def save_grid(images: torch.Tensor, path: Path, cols: int = 8, scale: int = 2) -> None:
    """A PNG grid of samples for eyeballing (skipped if Pillow is missing)."""
    try:
        from PIL import Image
    except ImportError:
        return
    x = W.to_unit(images).clamp(0, 1)
    n, _, h, w = x.shape
    rows = math.ceil(n / cols)
    grid = torch.ones(3, rows * (h + 2), cols * (w + 2))
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = x[i]
    arr = (grid.permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST).save(path)


def save_checkpoint(path: Path, modules: dict[str, dict[str, torch.Tensor]], opt: torch.optim.Optimizer,
                    info: dict[str, Any]) -> None:
    """Write a resumable checkpoint as safetensors (no pickle): module weights, the optimizer's
    per-parameter tensors and RNG states as tensors, everything else as JSON metadata. Atomic."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, sd in modules.items() for k, v in sd.items()}
    opt_sd = opt.state_dict()
    for index, slots in opt_sd["state"].items():
        for slot, value in slots.items():
            tensors[f"opt.{index}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt_sd["param_groups"]),
            "modules": json.dumps(sorted(modules))}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: Path, opt: torch.optim.Optimizer) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read ``save_checkpoint``'s file: loads the optimizer state in place, returns (modules, info)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    modules: dict[str, dict[str, torch.Tensor]] = {name: {} for name in json.loads(meta["modules"])}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        head, rest = key.split(".", 1)
        if head == "opt":
            index, slot = rest.split(".", 1)
            state.setdefault(int(index), {})[slot] = value
        else:
            modules[head][rest] = value
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return modules, json.loads(meta["info"])


def export(path: Path, unet: torch.nn.Module, text: M.TextEncoder, info: dict[str, Any]) -> None:
    """fp16 safetensors with ComfyUI key names and JSON metadata, plus ``<name>.json`` beside it."""
    from safetensors.torch import save_file

    sd = M.export_state_dict(unet, text)
    groups = {m.num_groups for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)}
    meta = M.export_metadata({"training": info}, text, norm_groups=groups.pop())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)
    as_json = ("unet_config", "text_config", "vocab", "schedule", "training", "norm_groups")
    sidecar = {k: (json.loads(v) if k in as_json else v) for k, v in meta.items()}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")


def load_export(path: Path, device: torch.device) -> tuple[torch.nn.Module, M.TextEncoder, dict[str, str]]:
    """UNet and text encoder (float32) from an exported file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != M.FORMAT:
        raise SystemExit(f"{path}: not a toy-model export (format {meta.get('format')!r})")
    sd = load_file(str(path))
    unet = M.build_unet(norm_groups=int(meta.get("norm_groups", "32")))
    unet_sd = M.split_state_dict(sd)[0]
    unet.load_state_dict({k: v.float() for k, v in unet_sd.items()})
    text = M.load_text_encoder(sd, meta)
    return unet.to(device), text.to(device), meta


def fmt_time(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    boot_comfy(device)

    if args.evaluate is not None:
        unet, text, _ = load_export(args.evaluate, device)
        res = evaluate(unet, text, device, args)
        print(json.dumps({"evaluate": str(args.evaluate), **res}), flush=True)
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "ckpt.safetensors"
    torch.manual_seed(args.seed)
    unet = M.build_unet(norm_groups=args.norm_groups).to(device)
    text = M.TextEncoder(layers=args.text_layers).to(device)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    ema_unet, ema_text = EMA(unet, args.ema), EMA(text, args.ema)
    gen = torch.Generator().manual_seed(args.seed)
    step, train_s, history = 0, 0.0, []

    if ckpt_path.exists() and not args.fresh:
        modules, ck = load_checkpoint(ckpt_path, opt)
        trained_groups = ck["args"].get("norm_groups", 32)  # checkpoints before the option used ComfyUI's 32
        if trained_groups != args.norm_groups:
            raise SystemExit(f"{ckpt_path} was trained with --norm-groups {trained_groups}: pass that, or start "
                             "another --out (or --fresh)")
        old = {**RECIPE_ADDED, **ck["args"]}
        changed = {k: (old.get(k), getattr(args, k)) for k in RECIPE_KEYS if old.get(k) != getattr(args, k)}
        if changed:
            print(f"note: recipe changed from the checkpoint's (old, new): {changed}; recorded in the history",
                  flush=True)
        unet.load_state_dict(modules["unet"])
        text.load_state_dict(modules["text"])
        ema_unet.module.load_state_dict(modules["ema_unet"])
        ema_text.module.load_state_dict(modules["ema_text"])
        gen.set_state(modules["rng"]["gen"])
        torch.set_rng_state(modules["rng"]["torch"])
        step, train_s, history = ck["step"], ck["train_s"], ck["history"]
        if changed:
            history.append({"step": step, "recipe_change": {k: v[1] for k, v in changed.items()}})
        print(f"resumed {ckpt_path} at step {step} ({fmt_time(train_s)} of training so far)", flush=True)

    def checkpoint() -> None:
        modules = {"unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema_unet.module.state_dict(),
                   "ema_text": ema_text.module.state_dict(),
                   "rng": {"gen": gen.get_state(), "torch": torch.get_rng_state()}}
        info = {"step": step, "train_s": train_s, "history": history,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        save_checkpoint(ckpt_path, modules, opt, info)

    n_unet, n_text = M.count_params(unet), M.count_params(text)
    print(f"device {device}, threads {threads}, torch {torch.__version__}; UNet {n_unet:,} + text {n_text:,} params; "
          f"steps {step} -> {args.steps}" + (f", budget {args.minutes} min" if args.minutes else ""), flush=True)
    abar = M.alphas_cumprod(torch.float32)
    start = time.perf_counter()
    win_loss, win_wall, win_cpu, win_n = 0.0, 0.0, 0.0, 0
    log = (args.out / "train_log.jsonl").open("a")

    stop_requested: list[int] = []

    def stop(signum: int, frame: Any) -> None:  # SIGTERM / SIGINT: finish the step, checkpoint, exit
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while step < args.steps:
            if stop_requested:
                checkpoint()
                print(f"stopped at step {step}: checkpoint saved to {ckpt_path}; run the same command to resume",
                      flush=True)
                return 130
            if args.minutes is not None and time.perf_counter() - start > args.minutes * 60:
                print(f"time budget of {args.minutes} min reached at step {step}", flush=True)
                break
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            unet.train()
            text.train()
            batch = {k: v.to(device) for k, v in training_batch(gen, args, abar).items()}
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args)
            pred = M.eps(unet, batch["x"], batch["t"], text(batch["ids"]))
            loss = torch.nn.functional.mse_loss(pred, batch["noise"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
            ema_unet.update(unet, step)
            ema_text.update(text, step)
            step += 1
            lv = float(loss.detach())  # synchronises on GPU, so the step time is honest
            dt = time.perf_counter() - t_wall
            train_s += dt
            win_loss, win_wall, win_cpu, win_n = win_loss + lv, win_wall + dt, win_cpu + time.process_time() - t_cpu, \
                win_n + 1
            if step % args.log_every == 0 or step == args.steps:
                sps = win_wall / win_n
                left = (args.steps - step) * sps
                if args.minutes is not None:
                    left = min(left, args.minutes * 60 - (time.perf_counter() - start))
                rec = {"step": step, "loss": round(win_loss / win_n, 5), "lr": lr_at(step - 1, args),
                       "s_per_step": round(sps, 3), "cpu_s_per_step": round(win_cpu / win_n, 3),
                       "train_min": round(train_s / 60, 2)}
                print(f"step {step:5d}/{args.steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.1e}  {sps:.3f} s/step "
                      f"(cpu {rec['cpu_s_per_step']:.3f})  train {fmt_time(train_s)}  ETA {fmt_time(left)}", flush=True)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                win_loss, win_wall, win_cpu, win_n = 0.0, 0.0, 0.0, 0
            if step % args.ckpt_every == 0:
                checkpoint()
            if args.eval_every and step % args.eval_every == 0 and step < args.steps:
                res = evaluate(ema_unet.module, ema_text.module, device, args, args.out / f"samples_{step:05d}.png")
                history.append({"step": step, "train_min": round(train_s / 60, 2), **res})
                print(f"eval step {step}: {json.dumps(res)}", flush=True)
                log.write(json.dumps({"eval": history[-1]}) + "\n")
                log.flush()
    finally:
        log.close()
    checkpoint()

    res = evaluate(ema_unet.module, ema_text.module, device, args, args.out / f"samples_{step:05d}.png")
    history.append({"step": step, "train_min": round(train_s / 60, 2), **res})
    print(f"eval step {step} (EMA, fp32): {json.dumps(res)}", flush=True)
    if args.no_export:
        return 0
    path = args.export or args.out / "toy_model.safetensors"
    info = {"recipe": {k: getattr(args, k) for k in RECIPE_KEYS}, "steps": step,
            "train_minutes": round(train_s / 60, 2), "device": str(device), "threads": threads,
            "torch": torch.__version__, "python": platform.python_version(),
            "eval": {"n": args.eval_n, "ddim_steps": args.eval_steps, "seed": args.eval_seed}, "history": history}
    export(path, ema_unet.module, ema_text.module, info)
    u16, t16, _ = load_export(path, device)
    final = evaluate(u16, t16, device, args)
    info["final_eval_fp16"] = final
    export(path, ema_unet.module, ema_text.module, info)
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB); judge on the exported fp16 weights: "
          f"{json.dumps(final)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
