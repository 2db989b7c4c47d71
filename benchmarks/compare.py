"""panet_lite against PANet as its authors' code structures it (reference.LoopPANet): the same VGG-16
weights, the same episodes, one process, interleaved repetitions, medians and their ratios.

Rows: a training step (forward, segmentation + alignment loss, backward, SGD; panet_lite also with
`--recompute`, activation checkpointing of the encoder) and a test forward (no gradient, argmax at
the image size) at 417 px 1-way 1-shot and at 224 px 1-way 5-shot; the peak memory of one 417 px
5-shot training step, with and without --recompute (on a CPU: the process's peak resident memory
above what it held before the step, each model in a fresh process; on CUDA: peak allocated
memory); and the metric, panet_lite.IoUMeter against a set-based count (reference.SetIoU), on
417 x 417 queries. The ratio is panet_lite / reference: below 1 means panet_lite is faster or
smaller; the metric's is reference / panet_lite (how many times faster). Usage:

    python benchmarks/compare.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/compare.py --reps 3 --device cuda --channels-last
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import LoopPANet, SetIoU  # noqa: E402

from panet_lite.data import IGNORE, train_classes  # noqa: E402
from panet_lite.episodes import EpisodeDataset  # noqa: E402
from panet_lite.evaluate import class_argmax  # noqa: E402
from panet_lite.metrics import IoUMeter  # noqa: E402
from panet_lite.model import PANet  # noqa: E402
from panet_lite.synthetic import SyntheticFewShot  # noqa: E402
from panet_lite.train import segmentation_loss  # noqa: E402

SETTINGS = ((417, 1), (224, 5))  # (image size, shots), 1-way, one query, one episode per step
TARGETS = {"train": 0.85, "test": 0.85, "memory": 0.6, "metric": 150.0}


def episode(size: int, shots: int, device: torch.device, seed: int = 1234) -> dict:
    """One collated 1-way training episode of the embedded dataset, resized to size x size."""
    data = EpisodeDataset(SyntheticFewShot("trainaug", 300, 64), train_classes(0), 1, 1, shots, 1, seed=seed,
                          size=size, flip=False)
    return {k: v.to(device) for k, v in default_collate([data[0]]).items()}


RECOMPUTE = "panet_lite --recompute"
COMPILED = "panet_lite, torch.compile"


def models(device: torch.device, channels_last: bool = False, recompute: bool = False, compile: bool = False) -> dict:
    """panet_lite's PANet (and, with `recompute`, a copy that trains with activation checkpointing)
    and the loop reference, each with an identical copy of the same encoder weights."""
    torch.manual_seed(0)
    ours = PANet("vgg16", pretrained=False).to(device)
    nets = {"panet_lite": ours, "reference": LoopPANet(copy.deepcopy(ours.encoder)).to(device)}
    if recompute:
        nets[RECOMPUTE] = copy.deepcopy(ours)
        nets[RECOMPUTE].recompute = True
    if compile:  # the encoder compiled in place (nn.Module.compile keeps the weights' names)
        nets[COMPILED] = copy.deepcopy(ours)
        nets[COMPILED].encoder.compile()
    for name in nets:
        if channels_last and name != "reference":  # panet_lite's option (TrainConfig.channels_last)
            nets[name] = nets[name].to(memory_format=torch.channels_last)
    return nets


def forward(name: str, model, b: dict):
    if name.startswith("panet_lite"):
        out = model(b["support_images"], b["support_fg"], b["support_bg"], b["query_images"])
        return out.logits, out.align_loss
    return model(b["support_images"], b["support_fg"], b["support_bg"], b["query_images"])


def train_step(name: str, model, optimizer, b: dict) -> float:
    model.train()
    logits, align = forward(name, model, b)
    loss = segmentation_loss(logits, b["query_labels"]) + align
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def test_forward(name: str, model, b: dict) -> torch.Tensor:
    model.eval()
    logits, _ = forward(name, model, b)
    # Ours takes its labels as `panet_lite.evaluate.predict` does; the reference as the authors' code does.
    return class_argmax(logits, dim=2) if name.startswith("panet_lite") else logits.argmax(dim=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, reps: int, device: torch.device, warmup: int = 1) -> dict:
    """Median seconds of each fn, called in alternating order rep after rep (drift hits both alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed_rows(device: torch.device, reps: int, channels_last: bool, compile: bool = False) -> list[dict]:
    rows = []
    for size, shots in SETTINGS:
        nets = models(device, channels_last, recompute=True, compile=compile)
        b = episode(size, shots, device)
        # Same weights, same episode: the two compute the same losses and predictions (float round-off aside).
        with torch.no_grad():
            nets["panet_lite"].train()
            nets["reference"].train()
            l_ours, a_ours = forward("panet_lite", nets["panet_lite"], b)
            l_ref, a_ref = forward("reference", nets["reference"], b)
        agree = bool(torch.allclose(l_ours, l_ref, rtol=1e-3, atol=1e-3)) and abs(a_ours.item() - a_ref.item()) < 1e-3
        opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4) for n, m in nets.items()}
        setting = f"{size} px 1-way {shots}-shot"
        # torch.compile compiles on its first calls (for training and again for eval): two warm-up calls.
        train = interleaved({n: (lambda n=n: train_step(n, nets[n], opts[n], b)) for n in nets}, reps, device,
                            warmup=2 if compile else 1)
        test = interleaved({n: (lambda n=n: test_forward(n, nets[n], b)) for n in nets if n != RECOMPUTE},
                           reps, device, warmup=2 if compile else 1)
        variants = [("train", train, "panet_lite"), ("train", train, RECOMPUTE), ("test", test, "panet_lite")]
        variants += [("train", train, COMPILED), ("test", test, COMPILED)] if compile else []
        for kind, t, ours in variants:
            name = f"{kind} {'step' if kind == 'train' else 'forward'}" + {RECOMPUTE: ", --recompute",
                                                                            COMPILED: ", torch.compile"}.get(ours, "")
            rows.append({"measurement": name, "setting": setting, "panet_lite": t[ours], "reference": t["reference"],
                         "unit": "s", "ratio": t[ours] / t["reference"], "target": f"<= {TARGETS[kind]}",
                         "met": t[ours] / t["reference"] <= TARGETS[kind], "same_outputs": agree})
        print(f"  {setting}: train {train}, test {test}", file=sys.stderr)
    return rows


