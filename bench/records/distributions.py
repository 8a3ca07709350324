"""The test distributions' names as the results page shows them: short column labels (F50, Uni,
B50) and the order of the papers' plots, from the most forward-skewed set to the most backward."""
import re

ABBREV = {"forward": "F", "backward": "B", "uniform": "Uni"}
SKEWED = re.compile(r"(forward|backward)(\d+(?:\.\d+)?)")


def short(name):
    """``forward50`` -> ``F50``, ``uniform`` -> ``Uni``; any other name stays."""
    for word, s in ABBREV.items():
        if name.startswith(word):
            return s + name[len(word):]
    return name


def in_order(names):
    """``names`` from forward (largest imbalance first) through uniform to backward (largest
    last): forward50 ... forward2, uniform, backward2 ... backward50; other names after, as given."""
    def key(item):
        position, name = item
        m = SKEWED.fullmatch(name)
        if m:
            factor = float(m.group(2))
            return (0, -factor, position) if m.group(1) == "forward" else (2, factor, position)
        return (1, 0.0, position) if name == "uniform" else (3, 0.0, position)
    return [name for _, name in sorted(enumerate(names), key=key)]
