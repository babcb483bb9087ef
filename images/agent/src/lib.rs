//! Guest agent wire protocol (TODO(owner)).
