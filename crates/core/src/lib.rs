//! Domain types of rebased.
//!
//! Everything here is pure: parsing, normalising and validating the things
//! that the rest of the workspace passes around (image references, digests,
//! versions, Dockerfiles, the config schema, OCI documents and media types). No function in this crate does
//! IO; callers read files and hand over text.

pub mod config;
pub mod digest;
pub mod dockerfile;
pub mod duration;
pub mod job;
pub mod notify;
pub mod oci;
pub mod reference;
pub mod source;
pub mod status;
pub mod trigger;
pub mod units;
pub mod version;

pub use digest::Digest;
pub use reference::ImageRef;
pub use status::ImageState;
pub use trigger::Trigger;
pub use version::Version;
