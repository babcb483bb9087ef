//! TODO(owner): usbredir
