//! TODO(owner): agent
