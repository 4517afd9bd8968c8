#!/usr/bin/env python3
"""Generates gpuopt's conformance cases from peer implementations (PyTorch, optax, the papers'
packages, scipy), in the `gpuopt replay` / `gpuopt matfn` formats.

    python3 -m venv .venv && .venv/bin/pip install -r conformance/requirements.txt
    .venv/bin/python conformance/generate.py            # rewrites conformance/cases/

Each case folder holds case.json (what gpuopt runs, plus "peer", "peer_version", "conventions" and the
"tolerance" the Rust test applies), inputs.npz (param, grads / a) and expected.npz (the peer's
trajectory, or its matrix function `y`). Every peer runs in float32 except the matrix-function
oracles (scipy / numpy in float64, cast to float32 at the end). Random inputs come from a seeded numpy
generator, so the folder is reproducible.
"""

import json
import os
import shutil
import sys
from importlib.metadata import version

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases")
CASES = []
# The generator running (its name without "cases_"), written into each case it makes.
FAMILY = None


def rng(seed):
    return np.random.default_rng(seed)


def write_case(name, case, inputs, expected):
    case = dict(case, family=FAMILY)
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1, sort_keys=True)
        f.write("\n")
    np.savez(os.path.join(d, "inputs.npz"), **{k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()})
    np.savez(os.path.join(d, "expected.npz"), **{k: np.asarray(v, dtype=np.float32) for k, v in expected.items()})
    CASES.append((name, case))


# ---------------------------------------------------------------- PyTorch-style optimizers


def torch_trajectory(make_opt, param, grads, closure_extra=None):
    """Runs a torch optimizer over recorded gradients in float32; returns the trajectory."""
    import torch

    p = torch.nn.Parameter(torch.tensor(param, dtype=torch.float32))
    opt = make_opt([p])
    out = []
    for t, g in enumerate(grads):
        p.grad = torch.tensor(g, dtype=torch.float32)
        if closure_extra is not None:
            closure_extra(opt, p, t)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.stack(out)


def replay_case(name, optimizer, hyper, param, grads, expected, peer, conventions, tol, extra_inputs=None):
    case = {
        "optimizer": optimizer,
        "steps": int(grads.shape[0]),
        "hyper": hyper,
        "peer": peer[0],
        "peer_version": peer[1],
        "conventions": conventions,
        "tolerance": tol,
    }
    inputs = {"param": param, "grads": grads}
    inputs.update(extra_inputs or {})
    write_case(name, case, inputs, {"trajectory": expected})


def data(seed, shape, steps, scale=1.0):
    r = rng(seed)
    param = r.standard_normal(shape).astype(np.float32)
    grads = (scale * r.standard_normal((steps,) + tuple(shape))).astype(np.float32)
    return param, grads


# Tolerances (checked elementwise on every step: |got − want| ≤ abs + rel·|want|):
# - adaptive updates: a few ulp per operation, compounded over the steps; the peers fuse and order
#   operations differently (torch's foreach/addcdiv, optax's tree maps), so 1e-5 relative plus an
#   absolute floor of 1e-6·lr·steps for coordinates near zero;
# - sign-based updates: the sign is exact except where the momentum's argument is within rounding of
#   0, where a whole sign flips (a fraction `flip` of the step·element pairs may differ by up to 2·lr
#   per step since the flip); the parameter itself carries the rounding of the decay form, which the
#   peers write differently (p·(1 − lr·wd) against p − lr·(s + wd·p)): ≤ 2 ulp per step, 2.5e-7·steps.
ADAPTIVE = {"rel": 1e-5, "abs": 1e-6}


