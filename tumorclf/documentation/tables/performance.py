"""docs/performance.md: how fast tumorclf trains and predicts on the project's machine, and how close that is to the
machine's limit, from the committed `tumorclf bench` files and the time-to-accuracy points of two runs."""

from __future__ import annotations

import itertools
import statistics

from tumorclf.errors import UserError
from tumorclf.documentation.tables.cells import (
    DATA,
    ROBUST_RECIPE,
    Results,
    Table,
    interval,
    number,
    study_command,
    study_results,
    the_row,
)

BENCH = "bench_cpu_2core.json"
BENCH_20_STEPS = "bench_cpu_2core_simplecnn_20steps.json"
BENCH_XLA = "bench_cpu_2core_xla.json"
PRECISION = {"float32": "bench_precision_float32.json", "mixed_bfloat16": "bench_precision_mixed_bfloat16.json"}
# Each committed bench_*.json is the bench.json that `--out DIR` writes, kept under the name of its folder.
BENCH_COMMAND = f"tumorclf bench --model simplecnn vgg16 resnet50 --steps 6 --data {DATA} --out bench_cpu_2core"
BENCH_20_COMMAND = f"tumorclf bench --model simplecnn --steps 20 --data {DATA} --out bench_cpu_2core_simplecnn_20steps"
XLA_COMMAND = "tumorclf bench --model vgg16 --steps 6 --jit-compile --out bench_cpu_2core_xla"
# two repetitions of each, the second in the opposite order: bench numbers on this machine move by tens of percent
CONV_GRADIENT = {(n, name): f"bench_conv_gradient_{name}_{n}.json"
                 for n in (1, 2) for name in ("tensorflow", "forward")}
CONV_GRADIENT_COMMAND = ("tumorclf bench --model vgg16 resnet50 --batch-size 8 --steps 3 --conv-input-gradient {1} "
                         "--out bench_conv_gradient_{1}_{0}")
PRECISION_COMMAND = "tumorclf bench --model simplecnn vgg16 --steps 6 --precision {0} --out bench_precision_{0}"

CURVES = "time_to_accuracy_vgg16_paper_split.csv"
CURVES_COMMAND = ("tumorclf curves --run experiments/runs/vgg16_imagenet_paper_224px_seed42_fast "
                  "runs/vgg16_imagenet_paper_224px_seed42 --out time_to_accuracy_vgg16_paper_split --target 0.9783")
RECIPES = (("vgg16_imagenet_paper_224px_seed42_fast", "fast (cached features, block5 and head, Adam)"),
           ("vgg16_imagenet_paper_224px_seed42", "paper (full fine-tuning, SGD), stopped after 25 minutes"))

CPU_BUDGET, ROBUST = study_results("cpu_budget"), study_results("robust")
PROTOCOLS = (("grouped", "grouped"), ("paper", "paper"), ("leave-source-out:figshare+sartaj", "leave-source-out"))
# (model, imagenet, px, protocols) of the finished paper-recipe runs of the CPU-budget study shown for their time
PAPER_RECIPE_RUNS = (("simplecnn", "False", "224", PROTOCOLS[:2]), ("vgg16", "True", "128", PROTOCOLS[1:2]))

NAMES = {"simplecnn": "SimpleCNN", "vgg16": "VGG16", "resnet50": "ResNet50"}


def gib(mib) -> str:
    return number(float(mib) / 1024, 1)


def ratio(a, b, digits: int = 2) -> str:
    return number(float(a) / float(b), digits) + "x"


def joined(*commands: str) -> str:
    return "; ".join(commands)


def machine(results: Results) -> Table:
    """The machine every number of the page was measured on, and its matmul limit per precision."""
    bench = results.json(BENCH)
    m, v, limit = bench["machine"], bench["versions"], bench["matmul_gflop_per_s"]
    return Table(["CPU", "cores", "native bfloat16 (AVX-512 BF16)", "memory (GiB)", "float32 matmul GFLOP/s",
                  "bfloat16 matmul GFLOP/s", "TensorFlow", "Keras"],
                 [[m["cpu"], m["cpus"], "yes" if m["avx512_bf16"] else "no", number(m["memory_gib"], 1),
                   number(limit["float32"], 1), number(limit["bfloat16"], 1), v["tensorflow-cpu"], v["keras"]]],
                 [results.source(BENCH)], BENCH_COMMAND,
                 "The limit is the rate of a 4096 x 4096 matrix product, the fastest dense arithmetic this CPU "
                 "sustains.")


