//! TODO(owner): i2c