def cases_torch():
    import torch

    tv = ("torch", version("torch"))
    param, grads = data(1, (37,), 15)
    exp = torch_trajectory(
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), param, grads
    )
    replay_case(
        "sgd_nesterov_torch", "sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        param, grads, exp, tv, "L2 weight decay (g + wd·p), as torch.optim.SGD", ADAPTIVE,
    )
    param, grads = data(2, (5, 7), 12)
    exp = torch_trajectory(lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.8, dampening=0.1), param, grads)
    replay_case(
        "sgd_dampening_torch", "sgd", {"lr": 0.02, "momentum": 0.8, "dampening": 0.1},
        param, grads, exp, tv, "first step copies g into the buffer (no dampening), as torch", ADAPTIVE,
    )
    param, grads = data(3, (33,), 20)
    exp = torch_trajectory(
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05), param, grads
    )
    replay_case(
        "adamw_torch", "adamw", {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.05},
        param, grads, exp, tv, "decoupled decay p·(1 − lr·wd) before the update (DW-B)", ADAPTIVE,
    )
    param, grads = data(4, (4, 9), 16, scale=3.0)
    exp = torch_trajectory(lambda ps: torch.optim.AdamW(ps, lr=3e-3, amsgrad=True), param, grads)
    replay_case(
        "adamw_amsgrad_torch", "adamw", {"lr": 3e-3, "amsgrad": True},
        param, grads, exp, tv, "AMSGrad keeps max of v (torch: max of the raw v, bias-corrected after)", ADAPTIVE,
    )
    # torch.optim.Muon (2-D parameters), both lr adjustments. torch runs NS5 in bfloat16; gpuopt's
    # contract is float32 (ALGORITHMS.md §11.4), so the exact cases patch torch's function to keep
    # float32 (the one stated change), and one case keeps bfloat16 with a tolerance that says so.
    if hasattr(torch.optim, "Muon"):
        import inspect
        import torch.optim._muon as tm

        original = tm._zeropower_via_newtonschulz
        src = inspect.getsource(original)
        assert src.count("grad.bfloat16()") == 1, "torch changed _zeropower_via_newtonschulz"
        ns = dict(tm.__dict__)
        exec(src.replace("grad.bfloat16()", "grad.float()"), ns)
        f32_ns = ns["_zeropower_via_newtonschulz"]
        tm._zeropower_via_newtonschulz = f32_ns
        for adjust, torch_adjust, shape in [("original", None, (12, 20)), ("match_rms_adamw", "match_rms_adamw", (24, 10))]:
            param, grads = data(5 + len(adjust), shape, 10)
            kw = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.01, "ns_steps": 5}
            if torch_adjust:
                kw["adjust_lr_fn"] = torch_adjust
            exp = torch_trajectory(lambda ps: torch.optim.Muon(ps, **kw), param, grads)
            hyper = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.01, "ns_steps": 5,
                     "adjust_lr": adjust}
            replay_case(
                f"muon_{adjust}_torch", "muon", hyper, param, grads, exp, tv,
                "torch.optim.Muon: m ← lerp(m, g, 1−μ), Nesterov u = lerp(g, m, μ), NS5 (3.4445, −4.775, 2.0315) "
                "on X/(‖X‖_F + 1e-7) in float32, decay with the unadjusted lr; adjust_lr 'original' = "
                "sqrt(max(1, rows/cols)), 'match_rms_adamw' = 0.2·sqrt(max(rows, cols))",
                {"rel": 2e-4, "abs": 2e-5},
            )
        tm._zeropower_via_newtonschulz = original
        param, grads = data(9, (16, 16), 5)
        kw = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0, "ns_steps": 5}
        exp = torch_trajectory(lambda ps: torch.optim.Muon(ps, **kw), param, grads)
        replay_case(
            "muon_bfloat16_torch", "muon", dict(kw, adjust_lr="original"), param, grads, exp, tv,
            "unpatched torch.optim.Muon: NS5 in bfloat16 (8-bit mantissa) against gpuopt's float32; the "
            "difference is bfloat16 rounding, a few 1e-3 of lr per step",
            {"rel": 1e-2, "abs": 2e-3},
        )


def cases_lion():
    import lion_pytorch

    lv = ("lion-pytorch", version("lion-pytorch"))
    param, grads = data(10, (129,), 15)
    exp = torch_trajectory(lambda ps: lion_pytorch.Lion(ps, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1), param, grads)
    replay_case(
        "lion_lucidrains", "lion", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1},
        param, grads, exp, lv, "c = lerp(m, g, 1−β1); p ← p(1 − lr·wd) − lr·sign(c); m ← lerp(m, g, 1−β2)",
        {"rel": 2.5e-7 * 15, "abs": 1e-7, "flip": 0.002, "flip_size": 2e-3},
    )


