//! FI data encryption.
pub mod curve;
