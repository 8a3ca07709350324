"""Every value the documents give an option is accepted by the check of that option: the values are
read from README.md and docs/ (not copied here), so docs and checks cannot drift apart. Each reader
must find the values it expects to find, so a reworded page fails here instead of testing nothing."""
import json
import re

import pytest

from tests.helpers import ROOT, write_config

METHODS = (ROOT / "docs" / "methods.md").read_text()
PERFORMANCE = (ROOT / "docs" / "performance.md").read_text()
README = (ROOT / "README.md").read_text()
LABEL_SHIFT = ("SafePrior", "EMPrior", "MAPPrior", "OraclePrior")


def _found(values, at_least=2):
    assert len(values) >= at_least, f"the documents no longer list these values where this test reads them: {values}"
    return values


def bias_values():
    """The `bias` column of the calibration families' table (docs/methods.md#small-validation-splits)."""
    rows = METHODS.split("| `bias` |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return _found([json.loads(re.match(r"\| `([^`]+)` \|", row).group(1)) for row in rows])


def quoted_after(text, anchor, end=")"):
    """The "quoted" words from ``anchor`` to the next ``end``."""
    return _found(re.findall(r'"(\w+)"', text.split(anchor, 1)[1].split(end, 1)[0]), at_least=1)


def usage_choices(option):
    """``[--option a|b|c]`` of a usage block of README.md."""
    return _found(re.search(rf"\[{option} ([\w|]+)\]", README).group(1).split("|"))


def build(tmp_path, section, overrides=()):
    from trainer.build import build_test_time_method
    return build_test_time_method(write_config(tmp_path / "tt.json", {"test_time": section}), overrides)[0]


def as_typed(value):
    """How a user types ``value`` after ``--set KEY=`` (JSON, or a bare word for a string)."""
    return value if isinstance(value, str) else json.dumps(value)


@pytest.mark.parametrize("method", LABEL_SHIFT)
def test_every_documented_bias_is_accepted_from_the_file_and_from_set(tmp_path, method):
    from utils.parse_config import parse_set_expression
    for value in bias_values():
        assert build(tmp_path, {"type": method, "args": {"bias": value}}).bias == value
        override = (*parse_set_expression(f"test_time.args.bias={as_typed(value)}"), "--set")
        assert build(tmp_path, {"type": method, "args": {}}, [override]).bias == value


def test_every_documented_source_prior_and_calibration_is_accepted(tmp_path):
    for value in quoted_after(METHODS, "(`source_prior`:"):
        assert build(tmp_path, {"type": "EMPrior", "args": {"source_prior": value}}).source_prior == value
    calibrations = _found(re.findall(r'`calibration: "(\w+)"`', METHODS))
    for value in calibrations:
        assert build(tmp_path, {"type": "EMPrior", "args": {"calibration": value}}).calibration_data == value


def test_safe_priors_documented_automatic_settings_are_accepted(tmp_path):
    for value in quoted_after(METHODS, "(`strength` and `min_divergence`"):
        method = build(tmp_path, {"type": "SafePrior", "args": {"strength": value, "min_divergence": value}})
        assert method.strength == value and method.min_divergence == value
    for value in quoted_after(METHODS, "**SafePrior's strength per test set** (`strength`"):
        assert build(tmp_path, {"type": "SafePrior", "args": {"strength": value}}).strength == value


def test_every_documented_select_on_is_accepted():
    from utils.trainer_schema import trainer_settings
    paragraph = METHODS.split("**Model selection.**", 1)[1].split("\n\n", 1)[0]
    for value in _found(sorted(set(re.findall(r'"(\w+)"', paragraph)))):
        assert trainer_settings({"epochs": 1, "select_on": value})["select_on"] == value


def test_every_documented_pipeline_and_tau_list_is_accepted():
    from data_loader.array_lt import PIPELINES
    from model.loss.logit_adjusted_loss import LogitAdjustedLoss
    row = next(line for line in PERFORMANCE.splitlines() if line.startswith("| `data_loader.args.pipeline` |"))
    assert set(_found(re.findall(r'`"(\w+)"`', row))) <= set(PIPELINES)
    for value in quoted_after(METHODS, "- `tau_list`:", end="\n"):
        LogitAdjustedLoss([5, 3, 1], tau_list=value)  # refused values raise ValueError


def test_every_documented_choice_of_the_evaluation_options_is_accepted():
    from trainer.protocols import PROTOCOLS
    from trainer.saved_logits import DTYPES
    assert set(usage_choices("--protocol")) <= set(PROTOCOLS)
    assert set(usage_choices("--logits_dtype")) <= set(DTYPES)