def cases_pytorch_optimizer():
    import torch
    import pytorch_optimizer as po

    pv = ("pytorch-optimizer", version("pytorch-optimizer"))
    param, grads = data(50, (6, 10), 15)
    exp = torch_trajectory(
        lambda ps: po.MARS(ps, lr=3e-3, betas=(0.95, 0.99), gamma=0.025, mars_type="adamw", weight_decay=0.01,
                           optimize_1d=True), param, grads)
    replay_case(
        "mars_adamw_pytorch_optimizer", "mars",
        {"lr": 3e-3, "beta1": 0.95, "beta2": 0.99, "gamma": 0.025, "variant": "adamw", "weight_decay": 0.01},
        param, grads, exp, pv, "MARS approximate variant; g_prev = 0 at step 1; optimize_1d=True", ADAPTIVE,
    )
    param, grads = data(51, (23,), 15)
    exp = torch_trajectory(
        lambda ps: po.MARS(ps, lr=1e-3, betas=(0.9, 0.99), gamma=0.025, mars_type="lion", optimize_1d=True),
        param, grads)
    replay_case(
        "mars_lion_pytorch_optimizer", "mars",
        {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "gamma": 0.025, "variant": "lion"},
        param, grads, exp, pv, "MARS-Lion, 1-D parameter with optimize_1d=True",
        {"rel": 2.5e-7 * 15, "abs": 1e-7, "flip": 0.002, "flip_size": 2e-3},
    )
    param, grads = data(52, (9, 7), 12)
    exp = torch_trajectory(
        lambda ps: po.RACS(ps, lr=1e-2, beta=0.9, alpha=0.05, gamma=1.01, weight_decay=0.01), param, grads)
    replay_case(
        "reg_racs_pytorch_optimizer", "reg",
        {"lr": 1e-2, "beta2": 0.9, "alpha": 0.05, "gamma": 1.01, "weight_decay": 0.01},
        param, grads, exp, pv, "REG is pytorch-optimizer's RACS operator (beta → beta2), decoupled decay",
        {"rel": 2e-5, "abs": 2e-6},
    )
    param, grads = data(53, (31,), 15)
    exp = torch_trajectory(
        lambda ps: po.AdEMAMix(ps, lr=1e-2, betas=(0.9, 0.999, 0.999), alpha=2.0, t_alpha_beta3=10,
                               weight_decay=0.01, weight_decouple=True), param, grads)
    replay_case(
        "ademamix_pytorch_optimizer", "ademamix",
        {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "beta3": 0.999, "alpha": 2.0, "t_alpha_beta3": 10,
         "weight_decay": 0.01},
        param, grads, exp, pv, "AdEMAMix with the α/β3 warm-up over 10 steps; weight_decouple=True (DW-B)",
        ADAPTIVE,
    )
    param, grads = data(54, (5, 8), 15)
    exp = torch_trajectory(lambda ps: po.SignSGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.01), param, grads)
    replay_case(
        "signum_pytorch_optimizer", "signum", {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01},
        param, grads, exp, pv, "SignSGD with momentum and weight_decouple=True (Signum with DW-B)",
        {"rel": 2.5e-7 * 15, "abs": 1e-7, "flip": 0.002, "flip_size": 2e-2},
    )
    # Second cases: other sizes and hyperparameters.
    param, grads = data(80, (3, 13), 12)
    exp = torch_trajectory(lambda ps: po.Lion(ps, lr=3e-4, betas=(0.95, 0.98), weight_decay=0.05), param, grads)
    replay_case(
        "lion_pytorch_optimizer", "lion", {"lr": 3e-4, "beta1": 0.95, "beta2": 0.98, "weight_decay": 0.05},
        param, grads, exp, pv, "pytorch-optimizer Lion with weight_decouple=True (DW-B)",
        {"rel": 2.5e-7 * 12, "abs": 1e-7, "flip": 0.002, "flip_size": 6e-4},
    )
    param, grads = data(81, (29,), 12)
    exp = torch_trajectory(lambda ps: po.RACS(ps, lr=5e-3, beta=0.8, alpha=0.1, gamma=1.05), param, grads)
    replay_case(
        "reg_racs_vector_pytorch_optimizer", "reg", {"lr": 5e-3, "beta2": 0.8, "alpha": 0.1, "gamma": 1.05},
        param, grads, exp, pv, "RACS on a 1-D parameter (viewed as 1 × n)", {"rel": 2e-5, "abs": 2e-6},
    )
    param, grads = data(82, (8, 5), 20)
    exp = torch_trajectory(
        lambda ps: po.AdEMAMix(ps, lr=2e-3, betas=(0.85, 0.99, 0.9999), alpha=5.0, weight_decouple=True), param, grads)
    replay_case(
        "ademamix_no_warmup_pytorch_optimizer", "ademamix",
        {"lr": 2e-3, "beta1": 0.85, "beta2": 0.99, "beta3": 0.9999, "alpha": 5.0},
        param, grads, exp, pv, "AdEMAMix without warm-up (t_alpha_beta3 0 / None)", ADAPTIVE,
    )
    param, grads = data(83, (45,), 15)
    exp = torch_trajectory(lambda ps: po.SignSGD(ps, lr=5e-3, momentum=0.5), param, grads)
    replay_case(
        "signum_momentum_pytorch_optimizer", "signum", {"lr": 5e-3, "momentum": 0.5},
        param, grads, exp, pv, "SignSGD with momentum 0.5, no decay",
        {"rel": 2.5e-7 * 15, "abs": 1e-7, "flip": 0.002, "flip_size": 1e-2},
    )
    # Hessian-diagonal optimizers, with the diagonal injected through step(hessian=...) so both sides
    # use the same estimate (replay's hess_diag).
    for name, shape, hyper, make, every in [
        ("adahessian", (17,), {"lr": 0.15, "beta1": 0.9, "beta2": 0.999, "eps": 1e-4, "weight_decay": 0.01,
                               "hessian_power": 1.0},
         lambda ps: po.AdaHessian(ps, lr=0.15, betas=(0.9, 0.999), eps=1e-4, weight_decay=0.01), 1),
        ("adahessian_power_half", (3, 7), {"lr": 0.05, "beta1": 0.8, "beta2": 0.99, "eps": 1e-4,
                                          "hessian_power": 0.5},
         lambda ps: po.AdaHessian(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-4, hessian_power=0.5), 1),
        ("sophia", (4, 6), {"lr": 0.06, "beta1": 0.96, "beta2": 0.99, "rho": 0.01, "eps": 1e-12,
                            "weight_decay": 0.01, "hess_interval": 3, "variant": "sophiah"},
         lambda ps: po.SophiaH(ps, lr=0.06, betas=(0.96, 0.99), p=0.01, eps=1e-12, weight_decay=0.01,
                               update_period=3), 3),
        ("sophia_period1", (21,), {"lr": 0.01, "beta1": 0.9, "beta2": 0.95, "rho": 0.05, "eps": 1e-12,
                                   "weight_decay": 0.0, "hess_interval": 1, "variant": "sophiah"},
         lambda ps: po.SophiaH(ps, lr=0.01, betas=(0.9, 0.95), p=0.05, eps=1e-12, weight_decay=0.0,
                               update_period=1), 1),
    ]:
        param, grads = data(55 + len(name), shape, 12)
        hess = rng(60 + len(name)).standard_normal((12,) + shape).astype(np.float32) * 2 + 1

        pt = torch.nn.Parameter(torch.tensor(param))
        opt = make([pt])
        out = []
        for t in range(12):
            pt.grad = torch.tensor(grads[t])
            opt.step(hessian=[torch.tensor(hess[t])] if t % every == 0 else None)
            out.append(pt.detach().numpy().copy())
        replay_case(
            f"{name}_pytorch_optimizer", "adahessian" if name.startswith("adahessian") else "sophia", hyper, param, grads, np.stack(out), pv,
            "the Hessian diagonal injected with step(hessian=...) (replay: hess_diag); "
            + ("every step" if every == 1 else "SophiaH refreshes its EMA when (t − 1) mod update_period = 0"),
            ADAPTIVE, extra_inputs={"hess_diag": hess},
        )


