"""How fast is PANet here? Training and test speed, peak memory, metric cost and the small CPU encoder.

Measures, on the device PyTorch finds (CUDA if available, else CPU):

- training steps/s and peak memory of PANet VGG-16, 1-way 1-shot, 417 x 417, one episode per step
  (fp32; on CUDA also bf16 autocast + channels_last), with the 30,000-step time it implies;
- test throughput (episodes/s, faithful protocol: forward, argmax, IoUMeter) and the time of the
  paper's 5 x 1,000 test episodes, with and without the data loading measured beside it;
- data loading: one episode from a VOC-format tree of 500 x 375 JPEGs, decoded and resized to 417;
- the metric alone: IoUMeter.update on 417 x 417 predictions, per 1,000 queries;
- the course's small encoder at 64 px on the CPU (training steps/s, test episodes/s).

Episodes are real ones (the embedded dataset, resized), built before the clock starts, so the model
rows time the computation only. Usage (from the repository root):

    python benchmarks/benchmark.py                # full (GPU: about a minute; CPU: long)
    python benchmarks/benchmark.py --quick        # a few iterations each: minutes on a laptop CPU
    python benchmarks/benchmark.py --quick --out runs/benchmark.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import default_collate

from panet_lite.data import IGNORE, fold_classes, train_classes
from panet_lite.episodes import EpisodeDataset, resize_pair
from panet_lite.evaluate import predict
from panet_lite.metrics import IoUMeter
from panet_lite.model import PANet
from panet_lite.synthetic import SyntheticFewShot, write_voc_tree
from panet_lite.train import segmentation_loss

PAPER_SIZE = 417
PAPER_STEPS = 30_000
PAPER_TEST_EPISODES = 5 * 1000


@dataclass
class Row:
    """One measurement of the table."""

    name: str
    setting: str
    value: float
    unit: str
    notes: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of fn(i) over n calls, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    sync(device)
    start = time.perf_counter()
    for i in range(n):
        fn(warmup + i)
    sync(device)
    return (time.perf_counter() - start) / n


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """CUDA: peak allocated GiB since the last reset. CPU: the process's peak resident memory so far
    (it never goes down, so the measurements run from the smallest model to the largest)."""
    if device.type == "cuda":
        return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    return {"peak_process_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def episode_batches(n: int, size: int, batch_size: int = 1, train: bool = True, shots: int = 1) -> list[dict]:
    """n collated batches of 1-way episodes of the embedded dataset (64 px), resized to size x size:
    support_images (B, 1, shots, 3, size, size), query_images (B, 1, 3, size, size), ..."""
    source = SyntheticFewShot("trainaug" if train else "val", 300, 64)
    classes = train_classes(0) if train else fold_classes(0)
    data = EpisodeDataset(source, classes, n * batch_size, n_shots=shots, seed=1234, size=size, flip=train)
    return [default_collate([data[i] for i in range(j, j + batch_size)]) for j in range(0, len(data), batch_size)]


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_row(name: str, backbone: str, size: int, device: torch.device, steps: int, warmup: int,
              amp: bool = False, channels_last: bool = False, lr: float = 1e-3, shots: int = 1,
              recompute: bool = False) -> Row:
    """Steps/s of PANet's training step (forward, segmentation + alignment loss, backward, SGD)."""
    torch.manual_seed(0)
    model = PANet(backbone, pretrained=False).to(device).train()
    model.recompute = recompute
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    batches = [to_device(b, device) for b in episode_batches(min(steps + warmup, 8), size, shots=shots)]
    aligned = []

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(b["support_images"], b["support_fg"], b["support_bg"], b["query_images"])
            loss = segmentation_loss(out.logits.float(), b["query_labels"]) + out.align_loss.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        aligned.append(bool(out.align_loss.detach() != 0))

    reset_peak(device)
    seconds = timed(step, steps, warmup, device)
    setting = ("bf16 autocast + channels_last" if amp else "fp32") + f", {size} px, {shots}-shot, {steps} steps"
    setting += ", --recompute" if recompute else ""
    notes = {**peak_memory(device), "seconds_per_step": round(seconds, 4),
             "align_loss_active": f"{sum(aligned)}/{len(aligned)} steps"}
    if backbone == "vgg16":
        notes[f"hours_for_{PAPER_STEPS}_steps"] = round(seconds * PAPER_STEPS / 3600, 2)
    return Row(name, setting, 1 / seconds, "steps/s", notes)