def rss_gib(field: str = "VmRSS") -> float:
    """The process's resident memory now (VmRSS) or its peak so far (VmHWM), from /proc/self/status.
    (Not getrusage's ru_maxrss: Linux carries it over from the parent process across fork and exec.)"""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kib / 2**20


def probe_memory(name: str, size: int, shots: int, device: torch.device) -> float:
    """GiB one training step needs beyond what the process held before it (model, optimizer, episode)."""
    nets = models(device, recompute=name == RECOMPUTE)
    model = nets[name]
    del nets
    b = episode(size, shots, device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():  # the gradient and momentum buffers exist before the measured step
        p.grad = torch.zeros_like(p)
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(name, model, opt, b)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**30
    before = rss_gib()
    train_step(name, model, opt, b)
    return rss_gib("VmHWM") - before


# glibc's malloc moves its mmap threshold up as large blocks are freed, so a process's peak resident
# memory would depend on its allocation history; a fixed threshold (1 MiB) makes every large tensor its
# own mapping, returned when freed, and the peak measures what the step held at once.
PROBE_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def memory_rows(device: torch.device, size: int = 417, shots: int = 5) -> list[dict]:
    peaks = {}
    for name in ("panet_lite", RECOMPUTE, "reference"):
        out = subprocess.run([sys.executable, __file__, "--probe-memory", name, "--size", str(size), "--shots",
                              str(shots), "--device", device.type, "--threads", str(torch.get_num_threads())],
                             capture_output=True, text=True, check=True, env=PROBE_ENV)
        peaks[name] = json.loads(out.stdout.strip().splitlines()[-1])["gib"]
    rows = []
    for ours in ("panet_lite", RECOMPUTE):
        ratio = peaks[ours] / peaks["reference"]
        rows.append({"measurement": "peak memory of a training step" + (", --recompute" if ours == RECOMPUTE else ""),
                     "setting": f"{size} px 1-way {shots}-shot", "panet_lite": peaks[ours],
                     "reference": peaks["reference"], "unit": "GiB", "ratio": ratio,
                     "target": f"<= {TARGETS['memory']}", "met": ratio <= TARGETS["memory"]})
    return rows


def metric_row(size: int = 417, queries: int = (200, 8)) -> dict:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 2, (8, size, size), generator=gen)
    target = torch.randint(0, 2, (8, size, size), generator=gen)
    target[:, ::37] = IGNORE
    ids = torch.tensor([3])
    fast, slow = IoUMeter(20), SetIoU(20)
    t0 = time.perf_counter()
    for i in range(queries[0]):
        fast.update(pred[i % 8], target[i % 8], ids)
    ours = (time.perf_counter() - t0) / queries[0]
    t0 = time.perf_counter()
    for i in range(queries[1]):
        slow.update(pred[i % 8], target[i % 8], ids)
    theirs = (time.perf_counter() - t0) / queries[1]
    check = IoUMeter(20)
    for i in range(queries[1]):
        check.update(pred[i % 8], target[i % 8], ids)
    same = bool(torch.allclose(check.class_iou().nan_to_num(-1), slow.class_iou().nan_to_num(-1), rtol=0, atol=1e-12))
    return {"measurement": "metric update, per query", "setting": f"{size} x {size}, 1-way",
            "panet_lite": ours, "reference": theirs, "unit": "s", "ratio": theirs / ours,
            "target": f">= {TARGETS['metric']:g} x faster", "met": theirs / ours >= TARGETS["metric"],
            "same_outputs": same}


