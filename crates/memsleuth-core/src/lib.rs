//! memsleuth's accounting model, free of any interpreter: the records the profiled process
//! streams and the ring that carries them, the books that apply them (the block table and the
//! per-line ledger), what the process decides about its own readings, and the reports. The
//! Python extension is a thin layer over it.

pub mod backlog;
pub mod blocks;
pub mod books;
pub mod causes;
pub mod hints;
pub mod ledger;
pub mod readings;
pub mod record;
pub mod report;
pub mod ring;