def cases_papers():
    import adabound
    import ano_optimizer

    av = ("adabound", version("adabound"))
    param, grads = data(70, (19,), 15)
    exp = torch_trajectory(
        lambda ps: adabound.AdaBound(ps, lr=1e-3, final_lr=0.1, gamma=1e-3, weight_decay=0.01), param, grads)
    replay_case(
        "adabound_luolc", "adabound", {"lr": 1e-3, "final_lr": 0.1, "gamma": 1e-3, "weight_decay": 0.01},
        param, grads, exp, av, "Luolc/AdaBound: L2 weight decay, base_lr = lr", ADAPTIVE,
    )
    exp = torch_trajectory(
        lambda ps: adabound.AdaBound(ps, lr=1e-3, final_lr=0.1, gamma=1e-3, amsbound=True), param, grads)
    replay_case(
        "amsbound_luolc", "adabound", {"lr": 1e-3, "final_lr": 0.1, "gamma": 1e-3, "amsbound": True},
        param, grads, exp, av, "Luolc/AdaBound with amsbound", ADAPTIVE,
    )
    nv = ("ano-optimizer", version("ano-optimizer"))
    for name, log, shape, b1, b2 in [("ano", False, (27,), 0.92, 0.99), ("anolog", True, (27,), 0.92, 0.99),
                                     ("ano", False, (6, 9), 0.8, 0.95), ("anolog", True, (5, 5), 0.9, 0.9)]:
        param, grads = data(72 + log + len(shape), shape, 15)
        exp = torch_trajectory(
            lambda ps: ano_optimizer.Ano(ps, lr=1e-3, betas=(b1, b2), weight_decay=0.01,
                                         logarithmic_schedule=log), param, grads)
        replay_case(
            f"{name}_{'x'.join(map(str, shape))}_ano_optimizer", name,
            {"lr": 1e-3, "beta1": b1, "beta2": b2, "weight_decay": 0.01},
            param, grads, exp, nv, "PyPI ano-optimizer Ano" + (" with logarithmic_schedule=True" if log else ""),
            {"rel": 2e-6, "abs": 1e-6, "flip": 0.002, "flip_size": 2e-3},
        )


