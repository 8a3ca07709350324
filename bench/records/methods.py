"""The methods that docs/results.md names: the method a record trained (known by its loss), the
records of one method that differ only in the seed, and the labels of the test-time methods in a
record's test_time_methods.json (bench/studies/test_time_methods.py) that the page picks out."""
from collections import OrderedDict

METHODS = OrderedDict([("CrossEntropyLoss", "Softmax"), ("BalancedSoftmaxLoss", "Balanced Softmax"),
                       ("RIDELoss", "RIDE"), ("DiverseExpertLoss", "TADE"), ("LogitAdjustedLoss", "BalPoE"),
                       ("DirMixELoss", "DirMixE")])
PLAIN = "expert average"
AGGREGATION = "self-supervised aggregation (TADE)"
DEFAULT_PRIOR = "SafePrior (default)"
EM = "EM"
ORACLE = "oracle prior (uses test labels)"


def method_name(loss):
    """The method trained with ``loss`` (a loss's class name); an unknown loss names itself."""
    return METHODS.get(loss, loss)


def groups_over_seeds(records):
    """{(dataset, loss, epochs): [records differing only in the seed]}, in METHODS order."""
    groups = OrderedDict()
    order = list(METHODS)
    for r in sorted(records, key=lambda r: (r["record"]["dataset"], order.index(r["record"].get("loss"))
                                           if r["record"].get("loss") in order else len(order),
                                           r["record"]["epochs"], r["record"]["seed"])):
        rec = r["record"]
        groups.setdefault((rec["dataset"], rec.get("loss"), rec["epochs"]), []).append(r)
    return groups
