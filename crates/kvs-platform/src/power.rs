//! Power and wake-up.
//!
//! In split mode the always-on signaling side wakes the media side when a viewer arrives (a GPIO
//! line on the seed's two-chip boards). On a host both sides are processes, so waking is a no-op
//! or starting a process; the trait lets a device port drive real hardware.

/// Something that can wake a sleeping peer processor and let it sleep again.
pub trait Wake: Send + Sync {
    /// Ask the other side to wake up. Returns once the request is issued, not once it is awake
    /// (readiness is confirmed over the link with READY).
    fn wake(&self);
}

/// Wake implementation for hosts where the other side never sleeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysAwake;

impl Wake for AlwaysAwake {
    fn wake(&self) {}
}
