//! Ledger behaviour without an interpreter: events are fed by hand as the hooks would.
