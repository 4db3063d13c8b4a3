//! Fuzzes the live (incremental) policy against the full compiler: the
//! input's bytes choose a sequence of document changes (Pods, Services,
//! Servers, Namespaces, EgressNetworks and a ClassifierPolicy in a small
//! world where addresses, names and labels collide), applied in batches.
//!
//! Properties checked after every batch:
//!
//! - applying never fails or panics;
//! - the live policy's kernel entries equal a full compile of the same
//!   documents, rule for rule (ids compared through the rules they name),
//!   with the same rejected objects and pod namespaces, and unique ids;
//! - an incremental update's delta is exactly the difference between the
//!   entries before and after it (what the maps are patched with).
#![no_main]

use classifier_policy::live::testing::{assert_matches_full, random_change, Rng};
use classifier_policy::live::{Change, LivePolicy};
use classifier_policy::sources::Options;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::from_bytes(data);
    let mut live = LivePolicy::new(Options::default()).expect("an empty live policy");
    let mut before = live.compiled();
    let mut step = 0;
    while !rng.exhausted() && step < 64 {
        let n = 1 + rng.below(3);
        let batch: Vec<Change> = (0..n).map(|_| random_change(&mut rng, &live)).collect();
        let out = live.apply(batch).expect("applying changes");
        assert_matches_full(&live, &format!("step {step}"));
        let now = live.compiled();
        if !out.full {
            out.delta.apply_to(&mut before);
            assert_eq!(before, now, "step {step}: the delta");
        }
        before = now;
        step += 1;
    }
});
