//! Streaming Linux console parser (TODO(owner)).