def models(results: Results) -> Table:
    """Per-model training and inference speed, and the fraction of the matmul limit each reaches."""
    bench = results.json(BENCH)
    rows = [[NAMES[r["model"]], r["precision"], number(r["train_img_per_s"], 2), number(r["infer_img_per_s"], 1),
             number(r["forward_gflops_per_img"], 2), number(r["train_gflop_per_s"], 1), number(r["efficiency"], 2),
             number(r["infer_efficiency"], 2), gib(r["peak_rss_mib"])] for r in bench["models"]]
    return Table(["model", "precision", "training img/s", "inference img/s", "forward GFLOP per image",
                  "training GFLOP/s", "training efficiency", "inference efficiency", "peak memory (GiB)"],
                 rows, [results.source(BENCH)], BENCH_COMMAND,
                 "224 px, batch 32, synthetic data; efficiency is the arithmetic rate (training counted as 3x the "
                 "forward pass) over the bfloat16 matmul limit of the same file.")


def xla(results: Results) -> Table:
    """VGG16 with and without XLA compilation of the training step."""
    plain = the_row(results.json(BENCH)["models"], model="vgg16")
    compiled = the_row(results.json(BENCH_XLA)["models"], model="vgg16")
    rows = [[label, number(r["train_img_per_s"], 2), number(r["infer_img_per_s"], 1), number(r["efficiency"], 2),
             gib(r["peak_rss_mib"])] for label, r in (("off (default)", plain), ("`--jit-compile`", compiled))]
    rows.append(["ratio, off / on", *(ratio(plain[key], compiled[key]) for key in
                                      ("train_img_per_s", "infer_img_per_s", "efficiency", "peak_rss_mib"))])
    return Table(["XLA", "training img/s", "inference img/s", "training efficiency", "peak memory (GiB)"], rows,
                 [results.source(BENCH), results.source(BENCH_XLA)], joined(BENCH_COMMAND, XLA_COMMAND),
                 "VGG16, 224 px, batch 32, mixed_bfloat16.")


def machine_words(facts: dict) -> str:
    """"2 cores of an AMD EPYC without bfloat16 instructions", from a bench file's `machine`."""
    bf16 = "with" if facts.get("avx512_bf16") else "without"
    return f"{facts['cpus']} cores of an {facts['cpu']} {bf16} bfloat16 instructions"


def conv_gradient(results: Results) -> Table:
    """Training speed with convolutions' input gradients from TensorFlow's kernel and as forward convolutions, in
    two repetitions, and the inference speed the same benchmark measured after those training steps."""
    runs = {key: results.json(file) for key, file in CONV_GRADIENT.items()}
    rows = []
    for n in (1, 2):
        for model in [row["model"] for row in runs[n, "forward"]["models"]]:
            theirs = the_row(runs[n, "tensorflow"]["models"], model=model)
            mine = the_row(runs[n, "forward"]["models"], model=model)
            rows.append([model, str(n), number(theirs["train_img_per_s"], 2), number(mine["train_img_per_s"], 2),
                         ratio(mine["train_img_per_s"], theirs["train_img_per_s"]),
                         f"{number(theirs['infer_img_per_s'], 1)} / {number(mine['infer_img_per_s'], 1)}"])
    first = runs[1, "forward"]["models"][0]
    return Table(["model", "repetition", "training img/s, TensorFlow's input gradient",
                  "training img/s, as forward convolutions (default)", "speed-up",
                  "inference img/s after them (TensorFlow's / forward)"],
                 rows, [results.source(file) for file in CONV_GRADIENT.values()],
                 joined(*(CONV_GRADIENT_COMMAND.format(*key) for key in CONV_GRADIENT)),
                 f"{first['image_size']} px, batch {first['batch_size']}, {first['precision']}, synthetic data; "
                 f"{machine_words(runs[1, 'forward']['machine'])}.")


