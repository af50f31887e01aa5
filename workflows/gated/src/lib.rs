//! A transfer that can be held in flight: it first passes through a lock (`gate`) that a test
//! or an operator may hold. Version 1; `gated-v2` is the same workflow at version 2. The hot
//! deploy tests run both.

const VERSION: u32 = 1;

include!("body.rs");
