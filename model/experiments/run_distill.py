#!/usr/bin/python3
"""run_distill.py - the distillation experiment (the RecSys'24 paper's tables, in shape).

For each data set (synth; MovieLens 100K and KuaiRand-1K when ../shared/data has them):
  teachers 1x, 2x, 4x the student (presets ref-student, ref-teacher-2x, ref-teacher-4x), trained
  once on hard labels (one teacher serves the fleet of students, as in the paper) -> labels of the
  students' training data into one SQLite label store (versions t1x, t2x, t4x) -> students
  (ref-student): control (no distillation), direct, aux; distilling all tasks or a subset (the
  binary engagement/satisfaction tasks, leaving out the noisy regression task); N seeds each.
Reports mean +- sd over seeds of the test AUC of every binary task and the RMSE of every regression
task (last epoch), each teacher's own metrics, as Markdown (results.md) and a gnuplot PNG per data set.

Usage: model/experiments/run_distill.py [--trainer build/model/train/kdrank-train] [--out DIR]
         [--seeds 5] [--epochs 2] [--teacher-epochs 2] [--datasets synth,ml100k,kuairand]
         [--synth-train 100000] [--quick]   (--quick: 1 seed, 1 epoch, tiny synth only: the CI smoke run)
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "..", "shared", "data")

TEACHERS = [("1x", "ref-student"), ("2x", "ref-teacher-2x"), ("4x", "ref-teacher-4x")]


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        sys.stderr.write("command failed (%d): %s\n%s%s" % (r.returncode, " ".join(cmd), r.stdout, r.stderr))
        sys.exit(1)
    return r


def tasks_of(schema_path):
    with open(schema_path) as f:
        cols = json.load(f)["columns"]
    return [(c["name"], c["type"]) for c in cols if c.get("role") == "label"]


def last_metrics(summary_path, tasks):
    with open(summary_path) as f:
        s = json.load(f)
    test = s["epochs"][-1]["test"]
    out = {}
    for name, typ in tasks:
        out[name] = test[name]["auc"] if typ == "binary" else test[name]["rmse"]
    return out


def best_metrics(summary_path, tasks):
    with open(summary_path) as f:
        s = json.load(f)
    b = s["best"]
    return {name: (b[name]["auc"] if typ == "binary" else b[name]["rmse"]) for name, typ in tasks}


def mean_sd(xs):
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def prepare(ds, args, work):
    d = os.path.join(work, ds, "data")
    os.makedirs(d, exist_ok=True)
    if ds == "synth":
        run([args.trainer, "synth", "--out", d, "--train", str(args.synth_train), "--test",
             str(args.synth_train // 4), "--users", str(args.synth_users), "--items", str(args.synth_items),
             "--seed", "7"])
        return d, ["click", "satisfied"]
    if ds == "ml100k":
        src = os.path.join(DATA, "ml-100k")
        if not os.path.exists(os.path.join(src, "u.data")):
            return None, "MovieLens 100K not found at %s" % os.path.normpath(src)
        run([args.trainer, "convert", "movielens", "--src", src, "--out", d])
        return d, ["like"]
    if ds == "kuairand":
        src = os.path.join(DATA, "kuairand-1k")
        if not os.path.isdir(src) or not os.listdir(src):
            return None, "KuaiRand-1K not found at %s" % os.path.normpath(src)
        run([args.trainer, "convert", "kuairand", "--src", src, "--out", d])
        return d, ["click", "long_view"]
    return None, "unknown data set %s" % ds


def fit(args, d, out, summary, seed, extra, arch="ref-student", epochs=None):
    cmd = [args.trainer, "fit", "--train", os.path.join(d, "train.tsv"), "--test", os.path.join(d, "test.tsv"),
           "--schema", os.path.join(d, "schema.json"), "--arch", arch, "--epochs", str(epochs or args.epochs),
           "--seed", str(seed), "--threads", "2", "--quiet", "--out", out, "--summary", summary] + extra
    return run(cmd)


def experiment(ds, args, work):
    d, subset = prepare(ds, args, work)
    if d is None:
        log("%s: SKIPPED: %s" % (ds, subset))
        return {"dataset": ds, "skipped": subset}
    tasks = tasks_of(os.path.join(d, "schema.json"))
    w = os.path.join(work, ds)
    store = os.path.join(w, "labels.db")
    if os.path.exists(store):
        os.remove(store)
    res = {"dataset": ds, "tasks": tasks, "subset": subset, "teachers": {}, "students": {}}
    for size, preset in TEACHERS:
        t = os.path.join(w, "teacher_%s.kdr" % size)
        s = os.path.join(w, "teacher_%s.json" % size)
        t0 = time.time()
        fit(args, d, t, s, 1, [], arch=preset, epochs=args.teacher_epochs)
        res["teachers"][size] = best_metrics(s, tasks)
        r = run([args.trainer, "label", "--teacher", t, "--data", os.path.join(d, "train.tsv"), "--store", store,
                 "--teacher-version", "t" + size, "--quiet"])
        log("%s: teacher %s (%s) %s, labelled (%s) in %.0f s" % (ds, size, preset, res["teachers"][size],
                                                                r.stdout.strip(), time.time() - t0))
    configs = [("control", None, None, [])]
    for size, _ in TEACHERS:
        for mode in ("direct", "aux"):
            for which, tl in (("all", None), ("subset", subset)):
                extra = ["--labels", "%s@t%s" % (store, size), "--distill", mode]
                if tl:
                    extra += ["--distill-tasks", ",".join(tl)]
                configs.append(("%s %s %s" % (mode, size, which), size, mode, extra))
    for name, size, mode, extra in configs:
        vals = []
        t0 = time.time()
        for seed in range(1, args.seeds + 1):
            s = os.path.join(w, "student.json")
            fit(args, d, os.path.join(w, "student.kdr"), s, seed, extra)
            vals.append(last_metrics(s, tasks))
        res["students"][name] = {t: mean_sd([v[t] for v in vals]) for t, _ in tasks}
        res["students"][name]["_runs"] = vals
        log("%s: %-18s %s (%.0f s)" % (ds, name, "  ".join("%s %.4f+-%.4f" % (t, *res["students"][name][t])
                                                          for t, _ in tasks), time.time() - t0))
    plot(res, w, args)
    return res


def fmt(ms, typ):
    m, sd = ms
    return "%.4f ± %.4f" % (m, sd)


def markdown(results, args, cmdline, seconds):
    out = ["# Distillation experiment results", "",
           "Command: `%s` (%.0f s on this machine)." % (cmdline, seconds), "",
           "Students: ref-student; %d seed(s) each; %d epoch(s); metrics of the last epoch on the held-out "
           "(time-split) test set: AUC for binary tasks (higher is better), RMSE for regression tasks on the "
           "transformed target (lower is better). Teachers: one per size (seed 1, %d epoch(s), best epoch by "
           "test loss), labels of the students' training data in a SQLite label store." %
           (args.seeds, args.epochs, args.teacher_epochs), ""]
    for r in results:
        out.append("## %s" % r["dataset"])
        out.append("")
        if "skipped" in r:
            out += ["Skipped: %s." % r["skipped"], ""]
            continue
        tasks = r["tasks"]
        hdr = ["model"] + ["%s %s" % (t, "AUC" if ty == "binary" else "RMSE") for t, ty in tasks]
        out.append("Teachers (own metrics, best epoch):")
        out.append("")
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "---|" * len(hdr))
        for size, preset in TEACHERS:
            out.append("| teacher %s (%s) | " % (size, preset) +
                       " | ".join("%.4f" % r["teachers"][size][t] for t, _ in tasks) + " |")
        out.append("")
        out.append("Students (mean ± sd over seeds; subset = %s):" % ",".join(r["subset"]))
        out.append("")
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "---|" * len(hdr))
        for name, v in r["students"].items():
            out.append("| %s | " % name + " | ".join(fmt(v[t], ty) for t, ty in tasks) + " |")
        out.append("")
        out.append("Plot: `%s_distill.png`." % r["dataset"])
        out.append("")
    return "\n".join(out) + "\n"


def plot(res, w, args):
    """Per data set: each task's metric against teacher size, direct vs aux (all tasks), control line."""
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no plot")
        return
    tasks = res["tasks"]
    dat = os.path.join(w, "plot.dat")
    with open(dat, "w") as f:
        for i, (size, _) in enumerate(TEACHERS):
            row = [str(int(size[:-1]))]
            for t, _ in tasks:
                for mode in ("direct", "aux"):
                    for which in ("all", "subset"):
                        m, sd = res["students"]["%s %s %s" % (mode, size, which)][t]
                        row += ["%.6f" % m, "%.6f" % sd]
            f.write(" ".join(row) + "\n")
    png = os.path.join(args.out, "%s_distill.png" % res["dataset"])
    gp = ["set terminal png noenhanced size %d,420" % (420 * len(tasks)), "set output '%s'" % png,
          "set multiplot layout 1,%d title '%s: students vs teacher size (mean +- sd over %d seeds)'" %
          (len(tasks), res["dataset"], args.seeds),
          "set logscale x 2", "set xrange [0.8:5]", "set xtics (1,2,4)", "set xlabel 'teacher size (x student)'",
          "set key bottom right font ',8'"]
    for ti, (t, ty) in enumerate(tasks):
        base = 2 + ti * 8
        cm = res["students"]["control"][t][0]
        gp.append("set ylabel '%s %s'" % (t, "AUC" if ty == "binary" else "RMSE"))
        cols = []
        for k, lab in enumerate(("direct all", "direct subset", "aux all", "aux subset")):
            c = base + 2 * k
            cols.append("'%s' u ($1*%.3f):%d:%d w yerrorlines t '%s'" % (dat, 1 + 0.04 * (k - 1.5), c, c + 1, lab))
        cols.append("%.6f w l dt 2 lc 'black' t 'control'" % cm)
        gp.append("plot " + ", ".join(cols))
    gp.append("unset multiplot")
    r = subprocess.run(["gnuplot"], input="\n".join(gp), text=True, capture_output=True)
    if r.returncode != 0:
        log("gnuplot failed: %s" % r.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trainer", default=os.path.join(ROOT, "build", "model", "train", "kdrank-train"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "experiments"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--datasets", default="synth,ml100k,kuairand")
    ap.add_argument("--synth-train", type=int, default=100000)
    ap.add_argument("--synth-users", type=int, default=2000)
    ap.add_argument("--synth-items", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="CI smoke run: 1 seed, 1 epoch, tiny synth only")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.teacher_epochs = 1, 1, 1
        args.datasets, args.synth_train, args.synth_users, args.synth_items = "synth", 4000, 200, 100
    if not os.access(args.trainer, os.X_OK):
        sys.exit("kdrank-train not found at %s (build first, or --trainer)" % args.trainer)
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    t0 = time.time()
    results = [experiment(ds, args, work) for ds in args.datasets.split(",")]
    cmdline = "model/experiments/run_distill.py " + " ".join(sys.argv[1:])
    md = markdown(results, args, cmdline.strip(), time.time() - t0)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(md)
    # the smoke run checks its own output
    for r in results:
        if "skipped" not in r and len(r["students"]) != 13:
            sys.exit("expected 13 student configurations for %s" % r["dataset"])
    log("done in %.0f s: %s" % (time.time() - t0, os.path.join(args.out, "results.md")))


if __name__ == "__main__":
    main()