def input_pipeline(results: Results) -> Table:
    """The input pipeline alone: how fast decoded, augmented batches arrive."""
    rows = []
    for relative in (BENCH, BENCH_20_STEPS):
        p = results.json(relative)["pipeline"]
        rows.append([f"`{relative}`", p["images"], number(p["load_seconds_with_cache"], 2),
                     number(p["pipeline_img_per_s"], 1)])
    return Table(["measured in", "images", "loading the decoded cache (s)", "augmented batches, img/s"], rows,
                 [results.source(BENCH), results.source(BENCH_20_STEPS)], joined(BENCH_COMMAND, BENCH_20_COMMAND),
                 "224 px, batches of 32, with the training augmentation.")


def fit(results: Results) -> Table:
    """`fit()` fed by the real pipeline against the same steps on one batch held in memory."""
    rows = []
    for relative in (BENCH, BENCH_20_STEPS):
        for r in results.json(relative)["fit"]:
            rows.append([NAMES[r["model"]], f"`{relative}`", number(r["fit_real_img_per_s"], 2),
                         number(r["fit_synthetic_img_per_s"], 2), number(r["real_over_synthetic"], 3)])
    return Table(["model", "measured in", "fit() img/s, real data", "fit() img/s, one batch in memory",
                  "real / in memory"], rows,
                 [results.source(BENCH), results.source(BENCH_20_STEPS)], joined(BENCH_COMMAND, BENCH_20_COMMAND),
                 "224 px, batch 32, mixed_bfloat16; a ratio near 1 means the input pipeline does not slow training.")


def precision(results: Results) -> Table:
    """float32 against mixed_bfloat16 on a CPU with native bfloat16."""
    f32 = results.json(PRECISION["float32"])["models"]
    bf16 = results.json(PRECISION["mixed_bfloat16"])["models"]
    rows = []
    for model in ("simplecnn", "vgg16"):
        a, b = the_row(f32, model=model), the_row(bf16, model=model)
        rows.append([NAMES[model], number(a["train_img_per_s"], 2), number(b["train_img_per_s"], 2),
                     ratio(b["train_img_per_s"], a["train_img_per_s"]), number(a["infer_img_per_s"], 1),
                     number(b["infer_img_per_s"], 1), ratio(b["infer_img_per_s"], a["infer_img_per_s"]),
                     number(a["efficiency"], 2), number(b["efficiency"], 2)])
    return Table(["model", "training img/s, float32", "training img/s, mixed_bfloat16", "training speed-up",
                  "inference img/s, float32", "inference img/s, mixed_bfloat16", "inference speed-up",
                  "efficiency, float32", "efficiency, mixed_bfloat16"], rows,
                 [results.source(p) for p in PRECISION.values()],
                 joined(*(PRECISION_COMMAND.format(p) for p in PRECISION)),
                 "224 px, batch 32, synthetic data; each efficiency is against the matmul limit of its own "
                 "precision.")


def curve_points(results: Results) -> dict[str, list[dict[str, str]]]:
    rows = results.csv(CURVES)
    return {run: [r for r in rows if r["run"] == run] for run, _ in RECIPES}


def recipes(results: Results) -> Table:
    """The fast recipe against the paper's for the same wall time: epochs done and accuracy reached."""
    body = []
    for run, label in RECIPES:
        points = curve_points(results)[run]
        minutes = [float(p["elapsed_minutes"]) for p in points]
        later = [b - a for a, b in itertools.pairwise(minutes)]
        best = max(points, key=lambda p: float(p["val_f1"]))  # the first of equals, as training keeps it
        body.append([label, len(points), best["epoch"], number(minutes[0], 1), number(statistics.median(later), 1),
                     number(minutes[-1], 1), number(best["test_accuracy"], 3)])
    return Table(["recipe", "epochs run", "best epoch (validation F1)", "first epoch ends (min)",
                  "later epochs, median (min)", "training minutes", "test accuracy of the best epoch"], body,
                 [results.source(CURVES)], CURVES_COMMAND,
                 "ImageNet VGG16, 224 px, the paper's split, mixed_bfloat16, seed 42; the first epoch of the fast "
                 "recipe includes caching the features.")


