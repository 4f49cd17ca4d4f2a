"""``evaluate(model, data, threat, attacks=...)``: empirical robustness, as AutoAttack does it.

The attacks run one after another, each only on the points still robust (correct clean and
not broken by an earlier stage), batch by batch.  A point counts as robust at the end only
if it is classified correctly clean and under every attack run.

Records (per sample): index, label, clean prediction, whether it is correct clean, the
stage that broke it (None if robust), the Lp norm of the perturbation found and the
adversarial prediction.  Per stage: robust accuracy after it, points broken, time.

Self-checks (flags, counts of points): every stage's sanity flags (see
:class:`~perturbkit.attacks.base.Attack`: NaN outputs, softmax outputs, randomised outputs,
zero or NaN gradients), plus two cross-stage checks from AutoAttack's authors' advice:

* ``black_box_beats_white_box``: points a black-box attack (Square) broke after every
  white-box stage before it had failed on them: a sign of gradient masking;
* ``fgsm_beats_pgd``: points FGSM broke after a PGD/APGD stage failed on them: an iterative
  attack should never be weaker than a single step.
* ``norm_exceeds_eps``: adversarial points outside the ball (never expected: the base class
  projects; this checks the check).

Resuming: with ``state_file``, the state (records, adversarial inputs, finished batches)
is written atomically after every batch; a run with the same settings and state file
continues where it stopped (an interrupted run loses at most the batch in flight).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from perturbkit._atomic import write_npz_atomic
from perturbkit.attacks.base import Attack, Classifier, ThreatModel, as_tensor_batch
from perturbkit.attacks.losses import fooled
from perturbkit.errors import InputError

Tensor = torch.Tensor

RECORD_VERSION = 1
_GRADIENT_ATTACKS = ("pgd", "apgd")


@dataclass
class Evaluation:
    """Result of :func:`evaluate`; ``to_json()`` gives the versioned record."""

    clean_accuracy: float
    robust_accuracy: float
    time_s: float
    n: int
    threat: dict
    stages: list[dict]
    records: list[dict]
    flags: dict[str, int]
    max_norm: float
    x_adv: np.ndarray = field(repr=False)

    def to_json(self) -> dict:
        d = {"version": RECORD_VERSION, "clean_accuracy": self.clean_accuracy,
             "robust_accuracy": self.robust_accuracy, "time_s": self.time_s, "n": self.n,
             "threat": self.threat, "stages": self.stages, "flags": self.flags, "max_norm": self.max_norm,
             "records": self.records}
        return d


def _threat_dict(t: ThreatModel) -> dict:
    d = asdict(t)
    d["norm"] = "inf" if t.p == float("inf") else str(int(t.p))
    return d


def _fingerprint(x: np.ndarray, y: np.ndarray, threat: ThreatModel, attacks: Sequence[Attack], batch_size: int,
                 targets: Optional[np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    if targets is not None:
        h.update(np.ascontiguousarray(targets).tobytes())
    h.update(json.dumps(_threat_dict(threat), sort_keys=True).encode())
    h.update(json.dumps([(a.name, sorted((k, _stable(v)) for k, v in vars(a).items() if k != "threat"))
                         for a in attacks]).encode())
    h.update(str(batch_size).encode())
    return h.hexdigest()


def _stable(v: Any) -> str:
    """A text for an attack option that is the same in every process (no addresses)."""
    if callable(v):
        return f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', type(v).__name__)}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_stable(u) for u in v) + "]"
    if isinstance(v, Attack):
        return v.name
    return repr(v)


def _save_state(path: Path, meta: dict, x_adv: np.ndarray) -> None:
    write_npz_atomic(path, x_adv=x_adv, meta=np.array(json.dumps(meta)))


def _load_state(path: Path, fingerprint: str) -> Optional[tuple[dict, np.ndarray]]:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            x_adv = z["x_adv"]
    except Exception as e:  # noqa: BLE001
        raise InputError(f"state file {path} is not a perturbkit evaluation state ({type(e).__name__})") from None
    if meta.get("fingerprint") != fingerprint:
        raise InputError(f"state file {path} belongs to another evaluation (different data, model settings, "
                         "threat or attacks); remove it or choose another --state file")
    return meta, x_adv


#: automatic batches hold at most this many values of a Network's widest activation
#: (2^24 float32 values: 64 MB); fewer, larger batches mean fewer model calls per stage
#: (AutoAttack standard on the 450 digits with digits-cnn-adv: 5.7 s in batches of 256,
#: 3.7 s in one batch)
BATCH_VALUES = 1 << 24


def auto_batch_size(model: Any) -> int:
    """Points per batch for :func:`evaluate` when none is given (see ``batch_size`` there)."""
    inner = model.model if isinstance(model, Classifier) else model
    shapes = getattr(getattr(inner, "graph", None), "shapes", None)
    if not shapes:
        return 256
    import math

    widest = max(math.prod(s) for s in shapes.values())
    return max(16, min(4096, BATCH_VALUES // max(1, widest)))


def evaluate(model: Any, data: Union[tuple, str], threat: ThreatModel, *,
             attacks: Union[str, Sequence[Union[str, Attack]]] = "autoattack", n: Optional[int] = None,
             batch_size: Optional[int] = None, targets: Any = None, state_file: Optional[Union[str, os.PathLike]] = None,
             progress: bool = True, steps: Optional[int] = None, step_size: Optional[float] = None,
             restarts: Optional[int] = None, seed: int = 0) -> Evaluation:
    """Run ``attacks`` in sequence on the points still robust; see the module docstring.

    Args:
        model: nn.Module, Network, .onnx path or bundled model name (see :class:`Classifier`).
        data: ``(x, y)`` arrays/tensors, or a data spec for :func:`.data.load_dataset`.
        threat: the threat model (its normalisation is applied inside the model).
        attacks: Attack objects and/or names (see :mod:`.registry`; e.g. ``"autoattack"``,
            ``["apgd-ce", "square"]``); ``steps``, ``step_size``, ``restarts``, ``seed``
            configure attacks given by name.
        n: evaluate the first n points only.
        batch_size: points per batch (every stage runs on a batch before the next batch
            starts; the state file records finished batches).  None: as many as keep the
            widest activation of a Network under :data:`BATCH_VALUES` values (gradients are
            cut into cache-sized chunks inside the attacks anyway), 256 for other models.
        targets: (N,) target labels (targeted threat models).
        state_file: where to keep the resumable state (.npz).
    Returns:
        :class:`Evaluation`.
    """
    from perturbkit.attacks.registry import build

    t_start = time.perf_counter()
    if isinstance(data, (str, os.PathLike)):
        from perturbkit.attacks.data import load_dataset

        data = load_dataset(data)
    try:
        x_all, y_all = data
    except (TypeError, ValueError):
        raise InputError("data must be (x, y) or a data file / bundled data set name") from None
    x_all, y_all, t_all = as_tensor_batch(x_all, y_all, targets)
    if n is not None:
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        x_all, y_all = x_all[:n], y_all[:n]
        t_all = None if t_all is None else t_all[:n]
    if batch_size is None:
        batch_size = auto_batch_size(model if not isinstance(model, (str, os.PathLike)) else Classifier(model).model)
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if isinstance(attacks, str):
        attacks = [attacks]
    stages: list[Attack] = []
    for a in attacks:
        stages += build(a, threat, steps=steps, step_size=step_size, restarts=restarts, seed=seed) if isinstance(a, str) else [a]
    for a in stages:
        if a.threat != threat:
            raise InputError(f"attack {a.name} has another threat model than the evaluation")
    if threat.targeted and t_all is None:
        raise InputError("the threat model is targeted: give targets")
    f = threat.classifier(model, x_all)
    N = x_all.shape[0]
    x_np, y_np = x_all.cpu().numpy(), y_all.cpu().numpy()
    fp = _fingerprint(x_np, y_np, threat, stages, batch_size, None if t_all is None else t_all.cpu().numpy())
    state_path = None if state_file is None else Path(state_file)
    meta = {"fingerprint": fp, "done_batches": [], "records": [None] * N, "stage_time": [0.0] * len(stages),
            "flags": {}, "time_s": 0.0}
    x_adv_all = x_np.copy()
    if state_path is not None:
        loaded = _load_state(state_path, fp)
        if loaded is not None:
            meta, x_adv_all = loaded
    batches = [(s, min(N, s + batch_size)) for s in range(0, N, batch_size)]
    todo = [b for b in range(len(batches)) if b not in set(meta["done_batches"])]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=N, initial=N - sum(batches[b][1] - batches[b][0] for b in todo), unit="pt",
                   desc="evaluate", leave=False)
    for b in todo:
        t_batch = time.perf_counter()
        s, e = batches[b]
        _run_batch(f, stages, threat, x_all[s:e], y_all[s:e], None if t_all is None else t_all[s:e], s, meta, x_adv_all)
        meta["done_batches"].append(b)
        meta["time_s"] += time.perf_counter() - t_batch
        if state_path is not None:
            _save_state(state_path, meta, x_adv_all)
        if bar is not None:
            bar.update(e - s)
            rob = [r for r in meta["records"] if r is not None]
            bar.set_postfix(robust=f"{sum(r['broken_by'] is None and r['clean_correct'] for r in rob) / max(1, len(rob)):.3f}")
    if bar is not None:
        bar.close()
    return _summarise(meta, stages, threat, x_adv_all, N, time.perf_counter() - t_start)


def _run_batch(f: Classifier, stages: list[Attack], threat: ThreatModel, x: Tensor, y: Tensor,
               target: Optional[Tensor], offset: int, meta: dict, x_adv_all: np.ndarray) -> None:
    B = x.shape[0]
    with f.attacking(), torch.no_grad():
        z0 = f(x)
    pred0 = z0.argmax(1)
    correct = ~fooled(z0, y, target)
    robust = correct.clone()
    broken_by: list[Optional[str]] = [None] * B
    stage_of: list[Optional[int]] = [None] * B
    norms = [None] * B
    pred_adv = pred0.clone()
    failed_white = torch.zeros(B, dtype=torch.bool)  # a white-box stage ran on the point and failed
    failed_grad = torch.zeros(B, dtype=torch.bool)  # a PGD/APGD stage ran on the point and failed
    x_adv = x.clone()
    for k, att in enumerate(stages):
        idx = torch.nonzero(robust).flatten()
        if not idx.numel():
            break
        t0 = time.perf_counter()
        res = att(f, x[idx], y[idx], target=None if target is None else target[idx])
        meta["stage_time"][k] += time.perf_counter() - t0
        for name, v in res.flags.items():
            meta["flags"][name] = meta["flags"].get(name, 0) + int(v)
        hit = res.success & ~res.clean_success
        new = idx[hit]
        if not att.white_box:
            _count(meta, "black_box_beats_white_box", int((hit & failed_white[idx]).sum()))
        if att.name == "fgsm":
            _count(meta, "fgsm_beats_pgd", int((hit & failed_grad[idx]).sum()))
        if att.white_box:
            failed_white[idx[~res.success]] = True
        if att.name.startswith(_GRADIENT_ATTACKS):
            failed_grad[idx[~res.success]] = True
        x_adv[new] = res.x_adv[hit]
        pred_adv[new] = res.logits[hit].argmax(1)
        too_far = res.norms[hit] > threat.eps + 1e-5 * max(1.0, threat.eps)  # float32 rounding of the norm
        _count(meta, "norm_exceeds_eps", int(too_far.sum()))
        for j, i in enumerate(new.tolist()):
            broken_by[i] = att.name
            stage_of[i] = k
            norms[i] = float(res.norms[hit][j])
        robust[new] = False
        # points the attack calls "already broken" though the clean check said correct
        # cannot happen (same model, eval mode); randomised models are flagged instead
    x_adv_all[offset:offset + B] = x_adv.cpu().numpy()
    for i in range(B):
        meta["records"][offset + i] = {
            "index": offset + i, "label": int(y[i]), "clean_pred": int(pred0[i]), "clean_correct": bool(correct[i]),
            "robust": bool(robust[i]), "broken_by": broken_by[i], "stage": stage_of[i], "norm": norms[i], "adv_pred": int(pred_adv[i]),
        }


def _count(meta: dict, name: str, v: int) -> None:
    meta["flags"][name] = meta["flags"].get(name, 0) + v


def _summarise(meta: dict, stages: list[Attack], threat: ThreatModel, x_adv: np.ndarray, N: int,
               wall: float) -> Evaluation:
    recs = meta["records"]
    clean = sum(r["clean_correct"] for r in recs) / N
    robust = sum(r["robust"] for r in recs) / N
    out_stages = []
    alive = sum(r["clean_correct"] for r in recs)
    for k, att in enumerate(stages):
        broken = sum(r["stage"] == k for r in recs)
        alive -= broken
        out_stages.append({"attack": att.name, "broken": broken, "robust_accuracy": alive / N,
                           "time_s": meta["stage_time"][k], "white_box": att.white_box})
    flags = {k: int(v) for k, v in sorted(meta["flags"].items())}
    for key in ("black_box_beats_white_box", "fgsm_beats_pgd", "norm_exceeds_eps"):
        flags.setdefault(key, 0)
    norms = [r["norm"] for r in recs if r["norm"] is not None]
    return Evaluation(clean, robust, meta["time_s"], N, _threat_dict(threat), out_stages, recs, flags,
                      max(norms) if norms else 0.0, x_adv)
