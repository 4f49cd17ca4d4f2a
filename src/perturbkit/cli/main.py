"""Entry point of the ``perturbkit`` command:
``perturbkit {bounds,demo,verify,verify-batch,attack,topk,patch,attack-output,attack-activation,smooth,conformal,report} ...``.

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

    parser = _Parser(prog=PROG, description="Attacks (FGSM, PGD, APGD, FAB, Square, AutoAttack), provable output "
                                            "bounds (IBP, CROWN, alpha-CROWN, "
                                            "CROWN-IBP) and verification of VNN-LIB properties.")
    sub = parser.add_subparsers(dest="command", metavar="{bounds,demo,verify,verify-batch,attack,topk,patch,"
                                                        "attack-output,attack-activation,smooth,conformal,report}")

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
    b.add_argument("--weight-eps", dest="weight_eps", action="append", default=[], metavar="NAME=E",
                   help="also perturb parameter NAME (e.g. fc1.weight, or a layer name for its weight) in "
                        "an Linf ball of radius E around its value, jointly with the input; repeatable")
    b.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="also write the bounds as JSON to OUT (atomically, only on success)")
    b.set_defaults(handler=_bounds)

    d = sub.add_parser("demo", help="the robustness report of the bundled models (or, with --certify, a bounds table)",
                       description="Write the robustness report (perturbkit report) of the bundled digits models "
                                   "on the bundled test digits to --out and print where the page is; with "
                                   "--certify, bound the label margins of a few test digits under every method "
                                   "instead.")
    d.add_argument("--out", default="perturbkit-demo", metavar="DIR",
                   help="the report's folder (default: perturbkit-demo)")
    d.add_argument("--budget", default="fast", choices=["fast", "standard", "thorough"],
                   help="the report's budget (default: fast, under 3 minutes on 2 cores)")
    d.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    d.add_argument("--certify", action="store_true",
                   help="instead of the report: certify --n digits with IBP, CROWN, CROWN-IBP, alpha-CROWN")
    d.add_argument("--n", type=int, default=8, dest="n_digits", metavar="N", help="number of digits (default: 8)")
    d.add_argument("--eps", type=float, default=0.03, metavar="E", help="Lp radius (default: 0.03)")
    d.add_argument("--norm", default="inf", choices=list(NORMS), help="default: inf")
    d.add_argument("--save-dir", default=None, metavar="DIR",
                   help="where digit 0 is saved for the printed command (default: a temp folder)")
    d.set_defaults(handler=_demo)

    v = sub.add_parser("verify", help="decide a VNN-LIB property on an ONNX network (sat/unsat/...)",
                       description="Verify PROP.vnnlib on NET.onnx. The first line of stdout is the "
                                   "verdict: sat, unsat, unknown or timeout; exit code 0 for any verdict.")
    v.add_argument("network", metavar="NET.onnx", help="the network")
    v.add_argument("property", metavar="PROP.vnnlib", help="the property (it describes a violation)")
    v.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds, > 0, counted from the start of loading (default: 60)")
    v.add_argument("--out", default=None, metavar="RESULT.txt",
                   help="write the VNN-COMP result file: the verdict, and for sat the counterexample")
    v.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="also write the result as JSON to OUT (atomically, only on success)")
    v.add_argument("--strategy", default="auto", choices=["auto", "input", "relu"],
                   help="branch and bound on input dimensions or on ReLU neurons (beta-CROWN); "
                        "default auto: input splits for <= 16 inputs or networks without ReLU")
    v.add_argument("--verbose", "-v", action="store_true",
                   help="report branch and bound on stderr about once a second: domains bounded, "
                        "open, worst lower bound, domains per second")
    v.set_defaults(handler=_verify)

    vb = sub.add_parser("verify-batch", help="verify every instance of a VNN-COMP instances.csv",
                        description="Run every row (onnx,vnnlib,timeout) of INSTANCES.csv and append "
                                    "one row onnx,vnnlib,verdict,time_s per instance to --out as it "
                                    "finishes; print a summary (and a judgement against an answers.csv "
                                    "beside INSTANCES.csv).")
    vb.add_argument("instances", metavar="INSTANCES.csv", help="rows onnx,vnnlib,timeout")
    vb.add_argument("--root", default=None, metavar="DIR",
                    help="the folder the csv's paths are relative to (default: the csv's folder)")
    vb.add_argument("--out", default="results.csv", metavar="RESULTS.csv",
                    help="results CSV (default: results.csv in the current folder); counterexamples go "
                         "to a counterexamples/ folder beside it")
    vb.add_argument("--workers", type=int, default=None, metavar="N",
                    help="local worker processes; the CPUs are shared among them (torch threads per "
                         "worker: CPUs // N; default: 1 worker using every CPU)")
    vb.add_argument("--ray", default=None, metavar="ADDRESS",
                    help="run the instances as Ray tasks on the cluster at ADDRESS (auto, HOST:PORT, "
                         "ray://HOST:PORT, or local); needs pip install 'perturbkit[ray]'")
    vb.add_argument("--resume", action="store_true",
                    help="continue --out: skip the instances already in it")
    vb.add_argument("--timeout-scale", type=float, default=1.0, metavar="F",
                    help="multiply every instance's timeout by F (default: 1)")
    vb.add_argument("--no-progress", dest="progress", action="store_false",
                    help="no progress bar on stderr")
    vb.add_argument("--strategy", default="auto", choices=["auto", "input", "relu"],
                    help="the verifier's branch-and-bound strategy for every instance (default auto)")
    vb.set_defaults(handler=_verify_batch)

    a = sub.add_parser("attack", help="attack a model on labelled data (FGSM, PGD, APGD, FAB, Square, AutoAttack)",
                       description="Run one or more attacks (in sequence, each on the points still robust) "
                                   "on MODEL over DATA and report clean and robust accuracy.")
    a.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name (digits-mlp, digits-cnn, ...)")
    a.add_argument("--data", required=True, metavar="DATA",
                   help="an .npz with x and y, a CSV of label + pixels 0-255 (with --shape), or a bundled "
                        "data set name (digits)")
    a.add_argument("--attack", required=True, metavar="NAME",
                   help="fgsm, pgd, apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square, autoattack, "
                        "autoattack-plus, autoattack-rand, autoattack-fast; a comma-separated list runs in sequence")
    a.add_argument("--eps", required=True, type=float, metavar="E", help="radius of the Lp ball (>= 0)")
    a.add_argument("--norm", default="inf", choices=["inf", "2", "1"], help="default: inf")
    a.add_argument("--steps", type=int, default=None, metavar="N", help="iterations (Square: queries); default: the attack's")
    a.add_argument("--step-size", type=float, default=None, metavar="A", help="absolute step size (PGD)")
    a.add_argument("--restarts", type=int, default=None, metavar="R", help="random restarts")
    a.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    a.add_argument("--n", type=int, default=None, metavar="N", help="only the first N points")
    a.add_argument("--targeted", action="store_true",
                   help="targeted: each point's target is a random other class (seeded by --seed)")
    a.add_argument("--shape", default=None, metavar="D,D,...",
                   help="sample shape of CSV data as stored, e.g. 28,28 or 32,32,3 (channels-last is transposed)")
    a.add_argument("--domain", nargs=2, type=float, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="input domain (default: 0 1)")
    a.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="points per batch (default: automatic from the model's widest layer)")
    a.add_argument("--state", default=None, metavar="STATE.npz",
                   help="keep a resumable state here; rerun the same command to continue an interrupted run")
    a.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the JSON record to OUT")
    a.add_argument("--save-adv", default=None, metavar="ADV.npz", help="write x_adv and y to ADV.npz")
    a.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    a.set_defaults(handler=_attack)

    t = sub.add_parser("topk", help="ordered top-K targeted attack on labelled data (random ordered targets)",
                       description="Attack every point of DATA towards K random ordered target classes "
                                   "(seeded; none is the label): success when the model's K highest logits are "
                                   "the targets in order. Prints the success rate and the median perturbation "
                                   "norm of the successful points.")
    t.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name (digits-mlp, digits-cnn, ...)")
    t.add_argument("--data", required=True, metavar="DATA",
                   help="an .npz with x and y, a CSV of label + pixels 0-255 (with --shape), or a bundled "
                        "data set name (digits)")
    t.add_argument("--k", required=True, type=int, metavar="K", help="ordered targets per point (1 .. classes - 1)")
    t.add_argument("--eps", required=True, type=float, metavar="E", help="radius of the Lp ball (>= 0)")
    t.add_argument("--norm", default="inf", choices=["inf", "2", "1"], help="default: inf")
    t.add_argument("--method", default="quad", choices=["quad", "naive"],
                   help="quad: QuadAttacK-style QP target (default); naive: hinge losses")
    t.add_argument("--steps", type=int, default=100, metavar="N", help="gradient steps (default: 100)")
    t.add_argument("--n", type=int, default=None, metavar="N", help="only the first N points")
    t.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the targets (default: 0)")
    t.add_argument("--shape", default=None, metavar="D,D,...",
                   help="sample shape of CSV data as stored, e.g. 28,28 or 32,32,3 (channels-last is transposed)")
    t.add_argument("--domain", nargs=2, type=float, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="input domain (default: 0 1)")
    t.add_argument("--batch-size", type=int, default=256, metavar="B", help="points per batch (default: 256)")
    t.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the JSON record to OUT")
    t.set_defaults(handler=_topk)

    pa = sub.add_parser("patch", help="universal adversarial patch under random transformations (EOT)",
                        description="Fit one square patch for all images of DATA over random placements, "
                                    "scales, rotations and lighting (expectation over transformation), then "
                                    "evaluate it on the same images under fresh transformations, beside a "
                                    "random patch. Prints the success rates.")
    pa.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name (digits-mlp, digits-cnn, ...)")
    pa.add_argument("--data", required=True, metavar="DATA",
                    help="an .npz with x and y, a CSV of label + pixels 0-255 (with --shape), or a bundled "
                         "data set name (digits)")
    pa.add_argument("--size", required=True, type=int, metavar="S", help="side of the patch in pixels")
    pa.add_argument("--steps", type=int, default=100, metavar="N", help="optimisation steps (default: 100)")
    pa.add_argument("--target", type=int, default=None, metavar="T",
                    help="class to reach (default: untargeted, any class but the label)")
    pa.add_argument("--eot-samples", type=int, default=16, metavar="N",
                    help="transformations per image and step (default: 16)")
    pa.add_argument("--n-eval", type=int, default=100, metavar="N",
                    help="fresh transformations per image for the evaluation (default: 100)")
    pa.add_argument("--n", type=int, default=None, metavar="N", help="only the first N images")
    pa.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    pa.add_argument("--shape", default=None, metavar="D,D,...",
                    help="sample shape of CSV data as stored, e.g. 28,28 or 32,32,3 (channels-last is transposed)")
    pa.add_argument("--domain", nargs=2, type=float, default=(0.0, 1.0), metavar=("LO", "HI"),
                    help="input and patch values (default: 0 1)")
    pa.add_argument("--batch-size", type=int, default=None, metavar="B",
                    help="images per optimisation step (default: all)")
    pa.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the JSON record to OUT")
    pa.add_argument("--save-patch", default=None, metavar="PATCH.npy", help="write the patch (C, S, S) to PATCH.npy")
    pa.set_defaults(handler=_patch)

    o = sub.add_parser("attack-output", help="attack real-valued outputs (regression, control): threshold or deviation",
                       description="PGD on the outputs of MODEL within an Lp ball around each input of --input: "
                                   "push one output (or c . y with --weights) above or below --threshold, or "
                                   "maximise the deviation of the outputs.")
    o.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name")
    o.add_argument("--input", required=True, metavar="X.npy", help="one input or a batch (B, *input_shape)")
    o.add_argument("--eps", required=True, type=float, metavar="E", help="radius of the Lp ball (>= 0)")
    o.add_argument("--norm", default="inf", choices=["inf", "2", "1"], help="default: inf")
    o.add_argument("--goal", required=True, choices=["above", "below", "deviation"],
                   help="above/below: cross --threshold; deviation: move the outputs as far as possible")
    sel = o.add_mutually_exclusive_group()
    sel.add_argument("--output", default=None, metavar="I",
                     help="the output index (deviation: also I,J,...); default: the only output (above/below), "
                          "all outputs (deviation)")
    sel.add_argument("--weights", default=None, metavar="C,C,...",
                     help="attack the linear functional c . y instead (one weight per output)")
    o.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="required for above/below; for deviation the deviation that counts as success")
    o.add_argument("--steps", type=int, default=50, metavar="N", help="gradient steps per restart (default: 50)")
    o.add_argument("--restarts", type=int, default=1, metavar="R", help="random restarts (default: 1)")
    o.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    dom = o.add_mutually_exclusive_group()
    dom.add_argument("--domain", nargs=2, type=float, default=(0.0, 1.0), metavar=("LO", "HI"),
                     help="input domain (default: 0 1)")
    dom.add_argument("--no-domain", dest="domain", action="store_const", const=None,
                     help="no input domain: the ball alone")
    o.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the JSON record to OUT")
    o.set_defaults(handler=_attack_output)

    ac = sub.add_parser("attack-activation", help="perturb a named node's activation: target class or output control",
                        description="Add a perturbation within an Lp budget to the value of node NAME and run the "
                                    "rest of MODEL on it: reach --target-class, or measure with --control how "
                                    "many outputs can be set to random targets (within --tol).")
    ac.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name")
    ac.add_argument("--input", required=True, metavar="X.npy", help="one input or a batch (B, *input_shape)")
    ac.add_argument("--node", required=True, metavar="NAME", help="the node (or its output value) to perturb")
    ac.add_argument("--eps", required=True, type=float, metavar="E", help="radius of the budget on the activation (>= 0)")
    ac.add_argument("--norm", default="inf", choices=["inf", "2", "1"], help="default: inf")
    goal = ac.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-class", type=int, default=None, metavar="C", help="the class to reach")
    goal.add_argument("--control", action="store_true",
                      help="count the outputs the budget sets to random target values")
    ac.add_argument("--steps", type=int, default=100, metavar="N", help="gradient steps per restart (default: 100)")
    ac.add_argument("--restarts", type=int, default=1, metavar="R", help="random restarts (default: 1)")
    ac.add_argument("--tol", type=float, default=1e-2, metavar="T",
                    help="--control: tolerance of a target value (default: 0.01)")
    ac.add_argument("--seed", type=int, default=0, metavar="S", help="seeds starts and targets (default: 0)")
    ac.add_argument("--domain", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                    help="range of the perturbed activation, e.g. 0 inf after a ReLU (default: unbounded)")
    ac.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the JSON record to OUT")
    ac.set_defaults(handler=_attack_activation)

    from perturbkit.cli import conformal_cmd, report_cmd, smooth_cmd

    smooth_cmd.add_parser(sub)
    conformal_cmd.add_parser(sub)
    report_cmd.add_parser(sub)
    return parser


def _bounds(args: argparse.Namespace) -> int:
    from perturbkit.cli.bounds_cmd import BoundsConfig, command, parse_weight_eps

    cfg = BoundsConfig(model=args.model, input=args.input, eps=args.eps, norm=args.norm,
                       domain=tuple(args.domain) if args.domain else None, method=args.method,
                       label=args.label, device=args.device, dtype=args.dtype, json_out=args.json_out,
                       weight_eps=parse_weight_eps(args.weight_eps))
    return command(cfg)


def _demo(args: argparse.Namespace) -> int:
    from perturbkit.cli.demo import DemoConfig, run_demo, run_report_demo

    if not args.certify:
        return run_report_demo(out=args.out, budget=args.budget, progress=args.progress)
    return run_demo(DemoConfig(n_digits=args.n_digits, eps=args.eps, norm=args.norm, save_dir=args.save_dir))


def _verify(args: argparse.Namespace) -> int:
    from perturbkit.cli.verify_cmd import VerifyCmdConfig, command

    return command(VerifyCmdConfig(network=args.network, property=args.property, timeout=args.timeout,
                                   out=args.out, json_out=args.json_out, strategy=args.strategy,
                                   verbose=args.verbose))


def _verify_batch(args: argparse.Namespace) -> int:
    from perturbkit.cli.batch_cmd import BatchConfig, command

    return command(BatchConfig(instances=args.instances, root=args.root, out=args.out,
                               workers=args.workers, ray=args.ray, resume=args.resume,
                               timeout_scale=args.timeout_scale, progress=args.progress,
                               strategy=args.strategy))


def _attack(args: argparse.Namespace) -> int:
    from perturbkit.cli.attack_cmd import AttackCmdConfig, command

    shape = None
    if args.shape:
        try:
            shape = tuple(int(v) for v in args.shape.split(","))
        except ValueError:
            raise UsageError(f"--shape must be comma-separated sizes, got {args.shape!r}") from None
    return command(AttackCmdConfig(model=args.model, data=args.data, attack=args.attack, eps=args.eps, norm=args.norm,
                                   steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                                   seed=args.seed, n=args.n, targeted=args.targeted, json_out=args.json_out,
                                   save_adv=args.save_adv, shape=shape, domain=tuple(args.domain),
                                   batch_size=args.batch_size, state=args.state, progress=args.progress))


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _floats(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def _topk(args: argparse.Namespace) -> int:
    from perturbkit.cli.topk_cmd import TopkCmdConfig, topk_command

    shape = _ints("--shape", args.shape) if args.shape else None
    return topk_command(TopkCmdConfig(model=args.model, data=args.data, k=args.k, eps=args.eps, norm=args.norm,
                                      method=args.method, steps=args.steps, n=args.n, seed=args.seed, shape=shape,
                                      domain=tuple(args.domain), batch_size=args.batch_size,
                                      json_out=args.json_out))


def _patch(args: argparse.Namespace) -> int:
    from perturbkit.cli.patch_cmd import PatchCmdConfig, patch_command

    shape = _ints("--shape", args.shape) if args.shape else None
    return patch_command(PatchCmdConfig(model=args.model, data=args.data, size=args.size, steps=args.steps,
                                        target=args.target, eot_samples=args.eot_samples, n_eval=args.n_eval,
                                        n=args.n, seed=args.seed, shape=shape, domain=tuple(args.domain),
                                        batch_size=args.batch_size, json_out=args.json_out,
                                        save_patch=args.save_patch))


def _attack_output(args: argparse.Namespace) -> int:
    from perturbkit.cli.output_cmd import OutputCmdConfig, output_command

    return output_command(OutputCmdConfig(
        model=args.model, input=args.input, eps=args.eps, goal=args.goal, norm=args.norm,
        output=_ints("--output", args.output) if args.output is not None else None,
        weights=_floats("--weights", args.weights) if args.weights is not None else None,
        threshold=args.threshold, steps=args.steps, restarts=args.restarts, seed=args.seed,
        domain=tuple(args.domain) if args.domain is not None else None, json_out=args.json_out))


def _attack_activation(args: argparse.Namespace) -> int:
    from perturbkit.cli.activation_cmd import ActivationCmdConfig, activation_command

    return activation_command(ActivationCmdConfig(
        model=args.model, input=args.input, node=args.node, eps=args.eps, norm=args.norm,
        target_class=args.target_class, control=args.control, steps=args.steps, restarts=args.restarts,
        tol=args.tol, seed=args.seed, domain=tuple(args.domain) if args.domain is not None else None,
        json_out=args.json_out))


def _exit_if_stranded(code: int) -> None:
    """End the program now if a verifier thread was abandoned at its deadline (see
    :func:`perturbkit.verify.instance.verify_with_deadline`): letting the interpreter shut
    down around a thread busy in torch's C++ code can abort the process.  Only for the real
    program (``main()`` without argv); in-process callers keep their process."""
    import threading

    from perturbkit.verify.instance import THREAD_NAME

    if any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate()):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


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
            if getattr(args, "command", None) == "smooth":
                return _fail(f"perturbkit smooth needs an action: certify or predict (see '{PROG} smooth --help')", 2)
            return _fail(f"missing command: choose bounds, demo, verify, verify-batch, attack, topk, patch, attack-output, "
                         f"attack-activation, smooth, conformal or report (see '{PROG} --help')", 2)
        code = handler(args)
        if argv is None:
            _exit_if_stranded(code)
        return code
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
