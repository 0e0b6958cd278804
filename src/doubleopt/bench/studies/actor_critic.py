"""Actor-critic as two coupled optimizations: four studies on Pendulum-v1 (`doubleopt bench actor_critic`).

`--study baseline`   Stable-Baselines3 TD3 with the RL Zoo's Pendulum-v1 hyperparameters against the same
                     configuration in doubleopt.rl (5 seeds as one batched run), same environment steps, same
                     evaluation (10 deterministic gymnasium episodes per seed, reset seeds 10000..10009), same
                     threads (torch and BLAS pinned); plus our `fast` preset (TD3, SAC): time to a solved pendulum.
`--study config`     the small study behind the `fast` preset: network width and batch size against the
                     training time to a mean evaluation return >= -160 (5 seeds batched).
`--study timescales` critic/actor step-size ratio x critic updates per actor update, plus a critic whose step
                     size is far too large (`--fast-critic-lr`), all as one batched run: return and the critic's
                     Bellman error over training; which regimes learn, which diverge.
`--study argmax`     amortized vs per-state argmax: a trained TD3 actor against solving max_a Q(s, a) per state
                     with do.solve (L-BFGS from zero, L-BFGS warm-started at the actor's action) and a dense grid.

Run: `doubleopt bench actor_critic -- --study baseline` (the others likewise; `--quick` for a smoke run).
Times are wall-clock seconds of training (evaluation excluded) on the stated threads.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import doubleopt as do
import doubleopt.rl as rl
from doubleopt.bench import Report, conditions, generator, parse_args, seed_all, set_threads, time_call
from doubleopt.bench.baselines import require

SOLVED = -160.0  # the goal's mean evaluation return


@dataclass
class Args:
    """Actor-critic as two coupled optimizations on Pendulum-v1: four studies (``--study``).

    baseline: Stable-Baselines3 TD3 with the RL Zoo's Pendulum-v1 hyperparameters vs the same configuration in
    doubleopt.rl (all ``--seeds`` as one batched run) and our ``fast`` presets (TD3, SAC). Compared: the same
    environment steps, the same evaluation (10 deterministic gymnasium episodes per seed, the same reset seeds),
    the same ``--threads`` threads (torch and BLAS), float32, every agent trained from scratch; times are training
    wall-clock seconds (evaluation excluded), SB3's runs one after another. config: network width and batch size
    of the fast preset vs the training time to a solved pendulum. timescales: critic/actor step-size ratios and
    critic updates per actor update (one batched run). argmax: a trained TD3 actor (amortized) vs solving
    max_a Q(s, a) per state with L-BFGS (cold from a = 0, warm from the actor) and a dense grid, on the same
    states: the gap in Q and the time per state (warm-up + median).

    Seeds: each agent's own seed from ``--seeds`` (timescales: ``1000 * index + seed``), SB3's from
    ``--sb3-seeds``; ``--seed`` seeds the global generators once at the top of ``main`` and the argmax study's
    state sets (uniform states ``seed + 123``, on-policy episodes ``seed + 777``).
    """

    study: str = "baseline"  # baseline | config | timescales | argmax
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # agents trained together
    sb3_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # SB3 runs, one after another
    steps: int = 20_000  # environment steps per agent
    critic_lr: float = 1e-3  # timescales: the critic step size the actor's is a multiple of
    fast_critic_lr: float = 0.3  # timescales: a critic step size far too large (actor at critic_lr), 0 = none
    threads: int = 1  # torch / BLAS threads for every method
    seed: int = 0  # global generators and the argmax study's state sets (uniform: seed + 123, on-policy: + 777)
    quick: bool = False  # seconds-long smoke run (tiny networks, few steps)
    out: str = "bench_results/actor_critic"  # output folder (one sub-folder per study)


# ======================================================================================================
# harness: training runs, the SB3 baseline, evaluation
# ======================================================================================================
def train(algo: rl.ActorCritic, cfg: rl.TrainConfig, seeds: list[int], sweep=None) -> tuple[rl.RunResult, float]:
    trainer = rl.ActorCriticTrainer(algo, seeds, cfg, sweep=sweep)
    start = time.perf_counter()
    result = trainer.run(progress=True)
    return result, time.perf_counter() - start


def time_to_solved(result: rl.RunResult) -> float:
    """Training seconds at the first evaluation whose mean return over the agents is >= SOLVED."""
    for rets, secs in zip(result.curves.eval_returns, result.curves.eval_train_seconds):
        if sum(rets) / len(rets) >= SOLVED:
            return secs
    return math.inf


SB3 = "the TD3 baseline of the actor_critic study (--study baseline)"


def sb3_td3_zoo(seed: int, steps: int, eval_episodes: int, eval_seed: int) -> tuple[list[float], float]:
    """One Stable-Baselines3 TD3 run with the RL Zoo's Pendulum-v1 settings; (returns per episode, seconds)."""
    import gymnasium as gym

    TD3 = require("stable_baselines3", SB3).TD3
    NormalActionNoise = require("stable_baselines3.common.noise", SB3).NormalActionNoise

    env = gym.make("Pendulum-v1")
    model = TD3(
        "MlpPolicy", env, gamma=0.98, buffer_size=200_000, learning_starts=10_000,
        action_noise=NormalActionNoise(np.zeros(1), 0.1 * np.ones(1)), gradient_steps=1, train_freq=1,
        learning_rate=1e-3, policy_kwargs=dict(net_arch=[400, 300]), seed=seed, device="cpu", verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - start
    returns = []
    for i in range(eval_episodes):  # the same protocol as rl.evaluate_gym
        e = gym.make("Pendulum-v1")
        obs, _ = e.reset(seed=eval_seed + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = e.step(action)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return returns, seconds


# ======================================================================================================
# study 1: against Stable-Baselines3 (RL Zoo settings), and the fast preset's time to a solved pendulum
# ======================================================================================================
def study_baseline(args: Args, report: Report) -> dict:
    data = {"curves": {}}
    zoo_algo, zoo_cfg = rl.preset("zoo", "td3")
    zoo_cfg = replace(zoo_cfg, total_steps=args.steps, eval_every=0)
    if args.quick:
        zoo_algo, zoo_cfg = rl.with_overrides(zoo_algo, zoo_cfg, hidden=(32, 32), learning_starts=200)
    # ---- ours, Zoo configuration, all seeds as one batched run
    result, wall = train(zoo_algo, zoo_cfg, args.seeds)
    report.add_row(method="doubleopt TD3 (Zoo config)", seeds=len(args.seeds), batched=True,
                   mean_return=float(np.mean(result.final_eval)), std_return=float(np.std(result.final_eval)),
                   wall_s=wall, wall_s_per_seed=wall / len(args.seeds), time_to_solved_s=math.nan)
    data["ours_zoo_returns"] = result.final_eval
    print(report.rows[-1], flush=True)
    # ---- Stable-Baselines3, one run per seed, one after another
    sb3_returns, sb3_times = [], []
    sb3_steps = args.steps
    for s in args.sb3_seeds:
        rets, secs = sb3_td3_zoo(s, sb3_steps if not args.quick else 400, 10, zoo_cfg.eval_seed)
        sb3_returns.append(float(np.mean(rets)))
        sb3_times.append(secs)
        print(f"SB3 TD3 seed {s}: return {sb3_returns[-1]:.1f}, {secs:.1f} s", flush=True)
    report.add_row(method="Stable-Baselines3 TD3 (Zoo config)", seeds=len(args.sb3_seeds), batched=False,
                   mean_return=float(np.mean(sb3_returns)), std_return=float(np.std(sb3_returns)),
                   wall_s=float(np.sum(sb3_times)), wall_s_per_seed=float(np.mean(sb3_times)),
                   time_to_solved_s=math.nan)
    data["sb3_returns"], data["sb3_seconds"] = sb3_returns, sb3_times
    ratio = wall / (np.mean(sb3_times) * len(args.seeds))
    data["zoo_time_ratio"] = ratio  # ours (K seeds batched) / (K SB3 runs one after another)
    # ---- the fast preset: TD3 and SAC, time to a solved pendulum
    for name in ("td3", "sac"):
        algo, cfg = rl.preset("fast", name)
        cfg = replace(cfg, total_steps=args.steps, eval_every=1000)
        if args.quick:
            cfg = replace(cfg, learning_starts=200, eval_every=200)
        result, wall = train(algo, cfg, args.seeds)
        report.add_row(method=f"doubleopt {name.upper()} (fast preset)", seeds=len(args.seeds), batched=True,
                       mean_return=float(np.mean(result.final_eval)), std_return=float(np.std(result.final_eval)),
                       wall_s=wall, wall_s_per_seed=wall / len(args.seeds), time_to_solved_s=time_to_solved(result))
        data["curves"][name] = asdict(result.curves)
        print(report.rows[-1], flush=True)
    flops = zoo_update_flops(zoo_algo, zoo_cfg)
    data["zoo_arithmetic"] = {
        "flop_per_update_per_seed": flops,
        "updates_per_seed": args.steps - zoo_cfg.learning_starts,
        "gflop_total_all_seeds": flops * (args.steps - zoo_cfg.learning_starts) * len(args.seeds) / 1e9,
    }
    print(f"Zoo configuration: {len(args.seeds)} batched seeds take {ratio:.2f}x the time of "
          f"{len(args.seeds)} SB3 runs one after another ({flops / 1e9:.2f} GFLOP per update per seed)")
    return data


def zoo_update_flops(algo: rl.ActorCritic, cfg: rl.TrainConfig) -> float:
    """Multiply-adds x 2 of one TD3 update for one seed: target (actor' + 2 critics'), critic forward and
    backward (x3), and every `delay` updates the actor's forward/backward through Q_1 (x3 each)."""
    def mlp(sizes):
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    actor = mlp([3, *algo.actor.hidden, 1])
    critic = mlp([4, *algo.critic.hidden, 1])
    n = cfg.batch_size
    per_update = n * (actor + 2 * critic) + 3 * n * 2 * critic + 3 * n * (actor + critic) / algo.actor.delay
    return 2.0 * per_update


# ======================================================================================================
# study 2: the fast preset's configuration
# ======================================================================================================
def study_config(args: Args, report: Report) -> dict:
    grid = [(32, 128), (64, 128), (128, 128), (256, 128), (64, 64), (64, 256)]
    if args.quick:
        grid = [(16, 32)]
    data = {"curves": {}}
    for hidden, batch in grid:
        algo, cfg = rl.preset("fast", "td3")
        algo, cfg = rl.with_overrides(algo, cfg, hidden=(hidden, hidden), batch_size=batch, total_steps=args.steps,
                                      eval_every=1000 if not args.quick else 200,
                                      learning_starts=None if not args.quick else 200)
        result, wall = train(algo, cfg, args.seeds)
        report.add_row(hidden=f"{hidden}x{hidden}", batch=batch, seeds=len(args.seeds),
                       time_to_solved_s=time_to_solved(result), mean_final_return=float(np.mean(result.final_eval)),
                       worst_final_return=float(np.min(result.final_eval)), train_s=result.train_seconds)
        data["curves"][f"{hidden}x{hidden}/b{batch}"] = asdict(result.curves)
        print(report.rows[-1], flush=True)
    return data


# ======================================================================================================
# study 3: timescales, one batched run over the grid
# ======================================================================================================
def study_timescales(args: Args, report: Report) -> dict:
    ratios = [0.1, 1.0, 10.0, 100.0]  # actor step size / critic step size (critic args.critic_lr)
    delays = [1, 2, 8]  # critic updates per actor update
    seeds = args.seeds[:2]
    # (critic lr, actor lr, delay, seed): the ratio grid, then a critic whose step size is far too large
    grid = [(args.critic_lr, args.critic_lr * r, d, s) for r in ratios for d in delays for s in seeds]
    if args.fast_critic_lr > 0:
        grid += [(args.fast_critic_lr, args.critic_lr, d, s) for d in delays for s in seeds]
    sweep = [{"critic_lr": c, "actor_lr": a, "delay": d} for c, a, d, _ in grid]
    algo, cfg = rl.preset("fast", "td3")
    cfg = replace(cfg, total_steps=args.steps, eval_every=2000 if not args.quick else 200)
    if args.quick:
        algo, cfg = rl.with_overrides(algo, cfg, hidden=(16, 16), learning_starts=100)
    # seeds repeat across configurations: each agent's own seed is (its seed, its index in the grid)
    agent_seeds = [1000 * i + s for i, (*_, s) in enumerate(grid)]
    result, wall = train(algo, cfg, agent_seeds, sweep=sweep)
    c = result.curves
    bell = np.array(c.bellman_error)  # (n, K)
    for i, (cl, al, d, s) in enumerate(grid):
        final_bell = float(bell[-10:, i].mean()) if len(bell) else math.nan
        report.add_row(critic_lr=cl, actor_over_critic_lr=al / cl, critic_updates_per_actor_update=d, seed=s,
                       final_return=result.final_eval[i], best_return=float(np.max([e[i] for e in c.eval_returns])),
                       final_bellman_error=final_bell, max_bellman_error=float(np.nanmax(bell[:, i])) if len(bell) else
                       math.nan, status=result.status[i])
    data = {"grid": grid, "curves": asdict(c), "wall_s": wall, "agents": len(grid)}
    print(f"{len(grid)} agents in one batched run: {wall:.0f} s", flush=True)
    return data


# ======================================================================================================
# study 4: amortized argmax (the actor) vs solving max_a Q(s, a) per state
# ======================================================================================================
class CriticArgmax(do.Problem):
    """``min_y -Q_1(s, tanh(y))`` for one agent's critic: the per-state problem the actor amortizes."""

    dim = 1

    def __init__(self, nets: rl.Agents):
        super().__init__()
        self.nets = nets

    def objective(self, y, x):
        a = torch.tanh(y).unsqueeze(0)
        return -self.nets.q(self.nets.critic, x.unsqueeze(0), a, first_only=True)[0, 0]


def study_argmax(args: Args, report: Report) -> dict:
    algo, cfg = rl.preset("fast", "td3")
    cfg = replace(cfg, total_steps=args.steps, eval_every=0)
    if args.quick:
        algo, cfg = rl.with_overrides(algo, cfg, hidden=(16, 16), learning_starts=200)
    trainer = rl.ActorCriticTrainer(algo, args.seeds[:1], cfg)
    trainer.run(progress=True)
    nets = trainer.nets
    for p in nets.parameters():
        p.requires_grad_(False)
    states = {
        "on-policy": on_policy_states(algo, nets, 1000, args.seed + 777),
        "uniform": uniform_states(1000, generator(args.seed + 123)),
    }
    data = {}
    for where, s in states.items():
        data[where] = argmax_rows(algo, nets, where, s, report, repeats=1 if args.quick else 5)
    return data


def q_first(nets: rl.Agents, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``Q_1(s_i, a_i)`` of the single agent for states ``(B, 3)`` and actions ``(B,)``."""
    return nets.q(nets.critic, s.unsqueeze(0), a.view(1, -1, 1), first_only=True)[0, 0]


def grid_argmax(nets: rl.Agents, s: torch.Tensor, grid: torch.Tensor, chunk: int = 200) -> torch.Tensor:
    """The best action of ``grid`` per state: Q on every (state, action) pair, batched in chunks of actions."""
    b, best_q, best_a = s.shape[0], None, None
    for block in grid.split(chunk):
        g = block.numel()
        q = q_first(nets, s.repeat_interleave(g, 0), block.repeat(b)).view(b, g)
        qmax, idx = q.max(dim=1)
        a = block[idx]
        if best_q is None:
            best_q, best_a = qmax, a
        else:
            better = qmax > best_q
            best_q, best_a = torch.where(better, qmax, best_q), torch.where(better, a, best_a)
    return best_a


def argmax_rows(algo, nets: rl.Agents, where: str, s: torch.Tensor, report: Report, repeats: int) -> dict:
    """One row per method: gap in Q to the grid's argmax and time per state (median of ``repeats``)."""
    grid = torch.linspace(-1, 1, 2001)
    problem = CriticArgmax(nets)
    with torch.no_grad():
        actor_a = algo.act(nets, s.unsqueeze(0), None)[0, :, 0]
        grid_a = grid_argmax(nets, s, grid)
        best = q_first(nets, s, grid_a)
    warm = torch.atanh(actor_a.clamp(-0.999, 0.999)).unsqueeze(1)

    steps: dict[str, float] = {}

    def lbfgs(y0, name):
        sol = do.solve(problem, do.LBFGS(), s, y0, max_steps=100, tol=1e-4, throw=False)
        steps[name] = float(sol.num_steps.float().mean())
        steps[name + " successful"] = float(sol.successful.float().mean())
        return torch.tanh(sol.y[:, 0])

    methods = {
        "actor (amortized)": (lambda: algo.act(nets, s.unsqueeze(0), None)[0, :, 0], True),
        "L-BFGS from a = 0": (lambda: lbfgs(None, "cold"), False),
        "L-BFGS from the actor (semi-amortized)": (lambda: lbfgs(warm, "warm"), False),
        "grid of 2001 actions": (lambda: grid_argmax(nets, s, grid), True),
    }
    for name, (fn, no_grad) in methods.items():
        with torch.no_grad() if no_grad else torch.enable_grad():
            t = time_call(fn, warmup=1, repeats=repeats)
        a = t.result.detach()
        with torch.no_grad():
            gap = (best - q_first(nets, s, a)).clamp(min=0)
        report.add_row(states=where, method=name, mean_gap=float(gap.mean()), p95_gap=float(gap.quantile(0.95)),
                       max_gap=float(gap.max()), us_per_state=1e6 * t.median / s.shape[0],
                       mean_abs_action_diff_vs_grid=float((a - grid_a).abs().mean()),
                       solver_steps=steps.get("cold" if "a = 0" in name else "warm", math.nan) if "L-BFGS" in name
                       else math.nan)
        print(report.rows[-1], flush=True)
    return {"q_range": [float(best.min()), float(best.max())], "lbfgs": steps}


def on_policy_states(algo, nets, n: int, seed: int) -> torch.Tensor:
    """States visited by the greedy policy on the batched pendulum (episodes of 200 steps, reset with ``seed``)."""
    env = rl.BatchedPendulum(1, max(1, n // 200))
    obs = env.reset(rl.agent_generators([seed]))
    out = []
    with torch.no_grad():
        for _ in range(200):
            out.append(obs[0])
            obs = env.step(algo.act(nets, obs, None) * env.max_torque).obs
    return torch.cat(out)[:n]


def uniform_states(n: int, gen: torch.Generator) -> torch.Tensor:
    th = (torch.rand(n, generator=gen) * 2 - 1) * math.pi
    thd = (torch.rand(n, generator=gen) * 2 - 1) * 8
    return torch.stack([th.cos(), th.sin(), thd], dim=1)


# ======================================================================================================
# plots and main
# ======================================================================================================
def plot(study: str, data: dict, report: Report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if study in ("baseline", "config"):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name, c in data["curves"].items():
            mean = [sum(r) / len(r) for r in c["eval_returns"]]
            ax.plot(c["eval_train_seconds"], mean, "o-", ms=3, label=name)
        ax.axhline(SOLVED, color="k", ls=":", lw=1, label=f"solved ({SOLVED:.0f})")
        ax.set(xlabel="training wall time (s), all seeds together", ylabel="mean eval return over seeds",
               title="Pendulum-v1, 5 seeds batched" if study == "baseline" else "fast-preset configurations")
        ax.legend(fontsize=7)
        return fig
    if study == "timescales":
        c, grid = data["curves"], data["grid"]
        panels = sorted({(g[0], g[1]) for g in grid}, key=lambda p: (p[0], p[1]))  # (critic lr, actor lr)
        delays = sorted({g[2] for g in grid})
        fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 6.5), sharex=True, squeeze=False)
        cmap = plt.get_cmap("viridis")
        for j, (cl, al) in enumerate(panels):
            for di, d in enumerate(delays):
                idx = [i for i, g in enumerate(grid) if (g[0], g[1], g[2]) == (cl, al, d)]
                color = cmap(di / max(1, len(delays) - 1))
                for n, i in enumerate(idx):
                    axes[0, j].plot(c["eval_steps"], [e[i] for e in c["eval_returns"]], color=color, alpha=0.8,
                                    label=f"{d} critic/actor" if n == 0 else None)
                    axes[1, j].semilogy(c["bellman_steps"], [max(b[i], 1e-6) if math.isfinite(b[i]) else np.nan
                                                             for b in c["bellman_error"]], color=color, alpha=0.8)
            axes[0, j].axhline(SOLVED, color="k", ls=":", lw=1)
            axes[0, j].set_title(f"critic lr {cl:g}, actor lr {al:g}", fontsize=9)
            axes[1, j].set_xlabel("environment steps")
        axes[0, 0].set_ylabel("eval return")
        axes[1, 0].set_ylabel("critic Bellman error")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        return fig
    if study == "argmax":
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for where, marker in (("on-policy", "o"), ("uniform", "s")):
            rows = [r for r in report.rows if r["states"] == where]
            ax.loglog([r["us_per_state"] for r in rows], [max(r["mean_gap"], 1e-7) for r in rows], marker, ls="",
                      label=where)
            for r in rows:
                ax.annotate(r["method"], (r["us_per_state"], max(r["mean_gap"], 1e-7)), fontsize=6)
        ax.set(xlabel="time per state (us)", ylabel="mean gap in Q to the grid's argmax",
               title="amortized vs per-state argmax of a trained TD3 critic")
        ax.legend(fontsize=7)
        return fig
    return None


STUDIES = {"baseline": study_baseline, "config": study_config, "timescales": study_timescales,
           "argmax": study_argmax}


def main(argv=None):
    args = parse_args(Args, argv)
    if args.study not in STUDIES:
        raise SystemExit(f"unknown study {args.study!r}; available: {', '.join(STUDIES)}")
    if args.study == "baseline":
        require("stable_baselines3", SB3)  # the baseline first: if it is missing, the study stops before training
    if args.quick:
        args.steps, args.seeds, args.sb3_seeds = 600, args.seeds[:2], args.sb3_seeds[:1]
    set_threads(args.threads)
    seed_all(args.seed)  # nothing draws from the global generators; the explicit streams: see Args
    started = conditions(dtype="float32")
    report = Report(f"actor_critic_{args.study}", out_dir=Path(args.out) / args.study)
    start = time.perf_counter()
    data = STUDIES[args.study](args, report)
    data["study_wall_s"] = time.perf_counter() - start
    fig = plot(args.study, data, report)
    path = report.save({"args": asdict(args), "conditions": started, **data}, fig)
    print(report.table())
    print(f"results in {path}")
    return report


if __name__ == "__main__":
    main()