def markdown(rows: list[dict], info: str) -> str:
    lines = [f"panet_lite / loop reference (same weights, same episodes; median of interleaved reps): {info}", "",
             "| measurement | setting | panet_lite | reference | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measurement']} | {r['setting']} | {r['panet_lite']:.4g} {r['unit']} | "
                     f"{r['reference']:.4g} {r['unit']} | {r['ratio']:.2f} | {r['target']} | "
                     f"{'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each model and row (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: its own)")
    parser.add_argument("--channels-last", action="store_true", help="panet_lite in channels-last memory format")
    parser.add_argument("--compile", action="store_true",
                        help="also time panet_lite with its encoder under torch.compile (compiles first: minutes)")
    parser.add_argument("--rows", default="metric,speed,memory",
                        help="which measurements, comma-separated (default: metric,speed,memory)")
    parser.add_argument("--out", help="also write the rows as JSON to this file")
    parser.add_argument("--probe-memory", choices=("panet_lite", RECOMPUTE, "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=417, help=argparse.SUPPRESS)
    parser.add_argument("--shots", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.probe_memory:
        print(json.dumps({"gib": probe_memory(args.probe_memory, args.size, args.shots, device)}))
        return 0
    start = time.perf_counter()
    chosen = set(args.rows.split(","))
    rows = [metric_row()] if "metric" in chosen else []
    rows += speed_rows(device, args.reps, args.channels_last, args.compile) if "speed" in chosen else []
    rows += memory_rows(device) if "memory" in chosen else []
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    info = (f"{where}, torch {torch.__version__}{', channels-last' if args.channels_last else ''}, "
            f"{args.reps} reps, {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f}")
    print(markdown(rows, info))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
