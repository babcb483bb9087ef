//! Drive: what happens in a run. Scenarios, the seeded schedules made of them, recorded runs,
//! hold sessions, the matrix of scenarios × kernels × repeats, KUnit runs, what a scenario
//! requires of a kernel build, and progress output.

pub mod hold_session;
pub mod kunit;
pub mod matrix;
pub mod progress;
pub mod requires;
pub mod scenario;
pub mod schedule;
pub mod torture;
