"""Entry point of the ``perturbkit`` command: ``perturbkit {bounds,demo} ...``.

Exit codes: 0 success; 2 bad usage or bad input (one line ``perturbkit: error: ...`` on
stderr, no traceback, no JSON written); 1 an unexpected exception (one line naming the
exception type; set ``PERTURBKIT_DEBUG=1`` to see the traceback); 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from perturbkit.errors import PerturbkitError

PROG = "perturbkit"


class UsageError(Exception):
    """Bad command-line syntax (raised instead of argparse's multi-line exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse hook
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    from perturbkit.cli.bounds_cmd import DEVICES, DTYPES, METHODS, NORMS

    parser = _Parser(prog=PROG, description="Provable output bounds of neural networks (IBP, CROWN, CROWN-IBP).")
    sub = parser.add_subparsers(dest="command", metavar="{bounds,demo}")

    b = sub.add_parser("bounds", help="bound a model's outputs (or label margins) over an Lp ball",
                       description="Bound the outputs of MODEL for every input within an Lp ball "
                                   "around each sample of --input.")
    b.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name (digits-mlp, digits-cnn)")
    b.add_argument("--input", required=True, metavar="X.npy", help="one input or a batch (B, *input_shape)")
    b.add_argument("--eps", required=True, type=float, metavar="E", help="radius of the Lp ball (>= 0)")
    b.add_argument("--norm", default="inf", choices=list(NORMS), help="the p of the Lp ball (default: inf)")
    b.add_argument("--domain", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                   help="intersect the ball with the box [LO, HI] per feature (e.g. 0 1 for images)")
    b.add_argument("--method", default="crown", choices=list(METHODS), help="bounding method (default: crown)")
    b.add_argument("--label", type=int, default=None, metavar="N",
                   help="bound the margins y_N - y_j (j != N) instead of the raw outputs")
    b.add_argument("--device", default="cpu", choices=list(DEVICES), help="default: cpu")
    b.add_argument("--dtype", default="float32", choices=list(DTYPES), help="default: float32")
    b.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="also write the bounds as JSON to OUT (atomically, only on success)")
    b.set_defaults(handler=_bounds)

    d = sub.add_parser("demo", help="certify a few bundled test digits with every method",
                       description="Bound the label margins of a few bundled test digits under IBP, "
                                   "CROWN and CROWN-IBP for both bundled models.")
    d.add_argument("--n", type=int, default=8, dest="n_digits", metavar="N", help="number of digits (default: 8)")
    d.add_argument("--eps", type=float, default=0.03, metavar="E", help="Lp radius (default: 0.03)")
    d.add_argument("--norm", default="inf", choices=list(NORMS), help="default: inf")
    d.add_argument("--save-dir", default=None, metavar="DIR",
                   help="where digit 0 is saved for the printed command (default: a temp folder)")
    d.set_defaults(handler=_demo)
    return parser


def _bounds(args: argparse.Namespace) -> int:
    from perturbkit.cli.bounds_cmd import BoundsConfig, command

    cfg = BoundsConfig(model=args.model, input=args.input, eps=args.eps, norm=args.norm,
                       domain=tuple(args.domain) if args.domain else None, method=args.method,
                       label=args.label, device=args.device, dtype=args.dtype, json_out=args.json_out)
    return command(cfg)


def _demo(args: argparse.Namespace) -> int:
    from perturbkit.cli.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(n_digits=args.n_digits, eps=args.eps, norm=args.norm, save_dir=args.save_dir))


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(list(argv) if argv is not None else None)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        handler: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "handler", None)
        if handler is None:
            return _fail(f"missing command: choose 'bounds' or 'demo' (see '{PROG} --help')", 2)
        return handler(args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except PerturbkitError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return _fail(f"{exc.strerror or exc}{where}", 2)
    except Exception as exc:  # a genuine bug: say so in one line, keep the traceback on demand
        if os.environ.get("PERTURBKIT_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (a bug in perturbkit; "
                     f"set PERTURBKIT_DEBUG=1 for the traceback)", 1)


if __name__ == "__main__":
    sys.exit(main())
