"""Learned optimizers two ways: as a solver on a batch of optimizees, and as a torch.optim optimizer.

Run: ``python examples/learned_optimizer.py`` (a few seconds).
"""

import torch

import doubleopt as do

# 1) As a solver: train 8 MLP classifiers (digits, held-out split) at once, LSTM optimizer vs tuned Adam.
lstm = do.learned.load_pretrained("lstm-digits")
family = do.problems.MLPClassifier(hidden=(20,), activation="sigmoid", dataset="digits", split="test")
task = do.learned.DigitsMLPTask(split="test")  # fresh minibatch of 128 every step
for name, solver in [("LSTM (learned)", lstm.as_solver()), ("Adam lr=0.1", do.Adam(lr=0.1))]:
    losses = do.learned.rollout(solver, task, batch=8, steps=100, generator=torch.Generator().manual_seed(0))
    print(
        f"{name:15s} held-out minibatch loss at steps 0/50/100: "
        + " / ".join(f"{float(losses[t].mean()):.3f}" for t in (0, 50, 100))
    )

# ... or through do.solve on one fixed batch per instance (any adjoint works: the optimizer is a solver)
x = family.sample(8, seed=0)
sol = do.solve(family, lstm.as_solver(), x, family.init(x), max_steps=100, throw=False)
print("do.solve with the LSTM optimizer:", sol.summary(), f"mean loss {float(sol.value.detach().mean()):.3f}")

# 2) As a torch.optim optimizer for an ordinary nn.Module
X, y = do.problems.load_dataset("digits", "train")
Xte, yte = do.problems.load_dataset("digits", "test")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.Sigmoid(), torch.nn.Linear(20, 10))
opt = do.learned.TorchOptimizer(model.named_parameters(), do.learned.load_pretrained("mlp-digits"))
gen = torch.Generator().manual_seed(0)
for _ in range(100):
    idx = torch.randperm(len(X), generator=gen)[:128]
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
    loss.backward()
    opt.step()
acc = (model(Xte).argmax(-1) == yte).float().mean()
print(f"nn.Module trained 100 steps with TorchOptimizer(mlp-digits): test accuracy {float(acc):.3f}")
