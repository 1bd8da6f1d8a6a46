"""Arguments several `lmmvqa` commands share, with one spelling of their flag, default and help.

Each command module's `configure_parser(parser)` (see pipeline/cli.py) calls these where it takes
the argument. A leaf module (argparse only), so a stage that uses them depends on nothing else here.
"""
from __future__ import annotations

import argparse

DTYPES = ["float32", "bfloat16", "float16"]
DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: the config's)"


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="workflow config (YAML)")


def add_device_arg(parser: argparse.ArgumentParser, default: str | None = None, help: str = DEVICE_HELP) -> None:
    """--device; None (the default) means the config's `device` (cli.main resolves cuda / auto)."""
    parser.add_argument("--device", default=default, help=help)


def add_dtype_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="load the LLM in this dtype (default: the dtype the model folder records from training)")


def add_no_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def add_stores_arg(parser: argparse.ArgumentParser, whose: str = "the dataset") -> None:
    """--stores: the feature stores a rule declares as its inputs, handed to the command as they are."""
    parser.add_argument("--stores", nargs="+", default=None, metavar="STORE",
                        help=f"feature stores (Zarr) of {whose} (default: the shards of its manifest that "
                             "exist under the config's feature settings)")


def add_decode_deadline_arg(parser: argparse.ArgumentParser) -> None:
    """--decode-deadline: sampling.decode_deadline.base_s for this run (pipeline/core/deadline.py)."""
    parser.add_argument("--decode-deadline", type=float, default=None, metavar="S",
                        help="seconds a video's decode may take per backend before the allowance for its duration "
                             "and size is added (default: the config's sampling.decode_deadline.base_s); a decode "
                             "past its deadline is killed, then the fallback backend is tried")
