//! hull devices.
