//! virtio devices.