def optax_trajectory(tx, param, grads):
    import jax.numpy as jnp
    import optax

    p = jnp.asarray(param, dtype=jnp.float32)
    state = tx.init(p)
    out = []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, dtype=jnp.float32), state, p)
        p = optax.apply_updates(p, updates)
        out.append(np.asarray(p))
    return np.stack(out)


def cases_optax():
    import optax

    ov = ("optax", version("optax"))
    param, grads = data(20, (41,), 15)
    exp = optax_trajectory(optax.adamw(3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2), param, grads)
    replay_case(
        "adamw_optax", "adamw", {"lr": 3e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2},
        param, grads, exp, ov, "optax.adamw: −lr·(m̂/(sqrt(v̂) + eps) + wd·p), the same as DW-B", ADAPTIVE,
    )
    param, grads = data(21, (6, 11), 15)
    exp = optax_trajectory(optax.lion(1e-3, b1=0.9, b2=0.99, weight_decay=1e-3), param, grads)
    replay_case(
        "lion_optax", "lion", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weight_decay": 1e-3},
        param, grads, exp, ov, "optax.lion: −lr·(sign(lerp(m, g, 1−b1)) + wd·p), the same as DW-B",
        {"rel": 2.5e-7 * 15, "abs": 1e-7, "flip": 0.002, "flip_size": 2e-3},
    )


