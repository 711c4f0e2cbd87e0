//! memsleuth's accounting model, free of any interpreter: the block table the allocation hooks
//! update, the per-line ledger, and the reports. The Python extension is a thin layer over it.

pub mod blocks;
pub mod causes;
pub mod json;
pub mod ledger;
pub mod report;

#[cfg(test)]
mod ledger_tests;
