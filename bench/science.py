r"""The real-audio science yardstick (DESIGN §12): does pre-training pay off on real music?

    make bench-science                       # kit (once), then the shipped recipe, 3 x 3 seeds
    python bench/science.py --recipe configs/pretrain/small-cpu.yaml --pretrain-seeds 3
    python bench/science.py --pretrain-seeds 1 --probe-seeds 1 --folds 2 --heads linear \
        --no-write --set train.max_steps=300 --name quick   # a quick look while choosing

Runs the shipped path only, each stage as its own process: `launch/shard.py` on the kit's
unlabeled corpus, then per pre-training seed `launch/pretrain.py` (DeepSpeed, one process) and
`launch/export.py`, then per task, fold rotation, probe head and probe seed
`launch/finetune.py --baselines` (pre-trained, random init and handcrafted through the same
head; per-layer scores with the linear head). Each task is cross-validated: rotation k tests
fold k and stops early on fold k+1, and a seed pair's score is the mean over its rotations, so
every track (piece) is tested once; spreads are over seed pairs. Every stage is skipped when
its output exists, so a re-run resumes.

Work goes to CACHE/science/corpus<N>/NAME, N the version of the kit's unlabeled corpus, whose
shards are in CACHE/science/corpus<N>/shards. Results go to WORK/results.json (every run's
metrics, means and spreads, pre-training loss against trivial predictors, wall times), a table
on stdout, and (without --no-write) the "Science yardstick" section of BENCHMARKS.md. Choose
recipes by the valid split (`valid` in results.json); the test split is only reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from science_kit import PART_VERSIONS, build_kit, default_cache  # noqa: E402

log = logging.getLogger("science")

MODELS = ("pretrained", "random_init", "handcrafted")
ENCODERS = ("pretrained", "random_init")
KEYS = {"genre": ("accuracy", "log_loss"), "tagging": ("roc_auc", "pr_auc", "log_loss")}
LOWER_IS_BETTER = {"log_loss"}
# Each probe head's rate, chosen on the valid split. Both ends matter: in the three
# small-teacher-cpu runs with [0.001, 0.003, 0.01], task A's heads took 0.001 in 42 of 45
# (model x fold) and stopped improving after epoch 0-5, task B's took 0.01 in 42 of 45: a rate
# at the grid's edge is not a choice.
PROBE_LR_GRID = "[0.0001,0.0003,0.001,0.003,0.01,0.03]"
FIRST_PROBE_LR_GRID = "[0.001,0.003,0.01]"  # kit 2's first results, in `probes/`
MIN_SEED_PAIRS = 2  # a verdict needs a spread across seed pairs to compare a margin with
SELECT_BY = "log_loss"  # the valid-split metric that picks a layer ("<model>@layer" rows)
TRIVIAL = ("val/cfm", "val/cfm_interpolate", "val/cfm_clip_mean", "val/ccm", "val/ccm_interpolate")
BEGIN, END = "<!-- science:begin -->", "<!-- science:end -->"


def _run(cmd: list[str], log_path: pathlib.Path, *, threads: int | None = None) -> float:
    """Runs one stage with its output in `log_path`; returns wall seconds.

    Args:
        cmd: The command.
        log_path: Where its stdout and stderr go.
        threads: torch/OpenMP threads (default: every core).

    Raises:
        SystemExit: The stage failed (one line naming it and its log).
    """
    log.info("$ %s", " ".join(cmd))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    threads = threads or os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as out:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"error: {cmd[1]} exited {code}; see {log_path}:\n" + "\n".join(tail))
    return time.perf_counter() - start


def _tasks(kit: pathlib.Path, folds: int | None) -> dict[str, list[pathlib.Path]]:
    """Task name -> the task YAMLs of each labelled part of the kit: its fold rotations
    (`fold<k>.yaml`, the first `folds` of them, all when None), else its one `task.yaml`."""
    tasks = {}
    for folder in sorted(kit.glob("task_*")):
        rotations = sorted(folder.glob("fold*.yaml"), key=lambda p: int(p.stem[4:]))
        yamls = rotations[:folds] if rotations else sorted(folder.glob("task.yaml"))
        if yamls:
            tasks[folder.name.removeprefix("task_")] = yamls
    if not tasks:
        raise SystemExit(f"error: {kit}: no task_*/*.yaml in the kit")
    return tasks


def _scalars(run_dir: pathlib.Path) -> dict[str, float]:
    """Last value of each TensorBoard scalar of a pre-training run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def pretrain(args, work: pathlib.Path, shards: pathlib.Path, seed: int) -> dict:
    """Pre-trains and exports one seed (skipped when its export exists); returns its summary."""
    run_dir, export = work / f"run-seed{seed}", work / f"encoder-seed{seed}"
    summary_path = work / f"pretrain-seed{seed}.json"
    if (export / "config.json").exists() and summary_path.exists():
        return json.loads(summary_path.read_text())
    overrides = [x for kv in args.set for x in ("--set", kv)]
    seconds = _run(
        [
            sys.executable,
            "launch/pretrain.py",
            "--config",
            args.recipe,
            "--deepspeed",
            "configs/deepspeed/zero2.json",
            "--set",
            f"data.manifest={shards}",
            "--set",
            f"train.output_dir={run_dir}",
            "--set",
            f"train.seed={seed}",
            *overrides,
            "--resume",
            "auto",
        ],
        work / "logs" / f"pretrain-seed{seed}.log",
    )
    _run(
        [sys.executable, "launch/export.py", str(run_dir), str(export)],
        work / "logs" / f"export-seed{seed}.log",
    )
    scalars = _scalars(run_dir)
    summary = {"seed": seed, "wall_seconds": round(seconds, 1), "final": scalars}
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def _probe_root(work: pathlib.Path, lr_grid: str) -> pathlib.Path:
    """Where a probe protocol's runs go: `probes/` for the first grid (kit 2's results),
    `probes-lr<hash>/` for any other, so a new grid re-probes the same encoders beside them."""
    if lr_grid == FIRST_PROBE_LR_GRID:
        return work / "probes"
    return work / f"probes-lr{hashlib.sha1(lr_grid.encode()).hexdigest()[:8]}"


