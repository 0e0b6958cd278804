"""A QP layer inside a network (OptNet): learn an unknown polytope from projected points.

Data: points x in R^5 and their Euclidean projections onto a hidden polytope {z : G* z <= h*} (8 facets).
Model: a linear layer computes q = -W x, then ``do.layers.QPLayer`` returns
argmin 1/2 |z|^2 + q'z s.t. G z <= h with learnable (W, G, h); gradients flow through the KKT conditions
(the OptNet backward, reusing the interior point's factorization). An MLP of comparable size is the
baseline. The model is float32; the layer runs its interior point in float64 and casts back.

Run: ``python examples/optnet_layer.py`` (200 Adam steps per model; 10-40 s on a shared 2-core machine).
"""

import torch
from torch import nn

import doubleopt as do

g = torch.Generator().manual_seed(0)
n, m, N = 5, 8, 512
G_true = torch.randn(m, n, generator=g)
h_true = torch.rand(m, generator=g) + 0.5
truth = do.layers.QPLayer(Q=torch.eye(n), G=G_true, h=h_true)


def data(k):
    x = 2 * torch.randn(k, n, generator=g)
    with torch.no_grad():
        return x, truth(q=-x)  # projection of x onto the polytope


X, Z = data(N)
Xte, Zte = data(256)


class OptNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.qp = do.layers.QPLayer(Q=torch.eye(n), G=torch.randn(m, n, generator=g), h=torch.ones(m),
                                    learnable=("G", "h"))

    def forward(self, x):
        return self.qp(q=-self.lin(x))


torch.manual_seed(0)
models = {"OptNet": OptNet(), "MLP": nn.Sequential(nn.Linear(n, 16), nn.ReLU(), nn.Linear(16, n))}
for name, model in models.items():
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for step in range(201):
        idx = torch.randint(N, (64,), generator=g)
        loss = ((model(X[idx]) - Z[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                test = float(((model(Xte) - Zte) ** 2).mean())
            print(f"{name:6s} step {step:3d}  train MSE {float(loss.detach()):.4f}  test MSE {test:.4f}")
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters")
print("last QP batch:", models["OptNet"].qp.last_solution.summary())
