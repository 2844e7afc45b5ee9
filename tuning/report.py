"""Results of a search: a table of trials (markdown + JSON) and the best config as JSON."""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence

from tuning.hypermodel import OBJECTIVE

# Metrics reported beside the objective, taken at the trial's best epoch.
REPORTED = ("val_ndcg@20", "val_hr@20", "val_ndcg@10", "val_hr@10", "val_mrr")


HISTORY_FILE = "history.json"


def trial_rows(oracle, hp_names: Sequence[str], trial_dir: Callable[[str], str]) -> List[dict]:
    """One row per trial, best objective first (unfinished and failed trials last).

    KerasTuner keeps each metric at the trial's best epoch only; the epochs a trial ran come
    from the ``history.json`` that ``search.RecordHistory`` writes in ``trial_dir(trial_id)``.
    """
    rows = []
    for trial in oracle.trials.values():
        row = {"trial": trial.trial_id, "status": trial.status,
               "hyperparameters": {k: v for k, v in trial.hyperparameters.values.items()
                                   if k in hp_names or k.startswith("tuner/")},
               "objective": _finite(trial.score), "best_epoch": None, "epochs": None, "seconds": None,
               "metrics": {}}
        for name in REPORTED:
            if trial.metrics.exists(name):
                row["metrics"][name] = _finite(trial.metrics.get_last_value(name))
        history = _read_history(os.path.join(trial_dir(trial.trial_id), HISTORY_FILE))
        if history and history.get(OBJECTIVE):
            values, epochs = history[OBJECTIVE], history["epoch"]
            best = max(range(len(values)), key=lambda i: (values[i], -i))   # first epoch of the maximum
            row["best_epoch"], row["epochs"] = epochs[best] + 1, epochs[-1] + 1
            row["seconds"] = history.get("seconds")
        elif trial.score is not None and trial.best_step is not None:
            row["best_epoch"] = int(trial.best_step) + 1
        rows.append(row)
    rows.sort(key=lambda r: (r["objective"] is None, -(r["objective"] or 0.0), r["trial"]))
    return rows


def _read_history(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _finite(x) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: Sequence[dict], hp_names: Sequence[str]) -> str:
    extra = sorted({k for r in rows for k in r["hyperparameters"] if k.startswith("tuner/")})
    cols = list(hp_names) + extra
    head = ["trial", "status", *cols, OBJECTIVE, "val_hr@20", "best epoch", "epochs run", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        obj = "" if r["objective"] is None else f"{r['objective']:.4f}"
        hr = r["metrics"].get("val_hr@20")
        cells = [r["trial"], r["status"], *(_fmt(r["hyperparameters"].get(c, "")) for c in cols), obj,
                 "" if hr is None else f"{hr:.4f}", "" if r["best_epoch"] is None else str(r["best_epoch"]),
                 "" if r["epochs"] is None else str(r["epochs"]),
                 "" if r["seconds"] is None else f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def write_results(project_dir: str, rows: Sequence[dict], hp_names: Sequence[str], header: Dict) -> Dict[str, str]:
    """Writes results.md and results.json in ``project_dir``; returns their paths."""
    paths = {"markdown": os.path.join(project_dir, "results.md"),
             "json": os.path.join(project_dir, "results.json")}
    md = [f"# Search {header.get('project_name', '')}", ""]
    md += [f"- {k}: {v}" for k, v in header.items() if k not in ("space", "fixed")]
    md += ["- space: " + "; ".join(f"{k} = {v}" for k, v in header.get("space", {}).items())]
    md += ["- fixed flags: " + ("; ".join(f"{k} = {v}" for k, v in header.get("fixed", {}).items()) or "none"), ""]
    md.append(markdown_table(rows, hp_names))
    tmp = paths["markdown"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    os.replace(tmp, paths["markdown"])
    write_json(paths["json"], {**header, "objective": OBJECTIVE, "trials": list(rows)})
    return paths