def time_to_accuracy(results: Results) -> Table:
    """Epoch by epoch: training minutes, validation F1 and test accuracy of both recipes."""
    fast, paper = (curve_points(results)[run] for run, _ in RECIPES)

    def cells(points: list[dict[str, str]], i: int) -> list[str]:
        if i >= len(points):
            return ["", "", ""]
        p = points[i]
        return [number(p["elapsed_minutes"], 1), number(p["val_f1"], 3), number(p["test_accuracy"], 3)]

    rows = [[i + 1, *cells(fast, i), *cells(paper, i)] for i in range(max(len(fast), len(paper)))]
    return Table(["epoch", "fast: minutes", "fast: validation F1", "fast: test accuracy", "paper: minutes",
                  "paper: validation F1", "paper: test accuracy"], rows, [results.source(CURVES)], CURVES_COMMAND,
                 "Test accuracy is logged with `--track-test` for this curve only; the epoch kept is chosen by "
                 "validation F1.")


def run_times(results: Results) -> Table:
    """Measured training minutes of whole runs, per recipe and split: what a user of a preset can expect."""
    budget, robust = results.csv(CPU_BUDGET), results.csv(ROBUST)
    picks = [("robust", robust, ROBUST_RECIPE),
             ("fast", budget, {"recipe": "fast"})]
    body = []
    for recipe, rows, match in picks:
        for protocol, label in PROTOCOLS:
            r = the_row(rows, protocol=protocol, model="vgg16", imagenet="True", image_size="224", **match)
            body.append([f"VGG16 ImageNet, {recipe}", label, r["image_size"], f"{r['epochs_run']} ({r['best_epoch']})",
                         number(r["train_minutes"], 1), interval(r, "accuracy")])
    finished = [r for r in budget if r["status"].startswith("finished")]
    for model, imagenet, size, protocols in PAPER_RECIPE_RUNS:
        for protocol, label in protocols:
            r = the_row(finished, protocol=protocol, model=model, imagenet=imagenet, image_size=size, recipe="paper")
            name = f"{NAMES[model]} {'ImageNet' if imagenet == 'True' else 'from scratch'}, paper"
            body.append([name, label, r["image_size"], f"{r['epochs_run']} ({r['best_epoch']})",
                         number(r["train_minutes"], 1), interval(r, "accuracy")])
    return Table(["model, recipe", "split", "px", "epochs run (best)", "training minutes", "test accuracy"], body,
                 [results.source(ROBUST), results.source(CPU_BUDGET)],
                 joined(study_command("robust"), study_command("cpu_budget")),
                 "Training minutes include feature caching; the robust and fast runs stop after 4 epochs "
                 "without a better validation F1 (at most 12), the paper-recipe runs after 2 (at most 6).")


HEADLINE = "headline"  # one folder per measured run of the headline command: its log, timing.json and evaluation
HEADLINE_RUNS = (  # (folder, column label, the flags added to README's command; each cache folder new and empty)
    ("cold_1", "cold", "--name cold_1 --cache-dir EMPTY_1"),
    ("cold_2", "cold, again", "--name cold_2 --cache-dir EMPTY_2 --deterministic"),
    ("warm", "warm", "--name warm --cache-dir EMPTY_2 --deterministic"),
)
HEADLINE_COMMAND = "tumorclf train --data ../shared/data/brain_tumor_dataset --weights-dir ../shared/weights"
PHASES = ("decode", "feature cache", "epochs", "calibration", "gate", "test")


def wall_seconds(log: str) -> float:
    """The wall time `/usr/bin/time -v` printed at the end of a log ("Elapsed (wall clock) time ...: 1:02:03")."""
    line = next((line for line in log.splitlines() if "Elapsed (wall clock) time" in line), None)
    if line is None:
        raise UserError("a headline log has no `Elapsed (wall clock) time` line: it was not run under /usr/bin/time -v")
    parts = [float(x) for x in line.rsplit(": ", 1)[1].split(":")]
    return sum(value * 60 ** i for i, value in enumerate(reversed(parts)))


