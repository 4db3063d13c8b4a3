//! The kernel side as seen from userspace: the embedded object, where it is
//! pinned, how it is attached or adopted, and how policy is written into its
//! maps.

pub mod cgroup;
pub mod link;
pub mod loader;
pub mod object;
pub mod pins;
pub mod policy_maps;
pub mod port_counts;

mod policy_patch;
pub mod scopes;
pub mod status;
mod trie_batch;

pub use loader::{install_or_adopt, uninstall, Installed};
pub use pins::PinDir;
pub use policy_maps::PolicyMaps;
pub use scopes::ScopeMaps;
