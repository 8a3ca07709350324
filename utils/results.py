"""Result tables: print aligned (distributions as columns, the published order), write JSON and CSV."""
import json
import os
from pathlib import Path

import pandas as pd

from utils.errors import UserError

METRIC_ROWS = ("num_images", "top1", "many", "medium", "few")


def results_frame(distributions, extra_rows=()):
    """Rows = metrics, columns = distributions (in the given order)."""
    rows = list(METRIC_ROWS) + [r for r in extra_rows if r not in METRIC_ROWS]
    frame = pd.DataFrame({name: {r: m.get(r) for r in rows} for name, m in distributions.items()})
    return frame.reindex(rows)


def format_table(distributions, extra_rows=(), weight_rows=(), number_rows=()):
    """Accuracies (and ``extra_rows``) in %, one decimal; ``weight_rows`` and ``number_rows`` as
    plain numbers with two decimals; a group absent from a distribution prints as '-'."""
    weight_rows = list(weight_rows) + list(number_rows)
    frame = results_frame(distributions, list(extra_rows) + weight_rows)

    def fmt(row, v):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "-"
        if row in ("num_images", "epochs_run"):
            return f"{int(v)}"
        if row in weight_rows:
            return f"{float(v):.2f}"
        return f"{100 * float(v):.1f}"

    text = frame.apply(lambda col: [fmt(r, v) for r, v in zip(frame.index, col)])
    text.index = frame.index
    return text.to_string()


def write_results(payload, json_path, extra_columns=()):
    """``payload["distributions"]`` -> JSON (whole payload) and CSV (a row per distribution)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(json_path, json.dumps(payload, indent=2) + "\n")
    records = []
    for name, m in payload["distributions"].items():
        rec = {"distribution": name}
        rec.update({k: m.get(k) for k in METRIC_ROWS})
        rec.update({k: (json.dumps(m[k]) if isinstance(m.get(k), list) else m.get(k)) for k in extra_columns})
        records.append(rec)
    csv_path = json_path.with_suffix(".csv")
    _atomic_write(csv_path, pd.DataFrame.from_records(records).to_csv(index=False))
    return json_path, csv_path


def _atomic_write(path, text):
    """Temporary file + rename; a failed write (disk full) removes the temporary file and is a
    one-line UserError naming ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}")


def write_history_csv(history, path):
    """The per-epoch log (one dict per epoch: loss, accuracy, lr, val_*, test_* ...) as CSV,
    written atomically; epochs without validation leave those cells empty."""
    path = Path(path)
    _atomic_write(path, pd.DataFrame.from_records(history).to_csv(index=False))
