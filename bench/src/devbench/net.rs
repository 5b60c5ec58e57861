//! virtio-net (placeholder while the block benchmark is brought up).

use super::DeviceOptions;
use crate::error::Result;
use crate::report::Section;

pub fn run(s: &mut Section, _opts: &DeviceOptions) -> Result<()> {
    s.note("not yet measured");
    Ok(())
}
