//! Version 2 of the `gated` workflow (see `workflows/gated`): the same body, a different
//! module, so it deploys as a new version.

const VERSION: u32 = 2;

include!("../../gated/src/body.rs");
