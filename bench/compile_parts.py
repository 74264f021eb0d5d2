"""Where torch.compile wins or loses on a CPU: forward + backward of the model alone, of masked_nll alone, and of
both, eager against compiled, for the cpu preset (16 x 256 tokens, vocabulary 4096), one thread.

    OMP_NUM_THREADS=1 TORCH_LOGS=recompiles python bench/compile_parts.py [--preset tiny]

Each figure is the best of 4 calls after 2 warm-up calls (which hold the compilation).
"""
import argparse
import time

import torch

from mdlm_course.diffusion import masked_nll, q_sample
from mdlm_course.model import MDLM, ModelConfig

torch.set_num_threads(1)
torch.manual_seed(0)
ap = argparse.ArgumentParser(); ap.add_argument("--preset", default="cpu"); args = ap.parse_args()
mc = ModelConfig.preset(args.preset); V = mc.vocab_size
m = MDLM(mc).train()
x0 = torch.randint(0, V - 1, (16, mc.seq_len)); t = torch.full((16,), 0.5)
xt = q_sample(x0, t, V - 1)
cm = torch.compile(m); cnll = torch.compile(masked_nll)
logits0 = torch.randn(16, mc.seq_len, V, requires_grad=True)
def model_part(f):
    out = f(xt, t); out.float().mean().backward(); m.zero_grad(set_to_none=True)
def nll_part(f):
    l = f(logits0, xt, x0, V - 1).sum(); l.backward(); logits0.grad = None
def both(fm, fn):
    out = fm(xt, t); fn(out, xt, x0, V - 1).sum().backward(); m.zero_grad(set_to_none=True)
def bench(fn, n=4):
    fn(); fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)
for name, e, c in [("model fwd+bwd", lambda: model_part(m), lambda: model_part(cm)),
                   (f"masked_nll fwd+bwd on (16, {mc.seq_len}, {V}) logits", lambda: nll_part(masked_nll), lambda: nll_part(cnll)),
                   ("model + nll", lambda: both(m, masked_nll), lambda: both(cm, cnll))]:
    te, tc = bench(e), bench(c)
    print(f"{name:45s} eager {te*1e3:7.0f} ms   compiled {tc*1e3:7.0f} ms   compiled/eager time {tc/te:.2f}", flush=True)