def cases_shampoo():
    """Shampoo against Google's distributed_shampoo as packaged in precondition-opt (the optax
    GradientTransformation of google-research/precondition), run in float32 as jax does by default
    (its roots' float64 request is truncated without jax_enable_x64), as gpuopt runs."""
    import jax

    # The 2023 module calls jax.tree_map / tree_flatten / tree_unflatten, since moved to jax.tree.
    for n in ("map", "flatten", "unflatten"):
        if not hasattr(jax, "tree_" + n):
            setattr(jax, "tree_" + n, getattr(jax.tree, n))
    import warnings

    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
    from precondition import distributed_shampoo as ds

    peer = ("precondition-opt distributed_shampoo", version("precondition-opt"))
    graft_names = {"sgd": ds.GraftingType.SGD, "adagrad": ds.GraftingType.ADAGRAD,
                   "rmsprop": ds.GraftingType.RMSPROP, "rmsprop_normalized": ds.GraftingType.RMSPROP_NORMALIZED,
                   "sqrt_n": ds.GraftingType.SQRT_N}
    # The optax argument each replay hyperparameter sets (gpuopt's name → distributed_shampoo's).
    names = {"lr": "learning_rate", "matrix_eps": "matrix_epsilon", "diag_eps": "diagonal_epsilon",
             "precondition_frequency": "preconditioning_compute_steps"}

    def case(name, seed, shape, steps, hyper, conventions):
        param, grads = data(seed, shape, steps)
        kw = {names.get(k, k): v for k, v in hyper.items() if k != "graft"}
        kw["graft_type"] = graft_names[hyper["graft"]]
        # precondition-opt's decoupled decay is −lr·(U + lr·wd·p) with its default
        # decoupled_learning_rate=True (lr twice on the decay); with False it applies lr to the
        # directions before momentum and the decay as −lr·wd·p: for a constant lr, gpuopt's
        # (1 − lr·wd)·p − lr·U.
        kw["decoupled_learning_rate"] = not hyper.get("decoupled_weight_decay", False)
        exp = optax_trajectory(ds.distributed_shampoo(**kw), param, grads)
        # The roots are float32 coupled-Newton iterations on both sides (different operation orders:
        # XLA's products against gpuopt's tiles), stopped at max|M − I| ≤ 1e-6, of statistics with
        # condition numbers up to ~1e4: rounding amplified by the conditioning moves a step's direction
        # by up to ~1e-4 of its size, and momentum carries it on. Bound: 2e-4·lr per step, plus 1e-5
        # relative.
        tol = {"rel": 1e-5, "abs": 2e-4 * hyper["lr"] * steps}
        replay_case(name, "shampoo", hyper, param, grads, exp, peer, conventions, tol)

    case("shampoo_adagrad_blocks_precondition_opt", 60, (24, 10), 12,
         {"lr": 0.02, "block_size": 8, "beta1": 0.9, "beta2": 0.99, "graft": "adagrad", "start_preconditioning_step": 3,
          "precondition_frequency": 2, "merge_small_dims_block_size": 16, "matrix_eps": 1e-3,
          "relative_matrix_epsilon": True, "weight_decay": 1e-3, "decoupled_weight_decay": False, "nesterov": True},
         "24×10 in blocks of 8×8 and 8×2 (six), optax's relative ridge and coupled decay, roots every "
         "other step, AdaGrad graft; the graft's own momentum until step 4")
    case("shampoo_rmsprop_normalized_vector_precondition_opt", 61, (33,), 12,
         {"lr": 0.01, "block_size": 16, "beta1": 0.8, "beta2": 0.95, "graft": "rmsprop_normalized",
          "start_preconditioning_step": 2, "statistics_compute_steps": 2, "moving_average_for_momentum": True,
          "nesterov": False, "matrix_eps": 1e-3, "relative_matrix_epsilon": False, "weight_decay": 1e-2,
          "decoupled_weight_decay": True},
         "a 33-vector in blocks of 16, 16 and 1 (roots L^(−1/2)), statistics every other step, averaged "
         "momentum, decoupled decay (the peer with decoupled_learning_rate=False: its default applies lr "
         "twice to the decay)")
    case("shampoo_sgd_exponent_precondition_opt", 62, (17, 12), 10,
         {"lr": 0.05, "block_size": 32, "beta1": 0.9, "beta2": 1.0, "graft": "sgd", "start_preconditioning_step": 0,
          "exponent_override": 2, "merge_small_dims_block_size": 8, "matrix_eps": 1e-2,
          "relative_matrix_epsilon": False, "nesterov": True},
         "one 17×12 block, summed statistics (beta2 = 1), roots L^(−1/2) by exponent_override, "
         "preconditioned from the first step, SGD graft")
    case("shampoo_rmsprop_clip_precondition_opt", 64, (12, 30), 12,
         {"lr": 0.01, "block_size": 16, "beta1": 0.9, "beta2": 0.9, "graft": "rmsprop", "start_preconditioning_step": 4,
          "clip_by_scaled_gradient_norm": 1.5, "merge_small_dims_block_size": 8, "matrix_eps": 1e-3,
          "relative_matrix_epsilon": True, "nesterov": True},
         "12×30 in blocks of 12×16 and 12×14, the RMSProp graft with its RMS clipped at 1.5 "
         "(clip_by_scaled_gradient_norm: about 3 at the first step), the graft's momentum until step 5")
    # SQRT_N keeps the graft's momentum apart too (an earlier scalable_shampoo, e190129, shared one).
    case("shampoo_sqrt_n_precondition_opt", 63, (9, 20), 10,
         {"lr": 0.01, "block_size": 12, "beta1": 0.9, "beta2": 0.999, "graft": "sqrt_n", "start_preconditioning_step": 3,
          "merge_small_dims_block_size": 4, "matrix_eps": 1e-2, "relative_matrix_epsilon": True, "nesterov": True},
         "9×20 in blocks of 9×12 and 9×8, the SQRT_N graft (sign(g), norm sqrt(n)) with its own momentum "
         "until step 4, optax's relative ridge")


