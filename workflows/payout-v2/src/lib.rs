//! Version 2 of the `payout` workflow (see `workflows/payout`): the same calls as version 1,
//! then a receipt in the log after them, so every journal version 1 wrote replays on it.

const VERSION: u32 = 2;
const RECEIPT: bool = true;
const PAY_FIRST: bool = false;

include!("../../payout/src/body.rs");
