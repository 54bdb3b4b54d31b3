//! ReBIT's message rules that a sidecar can decide without business state: the envelope (`ver`,
//! `timestamp`, `txnid`), which endpoint a path names and who may notify it, and the bounded scans that
//! read these fields from a body. Pure functions over bytes and times; `/v1/authorize` follows them.

pub mod endpoint;
pub mod envelope;
pub mod scan;
