//! the hull binary.
fn main() {}
