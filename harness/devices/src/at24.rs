//! TODO(owner): at24