def eval_row(name: str, backbone: str, size: int, device: torch.device, n: int, warmup: int, amp: bool = False,
             load_seconds: float | None = None, batch_size: int = 1) -> Row:
    """Episodes/s of the faithful test loop: forward, argmax at the label size, IoUMeter.update."""
    torch.manual_seed(0)
    model = PANet(backbone, pretrained=False).to(device).eval()
    batches = episode_batches(min(n + warmup, 8), size, batch_size, train=False)
    meter = IoUMeter(20)

    def episode(i: int) -> None:
        b = batches[i % len(batches)]
        pred = predict(model, b, device, amp, size=b["query_labels"].shape[-2:])
        for k in range(pred.shape[0]):
            meter.update(pred[k].cpu(), b["query_labels"][k], b["class_ids"][k])

    reset_peak(device)
    seconds = timed(episode, n, warmup, device) / batch_size
    setting = ("bf16 autocast" if amp else "fp32") + f", {size} px, batch {batch_size}, {n * batch_size} episodes"
    notes = {**peak_memory(device), "seconds_per_episode": round(seconds, 4)}
    if backbone == "vgg16":
        notes[f"minutes_for_{PAPER_TEST_EPISODES}_episodes"] = round(seconds * PAPER_TEST_EPISODES / 60, 2)
        if load_seconds is not None:
            notes[f"minutes_for_{PAPER_TEST_EPISODES}_episodes_with_loading"] = round(
                (seconds + load_seconds) * PAPER_TEST_EPISODES / 60, 2)
    return Row(name, setting, 1 / seconds, "episodes/s", notes)


def voc_like_tree(root: Path, n: int = 24, height: int = 375, width: int = 500) -> Path:
    """A prepared VOC tree of the embedded dataset whose trainaug images are VOC-sized JPEGs (500 x 375)."""
    from PIL import Image

    from panet_lite.pascal import PascalVOC

    voc = write_voc_tree(root, n_train=n, n_val=4, size=64)
    source = PascalVOC(root, "trainaug")
    for image_id in source.ids():
        image, label = resize_pair(*source.load(image_id), (height, width))
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = Image.open(voc / "SegmentationClassAug" / f"{image_id}.png")
        resized = Image.fromarray(label.to(torch.uint8).numpy(), mode="P")
        resized.putpalette(mask.getpalette())
        resized.save(voc / "SegmentationClassAug" / f"{image_id}.png")
    return voc


def loading_row(n: int, size: int) -> Row:
    """Seconds to build one 1-way 1-shot episode from JPEG/PNG files: decode, resize, masks, normalise."""
    from panet_lite.pascal import PascalVOC

    with tempfile.TemporaryDirectory() as tmp:
        voc_like_tree(Path(tmp))
        source = PascalVOC(tmp, "trainaug")
        present = [c for c, ids in zip(range(1, 21), source.class_lists(range(1, 21))) if len(ids) >= 2]
        data = EpisodeDataset(source, present, n + 1, 1, 1, 1, seed=1234, size=size)
        seconds = timed(lambda i: data[i], n, 1, torch.device("cpu"))
    return Row("data: one episode from files", f"500x375 JPEG -> {size} px, {n} episodes", 1 / seconds,
               "episodes/s", {"seconds_per_episode": round(seconds, 4)})


def metric_row(queries: int, size: int) -> Row:
    """IoUMeter.update on size x size 1-way predictions with VOC-like 255 borders, per 1,000 queries."""
    gen = torch.Generator().manual_seed(0)
    pool = 8  # distinct (pred, target) pairs, cycled: 1,000 full-size pairs would take 2.8 GB
    pred = torch.randint(0, 2, (pool, size, size), generator=gen)  # (pool, H, W) episode labels
    target = torch.randint(0, 2, (pool, size, size), generator=gen)
    target[:, ::37] = IGNORE
    meter = IoUMeter(20)
    class_ids = torch.tensor([3])
    seconds = timed(lambda i: meter.update(pred[i % pool], target[i % pool], class_ids), queries, 2,
                    torch.device("cpu"))
    return Row("metric: IoUMeter.update", f"{size} x {size}, 1-way, {queries} queries", seconds * 1000,
               "s per 1,000 queries", {"ms_per_query": round(seconds * 1000, 3)})


