//! Version 3 of the `payout` workflow (see `workflows/payout`): it pays before the bank's
//! confirmation, where version 1 waits first, so no journal of version 1 replays on it.

const VERSION: u32 = 3;
const RECEIPT: bool = false;
const PAY_FIRST: bool = true;

include!("../../payout/src/body.rs");
