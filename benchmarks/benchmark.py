"""How fast is PANet here? Training and test speed, peak memory, metric cost and the small CPU encoder.

Measures, on the device PyTorch finds (CUDA if available, else CPU):

- training steps/s and peak memory of PANet VGG-16, 1-way 1-shot and 5-shot, 417 x 417, one episode
  per step (fp32; on CUDA also bf16 autocast + channels_last), with the 30,000-step time it implies;
- test throughput (episodes/s, faithful protocol: forward, argmax, IoUMeter), 1-shot and 5-shot, one
  episode per forward pass and (on CUDA) `test --batch-size auto`'s batch, with the time of the
  paper's 5 x 1,000 test episodes;
- data loading per worker (one thread): `EpisodeDataset`'s training episodes from a prepared VOC
  tree (--root, or a generated tree of VOC-size JPEGs), beside a minimal loader that only decodes,
  resizes and normalises;
- the projection those rates give: the 8-model PASCAL-5i table's minutes on this device, as
  `reproduce` runs it (--workers auto, loading overlapped with computation);
- the metric alone: IoUMeter.update on 417 x 417 predictions, per 1,000 queries;
- the course's small encoder at 64 px on the CPU (training steps/s, test episodes/s).

Episodes are real ones (the embedded dataset, resized), built before the clock starts, so the model
rows time the computation only. Usage (from the repository root):

    python benchmarks/benchmark.py                # full (GPU: about a minute; CPU: long)
    python benchmarks/benchmark.py --quick        # a few iterations each: minutes on a laptop CPU
    python benchmarks/benchmark.py --quick --out runs/benchmark.json
    python benchmarks/benchmark.py --root data/pascal  # the loading rows on your prepared VOC
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

import numpy as np
import torch
from torch.utils.data import default_collate

from panet_lite.data import IGNORE, fold_classes, train_classes
from panet_lite.episodes import EpisodeDataset, resize_pair
from panet_lite.evaluate import predict
from panet_lite.metrics import IoUMeter
from panet_lite.model import PANet
from panet_lite.runtime import test_batch_size
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
             batch_size: int = 1, shots: int = 1) -> Row:
    """Episodes/s of the faithful test loop: forward, argmax at the label size, IoUMeter.update."""
    torch.manual_seed(0)
    model = PANet(backbone, pretrained=False).to(device).eval()
    batches = episode_batches(min(n + warmup, 8), size, batch_size, train=False, shots=shots)
    meter = IoUMeter(20)

    def episode(i: int) -> None:
        b = batches[i % len(batches)]
        pred = predict(model, b, device, amp, size=b["query_labels"].shape[-2:])
        for k in range(pred.shape[0]):
            meter.update(pred[k].cpu(), b["query_labels"][k], b["class_ids"][k])

    reset_peak(device)
    seconds = timed(episode, n, warmup, device) / batch_size
    setting = (("bf16 autocast" if amp else "fp32") + f", {size} px, {shots}-shot, batch {batch_size}, "
               f"{n * batch_size} episodes")
    notes = {**peak_memory(device), "seconds_per_episode": round(seconds, 4)}
    if backbone == "vgg16":
        notes[f"minutes_for_{PAPER_TEST_EPISODES}_episodes"] = round(seconds * PAPER_TEST_EPISODES / 60, 2)
    return Row(name, setting, 1 / seconds, "episodes/s", notes)


def voc_like_tree(root: Path, n: int = 24, height: int = 375, width: int = 500, grain: float = 16.0) -> Path:
    """A prepared VOC tree of the embedded dataset whose trainaug images are VOC-sized JPEGs: every third
    one portrait (width x height), the rest landscape (height x width), with seeded Gaussian grain of
    `grain` grey levels so that the files are photograph-sized (about 80 KB each; VOC's average about
    100 KB) and take a photograph's time to decode; masks resized to match."""
    from PIL import Image

    from panet_lite.pascal import PascalVOC

    voc = write_voc_tree(root, n_train=n, n_val=4, size=64)
    source = PascalVOC(root, "trainaug")
    rng = np.random.default_rng(0)
    for k, image_id in enumerate(source.ids()):
        shape = (width, height) if k % 3 == 2 else (height, width)
        image, label = resize_pair(*source.load(image_id), shape)
        pixels = image.permute(1, 2, 0).numpy() + rng.normal(0, grain, (*shape, 3))
        Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg",
                                                                          quality=90)
        mask = Image.open(voc / "SegmentationClassAug" / f"{image_id}.png")
        resized = Image.fromarray(label.to(torch.uint8).numpy(), mode="P")
        resized.putpalette(mask.getpalette())
        resized.save(voc / "SegmentationClassAug" / f"{image_id}.png")
    return voc


