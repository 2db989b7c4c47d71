"""Command line: `python -m panet_lite {demo,prepare,train,test,reproduce,paper}`; flags mirror the config dataclasses."""
from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import warnings
from dataclasses import fields, replace
from inspect import signature

from . import distributed
from .demo import DemoConfig
from .evaluate import PROTOCOL_DEFAULTS, EvalConfig
from .encoders import ENCODERS, PRETRAINED_BACKBONES
from .methods import METHODS, get_method
from .options import add_options, dest, int_tuple, parse_bool_or_path, pick
from .sources import DATASETS, PREPARE_CHOICES, REGISTRY
from .train import TrainConfig

COMMANDS = {
    "demo": "train a small PANet on the embedded dataset (CPU, ~3 min) and report unseen-fold mIoU",
    "prepare": "download (if missing) and prepare PASCAL VOC + SBD or COCO 2014 for few-shot episodes",
    "train": "train PANet on a fold (the paper's recipe by default); rerunning resumes",
    "test": "test a checkpoint with the faithful (default), standard or HSNet's protocol",
    "reproduce": "train and test all folds and shot counts; write the table (beside the paper's on real data)",
    "paper": "print the published table, each row with where it was read (the COCO-20i 2-way ResNet-50 row is "
             "not from PANet's paper)",
}


def _data_args(p: argparse.ArgumentParser, fold_required: bool = True) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="pascal5i",
                   help="benchmark; synthetic is the embedded dataset, shaped like pascal5i (default: %(default)s)")
    p.add_argument("--root", help="prepared data directory (see `prepare`); not needed for synthetic")
    if fold_required:
        p.add_argument("--fold", type=int, required=True, choices=range(4), metavar="{0,1,2,3}",
                       help="the fold whose classes are held out: trained without, tested on")
    for entry in REGISTRY.values():  # options of one dataset only, e.g. --synthetic-size
        for name, (kind, text) in entry.options.items():
            default = signature(entry.opener).parameters[name].default
            p.add_argument(entry.flag(name), dest=f"{entry.name}_{name}", type=kind, default=None,
                           help=f"{text}; --dataset {entry.name} only (default: {default})")


def _dataset_options(args) -> dict:
    """The options of the chosen dataset that were given; another dataset's option is an error."""
    chosen = {}
    for entry in REGISTRY.values():
        for name in entry.options:
            value = getattr(args, f"{entry.name}_{name}")
            if value is None:
                continue
            if entry.name != args.dataset:
                raise ValueError(f"{entry.flag(name)} applies to --dataset {entry.name} only, not {args.dataset}")
            chosen[name] = value
    return chosen