# ---------------------------------------------------------------- matrix functions


def matfn_case(name, function, keys, a, y, peer, conventions, tol):
    case = {"function": function, "peer": peer[0], "peer_version": peer[1], "conventions": conventions,
            "tolerance": tol}
    case.update(keys)
    write_case(name, case, {"a": a}, {"y": y})


def spd(seed, n, cond):
    r = rng(seed)
    q, _ = np.linalg.qr(r.standard_normal((n, n)))
    lam = cond ** (-np.arange(n) / max(n - 1, 1))
    a = (q * lam) @ q.T
    return ((a + a.T) / 2).astype(np.float32)


def cases_matfn():
    import scipy
    import scipy.linalg

    sv = ("scipy", version("scipy"))
    for shape in [(25, 10), (9, 31)]:
        a = rng(30 + shape[0]).standard_normal(shape).astype(np.float32)
        u, _ = scipy.linalg.polar(a.astype(np.float64))
        matfn_case(f"polar_{shape[0]}x{shape[1]}_scipy", "polar", {"max_iters": 100}, a, u, sv,
                   "scipy.linalg.polar(a)[0] in float64; gpuopt iterates in float32 to its stopping rule",
                   {"rel_fro": 1e-4})
    for n, cond in [(16, 10.0), (40, 100.0)]:
        a = spd(31 + n, n, cond)
        y = scipy.linalg.sqrtm(a.astype(np.float64)).real
        w, v = np.linalg.eigh(a.astype(np.float64))
        s = np.linalg.norm(a.astype(np.float64))
        x = 1.0 - w / s
        # Each method's own error through the spectrum (ALGORITHMS.md §11.6): the test allows it plus
        # f32 rounding.
        def trunc(f):
            return float(np.sqrt(np.sum((np.sqrt(s) * f(x) - np.sqrt(w)) ** 2)) / np.linalg.norm(y))
        taylor = [(-1) ** k * scipy.special.binom(0.5, k) for k in range(11)]
        mtp = lambda x: sum(c * x**k for k, c in enumerate(taylor))
        p = [1, -11 / 4, 11 / 4, -77 / 64, 55 / 256, -11 / 1024]
        q = [1, -9 / 4, 7 / 4, -35 / 64, 15 / 256, -1 / 1024]
        mpa = lambda x: sum(c * x**k for k, c in enumerate(p)) / sum(c * x**k for k, c in enumerate(q))
        for method, keys, f in [
            ("newton_schulz", {"iters": 30}, None),
            ("mtp", {"degree": 10}, mtp),
            ("mpa", {"degree": 5}, mpa),
        ]:
            t = 0.0 if f is None else trunc(f)
            keys = dict(keys, method=method)
            matfn_case(f"sqrt_{method}_{n}_scipy", "sqrt", keys, a, y, sv,
                       "scipy.linalg.sqrtm in float64; gpuopt pre-normalises by the Frobenius norm; the "
                       f"tolerance adds the method's exact truncation error {t:.3e}",
                       {"rel_fro": t * 1.05 + 2e-4})
        yi = (v / np.sqrt(w)) @ v.T
        matfn_case(f"inv_sqrt_newton_schulz_{n}_eigh", "inv_sqrt", {"method": "newton_schulz", "iters": 30}, a, yi,
                   ("numpy", version("numpy")), "V·diag(λ^−½)·Vᵀ from numpy.linalg.eigh in float64",
                   {"rel_fro": 2e-4 * np.sqrt(cond)})
        for pp in [2, 4]:
            eps = 1e-6
            yp = (v * (w + eps) ** (-1.0 / pp)) @ v.T
            matfn_case(f"inv_root_p{pp}_{n}_eigh", "inv_root", {"p": pp, "eps": eps}, a, yp,
                       ("numpy", version("numpy")),
                       "(A + eps·I)^(−1/p) = V·diag((λ + eps)^(−1/p))·Vᵀ from numpy.linalg.eigh in float64 "
                       "(absolute ridge, §11.4)", {"rel_fro": 1e-5 * np.sqrt(cond) + 1e-5})
    # NS5 against torch.optim.Muon's own Newton–Schulz, when this torch has it.
    try:
        import torch
        from torch.optim._muon import _zeropower_via_newtonschulz
    except Exception:
        return
    import inspect
    import torch.optim._muon as tm

    ns = dict(tm.__dict__)
    exec(inspect.getsource(_zeropower_via_newtonschulz).replace("grad.bfloat16()", "grad.float()"), ns)
    f32_ns = ns["_zeropower_via_newtonschulz"]
    for shape in [(20, 12), (3, 16, 40)]:
        g = rng(40 + len(shape)).standard_normal(shape).astype(np.float32)
        ys = []
        for m in (g if g.ndim == 3 else [g]):
            out = f32_ns(torch.tensor(m), (3.4445, -4.775, 2.0315), 5, 1e-7)
            ys.append(out.numpy())
        y = np.stack(ys) if g.ndim == 3 else ys[0]
        matfn_case(f"newton_schulz5_{'x'.join(map(str, shape))}_torch", "newton_schulz5", {"steps": 5}, g, y,
                   ("torch", version("torch")), "torch.optim._muon._zeropower_via_newtonschulz with its bfloat16 cast replaced by float32, "
                   "coefficients (3.4445, −4.775, 2.0315), eps 1e-7, transposing tall inputs",
                   {"rel_fro": 1e-4})