def minimal_episode(voc: Path, image_ids: list[str], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The yardstick: what every loader must do for an episode's images and nothing more. PIL decode, RGB,
    bilinear resize of the image (no antialiasing) and nearest of the mask to size x size, normalise."""
    import torch.nn.functional as F
    from PIL import Image

    from panet_lite.data import normalize

    out = []
    for image_id in image_ids:
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as file:
            pixels = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1)[None].float()
        with Image.open(voc / "SegmentationClassAug" / f"{image_id}.png") as file:
            mask = torch.from_numpy(np.array(file))[None, None]
        image = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        out.append((normalize(image / 255), F.interpolate(mask, size=(size, size), mode="nearest")))
    return out


def loader_rows(root: str | None, n: int, size: int, repeats: int = 3, images: int = 300) -> list[Row]:
    """Episodes/s of one data-loading worker (one thread, as in a DataLoader worker): `EpisodeDataset` on
    fold-0 1-way training episodes (1-shot and 5-shot, flips, `size` px) beside the minimal loader on the
    1-shot episodes' images; interleaved, the median of `repeats` passes over n episodes, after one
    untimed pass (the files in the page cache). On a prepared VOC `root`, or a generated tree."""
    from panet_lite.pascal import PascalVOC

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if root is None:
                voc_like_tree(Path(tmp), n=images)
            tree = Path(root or tmp)
            source = PascalVOC(tree, "trainaug")
            voc = source.voc
            kib = np.mean([f.stat().st_size for f in list((voc / "JPEGImages").glob("*.jpg"))[:500]]) / 1024
            where = (f"{root}" if root else f"a generated tree of {images} VOC-size JPEGs") + f" ({kib:.0f} KiB each)"
            lists = source.class_lists(train_classes(0))
            classes = [c for c, ids in zip(train_classes(0), lists) if len(ids) >= 6]
            one = EpisodeDataset(source, classes, n, 1, 1, 1, seed=1234, size=size, flip=True)
            five = EpisodeDataset(source, classes, n, 1, 5, 1, seed=1234, size=size, flip=True)
            ids = [[*ep.support[0], *ep.query] for ep in one.episodes]
            timings: dict[str, list[float]] = {"ours": [], "minimal": [], "five": []}
            for repeat in range(repeats + 1):
                for name, fn in (("ours", lambda i: one[i]), ("minimal", lambda i: minimal_episode(voc, ids[i], size)),
                                 ("five", lambda i: five[i])):
                    start = time.perf_counter()
                    for i in range(n):
                        fn(i)
                    if repeat:  # the first pass warms the page cache
                        timings[name].append((time.perf_counter() - start) / n)
    finally:
        torch.set_num_threads(threads)
    median = {name: sorted(t)[len(t) // 2] for name, t in timings.items()}
    setting = f"fold-0 1-way training episodes, {size} px, flips, 1 thread, median of {repeats} x {n}"
    return [Row("data: EpisodeDataset, 1-shot, per worker", setting, 1 / median["ours"], "episodes/s",
                {"minimal_loader_episodes_per_s": round(1 / median["minimal"], 1),
                 "time_ratio_to_minimal": round(median["ours"] / median["minimal"], 2), "on": where}),
            Row("data: EpisodeDataset, 5-shot, per worker", setting, 1 / median["five"], "episodes/s",
                {"on": where})]


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


FOLDS = 4  # PASCAL-5i: a 1-shot and a 5-shot model per fold


def table_projection(train: dict[int, float], test: dict[int, float], load: dict[int, float], workers: int) -> dict:
    """Minutes for the 8-model PASCAL-5i table from measured seconds per training step, per test episode
    and per episode loaded by one worker, each by shot count (1 and 5): per fold, each model trains
    PAPER_STEPS steps and is tested on PAPER_TEST_EPISODES episodes. With workers, loading overlaps the
    computation and a step takes the longer of the two (its loading spread over the workers); with
    none, the process loads and then computes, and the two add."""
    def per(compute: float, loading: float) -> float:
        return max(compute, loading / workers) if workers else compute + loading

    train_s = FOLDS * PAPER_STEPS * sum(per(train[k], load[k]) for k in (1, 5))
    test_s = FOLDS * PAPER_TEST_EPISODES * sum(per(test[k], load[k]) for k in (1, 5))
    bound = {k: "loading" if workers and load[k] / workers > train[k] else "computation" for k in (1, 5)}
    return {"minutes": round((train_s + test_s) / 60, 1), "training_minutes": round(train_s / 60, 1),
            "test_minutes": round(test_s / 60, 1), "workers": workers,
            "training_bound_by": f"1-shot {bound[1]}, 5-shot {bound[5]}"}


def projection_row(seconds: dict, device: torch.device, amp: bool) -> Row:
    """The 8-model table's time on this device (`table_projection`) from the seconds measured, as
    `reproduce` runs it here: --workers auto, test --batch-size auto, fp32 (amp: --amp --channels-last).
    seconds: {"train": {amp: {shots: s}}, "test": {amp: {shots: s}} (at the auto batch), "load": {shots: s}}."""
    from panet_lite.runtime import loader_options

    workers = loader_options("auto", device)["num_workers"]
    minutes = table_projection(seconds["train"][amp], seconds["test"][amp], seconds["load"], workers)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
    flags = " --amp --channels-last" if amp else ""
    batch = test_batch_size("auto", device, per_query=False)
    return Row(f"projection: the 8-model PASCAL-5i table{flags}", f"{where}, {PAPER_STEPS} steps and "
               f"{PAPER_TEST_EPISODES} test episodes per model, test batch {batch}, {workers} loader workers",
               minutes.pop("minutes"), "minutes", minutes)


def run(quick: bool, device: torch.device, root: str | None = None) -> list[Row]:
    n = (lambda full, fast: fast if quick else full)

    def add(row: Row) -> None:
        rows.append(row)
        print(f"  {row.name} ({row.setting}): {row.value:.3g} {row.unit}", file=sys.stderr)

    rows: list[Row] = []
    add(metric_row(n(1000, 200), PAPER_SIZE))
    cpu = torch.device("cpu")
    add(train_row("train: small encoder, CPU", "small", 64, cpu, n(200, 30), n(10, 3), lr=0.01))
    add(eval_row("test: small encoder, CPU", "small", 64, cpu, n(200, 30), n(10, 3)))
    add(eval_row("test: small encoder, CPU", "small", 64, cpu, n(8, 2), 1, batch_size=25))
    seconds: dict = {"train": {False: {}, True: {}}, "test": {False: {}, True: {}}, "load": {}}
    for shots, row in zip((1, 5), loader_rows(root, n(100, 10), PAPER_SIZE, images=n(300, 40))):
        add(row)
        seconds["load"][shots] = 1 / row.value
    precisions = [False, True] if device.type == "cuda" else [False]
    auto = test_batch_size("auto", device, per_query=False)
    for amp in precisions:
        for shots in (1, 5):
            for batch in sorted({1, auto}):
                add(eval_row(f"test: PANet VGG-16 1-way {shots}-shot", "vgg16", PAPER_SIZE, device,
                             max(1, n(100, 2) // batch), n(5, 1), amp, batch_size=batch, shots=shots))
            seconds["test"][amp][shots] = 1 / rows[-1].value  # at the auto batch (the larger)
    # 1-shot, then 5-shot (on a CPU the process's peak memory only grows: smallest first).
    for shots in (1, 5):
        for amp in precisions:
            add(train_row(f"train: PANet VGG-16 1-way {shots}-shot", "vgg16", PAPER_SIZE, device, n(50, 2),
                          n(5, 1), amp, channels_last=amp, shots=shots))
            seconds["train"][amp][shots] = 1 / rows[-1].value
    if device.type == "cuda":
        add(train_row("train: PANet VGG-16 1-way 5-shot", "vgg16", PAPER_SIZE, device, n(50, 2), n(5, 1), True,
                      channels_last=True, shots=5, recompute=True))
    for amp in precisions:
        add(projection_row(seconds, device, amp))
        r = rows[-1]
        print(f"the 8-model PASCAL-5i table{' with --amp --channels-last' if amp else ''}: {r.value:.0f} minutes on "
              f"{r.setting.split(',')[0]} (training {r.notes['training_minutes']:.0f}, tests "
              f"{r.notes['test_minutes']:.0f})", file=sys.stderr)
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
    parser.add_argument("--root", help="a prepared VOC tree (`prepare pascal`) for the data-loading rows (default: a "
                                       "generated tree of VOC-size JPEGs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    info = describe(device)
    print(f"benchmarking on {info.get('gpu', 'CPU')} ...", file=sys.stderr)
    start = time.perf_counter()
    rows = run(args.quick, device, args.root)
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
