"""Command-line pieces shared by train.py, test.py and test_train.py."""
import argparse

from utils.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit 2, no usage dump)."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def add_evaluation_args(parser):
    """Options common to test.py and test_train.py."""
    parser.add_argument("-r", "--resume", required=True, metavar="CHECKPOINT", help="trained checkpoint")
    parser.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--data_dir", help="override data_loader.args.data_dir")
    parser.add_argument("--distributions", default="all", help="all, uniform, or names like forward50,backward50")
    parser.add_argument("--out", help="result JSON path (a CSV is written beside it)")
    parser.add_argument("--bs", type=int, help="batch size")
    return parser


def data_overrides(args):
    """(key path, value, option) triples for ConfigParser.apply_overrides."""
    return [("data_loader.args.data_dir", args.data_dir, "--data_dir"),
            ("data_loader.args.batch_size", args.bs, "--bs")]
