"""The verifier on VNN-LIB properties of networks with Transformer-era operators.

    python bench/verify_modern.py [--per-model 10] [--timeout 30] [--markdown OUT.md]

Networks (seeded, random weights, exported to ONNX with ``torch.onnx.export`` opset 17 so that
every counterexample is executed by ONNX Runtime): GELU, SiLU and ELU MLPs (4 inputs), a
LayerNorm + one-head self-attention block (6 inputs: 3 tokens of 2), LSTM and GRU sequence
classifiers (6 inputs), and a 2-layer Transformer encoder classifier on 16 inputs (4 tokens
of 4; pre-norm, GELU MLP) where input splitting still applies.  For each network,
``--per-model`` properties ``y_0 - y_1 >= t`` over random boxes (half-width 0.02 to 0.2) with
thresholds at quantiles of the margin over 20,000 uniform samples of the box, written as
``.vnnlib`` files and parsed back.

What is known: a property whose samples contain a witness is ``sat``; for the others no
witness was found by sampling (and by the verifier's own falsifier), so ``unsat`` is the
expected answer but a ``sat`` would also be checked.  Wrong answers: ``unsat`` where a
witness exists, or a ``sat`` whose counterexample ONNX Runtime does not confirm.  ``unknown``
and ``timeout`` are not wrong.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import perturbkit as pk  # noqa: E402
from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property  # noqa: E402
from perturbkit.verify.vnnlib import format_vnnlib, parse_vnnlib  # noqa: E402


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(2)
        self.attn = nn.MultiheadAttention(2, 1, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        t = x.reshape(-1, 3, 2)
        h = self.norm(t)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((t + a).flatten(1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(2, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(-1, 3, 2))
        return self.head(out[:, -1])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.enc(self.embed(x.reshape(-1, 4, 4))).mean(1))


def _mlp(act):
    return nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 2))


MODELS = {"gelu_mlp": (lambda: _mlp(nn.GELU()), 4), "silu_mlp": (lambda: _mlp(nn.SiLU()), 4),
          "elu_mlp": (lambda: _mlp(nn.ELU()), 4), "attention": (Attention, 6),
          "lstm": (lambda: Recurrent(nn.LSTM), 6), "gru": (lambda: Recurrent(nn.GRU), 6), "encoder2": (Encoder, 16)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-model", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="pk-verify-modern-"))
    rng = np.random.default_rng(0)
    rows, wrong = [], 0
    for name, (make, n) in MODELS.items():
        torch.manual_seed(11)
        model = make().eval()
        path = folder / f"{name}.onnx"
        with torch.enable_grad():
            torch.onnx.export(model, (torch.zeros(1, n),), str(path), opset_version=17, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
        net = pk.load(path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for k in range(args.per_model):
            c = rng.uniform(-1, 1, n)
            r = rng.uniform(0.02, 0.2)
            lo, hi = c - r, c + r
            pts = rng.uniform(lo, hi, (20000, n)).astype(np.float32)
            y = np.concatenate([sess.run(None, {"x": pts[i:i + 2000]})[0] for i in range(0, len(pts), 2000)])
            margin = y[:, 0] - y[:, 1]
            q = [0.999, 1.05, 1.2, 0.9][k % 4]
            t = float(np.quantile(margin, min(q, 1.0))) if q <= 1 else float(margin.max() + (q - 1) * (margin.max() - margin.min()))
            known = "sat" if (margin >= t).any() else "unsat?"
            # unsafe region: y_0 - y_1 >= t, i.e. -y_0 + y_1 <= -t
            prop = Property(n_inputs=n, n_outputs=2, cases=(Case(InputBox(lo, hi), OutputSpec(
                (Clause(np.array([[-1.0, 1.0]]), np.array([-t])),))),))
            vpath = folder / f"{name}_{k}.vnnlib"
            vpath.write_text(format_vnnlib(prop))
            t0 = time.perf_counter()
            res = pk.verify(net, parse_vnnlib(vpath), timeout=args.timeout)
            dt = time.perf_counter() - t0
            ok = True
            if res.verdict == "sat":
                x, _ = res.counterexample
                yo = sess.run(None, {"x": np.asarray(x, np.float32).reshape(1, -1)})[0][0]
                ok = bool(yo[0] - yo[1] >= t - 1e-6 and np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9))
            elif res.verdict == "unsat":
                ok = known != "sat"
            wrong += not ok
            rows.append((name, k, known, res.verdict, dt, ok))
    lines = ["| network | properties | sat (known sat) | unsat | unknown | timeout | wrong | mean time | max time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in MODELS:
        rs = [r for r in rows if r[0] == name]
        cnt = {v: sum(r[3] == v for r in rs) for v in ("sat", "unsat", "unknown", "timeout")}
        ks = sum(r[2] == "sat" for r in rs)
        lines.append(f"| {name} | {len(rs)} | {cnt['sat']} ({ks}) | {cnt['unsat']} | {cnt['unknown']} | {cnt['timeout']} | "
                     f"{sum(not r[5] for r in rs)} | {np.mean([r[4] for r in rs]):.2f} s | {max(r[4] for r in rs):.2f} s |")
    text = "\n".join(lines) + f"\n\nwrong answers: {wrong} of {len(rows)}"
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
