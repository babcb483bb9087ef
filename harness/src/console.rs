//! TODO(owner): console