def main():
    global FAMILY
    by_name = {g.__name__.removeprefix("cases_"): g for g in GENERATORS}
    only = sys.argv[1:]
    unknown = [n for n in only if n not in by_name]
    if unknown:
        sys.exit(f"unknown families {unknown}; known: {sorted(by_name)}")
    if only:
        # Regenerate some families only (their peers alone need installing): their old cases go, the
        # other families' stay.
        for d in case_dirs():
            with open(os.path.join(d, "case.json")) as f:
                if json.load(f).get("family") in only:
                    shutil.rmtree(d)
    else:
        if os.path.isdir(ROOT):
            shutil.rmtree(ROOT)
        os.makedirs(ROOT)
    for name in only or list(by_name):
        FAMILY = name
        by_name[name]()
    # The index lists every case folder, by name (the order tests/conformance.rs replays them in).
    index = []
    for d in case_dirs():
        with open(os.path.join(d, "case.json")) as f:
            c = json.load(f)
        index.append({"name": os.path.basename(d), "peer": c["peer"], "peer_version": c["peer_version"],
                      "what": c.get("optimizer") or c.get("function"), "conventions": c["conventions"]})
    with open(os.path.join(ROOT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(f"{len(CASES)} cases written to {ROOT} ({len(index)} in all)", file=sys.stderr)


def case_dirs():
    if not os.path.isdir(ROOT):
        sys.exit(f"{ROOT} is missing: run generate.py without families first")
    return sorted(os.path.join(ROOT, n) for n in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, n, "case.json")))


GENERATORS = (cases_torch, cases_lion, cases_pytorch_optimizer, cases_papers, cases_optax, cases_shampoo, cases_matfn)

if __name__ == "__main__":
    main()
