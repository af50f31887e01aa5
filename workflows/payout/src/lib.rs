//! A payout that waits for the bank: reserve the amount, wait for the bank's `bank` signal,
//! then pay the payee. Version 1; `payout-v2` (compatible: the same calls, then a receipt in
//! the log) and `payout-v3` (incompatible: it pays before the wait) are the upgrade tests'
//! second versions.

const VERSION: u32 = 1;
const RECEIPT: bool = false;
const PAY_FIRST: bool = false;

include!("body.rs");