def probe(args, work, export, task, task_yaml, head, seed) -> dict:
    """One `launch/finetune.py --baselines` run (skipped when its metrics exist)."""
    rotation = f"-{task_yaml.stem}" if task_yaml.stem.startswith("fold") else ""
    out = (
        _probe_root(work, args.probe_lr_grid) / f"{export.name}-{task}{rotation}-{head}-seed{seed}"
    )
    if not (out / "metrics.json").exists():
        _run(
            [
                sys.executable,
                "launch/finetune.py",
                "--encoder",
                str(export),
                "--task",
                str(task_yaml),
                "--baselines",
                "--output",
                str(out),
                "--set",
                f"train.seed={seed}",
                "--set",
                f"train.head={head}",
                "--set",
                f"train.per_layer={str(head == 'linear').lower()}",
                "--set",
                f"train.lr_grid={args.probe_lr_grid}",
                "--set",
                f"cache_dir={args.cache / 'features'}",
                "--set",
                "device=cpu",
            ],
            work / "logs" / f"{out.name}.log",
            threads=1,  # probes run side by side, one per core
        )
    return json.loads((out / "metrics.json").read_text())


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def _layer_chosen_on_valid(res: dict) -> dict | None:
    """The per-layer result (with its `layer`) whose valid `SELECT_BY` is best, or None.

    The SUPERB/MARBLE protocol's "best layer", chosen on the valid split only; the layer
    weighting of the probe itself stays the headline row.
    """
    layers = res.get("per_layer") or []
    if len(layers) < 2:
        return None
    return min(layers, key=lambda layer: layer["valid"][SELECT_BY])


def _model_results(metrics: dict) -> dict:
    """The run's models plus `<model>@layer` (one layer chosen on valid) for multi-layer ones."""
    models = dict(metrics["models"])
    for model, res in metrics["models"].items():
        chosen = _layer_chosen_on_valid(res)
        if chosen is not None:
            models[f"{model}@layer"] = {**chosen, "chosen_layer": chosen["layer"]}
    return models


