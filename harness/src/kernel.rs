//! TODO(owner): kernel
