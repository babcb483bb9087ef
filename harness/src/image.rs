//! TODO(owner): image