def epochs_run(timing: dict) -> int:
    """How many epochs a timing.json records (its phases `epoch 1`, `epoch 2`, ...)."""
    return sum(phase["name"].startswith("epoch ") for phase in timing["phases"])


def headline_phases(results: Results) -> Table:
    """The headline command's runs, phase by phase: where its wall time goes, cold (empty caches) and warm."""
    columns, sources = [], []
    for folder, label, _ in HEADLINE_RUNS:
        timing = results.json(f"{HEADLINE}/{folder}/timing.json")
        log = results.path(f"{HEADLINE}/{folder}/train.log").read_text()
        test = results.json(f"{HEADLINE}/{folder}/evaluation.json")["datasets"]["test"]
        seconds: dict[str, float] = {}
        for phase in timing["phases"]:
            name = "epochs" if phase["name"].startswith("epoch ") else phase["name"]
            seconds[name] = seconds.get(name, 0.0) + phase["seconds"]
        epochs = epochs_run(timing)
        compute = [phase for phase in timing["phases"] if phase["share_of_peak"] is not None]
        columns.append([*(number(seconds.get(name), 0) for name in PHASES[:2]),
                        f"{number(seconds['epochs'], 0)} ({epochs})", *(number(seconds.get(n), 0) for n in PHASES[3:]),
                        number(timing["total_seconds"], 0), number(wall_seconds(log) / 60, 1),
                        f"{100 * max(p['share_of_peak'] for p in compute):.0f}%", timing["precision"],
                        interval(test, "accuracy"), interval(test, "balanced_accuracy")])
        sources += [results.source(f"{HEADLINE}/{folder}/{name}")
                    for name in ("train.log", "timing.json", "evaluation.json")]
    names = ["decode (s)", "feature cache (s)", "epochs (s, how many)", "calibration (s)", "gate (s)", "test (s)",
             "phases in all (s)", "command wall time (min)", "best share of the compute limit", "precision",
             "test accuracy at the operating point", "balanced accuracy at the operating point"]
    return Table(["", *(label for _, label, _ in HEADLINE_RUNS)],
                 [[name, *(column[i] for column in columns)] for i, name in enumerate(names)], sources,
                 "; ".join(f"/usr/bin/time -v {HEADLINE_COMMAND} --out DIR {flags}; tumorclf evaluate --run DIR/"
                           f"{folder}" for folder, _, flags in HEADLINE_RUNS),
                 "Cold: empty decoded-image and feature caches; warm: the same command again into a new run "
                 "folder. The wall time is the command's, from start to exit; the phases are timing.json's.")


def headline_wall(results: Results) -> Table:
    """The README's short answer to "how long does the headline command take": its wall time, cold and warm."""
    body, sources = [], []
    for folder, label, _ in HEADLINE_RUNS:
        timing = results.json(f"{HEADLINE}/{folder}/timing.json")
        log = f"{HEADLINE}/{folder}/train.log"
        body.append([label, str(epochs_run(timing)), number(wall_seconds(results.path(log).read_text()) / 60, 1)])
        sources += [results.source(log), results.source(f"{HEADLINE}/{folder}/timing.json")]
    return Table(["run", "epochs", "wall time (min)"], body, sources,
                 "; ".join(f"/usr/bin/time -v {HEADLINE_COMMAND} --out DIR {flags}" for _, _, flags in HEADLINE_RUNS),
                 "On 2 CPU cores, nothing else running. Cold: empty decoded-image and feature caches; warm: the same "
                 "command again, its features read back from the cache.")


TABLES = {"performance-machine": machine, "performance-headline-phases": headline_phases,
          "performance-headline-wall": headline_wall,
          "performance-models": models, "performance-xla": xla,
          "performance-conv-gradient": conv_gradient,
          "performance-input-pipeline": input_pipeline, "performance-fit": fit, "performance-precision": precision,
          "performance-recipes": recipes, "performance-time-to-accuracy": time_to_accuracy,
          "performance-run-times": run_times}
