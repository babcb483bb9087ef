//! TODO(owner): results