def run(quick: bool, device: torch.device) -> list[Row]:
    n = (lambda full, fast: fast if quick else full)
    rows = [metric_row(n(1000, 200), PAPER_SIZE)]
    print(f"  {rows[-1].name}: {rows[-1].value:.2f} {rows[-1].unit}", file=sys.stderr)
    cpu = torch.device("cpu")
    small = [train_row("train: small encoder, CPU", "small", 64, cpu, n(200, 30), n(10, 3), lr=0.01),
             eval_row("test: small encoder, CPU", "small", 64, cpu, n(200, 30), n(10, 3)),
             eval_row("test: small encoder, CPU", "small", 64, cpu, n(8, 2), 1, batch_size=25)]
    for r in small:
        print(f"  {r.name}: {r.value:.2f} {r.unit}", file=sys.stderr)
    rows += small
    rows.append(loading_row(n(50, 10), PAPER_SIZE))
    load_seconds = 1 / rows[-1].value
    print(f"  {rows[-1].name}: {rows[-1].value:.2f} {rows[-1].unit}", file=sys.stderr)
    precisions = [False, True] if device.type == "cuda" else [False]
    for amp in precisions:
        r = eval_row("test: PANet VGG-16 1-way 1-shot", "vgg16", PAPER_SIZE, device, n(100, 2), n(5, 1), amp,
                     load_seconds)
        print(f"  {r.name} ({r.setting}): {r.value:.3f} {r.unit}", file=sys.stderr)
        rows.append(r)
    # 1-shot, then 5-shot (on a CPU the process's peak memory only grows: smallest first).
    for shots in (1, 5):
        for amp in precisions:
            r = train_row(f"train: PANet VGG-16 1-way {shots}-shot", "vgg16", PAPER_SIZE, device, n(50, 2),
                          n(5, 1), amp, channels_last=amp, shots=shots)
            print(f"  {r.name} ({r.setting}): {r.value:.3f} {r.unit}", file=sys.stderr)
            rows.append(r)
    if device.type == "cuda":
        r = train_row("train: PANet VGG-16 1-way 5-shot", "vgg16", PAPER_SIZE, device, n(50, 2), n(5, 1), True,
                      channels_last=True, shots=5, recompute=True)
        print(f"  {r.name} ({r.setting}): {r.value:.3f} {r.unit}", file=sys.stderr)
        rows.append(r)
    return rows


def describe(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": device.type,
            "cpu_threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(), "machine": platform.machine(),
            # Other processes slow every CPU row down (and multi-threaded small ops most): look here first.
            "load_average_1min": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(rows: list[Row], info: dict, quick: bool) -> str:
    where = info.get("gpu", f"CPU, {info['cpu_threads']} threads")
    lines = [f"PANet benchmark: {where}, torch {info['torch']}{' (--quick)' if quick else ''}, "
             f"load average {info['load_average_1min']} on {info['cpu_cores']} cores, {info['seconds']:.0f} s", "",
             "| measurement | setting | value | notes |", "|---|---|---|---|"]
    for r in rows:
        notes = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r.notes.items())
        lines.append(f"| {r.name} | {r.setting} | {r.value:.3g} {r.unit} | {notes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations per measurement (CPU-friendly)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: its own)")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    info = describe(device)
    print(f"benchmarking on {info.get('gpu', 'CPU')} ...", file=sys.stderr)
    start = time.perf_counter()
    rows = run(args.quick, device)
    info["seconds"] = round(time.perf_counter() - start, 1)
    info["load_average_1min"] = max(info["load_average_1min"], round(os.getloadavg()[0], 2))
    print(markdown(rows, info, args.quick))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**info, "quick": args.quick, "results": [r.__dict__ for r in rows]},
                                             indent=1))
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
