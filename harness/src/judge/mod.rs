//! Judge: what a run found. Results folders and expectations, observers, data integrity, the
//! live console's crash parser and symbolization, A/B tables, tallies of many runs, and what
//! is read from the folders afterwards (HTML pages, KCIDB exports).

pub mod ab;
pub mod crash_feed;
pub mod html;
pub mod integrity;
pub mod kcidb;
pub mod observe;
pub mod results;
pub mod symbolizer;
pub mod tally;
