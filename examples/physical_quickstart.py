"""Physical learning in 30 lines: a resistor network learns a 2-output linear map by coupled learning.

Run: .venv/bin/python examples/physical_quickstart.py
"""

import torch

import doubleopt as do
import doubleopt.physical as ph

# A planar random network: 300 nodes, mean degree 4, 3 voltage sources, 1 ground, 2 output nodes.
net = ph.random_network(300, 4.0, n_inputs=3, n_outputs=2, seed=0)
g = torch.Generator().manual_seed(0)
x = torch.rand(64, 3, dtype=torch.float64, generator=g)  # input voltages
W = torch.tensor([[0.5, 0.2, 0.1], [0.1, 0.3, 0.4]], dtype=torch.float64)
t = x @ W.T  # desired output voltages

# Inner optimization: the free state (sparse Laplacian solve) == what any core solver finds.
V = net.free_state(x[:4])
V_lbfgs = ph.relax_free_state(net, x[:4], solver=do.LBFGS(), tol=1e-10, max_steps=5000)
print("free state: sparse solve vs L-BFGS max diff", float((V - V_lbfgs).abs().max()))

# Outer optimization: coupled learning vs the exact gradient direction.
C, grad = ph.exact_gradient(net, x, t)
for eta in (0.5, 0.1, 0.01):
    est = ph.gradient_estimate(net, x, t, ph.EquilibriumPropagation(eta))
    print(f"EP beta={eta}: cosine to exact gradient {ph.cosine(est, grad):.6f}")
res = ph.train(net, x, t, ph.CoupledLearning(eta=0.1), steps=300, lr=10.0, eval_every=100)
print("coupled learning: cost", [f"{c:.2e}" for c in res.eval_cost])
