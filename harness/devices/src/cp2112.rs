//! TODO(owner): cp2112
