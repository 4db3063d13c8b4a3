//! Where policy documents come from: the documents and the Linkerd
//! compiler are `classifier_policy::sources` (re-exported here); what this
//! crate adds is [`kubernetes`], the same documents watched live from the
//! API server (kube-rs, tokio), which the policy crate must not depend on.
//!
//! ```text
//! --policy FILE|DIR --document--> DocumentSet --linkerd--> Policy
//! --kubernetes      --kubernetes-/                 (then policy::compile)
//! ```

pub use classifier_policy::sources::*;

pub mod kubernetes;
