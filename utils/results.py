"""Result tables: print aligned (distributions as columns, the published order), write JSON and CSV."""
import json
from pathlib import Path

import pandas as pd

from utils.safe_write import digest, json_text, write_text

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


def results_csv(payload, extra_columns=()):
    """``payload["distributions"]`` as CSV text, a row per distribution."""
    records = []
    for name, m in payload["distributions"].items():
        rec = {"distribution": name}
        rec.update({k: m.get(k) for k in METRIC_ROWS})
        rec.update({k: (json.dumps(m[k]) if isinstance(m.get(k), list) else m.get(k)) for k in extra_columns})
        records.append(rec)
    return pd.DataFrame.from_records(records).to_csv(index=False)


def write_results(payload, json_path, extra_columns=(), beside=()):
    """The CSV (a row per distribution), then the JSON (whole payload) listing under ``"files"`` the
    SHA-256 of the CSV and of the files in ``beside`` (written before): the record by which a later
    run recognises them as its own (utils/safe_write.py). A NaN or infinite number is refused."""
    json_path = Path(json_path)
    json_text(payload, what=json_path)  # a NaN is refused before anything is written
    csv_path = write_text(json_path.with_suffix(".csv"), results_csv(payload, extra_columns))
    files = {p.name: digest(p) for p in [csv_path, *map(Path, beside)]}
    write_text(json_path, json_text({**payload, "files": files}, what=json_path))
    return json_path, csv_path


def write_history_csv(history, path):
    """The per-epoch log (one dict per epoch: loss, accuracy, lr, val_*, test_* ...) as CSV,
    written atomically; epochs without validation leave those cells empty."""
    write_text(Path(path), pd.DataFrame.from_records(history).to_csv(index=False))
