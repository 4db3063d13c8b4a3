//! The churn soak's short scale (`tests::soak`, `Scale::short`): past the
//! capacity of every table the churn fills, in under three minutes. The
//! full scale is `cargo xtask soak`.

use tests::{privileged, soak};

#[test]
fn a_compressed_year_of_churn_leaves_every_table_and_the_agent_as_after_warm_up() {
    if !privileged!() {
        return;
    }
    let report = soak::run_soak(&soak::Scale::short(), |line| eprintln!("soak: {line}"))
        .expect("the soak ran");
    eprint!("{}", report.render());
    assert!(report.failures.is_empty(), "{}", report.render());
}