class Parser(argparse.ArgumentParser):
    """argparse that reads flags only as spelled out: `--step 3` is refused, naming `--steps`, rather than
    read as an abbreviation (one rule for every command; a flag's meaning never depends on the others)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m panet_lite", description="PANet few-shot segmentation: course companion and reproduction.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help=COMMANDS["demo"], description=COMMANDS["demo"])
    add_options(p, DemoConfig)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    p = sub.add_parser("prepare", help=COMMANDS["prepare"], description=COMMANDS["prepare"])
    p.add_argument("dataset", choices=PREPARE_CHOICES, help="what to prepare: pascal (VOC 2012 + SBD, for pascal5i) "
                                                              "or coco (COCO 2014, for coco20i)")
    p.add_argument("--root", required=True, help="data directory (VOCdevkit/ and SBD/, or COCO's folders)")
    p.add_argument("--no-download", dest="download", action="store_false", help="fail instead of downloading")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--check-only", action="store_true",
                       help="pascal: download and build nothing, only compare a prepared tree's image counts per "
                            "split and class with a correct preparation's (data/pascal5i_reference_counts.json)")
    check.add_argument("--no-check-counts", dest="check_counts", action="store_false",
                       help="pascal: skip that comparison after building, e.g. for a deliberate subset; by default "
                            "a mismatch (such as a partial SBD download gives) is an error")
    p.add_argument("--voc-url", help="pascal: download VOCtrainval_11-May-2012.tar from this mirror (the official "
                                     "host is often down); its checksum is still checked")
    p.add_argument("--sbd-url", help="pascal: download SBD's benchmark.tgz from this mirror; checksum still checked")
    p.add_argument("--coco-url", action="append", default=[], metavar="NAME=URL",
                   help="coco: download archive NAME (annotations, train2014 or val2014) from URL; repeat for "
                        "several; checksums still checked")

    p = sub.add_parser("train", help=COMMANDS["train"], description=COMMANDS["train"])
    _data_args(p)
    add_options(p, TrainConfig)
    p.add_argument("--out", help="run directory (default: runs/DATASET/foldF-Nway-Kshot)")

    p = sub.add_parser("test", help=COMMANDS["test"], description=COMMANDS["test"])
    _data_args(p)
    add_options(p, EvalConfig)
    p.add_argument("--checkpoint", help="checkpoint.pt written by `train`")
    p.add_argument("--notrain", action="store_true", help="no checkpoint: pretrained features only, no training "
                   "(with vgg16, the paper's ImageNet baseline)")
    p.add_argument("--backbone", default="vgg16", choices=PRETRAINED_BACKBONES,
                   help="encoder for --notrain, with its pretrained weights, downloaded once: " + "; ".join(
                       f"{n}: {ENCODERS[n].about}, {ENCODERS[n].weights}" for n in PRETRAINED_BACKBONES)
                   + " (default: %(default)s)")
    p.add_argument("--pretrained", default=True, type=parse_bool_or_path,
                   help="--notrain's weights: true downloads them, a path reads a local copy, false keeps random "
                        "weights (to try the pipeline offline; the report says it is not a result) (default: true)")
    p.add_argument("--method", choices=METHODS.keys(), default=None,
                   help="the matching to test with: --notrain's (default panet), or another than the one a "
                        "--checkpoint was trained with, on its encoder (" + "; ".join(
                            f"{n}: {m.summary}" for n, m in METHODS.items()) + ")")
    p.add_argument("--allow-seen-classes", action="store_true",
                   help="test a checkpoint on a fold whose classes it was trained on (refused by default: such "
                        "a number is not a few-shot result; the report says so)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")

    p = sub.add_parser("reproduce", help=COMMANDS["reproduce"], description=COMMANDS["reproduce"])
    _data_args(p, fold_required=False)
    p.add_argument("--folds", default=(0, 1, 2, 3), type=int_tuple(0, 3), help="comma-separated folds (default: 0,1,2,3)")
    p.add_argument("--shot-list", default=(1, 5), type=int_tuple(1), help="comma-separated shot counts (default: 1,5)")
    p.add_argument("--ways", default=1, type=int, help="ways (N) of the training and test episodes (default 1). The "
                   "COCO-20i 2-way 1-shot ResNet-50 row (18.0) is not in PANet's paper: Papers with Code files it "
                   "under PANet (see `python -m panet_lite paper`); its setting: --dataset coco20i --ways 2 "
                   "--shot-list 1 --backbone resnet50")
    p.add_argument("--out", default=None, help="output directory (default: runs/DATASET, runs/DATASET-METHOD for a "
                   "later method, and -notrain-BACKBONE after it with --notrain)")
    p.add_argument("--notrain", action="store_true", help="train nothing: test the method's matching on the "
                   f"encoder's pretrained weights (--backbone {', '.join(PRETRAINED_BACKBONES)}; --pretrained PATH "
                   "for a local copy, false for random weights, which are no result); the table says no training")
    p.add_argument("--gpus", default=None, type=int_tuple(0), help="comma-separated GPU ids: run the (fold, shots) "
                   "jobs side by side, one per GPU at a time, each in its own process (default: one after the "
                   "other on --device)")
    # --size, --device, --amp, --dtype, --batch-size (where given; else the test picks its own) and --workers apply
    # to training and testing alike; --seed is the training seed and --test-seed the test sampler's, so a new
    # training seed keeps the test episodes.
    add_options(p, TrainConfig, skip=("shots", "ways", "queries", "size", "device", "amp", "dtype"))
    add_options(p, EvalConfig, skip=("ways", "shots", "queries", "batch_size", "workers", "save_episodes"))

    sub.add_parser("paper", help=COMMANDS["paper"], description=COMMANDS["paper"])
    parser.commands = sub.choices  # name -> the command's parser
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with `given`: the destinations of the flags that were typed.

    A flag is given when argparse itself read it (`--steps 3`, `--steps=3`, `--no-flip` alike), so a
    method's recipe or a protocol's defaults fill exactly the others. A flag that is not one of the
    command's, an abbreviation included, is one line naming the closest flags.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = parser.commands[args.command]
    if unknown:
        flags = [o for action in command._actions for o in action.option_strings]
        close = []
        for token in (t.split("=")[0] for t in unknown if t.startswith("--")):
            extended = [f for f in flags if f.startswith(token)]  # what an abbreviation would have meant
            close += [f for f in extended or difflib.get_close_matches(token, flags, n=2, cutoff=0.6)
                      if f not in close]
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; see `python -m panet_lite {args.command} -h`"
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint} (flags are read only as spelled out "
                      f"in full)")
    typed = build_parser()  # the same parser with no defaults: what it returns was typed
    for action in (a for p in typed.commands.values() for a in p._actions):
        action.default = argparse.SUPPRESS
    args.given = set(vars(typed.parse_args(argv)))
    return args


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. ImageNet weights unavailable offline) as one `warning: ...` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def _json_line(obj) -> str:
    """One line of strict JSON; NaN (the IoU of a class that no episode tested) becomes null."""
    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("once")
        warnings.showwarning = _print_warning
        try:
            return COMMAND_FUNCTIONS[args.command](args)
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            # Bad input and missing data end with one clear line, not a traceback.
            return _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; rerun the same command to go on (training resumes from its last checkpoint, "
                  "prepare keeps the work it finished)")
            return 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)
        finally:
            distributed.stop()


def cmd_demo(args) -> int:
    from .demo import format_report, run_demo

    result = run_demo(pick(args, DemoConfig), progress=not args.json)
    print(format_report(result))
    if args.json:
        print(_json_line(result))
    return 0


def _coco_urls(pairs: list[str]) -> dict[str, str]:
    """--coco-url NAME=URL, repeated, as {name: url}; a malformed pair or unknown name is one clear error."""
    from .coco import COCO_ARCHIVES

    urls = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not url:
            raise ValueError(f"--coco-url {pair!r}: write NAME=URL, e.g. --coco-url val2014=https://mirror/val2014.zip")
        if name not in COCO_ARCHIVES:
            raise ValueError(f"--coco-url {pair!r}: no COCO archive is called {name!r}; "
                             f"choose one of {', '.join(COCO_ARCHIVES)}")
        urls[name] = url
    return urls


def cmd_prepare(args) -> int:
    if args.dataset == "coco" and (args.voc_url or args.sbd_url):
        raise ValueError("--voc-url and --sbd-url apply to `prepare pascal`; COCO's mirrors go in --coco-url NAME=URL")
    if args.dataset == "pascal" and args.coco_url:
        raise ValueError("--coco-url applies to `prepare coco`; PASCAL's mirrors go in --voc-url and --sbd-url")
    if args.dataset == "coco":
        if args.check_only or not args.check_counts:
            raise ValueError("--check-only and --no-check-counts apply to `prepare pascal` only "
                             "(there are no reference counts for COCO)")
        from .coco import prepare_coco

        report = prepare_coco(args.root, download=args.download, urls=_coco_urls(args.coco_url))
    elif args.check_only:
        from .pascal import check_pascal_counts

        counts = check_pascal_counts(args.root)
        report = {"counts": "match the reference", **{split: c["images"] for split, c in counts.items()}}
    else:
        from .pascal import prepare_pascal

        report = prepare_pascal(args.root, download=args.download, check_counts=args.check_counts,
                                voc_url=args.voc_url, sbd_url=args.sbd_url)
    print(json.dumps(report, indent=1, default=str))
    return 0


def cmd_train(args) -> int:
    from .reproduce import run_dir, runs_folder
    from .sources import benchmark, open_source, split_for
    from .train import train

    cfg = _train_config(args)
    out = args.out or run_dir(runs_folder(args.dataset, cfg.method), args.fold, cfg.shots, cfg.ways)
    source = open_source(args.dataset, args.root, split_for(args.dataset, "train"), _dataset_options(args))
    ranks = distributed.start(cfg.device)  # under torchrun: one process of several (DDP)
    train(source, benchmark(args.dataset).train_classes(args.fold), cfg, out=out)
    if ranks.main:
        print(f"checkpoint: {out}/checkpoint.pt" + (f" ({ranks.world} processes)" if ranks.world > 1 else ""))
    return 0


def cmd_test(args) -> int:
    from .evaluate import check_support, evaluate
    from .reproduce import standard_episodes_name, untrained_features, untrained_model
    from .sources import benchmark, open_source, split_for
    from .train import load_checkpoint, model_from_checkpoint

    cfg = _eval_config(args)
    if not (args.notrain or args.checkpoint):
        raise ValueError("give --checkpoint RUN/checkpoint.pt, or --notrain for pretrained features only")
    if not args.notrain and "pretrained" in args.given:
        raise ValueError("--pretrained chooses --notrain's weights; a --checkpoint holds its own: drop --pretrained")
    if cfg.protocol == "standard" and cfg.save_episodes is None:
        name = standard_episodes_name(args.fold, cfg.shots, cfg.ways)
        cfg = replace(cfg, save_episodes=f"runs/{args.dataset}/{name}")
    # The data first: a missing or unprepared --root fails before any weights are loaded.
    source = open_source(args.dataset, args.root, split_for(args.dataset, cfg.protocol), _dataset_options(args))
    check_support(source, cfg.support)
    bench = benchmark(args.dataset)
    seen: list[int] = []
    if args.notrain:
        model = untrained_model(args.backbone, args.pretrained, args.method or "panet", seed=0)
    else:
        ckpt = load_checkpoint(args.checkpoint)
        seen = seen_classes(ckpt, bench, args.fold, args.checkpoint, args.allow_seen_classes)
        model = model_from_checkpoint(ckpt, args.checkpoint).eval()
        trained_with = model.matching
        if args.method is not None and args.method != model.method:  # the same method keeps its options
            model = model.as_method(args.method)
    ranks = distributed.start(cfg.device)  # under torchrun: the episodes are split across the processes
    result = evaluate(model, source, bench.test_classes(args.fold), cfg, progress=not args.json)
    if not ranks.main:
        return 0  # every rank holds the same result; rank 0 reports it
    supports = "" if cfg.support == "dense" else f", {cfg.support} supports"
    print(f"{cfg.protocol} protocol, fold {args.fold}, {cfg.ways}-way {cfg.shots}-shot{supports}, "
          f"{cfg.runs} x {cfg.episodes} episodes")
    spread = (lambda std: f" ± {100 * std:.1f}") if cfg.runs > 1 else (lambda std: "")
    print(f"  mIoU   {100 * result.miou:.1f}{spread(result.miou_std)}")
    print(f"  FB-IoU {100 * result.fb_iou:.1f}{spread(result.fb_iou_std)}")
    if cfg.runs == 1:
        print("  (one run: no std over runs)")
    for c, v in result.class_iou.items():
        print(f"  class {c:2d} IoU {100 * v:.1f}")
    if math.isnan(result.miou):
        print(f"  (nan: a test class appeared in no episode; use more than {cfg.episodes} --episodes)")
    if cfg.save_episodes:
        print(f"  episodes saved to {cfg.save_episodes}")
    if seen:
        print(f"  NOT a few-shot result: the checkpoint was trained on test classes {seen} (--allow-seen-classes)")
    if args.notrain:
        print(f"  no training: {model.matching.title}'s matching on "
              f"{untrained_features(args.backbone, args.pretrained)}")
    elif model.matching is not trained_with:
        print(f"  {model.matching.title}'s matching on an encoder trained with {trained_with.title}'s")
    if args.json:
        print(_json_line({**result.as_dict(), "seen_classes": seen}))
    return 0


def _given(args, name: str, cls=TrainConfig) -> bool:
    """Whether the flag of field `name` of `cls` was typed (its --no- form counts)."""
    return next(dest(f) for f in fields(cls) if f.name == name) in args.given


def _train_config(args) -> TrainConfig:
    """The training settings: the flags given, and the method's recipe (methods.py) for those not given
    (`--method ssp` alone means SSP's recipe: deep-stem ResNet-50, batches of 4, 6,000 steps, 473 px)."""
    preset = {k: v for k, v in get_method(args.method).recipe.items()
              if hasattr(args, k) and not _given(args, k)}
    return pick(args, TrainConfig, **preset)


def _eval_config(args):
    """The test settings: the flags given, and the protocol's own defaults for those not given
    (`--protocol hsnet` alone means HSNet's test: 1 run of 1,000 episodes, seed 0, 400 px)."""
    cfg = pick(args, EvalConfig)
    preset = {k: v for k, v in PROTOCOL_DEFAULTS.get(cfg.protocol, {}).items()
              if not _given(args, k, EvalConfig)}
    return replace(cfg, **preset)


def seen_classes(ckpt: dict, bench, fold: int, path, allow: bool) -> list[int]:
    """The fold's test classes that a checkpoint was trained on; refused unless `allow`.

    A checkpoint records its training classes; one from another fold (or from no fold split at all)
    would report mIoU on classes it has seen, which is not a few-shot number.
    """
    trained = set(ckpt.get("classes", ()))
    seen = sorted(trained & set(bench.test_classes(fold)))
    if seen and not allow:
        owner = [f for f in range(bench.n_folds) if set(bench.train_classes(f)) == trained]
        whose = f"it is the model of fold {owner[0]}: test it with --fold {owner[0]}" if owner else \
            "it belongs to no fold"
        raise ValueError(f"{path} was trained on classes {seen}, which fold {fold} tests on, so its mIoU would not "
                         f"be a few-shot result; {whose}, or pass --allow-seen-classes to measure it anyway")
    return seen


def _reproduce_configs(args):
    """reproduce's training and test settings: a --batch-size given applies to both; otherwise training
    takes the recipe's and the test its own (auto: 8 episodes per forward pass on a GPU)."""
    train_cfg, eval_cfg = _train_config(args), _eval_config(args)
    return train_cfg, eval_cfg if _given(args, "batch_size") else replace(eval_cfg, batch_size="auto")


def cmd_reproduce(args) -> int:
    from .reproduce import markdown, reproduce, runs_folder

    if distributed.launched():
        raise ValueError("reproduce is not run under torchrun: it runs its (fold, shots) jobs side by side on "
                         "several GPUs with --gpus 0,1,...; torchrun is for one `train` or `test`")
    folds, shots = list(args.folds), list(args.shot_list)
    train_cfg, eval_cfg = _reproduce_configs(args)
    out = args.out or runs_folder(args.dataset, train_cfg.method) + (
        f"-notrain-{train_cfg.backbone}" if args.notrain else "")
    if args.gpus and _given(args, "device"):
        raise ValueError("--gpus picks each job's GPU: drop --device")
    table = reproduce(args.dataset, args.root, out, train_cfg, eval_cfg, folds, shots,
                      options=_dataset_options(args), gpus=args.gpus, notrain=args.notrain)
    print(markdown(table))
    print(f"written to {out}/table.md and {out}/table.json")
    return 0


def cmd_paper(args) -> int:
    from .paper import markdown_table

    print(markdown_table())
    return 0


COMMAND_FUNCTIONS = {"demo": cmd_demo, "prepare": cmd_prepare, "train": cmd_train, "test": cmd_test,
                     "reproduce": cmd_reproduce, "paper": cmd_paper}
