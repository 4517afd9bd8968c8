//! GPU vs CPU reference for every elementwise optimizer (and each variant, Lion-K maps included), 12 steps, random data
//! with edge values (0, ±1e-30, ±1e30 in parameters and gradients), two parameter groups, on sizes
//! 1, 7, 255, 256, 257, 4099, 65537 in one arena and 65,535 × 256 + 2 alone (past the 1-D dispatch
//! limit). Tolerances: `gpuopt::parity::tolerance` (derived there from the op count).

mod common;

use gpuopt::parity::{run, test_algorithms, Report};
use gpuopt::ContextOptions;

const SMALL: &[usize] = &[1, 7, 255, 256, 257, 4099, 65537];
/// One past 65,535 workgroups of 256: a 1-D grid of one element per invocation could not cover it.
const BIG: usize = 65_535 * 256 + 2;
const STEPS: usize = 12;

fn assert_pass(reports: &[Report]) {
    for r in reports {
        assert!(
            r.pass,
            "{} n={}: max abs {:e}, max rel {:e}, err/tol {}, over tolerance {}/{} allowed",
            r.name, r.size, r.max_abs, r.max_rel, r.worst, r.mismatches, r.budget
        );
        assert_eq!(r.steps, STEPS);
    }
}

fn check(name: &str, big: bool) {
    let ctx = common::ctx();
    let (_, alg) = test_algorithms().into_iter().find(|(n, _)| n == name).expect("known test algorithm");
    assert_pass(&run(&ctx, name, &alg, SMALL, STEPS, 1234, true).unwrap());
    if big {
        assert_pass(&run(&ctx, name, &alg, &[BIG], STEPS, 99, true).unwrap());
    }
}

macro_rules! parity_tests {
    ($($fn_name:ident => $name:literal),* $(,)?) => {$(
        #[test]
        fn $fn_name() {
            check($name, true);
        }
    )*};
}

parity_tests!(
    sgd_matches_reference => "sgd",
    sgd_momentum_matches_reference => "sgd_momentum",
    sgd_nesterov_decoupled_matches_reference => "sgd_nesterov_w",
    signsgd_matches_reference => "signsgd",
    signum_matches_reference => "signum",
    lion_matches_reference => "lion",
    lion_k_l2_matches_reference => "lion_k_l2",
    lion_k_lp_matches_reference => "lion_k_lp",
    lion_k_huber_matches_reference => "lion_k_huber",
    lion_k_tanh_matches_reference => "lion_k_tanh",
    lion_k_relativistic_matches_reference => "lion_k_relativistic",
    ano_matches_reference => "ano",
    anolog_matches_reference => "anolog",
    adamw_matches_reference => "adamw",
    adamw_amsgrad_matches_reference => "adamw_amsgrad",
    adabound_matches_reference => "adabound",
    amsbound_decoupled_matches_reference => "amsbound_w",
    adamomentum_matches_reference => "adamomentum",
    adamomentum_rectified_matches_reference => "adamomentum_rectified",
    ademamix_matches_reference => "ademamix",
    mars_adamw_matches_reference => "mars",
    mars_lion_matches_reference => "mars_lion",
    adahessian_matches_reference => "adahessian",
    adahessian_power_one_matches_reference => "adahessian_k1",
    sophia_matches_reference => "sophia",
    sophiah_matches_reference => "sophiah",
);

#[test]
fn parity_covers_every_replay_optimizer() {
    let names: Vec<String> = test_algorithms().iter().map(|(_, a)| a.name().to_string()).collect();
    for n in gpuopt::optim::algorithm::NAMES {
        assert!(names.iter().any(|m| m == n), "{n} has no parity case");
    }
}

/// The 2-D grid: with at most 3 workgroups per dimension every kernel (update, norm passes, guard)
/// must fold its blocks onto x and y and still cover every element exactly once.
#[test]
fn parity_holds_on_a_two_dimensional_grid() {
    let ctx = common::ctx_with(ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() });
    for name in ["lion", "lion_k_lp", "adamw_amsgrad", "mars", "ademamix"] {
        let (_, alg) = test_algorithms().into_iter().find(|(n, _)| n == name).unwrap();
        assert_pass(&run(&ctx, name, &alg, &[1, 4099, 65537], STEPS, 5, true).unwrap());
    }
}

/// Arena segments: with storage bindings capped at 64 KiB the tensors spread over several arenas.
#[test]
fn parity_holds_across_arena_segments() {
    let ctx = common::ctx_with(ContextOptions { max_binding_bytes: Some(64 * 1024), ..Default::default() });
    for name in ["signum", "adamw", "mars_lion", "lion_k_l2"] {
        let (_, alg) = test_algorithms().into_iter().find(|(n, _)| n == name).unwrap();
        assert_pass(&run(&ctx, name, &alg, &[7, 4099, 9000, 257, 16000], STEPS, 6, true).unwrap());
    }
}
