//! TODO(owner): qmp