def _mean_tree(trees: list):
    """Element-wise mean of equally shaped JSON trees (dicts, lists, numbers); `chosen_layer`
    keeps every tree's value as a list, other non-numbers the first tree's."""
    first = trees[0]
    if isinstance(first, dict):
        return {
            k: [t[k] for t in trees] if k == "chosen_layer" else _mean_tree([t[k] for t in trees])
            for k in first
        }
    if isinstance(first, list):
        return [_mean_tree(list(items)) for items in zip(*trees, strict=True)]
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    return float(np.mean(trees))


def merge_folds(runs: list[dict]) -> list[dict]:
    """One run per task, head and seed pair: its models' metrics averaged over the fold
    rotations (cross-validation: every group tested once), each fold's `@layer` row chosen on
    that fold's valid split before averaging."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        key = (r["task"], r["head"], r["pretrain_seed"], r["probe_seed"])
        groups.setdefault(key, []).append(r)
    return [
        {
            "task": task,
            "head": head,
            "pretrain_seed": pretrain_seed,
            "probe_seed": probe_seed,
            "folds": len(members),
            "kind": members[0]["metrics"]["kind"],
            "models": _mean_tree([_model_results(r["metrics"]) for r in members]),
        }
        for (task, head, pretrain_seed, probe_seed), members in groups.items()
    ]


def summarize(runs: list[dict]) -> dict:
    """Means and spreads per task, head, model and split; per-layer scores; verdicts.

    `runs` are fold-merged (`merge_folds`): the spread is over seed pairs, not folds."""
    out: dict = {}
    for r in runs:
        entry = out.setdefault(r["task"], {"kind": r["kind"], "heads": {}})
        per_head = entry["heads"].setdefault(r["head"], {"runs": 0, "models": {}})
        per_head["runs"] += 1
        per_head["folds"] = r["folds"]
        for model, res in r["models"].items():
            slot = per_head["models"].setdefault(model, {})
            for split in ("valid", "test"):
                for key in KEYS[r["kind"]]:
                    slot.setdefault(split, {}).setdefault(key, []).append(res[split][key])
            for k, layer in enumerate(res.get("per_layer") or []):
                for split in ("valid", "test"):
                    for key in KEYS[r["kind"]]:
                        slot.setdefault("per_layer", {}).setdefault(split, {}).setdefault(
                            key, {}
                        ).setdefault(k, []).append(layer[split][key])
            for k, rank in enumerate(res.get("effective_rank") or []):
                slot.setdefault("effective_rank", {}).setdefault(k, []).append(rank)
            if "chosen_layer" in res:
                slot.setdefault("chosen_layers", []).extend(res["chosen_layer"])
    for entry in out.values():
        for per_head in entry["heads"].values():
            for slot in per_head["models"].values():
                for split in ("valid", "test"):
                    slot[split] = {k: _stats(v) for k, v in slot[split].items()}
                if "per_layer" in slot:
                    slot["per_layer"] = {
                        split: {
                            key: [_stats(v)["mean"] for _, v in sorted(layers.items())]
                            for key, layers in keys.items()
                        }
                        for split, keys in slot["per_layer"].items()
                    }
                if "effective_rank" in slot:
                    slot["effective_rank"] = [
                        _stats(v)["mean"] for _, v in sorted(slot["effective_rank"].items())
                    ]
            runs = per_head["runs"]
            per_head["verdict"] = _verdict(entry["kind"], per_head["models"], runs=runs)
            if "pretrained@layer" in per_head["models"]:
                per_head["verdict_layer"] = _verdict(
                    entry["kind"], per_head["models"], runs=runs, suffix="@layer"
                )
    return out


def _verdict(kind: str, models: dict, *, runs: int, suffix: str = "") -> dict:
    """Test-split margins of the pre-trained probe (positive = better) against each baseline,
    and whether each exceeds the larger of the two seed spreads (`wins` None with fewer than
    `MIN_SEED_PAIRS` seed pairs: one pair has no spread to exceed). With `suffix="@layer"` the
    encoders are compared at the layer each run chose on valid."""
    verdict = {}
    for key in KEYS[kind]:
        sign = -1.0 if key in LOWER_IS_BETTER else 1.0
        ours = models[f"pretrained{suffix}"]["test"][key]
        for base in (f"random_init{suffix}", "handcrafted"):
            theirs = models[base]["test"][key]
            margin = sign * (ours["mean"] - theirs["mean"])
            spread = max(ours["std"], theirs["std"])
            verdict[f"{key}_vs_{base}"] = {
                "margin": margin,
                "spread": spread,
                "wins": bool(margin > spread) if runs >= MIN_SEED_PAIRS else None,
            }
    return verdict


def _fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _margins(verdict: dict) -> str:
    """`key: +margin (spread s) ✔/✘` per comparison (no mark without a verdict)."""
    marks = {True: " ✔", False: " ✘", None: ""}
    return "; ".join(
        f"{k}: {v['margin']:+.3f} (spread {v['spread']:.3f}){marks[v['wins']]}"
        for k, v in verdict.items()
    )


def markdown(results: dict) -> str:
    """The BENCHMARKS.md section: tables of means ± std over all seeds."""
    cfg, pre = results["config"], results["pretrain"]
    walls = [p["wall_seconds"] / 60 for p in pre]
    folds = {h["folds"] for e in results["summary"].values() for h in e["heads"].values()}
    lines = [
        f"Recipe `{cfg['recipe']}` {' '.join(cfg['set'])}; {len(pre)} pre-training seeds x "
        f"{cfg['probe_seeds']} probe seeds x {'/'.join(map(str, sorted(folds)))} fold "
        f"rotations; probe learning rates {cfg.get('probe_lr_grid', FIRST_PROBE_LR_GRID)}; "
        f"pre-training wall time {min(walls):.1f}-{max(walls):.1f} min per seed "
        f"(one process, this machine: {cfg['machine']}); measured {results['date']}. Test "
        "folds, each seed pair's metrics averaged over its rotations (every track or piece is "
        f"tested once), then mean ± std over the {len(pre) * cfg['probe_seeds']} seed pairs.",
        "",
    ]
    for task, entry in results["summary"].items():
        keys = KEYS[entry["kind"]]
        for head, per_head in entry["heads"].items():
            lines += [
                f"**{task}** ({entry['kind']}), {head} probe:",
                "",
                "| model | " + " | ".join(keys) + " |",
                "|---|" + "---|" * len(keys),
            ]
            for model in [*MODELS, *(f"{m}@layer" for m in ENCODERS)]:
                if model not in per_head["models"]:
                    continue
                test = per_head["models"][model]["test"]
                lines.append(f"| {model} | " + " | ".join(_fmt(test[k]) for k in keys) + " |")
            valid = {m: per_head["models"][m]["valid"][keys[0]] for m in MODELS}
            lines += [
                "",
                f"Valid split, {keys[0]}: "
                + ", ".join(f"{m} {_fmt(v)}" for m, v in valid.items())
                + ".",
            ]
            note = "" if per_head["runs"] >= MIN_SEED_PAIRS else " (one seed pair: no verdict)"
            lines += ["", f"Margins{note}: " + _margins(per_head["verdict"]) + ".", ""]
            if "verdict_layer" in per_head:
                chosen = {m: per_head["models"][f"{m}@layer"]["chosen_layers"] for m in ENCODERS}
                lines += [
                    f"Margins at the layer chosen on valid ({SELECT_BY}; layers chosen: "
                    + ", ".join(f"{m} {v}" for m, v in chosen.items())
                    + "): "
                    + _margins(per_head["verdict_layer"])
                    + ".",
                    "",
                ]
            for model in ENCODERS:
                slot = per_head["models"][model]
                if "per_layer" in slot:
                    key = keys[0]
                    layers = slot["per_layer"]["test"][key]
                    ranks = slot["effective_rank"]
                    lines.append(
                        f"- {model} per layer (test {key}, layer 0 = input embedding): "
                        + ", ".join(f"{v:.3f}" for v in layers)
                        + "; effective rank of pooled states: "
                        + ", ".join(f"{v:.1f}" for v in ranks)
                    )
            lines.append("")
    lines.append("Pre-training, masked-reconstruction loss on the val shards at the end (L1):")
    lines += ["", "| seed | " + " | ".join(TRIVIAL) + " |", "|---|" + "---|" * len(TRIVIAL)]
    for p in pre:
        row = " | ".join(f"{p['final'].get(k, float('nan')):.4f}" for k in TRIVIAL)
        lines.append(f"| {p['seed']} | {row} |")
    return "\n".join(lines)


def write_benchmarks(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current += f"\n## Science yardstick (real audio)\n\n`make bench-science`\n\n{block}\n"
    path.write_text(current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", default="configs/pretrain/small-cpu.yaml")
    parser.add_argument("--set", action="append", default=[], help="pretrain override k=v")
    parser.add_argument("--pretrain-seeds", type=int, default=3)
    parser.add_argument("--probe-seeds", type=int, default=3, help="per fold rotation")
    parser.add_argument(
        "--folds", type=int, help="fold rotations per task (default: all the kit has, 5)"
    )
    parser.add_argument("--heads", nargs="+", default=["linear", "mlp"], choices=["linear", "mlp"])
    parser.add_argument(
        "--probe-lr-grid",
        default=PROBE_LR_GRID,
        help="probe learning rates, the best on valid kept (a YAML list; default: %(default)s)",
    )
    parser.add_argument("--cache", type=pathlib.Path, default=default_cache())
    parser.add_argument("--name", help="results folder name (default: recipe + overrides)")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    build_kit(args.cache)  # once; a complete kit is left as it is
    kit = args.cache
    tag = hashlib.sha1(" ".join(args.set).encode()).hexdigest()[:8]
    name = args.name or f"{pathlib.Path(args.recipe).stem}-{tag}"
    # Shards and encoders belong to one version of the unlabeled corpus; probes re-read tasks.
    science = args.cache / "science" / f"corpus{PART_VERSIONS['pretrain']}"
    work = science / name
    shards = science / "shards"
    if not (shards / "manifest.json").exists():
        _run(
            [
                sys.executable,
                "launch/shard.py",
                "--input",
                str(kit / "pretrain"),
                "--output",
                str(shards),
                "--seed",
                "0",
            ],
            science / "logs" / "shard.log",
        )
    pre = [pretrain(args, work, shards, seed) for seed in range(args.pretrain_seeds)]
    # Each seed pair has its own probe seed, which also draws the random-init encoder: the
    # random-init baseline gets as many independent draws as the pre-trained encoder.
    jobs = [
        (task, task_yaml, seed, head, seed * args.probe_seeds + k)
        for task, rotations in _tasks(kit, args.folds).items()
        for task_yaml in rotations
        for seed in range(args.pretrain_seeds)
        for head in args.heads
        for k in range(args.probe_seeds)
    ]

    def one(job) -> dict:
        task, task_yaml, seed, head, probe_seed = job
        export = work / f"encoder-seed{seed}"
        metrics = probe(args, work, export, task, task_yaml, head, probe_seed)
        return {
            "task": task,
            "head": head,
            "pretrain_seed": seed,
            "probe_seed": probe_seed,
            "metrics": metrics,
        }

    # Linear probes first: they fill the pooled-state cache that the MLP probes then reuse.
    jobs.sort(key=lambda j: (j[3] != "linear", j[2], j[4], j[0]))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = list(tqdm(pool.map(one, jobs), total=len(jobs), desc="probes", unit="run"))
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "config": {
            "recipe": args.recipe,
            "set": args.set,
            "probe_seeds": args.probe_seeds,
            "probe_lr_grid": args.probe_lr_grid,
            "folds": args.folds,
            "machine": f"{os.cpu_count()} cores",
        },
        "pretrain": pre,
        "summary": summarize(merge_folds(runs)),
        "runs": runs,
    }
    # results.json beside probes/, results-lr<hash>.json beside probes-lr<hash>/
    root = _probe_root(work, args.probe_lr_grid).name
    results_path = work / f"results{root.removeprefix('probes')}.json"
    results_path.write_text(json.dumps(results, indent=1))
    text = markdown(results)
    print(text)
    if not args.no_write:
        write_benchmarks(text)
    log.info("results: %s", results_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
